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
  /** The group as the stack declares it. */
  readonly declared: Omit<SimulationResult, "waits">;
  /** The same group and arrivals with no warm pool; null when the tier declares none. */
  readonly withoutWarmPool: Omit<SimulationResult, "waits"> | null;
}

/**
 * The tier as declared and, when it declares a warm pool, the same tier without one on the same
 * arrivals and seed, so the pool's effect on waits and cost shows. A tier with no warm pool (spot
 * groups cannot have one) is compared with nothing: a hypothetical pool would not be its design.
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
    withoutWarmPool: tier.warmPool ? run({ ...tier, warmPool: null }) : null,
  };
}
