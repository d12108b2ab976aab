import type { Command } from "commander";
import { formatBytes } from "../../job/detect";
import { TIER_NAMES, TIERS } from "../../catalog/tiers";
import { printJson } from "./shared";

/** `crucible tiers`: the catalog, with what each tier allows and costs. */
export function registerTiers(program: Command): void {
  program
    .command("tiers")
    .description("list the resource tiers with their limits and on-demand prices")
    .option("--json", "print the catalog as JSON")
    .action((opts: { json?: boolean }) => {
      const tiers = TIER_NAMES.map((name) => TIERS[name]);
      if (opts.json) {
        printJson(tiers);
        return;
      }
      const rows = [
        ["TIER", "MEMORY", "VCPU", "GPU", "MAX RUNTIME", "DATASETS", "USD/HOUR", "FOR"],
        ...tiers.map((t) => [
          t.name,
          formatBytes(t.memoryMiB * 2 ** 20),
          String(t.vcpus),
          t.gpu ? `${t.gpu.count} x ${t.gpu.memoryGB} GB` : "-",
          formatDuration(t.maxRuntimeSeconds),
          `${t.datasetCacheGiB} GiB`,
          `$${t.onDemandHourlyUsd.toFixed(3)}`,
          t.description,
        ]),
      ];
      const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
      for (const row of rows) {
        process.stdout.write(
          `${row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ")}\n`,
        );
      }
    });
}

export function formatDuration(seconds: number): string {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}
