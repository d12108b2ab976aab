import type { Command } from "commander";
import { Option } from "commander";
import { writeFile } from "node:fs/promises";
import { extname } from "node:path";
import type { MetricRecord } from "../../store/job-metrics";
import { readMetricHistory, reportedByJob } from "../../store/job-metrics";
import { toCsv } from "../../cost/usage";
import { metricChartSvg } from "../metric-chart";
import type { Owner } from "./platform-access";
import { ownerOptions } from "./platform-access";
import { findJob, formatNumber } from "./jobs";
import { printJson, UsageError } from "./shared";

const FORMATS = ["table", "csv", "json"] as const;

interface MetricsFlags extends Owner {
  readonly format: (typeof FORMATS)[number];
  readonly metric?: string[];
  readonly plot?: string;
  readonly resources?: boolean;
}

/** `metrics`: a job's progress and metric history over all its attempts, printed or plotted. */
export function registerMetrics(program: Command): void {
  ownerOptions(
    program
      .command("metrics")
      .description("a job's metric history against step, every attempt's; --plot draws it")
      .argument("<job>", "job id"),
  )
    .addOption(new Option("--format <format>", "how to print it").choices(FORMATS).default("table"))
    .option("--metric <name...>", "only these metrics (default: all; the plot: loss, else the first)")
    .option("--plot <file.svg>", "write a chart of the metrics against step (SVG)")
    .option("--resources", "what the job used instead (memory, CPU, GPU), sampled every few seconds")
    .action(async (jobId: string, flags: MetricsFlags) => {
      if (flags.plot !== undefined && extname(flags.plot).toLowerCase() !== ".svg")
        throw new UsageError(`--plot must name an .svg file, got "${flags.plot}"`);
      if (flags.plot !== undefined && flags.resources)
        throw new UsageError(
          "--plot draws what the job reported against step; --resources samples have no step",
        );
      const { store, target } = await findJob(jobId, flags);
      const records = (await readMetricHistory(store.metricSeries(target))).filter(
        (r) => reportedByJob(r) !== (flags.resources === true),
      );
      const known = metricNames(records);
      const unknown = (flags.metric ?? []).filter((m) => !known.includes(m));
      if (unknown.length > 0)
        throw new UsageError(
          `--metric ${unknown.join(", ")}: job ${jobId} reported no such metric (it reported: ${known.join(", ") || "none yet"})`,
        );
      const chosen = flags.metric ?? known;
      if (flags.plot !== undefined) {
        const plotted = flags.metric ?? (known.includes("loss") ? ["loss"] : known.slice(0, 1));
        if (plotted.length === 0)
          throw new UsageError(`job ${jobId} has reported no metrics yet; nothing to plot`);
        await writeFile(
          flags.plot,
          metricChartSvg(`${jobId}: ${plotted.join(", ")} by step`, records, plotted),
        );
        process.stderr.write(`wrote ${flags.plot}\n`);
        return;
      }
      if (flags.format === "json") printJson(records);
      else if (flags.format === "csv") process.stdout.write(metricsCsv(records, chosen));
      else process.stdout.write(toTable(records, chosen));
    });
}

/** The metrics a history holds, `loss` first, then in the order they first appear. */
export function metricNames(records: readonly MetricRecord[]): string[] {
  const names = [...new Set(records.flatMap((r) => Object.keys(r.m)))];
  return names.includes("loss") ? ["loss", ...names.filter((n) => n !== "loss")] : names;
}

const COLUMNS = ["time", "attempt", "step", "total"] as const;

function rows(records: readonly MetricRecord[], metrics: readonly string[]): string[][] {
  return records.map((r) => [
    new Date(r.t).toISOString(),
    String(r.a),
    r.step === undefined ? "" : String(r.step),
    r.total === undefined ? "" : String(r.total),
    ...metrics.map((m) => (r.m[m] === undefined ? "" : formatNumber(r.m[m]))),
  ]);
}

/** Metric names come from the job: the shared CSV writer quotes them per RFC 4180. */
export function metricsCsv(records: readonly MetricRecord[], metrics: readonly string[]): string {
  return toCsv([[...COLUMNS, ...metrics], ...rows(records, metrics)]);
}

export function toTable(records: readonly MetricRecord[], metrics: readonly string[]): string {
  const table = [[...COLUMNS, ...metrics], ...rows(records, metrics)];
  const widths = table[0]!.map((_, c) => Math.max(...table.map((row) => row[c]!.length)));
  return `${table
    .map((row) =>
      row
        .map((cell, c) => cell.padEnd(widths[c]!))
        .join("  ")
        .trimEnd(),
    )
    .join("\n")}\n`;
}
