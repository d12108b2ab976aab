import type { Comparison } from "./comparison";
import type { SimulationResult } from "./model";

type Column = Omit<SimulationResult, "waits">;

const duration = (s: number) =>
  s < 60 ? `${Math.round(s)} s` : s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(2)} h`;
const usdText = (x: number) =>
  `$${x.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
const hourly = (x: number) => `$${x.toFixed(4)}/h`;

/** The rows of the table: a label and how one run's cell reads. */
const ROWS: readonly (readonly [string, (r: Column) => string])[] = [
  ["queue wait p50", (r) => duration(r.waitSeconds.p50)],
  ["queue wait p95", (r) => duration(r.waitSeconds.p95)],
  ["queue wait max", (r) => duration(r.waitSeconds.max)],
  ["jobs completed", (r) => `${r.jobs.completed} of ${r.jobs.arrived}`],
  ["jobs running / waiting at end", (r) => `${r.jobs.runningAtEnd} / ${r.jobs.waitingAtEnd}`],
  ["instance-hours in service", (r) => r.instanceHours.inService.toFixed(2)],
  ["instance-hours starting", (r) => r.instanceHours.starting.toFixed(2)],
  [
    "warm pool hours (initialising / stopped / running)",
    (r) =>
      `${r.instanceHours.warmPoolInitialising.toFixed(2)} / ${r.instanceHours.warmPoolStopped.toFixed(2)} / ${r.instanceHours.warmPoolRunning.toFixed(2)}`,
  ],
  ["starts (cold / warm)", (r) => `${r.scaling.coldStarts} / ${r.scaling.warmStarts}`],
  ["group size (min / peak)", (r) => `${r.scaling.minGroupSize} / ${r.scaling.peakGroupSize}`],
  ["scale-outs from zero", (r) => String(r.scaling.fromZeroScaleOuts)],
  [
    "spot interruptions (jobs handed back)",
    (r) => `${r.scaling.spotInterruptions} (${r.jobs.handedBack}, ${duration(r.jobs.lostWorkSeconds)} lost)`,
  ],
  ["cost: compute", (r) => usdText(r.costUsd.compute)],
  ["cost: warm pool storage", (r) => usdText(r.costUsd.warmPoolStorage)],
  ["cost: warm pool running", (r) => usdText(r.costUsd.warmPoolRunning)],
  ["cost: total", (r) => usdText(r.costUsd.total)],
];

/** The run and the settings it simulated, then a blank line. */
function settingsLines(c: Comparison): string[] {
  const s = c.settings;
  const t = s.timing;
  const type = s.instanceTypes[0]!;
  return [
    `Scaling simulation: stack ${c.stack}, tier ${c.tier}, ${c.hours} h from ${c.start}, seed ${c.seed}`,
    "",
    `Arrivals   ${c.arrivals.source}: ${c.arrivals.count} jobs`,
    `Group      min ${s.minSize}, desired ${s.desired}, max ${s.maxSize}; target ${s.targetJobsPerInstance} jobs per in-service instance; ${s.slots} job(s) at once per instance`,
    `Nodes      ${type}: on-demand ${hourly(s.instanceHourlyUsd)}${s.spot ? `, spot ${hourly(s.spotHourlyUsd)}` : ""}`,
    `Spot       ${
      s.spot
        ? `on-demand base ${s.spot.onDemandBase}, ${s.spot.onDemandPercentage} % on-demand above it; ${s.spotInterruptionsPerHour} interruptions per spot instance-hour; checkpoints every ${c.checkpointSeconds} s of progress`
        : "none (on-demand group)"
    }`,
    `Warm pool  ${
      s.warmPool
        ? `min ${s.warmPool.minSize}, max prepared ${s.warmPool.maxPreparedCapacity || s.maxSize}; ${s.warmPool.state}, idle instances ${hourly(s.warmPoolIdleHourlyUsd)} each (${s.warmPool.state === "Running" ? "on-demand" : "root volume"})`
        : "none declared"
    }`,
    `Fast path  ${
      s.fastScale
        ? `declared: desired raised to ceil((waiting + running) / ${s.fastScale.jobsPerNode}) ${t.fastScaleDelaySeconds} s after each submission`
        : "none declared"
    }`,
    `Schedules  ${s.prewarmSchedule.map((p) => `${p.name} "${p.recurrence}" ${p.timeZone ?? "UTC"} → min ${p.minSize}`).join("; ") || "none"}`,
    `Timing     cold boot ${t.coldBootSeconds} s, warm start ${t.warmStartSeconds} s (hibernated ${t.hibernatedStartSeconds} s, running ${t.runningStartSeconds} s); metrics every ${t.metricPeriodSeconds} s, acted on ${t.scaleOutDelaySeconds} s later; scale-in after ${t.scaleInCooldownSeconds} s`,
    "",
  ];
}

/** The column heads of {@link resultTable}, in the order of its runs. */
export const COLUMN_HEADS = ["as declared", "without fast path", "without warm pool or fast path"] as const;

/** One column per run (as declared, without the fast path, without either), aligned. */
function resultTable(c: Comparison): string[] {
  const columns = [c.declared, c.withoutFastPath, c.withoutWarmPool];
  const head = ["", ...COLUMN_HEADS];
  const table = [head, ...ROWS.map(([label, cell]) => [label, ...columns.map(cell)])];
  const widths = head.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  return table.map((row) =>
    row
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
      .join("   ")
      .trimEnd(),
  );
}

/** What the table leaves out: cut durations, late arrivals, and how waits are counted. */
function notes(c: Comparison): string[] {
  const capped = c.declared.jobs.cappedDurations;
  const late = c.declared.jobs.ignoredAfterEnd;
  return [
    ...(capped ? ["", `${capped} job duration(s) above the tier's maximum runtime were cut to it.`] : []),
    ...(late ? ["", `${late} arrival(s) after the end of the run were left out.`] : []),
    "",
    "Waits count every attempt's time in the queue; jobs still waiting at the end count what they waited so far.",
    "",
  ];
}

export function renderComparison(comparison: Comparison, format: "text" | "json"): string {
  return format === "json"
    ? `${JSON.stringify(comparison, null, 2)}\n`
    : [...settingsLines(comparison), ...resultTable(comparison), ...notes(comparison)].join("\n");
}
