import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ProgressEvent } from "../../job/contract";
import { StopRequest } from "../../job/contract";
import { DockerLauncher } from "../../launch/docker/docker-launcher";
import type { CalibrationPoint, Estimate } from "../../cost/estimate";
import { estimateRun } from "../../cost/estimate";
import { getTier, isTierName } from "../../catalog/tiers";
import { jobSpecFromFlags } from "./run";
import { parseSchedulingPolicy } from "../../catalog/scheduling";
import { cliLogger, collectEnv, positiveSeconds, printJson, UsageError } from "./shared";

interface EstimateFlags {
  readonly tier?: string;
  readonly image?: string;
  readonly env: Record<string, string>;
  readonly iters?: number;
  readonly reports: number;
  readonly calibrate: number;
  readonly json?: boolean;
}

/**
 * `crucible estimate PATH`: runs the job briefly in its sandbox (with an empty workspace, so nothing
 * resumes), measures its pace from its progress reports, and predicts the whole run's time and cost.
 */
export function registerEstimate(program: Command): void {
  program
    .command("estimate")
    .description("predict a job's runtime and cost from a short calibration run")
    .argument("<path>", "a directory holding main.py, a .py file or a code.zip")
    .option("--tier <tier>", "resource tier; default: detected from the code")
    .option("--image <image>", "image to run in; default: the matrix's image")
    .option("--env <K=V>", "set an environment variable for the job (repeatable)", collectEnv, {})
    .option("--iters <n>", "steps of the whole run; default: the total the job reports", positiveInt)
    .option("--reports <n>", "progress reports to calibrate on", positiveInt, 4)
    .option("--calibrate <seconds>", "longest the calibration may run", positiveSeconds, 120)
    .option("--json", "print the estimate as JSON")
    .action((path: string, flags: EstimateFlags) => estimate(path, flags));
}

async function estimate(path: string, flags: EstimateFlags): Promise<void> {
  if (flags.reports < 2) throw new UsageError(`--reports must be at least 2, got ${flags.reports}`);
  const workspace = await mkdtemp(join(tmpdir(), "crucible-estimate-"));
  try {
    const spec = await jobSpecFromFlags(path, { ...flags, workspace }, "estimate");
    const tier = getTier(isTierName(spec.tier) ? spec.tier : "cpu-small");
    const points: CalibrationPoint[] = [];
    let total: number | undefined;
    const stop = new AbortController();
    const started = performance.now();
    const deadline = setTimeout(() => stop.abort(new StopRequest("cancelled", 0)), flags.calibrate * 1000);
    const onProgress = (event: ProgressEvent): void => {
      if (event.step === undefined) return;
      points.push({ seconds: (performance.now() - started) / 1000, step: event.step });
      total = event.total ?? total;
      if (points.length >= flags.reports) stop.abort(new StopRequest("cancelled", 0));
    };
    let finished;
    try {
      finished = await new DockerLauncher({ logger: cliLogger() }).run(spec, {
        signal: stop.signal,
        onProgress,
      });
    } finally {
      clearTimeout(deadline);
    }
    const steps = flags.iters ?? total;
    if (finished.status === "success" || finished.reason !== "cancelled") {
      // It ended inside the calibration window: its own run is the answer, or its failure is.
      if (finished.status !== "success") {
        throw new Error(`the calibration run failed (${finished.reason}): ${finished.error?.message ?? ""}`);
      }
      report(estimateFromFinished(finished.executionTime, tier), flags.json);
      return;
    }
    if (steps === undefined) {
      throw new UsageError("the job reports no total number of steps; give one with --iters");
    }
    report(estimateRun(points, tier, steps), flags.json);
  } finally {
    await rm(workspace, { recursive: true, force: true });
  }
}

function estimateFromFinished(seconds: number, tier: ReturnType<typeof getTier>): Estimate {
  return {
    tier: tier.name,
    steps: 0,
    secondsPerStep: 0,
    startupSeconds: seconds,
    seconds,
    hourlyUsd: tier.onDemandHourlyUsd,
    costUsd: (seconds / 3600) * tier.onDemandHourlyUsd,
    exceedsMaxRuntime: seconds > tier.maxRuntimeSeconds,
  };
}

function report(estimate: Estimate, json: boolean | undefined): void {
  // Opting out of preemption holds a slot high-priority work could take: the policy prices that in.
  const factor = parseSchedulingPolicy(process.env.CRUCIBLE_SCHEDULING).preemption.noPreemptPriceFactor;
  const noPreemptCostUsd = estimate.costUsd * factor;
  if (json) {
    printJson({ ...estimate, noPreemptCostUsd });
    return;
  }
  const lines = [
    `tier:     ${estimate.tier} ($${estimate.hourlyUsd.toFixed(3)}/hour on demand)`,
    estimate.steps > 0
      ? `pace:     ${estimate.secondsPerStep.toFixed(3)} s/step after ${estimate.startupSeconds.toFixed(1)} s of startup`
      : "pace:     the job finished during calibration",
    `runtime:  ${formatSeconds(estimate.seconds)}${estimate.steps > 0 ? ` for ${estimate.steps} steps` : ""}`,
    `cost:     $${estimate.costUsd.toFixed(4)} ($${noPreemptCostUsd.toFixed(4)} with --no-preempt, × ${factor})`,
    ...(estimate.exceedsMaxRuntime ? [`warning:  longer than tier ${estimate.tier}'s maximum runtime`] : []),
  ];
  process.stdout.write(`${lines.join("\n")}\n`);
}

function formatSeconds(seconds: number): string {
  if (seconds < 120) return `${seconds.toFixed(1)} s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(1)} min`;
  return `${(seconds / 3600).toFixed(2)} h`;
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n <= 0) {
    throw new InvalidArgumentError(`must be a whole number greater than 0, got "${value}"`);
  }
  return n;
}
