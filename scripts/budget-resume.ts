import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { Command, Option } from "commander";
import { findPausedGroups, resumeGroups } from "../infra/budget-enforcer/handler";
import { TIER_NAMES } from "../runtime/src/catalog";

/**
 * `npm run budget-resume -- (--asg <name,...> | --tier <tier> [--environment <env>]) [--region <r>]`:
 * undoes a budget pause. Each paused group carries the sizes it had as `crucible:budget-paused-*`
 * tags; this restores them and removes the tags. The enforcer's log prints the exact `--asg` command.
 * Raise the budget (or wait for the next month) first, or the next notification pauses it again.
 */

async function main(): Promise<void> {
  const opts = new Command("budget-resume")
    .description("Restore the sizes of Auto Scaling groups a budget pause set to 0")
    .option("--asg <names>", "comma-separated group names, as the enforcer's log prints them")
    .addOption(new Option("--tier <tier>", "every paused group of this tier").choices(TIER_NAMES))
    .option("--environment <env>", "with --tier: only groups of this environment")
    .option("--region <region>", "AWS region of the groups; defaults to AWS_REGION")
    .parse()
    .opts<{ asg?: string; tier?: string; environment?: string; region?: string }>();
  if (!opts.asg === !opts.tier)
    throw new Error("give either --asg <name,...> or --tier <tier>, not both or neither");
  const client = new AutoScalingClient(opts.region ? { region: opts.region } : {});
  const names = opts.asg
    ? opts.asg
        .split(",")
        .map((n) => n.trim())
        .filter(Boolean)
    : await findPausedGroups(client, opts.tier!, opts.environment);
  if (!names.length) {
    process.stdout.write(`no paused groups found for tier ${opts.tier}\n`);
    return;
  }
  for (const change of await resumeGroups(client, names)) {
    const sizes = change.after
      ? ` to min ${change.after.minSize}, max ${change.after.maxSize}, desired ${change.after.desiredCapacity}`
      : "";
    process.stdout.write(`${change.asgName}: ${change.outcome}${sizes}\n`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
