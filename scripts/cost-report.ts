import { Command, Option } from "commander";
import { FORMATS, buildReport, parseGpuHours, renderReport, type Format } from "./lib/cost-report";
import { STACKS, runProgram } from "./lib/mock-engine";

/**
 * `npm run cost-report -- --stack <name> [--format md|csv|json] [--gpu-hours gpu-small=200,...]`:
 * a stack's budgets, tier prices, fixed costs and an estimate of a month, from the offline plan.
 */
async function main(): Promise<void> {
  const opts = new Command("cost-report")
    .description("Budgets, tier prices, fixed costs and a month's estimate of a stack, offline")
    .addOption(new Option("--stack <name>", "stack to report on").choices(STACKS).makeOptionMandatory())
    .addOption(new Option("--format <format>", "output format").choices(FORMATS).default("md"))
    .option("--gpu-hours <tier=hours,...>", "job hours per month per tier, e.g. gpu-small=200,gpu-medium=40")
    .parse()
    .opts<{ stack: string; format: Format; gpuHours?: string }>();
  const plan = await runProgram(opts.stack);
  const enabled = Object.keys(plan.outputs.tiers as Record<string, unknown>);
  const hours = opts.gpuHours === undefined ? new Map() : parseGpuHours(opts.gpuHours, enabled);
  process.stdout.write(renderReport(buildReport(plan, hours), opts.format));
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
