import { Command, Option } from "commander";
import { writeFile } from "node:fs/promises";
import { platformFromEnv } from "../runtime/src/cli/commands/platform-access";
import { cliLogger } from "../runtime/src/cli/commands/shared";
import { LEDGER_PREFIX } from "../runtime/src/catalog/bucket-layout";
import { ledgerMonth } from "../runtime/src/cost/ledger";
import { readLedgerDir } from "../runtime/src/cost/usage";
import {
  FORMATS,
  buildReport,
  parseGpuHours,
  parseMonth,
  renderReport,
  spendChartOf,
  type Format,
  type LedgerInput,
} from "./lib/cost-report";
import { STACKS, runProgram } from "./lib/mock-engine";
import { spendChartSvg } from "./lib/spend-chart";

interface Flags {
  stack: string;
  format: Format;
  gpuHours?: string;
  ledger?: string;
  month?: string;
  chart?: string;
}

/** The ledger to report on: `--ledger <dir>`, else the bucket CRUCIBLE_BUCKET names, else none. */
async function ledgerFrom(flags: Flags, now: Date): Promise<LedgerInput | undefined> {
  const month = parseMonth(flags.month ?? now.toISOString().slice(0, 7), now);
  if (flags.ledger !== undefined)
    return {
      source: `ledger directory ${flags.ledger}`,
      entries: await readLedgerDir(flags.ledger),
      month,
      now,
    };
  if (!process.env.CRUCIBLE_BUCKET) return undefined;
  const { store } = platformFromEnv(cliLogger());
  return {
    source: `bucket ${store.bucket} (${LEDGER_PREFIX}${ledgerMonth(month)}/)`,
    entries: await store.ledgerEntries({ since: month, until: month }),
    month,
    now,
  };
}

/**
 * `npm run cost-report -- --stack <name> [--format md|csv|json] [--gpu-hours gpu-small=200,...]
 * [--ledger <dir>] [--month YYYY-MM] [--chart <file.svg>]`: a stack's budgets, tier prices, fixed costs
 * and an estimate of a month, from the offline plan; with a ledger, what the month actually cost.
 */
async function main(): Promise<void> {
  const opts = new Command("cost-report")
    .description("Budgets, tier prices, fixed costs and a month's estimate of a stack, offline")
    .addOption(new Option("--stack <name>", "stack to report on").choices(STACKS).makeOptionMandatory())
    .addOption(new Option("--format <format>", "output format").choices(FORMATS).default("md"))
    .option("--gpu-hours <tier=hours,...>", "job hours per month per tier, e.g. gpu-small=200,gpu-medium=40")
    .option("--ledger <dir>", "ledger JSON files (a bucket sync or `crucible usage --format json` output)")
    .option("--month <YYYY-MM>", "month of the ledger to report (default: this month, UTC)")
    .option("--chart <file.svg>", "write the month's cumulative spend per day as an SVG chart")
    .parse()
    .opts<Flags>();
  const now = new Date();
  const ledger = await ledgerFrom(opts, now);
  if (opts.chart !== undefined && !ledger)
    throw new Error("--chart needs a ledger: give --ledger <dir> or set CRUCIBLE_BUCKET");
  const plan = await runProgram(opts.stack);
  const enabled = Object.keys(plan.outputs.tiers as Record<string, unknown>);
  const hours = opts.gpuHours === undefined ? new Map() : parseGpuHours(opts.gpuHours, enabled);
  const report = buildReport(plan, hours, ledger);
  process.stdout.write(renderReport(report, opts.format));
  if (opts.chart !== undefined && report.usage)
    await writeFile(opts.chart, spendChartSvg(spendChartOf({ ...report, usage: report.usage })));
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
