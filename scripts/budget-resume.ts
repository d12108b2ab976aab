import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { S3Client } from "@aws-sdk/client-s3";
import { Command, Option } from "commander";
import { findPausedGroups, removePauseMarker, resumeGroups } from "../infra/budget-enforcer/handler";
import { PAUSE_MARKER_PREFIX } from "../runtime/src/catalog/bucket-layout";
import { TIER_NAMES } from "../runtime/src/catalog";

/**
 * `npm run budget-resume -- --tier <tier> --bucket <storage.bucketName> [--asg <name,...>]
 * [--environment <env>] [--region <r>]`: undoes a budget pause. Each paused group carries the sizes it had
 * as `crucible:budget-paused-*` tags; this restores them and removes the tags, then removes the tier's
 * pause marker (`_control/paused/<tier>` in the workspaces bucket), after which agents take jobs again.
 * Without `--asg`, every paused group of the tier (optionally of one environment). The enforcer's log
 * prints the exact command. Raise the budget (or wait for the next month) first, or the next notification
 * pauses it again.
 */

async function main(): Promise<void> {
  const opts = new Command("budget-resume")
    .description(
      "Restore the sizes of Auto Scaling groups a budget pause set to 0, and remove its pause marker",
    )
    .addOption(new Option("--tier <tier>", "the paused tier").choices(TIER_NAMES).makeOptionMandatory())
    .requiredOption(
      "--bucket <name>",
      "the workspaces bucket holding the pause marker (stack output storage.bucketName)",
    )
    .option(
      "--asg <names>",
      "comma-separated group names, as the enforcer's log prints them; default: the tier's paused groups",
    )
    .option("--environment <env>", "without --asg: only groups of this environment")
    .option("--region <region>", "AWS region of the groups and bucket; defaults to AWS_REGION")
    .parse()
    .opts<{ tier: string; bucket: string; asg?: string; environment?: string; region?: string }>();
  const config = opts.region ? { region: opts.region } : {};
  const client = new AutoScalingClient(config);
  const names = opts.asg
    ? opts.asg
        .split(",")
        .map((n) => n.trim())
        .filter(Boolean)
    : await findPausedGroups(client, opts.tier, opts.environment);
  if (!names.length) process.stdout.write(`no paused groups found for tier ${opts.tier}\n`);
  for (const change of names.length ? await resumeGroups(client, names) : []) {
    const sizes = change.after
      ? ` to min ${change.after.minSize}, max ${change.after.maxSize}, desired ${change.after.desiredCapacity}`
      : "";
    process.stdout.write(`${change.asgName}: ${change.outcome}${sizes}\n`);
  }
  // Last: with the marker gone, protected nodes take jobs again, so the groups are sized first.
  const key = await removePauseMarker(
    new S3Client(config),
    { bucket: opts.bucket, prefix: PAUSE_MARKER_PREFIX },
    opts.tier,
  );
  process.stdout.write(`s3://${opts.bucket}/${key}: removed; agents of ${opts.tier} take jobs again\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
