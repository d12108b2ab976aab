import type { Tier } from "../catalog/tiers";

/** One progress report during a calibration run: seconds since the run was asked for, and the step. */
export interface CalibrationPoint {
  readonly seconds: number;
  readonly step: number;
}

export interface Estimate {
  readonly tier: string;
  /** Steps the whole run takes: `--iters`, else the total the job reported. */
  readonly steps: number;
  readonly secondsPerStep: number;
  /** Seconds before the first step: container start, imports, data loading. */
  readonly startupSeconds: number;
  readonly seconds: number;
  readonly hourlyUsd: number;
  readonly costUsd: number;
  /** Whether the tier's maximum runtime stops it before it ends. */
  readonly exceedsMaxRuntime: boolean;
}

/**
 * Predicts a whole run from the start of one: the rate between the first and the last progress report,
 * the time before the first step as fixed startup cost, and the tier's on-demand price per second.
 */
export function estimateRun(
  points: readonly CalibrationPoint[],
  tier: Pick<Tier, "name" | "onDemandHourlyUsd" | "maxRuntimeSeconds">,
  steps: number,
): Estimate {
  const first = points[0];
  const last = points[points.length - 1];
  if (!first || !last || last.step <= first.step || last.seconds <= first.seconds) {
    throw new Error(
      "the calibration saw fewer than two progress reports with different steps; the job must report " +
        "progress (crucible.progress(step=..., total=...)) for its run to be estimated",
    );
  }
  if (!Number.isFinite(steps) || steps <= 0) throw new Error(`steps must be a positive number, got ${steps}`);
  const secondsPerStep = (last.seconds - first.seconds) / (last.step - first.step);
  const startupSeconds = Math.max(0, first.seconds - first.step * secondsPerStep);
  const seconds = startupSeconds + steps * secondsPerStep;
  return {
    tier: tier.name,
    steps,
    secondsPerStep,
    startupSeconds,
    seconds,
    hourlyUsd: tier.onDemandHourlyUsd,
    costUsd: (seconds / 3600) * tier.onDemandHourlyUsd,
    exceedsMaxRuntime: seconds > tier.maxRuntimeSeconds,
  };
}
