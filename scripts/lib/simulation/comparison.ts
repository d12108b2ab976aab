import {
  DEFAULT_CHECKPOINT_SECONDS,
  DEFAULT_START,
  simulate,
  type SimulationOptions,
  type SimulationResult,
} from "./model";
import type { Arrival } from "./arrivals";
import type { SimulatedTier } from "./tier";
import type { TierName } from "../../../runtime/src/catalog";

export interface Comparison {
  readonly stack: string;
  readonly tier: TierName;
  readonly hours: number;
  readonly seed: number;
  readonly start: string;
  readonly checkpointSeconds: number;
  readonly arrivals: { readonly source: string; readonly count: number };
  readonly settings: Omit<SimulatedTier, "stack" | "tier">;
  /** The group as the stack declares it: its warm pool, and the fast path where declared. */
  readonly declared: Omit<SimulationResult, "waits">;
  /** The same group and arrivals without the fast path: target tracking alone scales out. */
  readonly withoutFastPath: Omit<SimulationResult, "waits">;
  /** The same group and arrivals with neither the warm pool nor the fast path. */
  readonly withoutWarmPool: Omit<SimulationResult, "waits">;
}

/**
 * The tier as declared, without the fast path, and without the warm pool and the fast path, on the same
 * arrivals and seed, so what each adds to waits and cost shows. What the tier does not declare is not
 * invented: a tier with no fast path or no warm pool (spot groups cannot have one) shows the same run in
 * the columns that would take it away.
 */
export function simulateComparison(
  tier: SimulatedTier,
  arrivals: readonly Arrival[],
  options: SimulationOptions & { readonly arrivalsSource: string },
): Comparison {
  const start = options.start ?? new Date(DEFAULT_START);
  const run = (t: SimulatedTier) => {
    const { waits: _waits, ...rest } = simulate(t, arrivals, { ...options, start });
    return rest;
  };
  const { stack, tier: name, ...settings } = tier;
  return {
    stack,
    tier: name,
    hours: options.hours,
    seed: options.seed,
    start: start.toISOString(),
    checkpointSeconds: options.checkpointSeconds ?? DEFAULT_CHECKPOINT_SECONDS,
    arrivals: { source: options.arrivalsSource, count: arrivals.length },
    settings,
    declared: run(tier),
    withoutFastPath: run({ ...tier, fastScale: null }),
    withoutWarmPool: run({ ...tier, warmPool: null, fastScale: null }),
  };
}
