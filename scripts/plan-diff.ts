import { Command } from "commander";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { diffPlans, parsePlan, renderDiff, withoutRoot } from "./lib/plan-diff";

/**
 * `npm run plan-diff -- <base.json> <head.json> [--against main] [--base-root DIR --head-root DIR]`: what
 * changed between two offline plans (`npm run plan -- --stack <s> --json`), as markdown. CI appends it to
 * a pull request's job summary; the roots are the checkouts the plans ran in, whose paths (the images'
 * build contexts) differ without anything having changed.
 */
const program = new Command("plan-diff")
  .description("Resources and outputs that differ between two offline plans of a stack, as markdown")
  .argument("<base>", "the plan to compare against (main's), from npm run plan -- --stack <s> --json")
  .argument("<head>", "the plan of the change")
  .option("--against <label>", "what the base plan is, for the heading", "main")
  .option("--base-root <dir>", "the checkout the base plan ran in")
  .option("--head-root <dir>", "the checkout the head plan ran in")
  .action((base: string, head: string, opts: { against: string; baseRoot?: string; headRoot?: string }) => {
    const read = (file: string, root: string | undefined) => {
      let text: string;
      try {
        text = readFileSync(file, "utf8");
      } catch (err) {
        throw new Error(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
      }
      const plan = parsePlan(text, file);
      return root === undefined ? plan : withoutRoot(plan, path.resolve(root));
    };
    const diff = diffPlans(read(base, opts.baseRoot), read(head, opts.headRoot));
    process.stdout.write(renderDiff(diff, opts.against));
  });

try {
  program.parse();
} catch (err) {
  process.stderr.write(`plan-diff: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
