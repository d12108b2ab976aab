import type { CrucibleConfig, TierConfig } from "../../../infra/config";
import { warmPoolIdleHourlyUsd } from "../../../infra/finance";
import type { TierCapacity } from "../../../infra/fleet";
import {
  HOURS_PER_MONTH,
  TIER_NAMES,
  TIERS,
  getInstanceType,
  isTierName,
  jobsPerNode,
  type TierName,
} from "../../../runtime/src/catalog";
import { GP3_USD_PER_GIB_MONTH } from "../../../infra/prices";
import { STACKS, readStackConfig } from "../mock-engine";
import { stackConfig } from "../policy-config";

export { GP3_USD_PER_GIB_MONTH } from "../../../infra/prices";

export interface SimulationTiming {
  readonly coldBootSeconds: number;
  /** Start of a stopped warm-pool instance to its agent taking jobs. */
  readonly warmStartSeconds: number;
  /** Resume of a hibernated one. */
  readonly hibernatedStartSeconds: number;
  /** A running one entering service: the agent completing its launch hook. */
  readonly runningStartSeconds: number;
  readonly metricPeriodSeconds: number;
  readonly scaleOutDelaySeconds: number;
  readonly scaleInCooldownSeconds: number;
  /** A job's arrival to the fast path's raise of the desired capacity. */
  readonly fastScaleDelaySeconds: number;
}

/** A tier's capacity as the group declares it, plus what the simulation needs to run it. */
export interface SimulatedTier extends TierCapacity {
  readonly stack: string;
  readonly tier: TierName;
  readonly desired: number;
  readonly targetJobsPerInstance: number;
  readonly prewarmSchedule: TierConfig["prewarmSchedule"];
  /** Jobs one instance runs at once. */
  readonly slots: number;
  /** On-demand and spot price of one instance of the preferred type, USD per hour. */
  readonly instanceHourlyUsd: number;
  readonly spotHourlyUsd: number;
  /** What a stopped warm-pool instance costs: its root volume, USD per hour. */
  readonly stoppedHourlyUsd: number;
  /**
   * What an idle warm-pool instance costs in the pool's declared state, USD per hour: the root volume when
   * Stopped or Hibernated (the volume holds the RAM), the full on-demand price when Running.
   */
  readonly warmPoolIdleHourlyUsd: number;
  /**
   * The fast path (infra/fleet/fast-scale.ts): each submission raises the desired capacity to the queue's
   * need `timing.fastScaleDelaySeconds` later. Null when the stack does not declare it for the tier.
   */
  readonly fastScale: { readonly jobsPerNode: number } | null;
  readonly maxRuntimeSeconds: number;
  readonly timing: SimulationTiming;
  readonly spotInterruptionsPerHour: number;
}

/**
 * Jobs the fast path counts one node to take, as infra/fleet/fast-scale.ts `fastScaleJobsPerNode` does (not
 * imported: that module loads the AWS provider): the most any of the group's types runs at once, or target
 * tracking's jobs per instance if more.
 */
function fastScaleJobsPerNode(tier: TierName, settings: TierConfig): number {
  const slots = settings.instanceTypes.map((t) => jobsPerNode(TIERS[tier], getInstanceType(t).vcpus));
  return Math.max(...slots, settings.targetJobsPerInstance);
}

/** The simulated tier from a stack's validated config. */
export function simulatedTier(config: CrucibleConfig, tier: string): SimulatedTier {
  const enabled = TIER_NAMES.filter((t) => config.fleet.tiers[t]?.enabled);
  if (!isTierName(tier))
    throw new Error(`--tier: unknown tier "${tier}"; tiers are ${TIER_NAMES.join(", ")}`);
  const settings = config.fleet.tiers[tier];
  if (!settings?.enabled) {
    throw new Error(
      `--tier: tier ${tier} is not enabled in stack ${config.stack}; enabled: ${enabled.join(", ") || "none"}`,
    );
  }
  const catalog = TIERS[tier];
  const instanceType = getInstanceType(settings.instanceTypes[0]!);
  const instanceHourlyUsd = instanceType.onDemandHourlyUsd;
  const slots = catalog.gpu
    ? catalog.gpu.count
    : Math.max(1, Math.floor(instanceType.vcpus / (settings.limits?.vcpus ?? catalog.vcpus)));
  return {
    stack: config.stack,
    tier,
    minSize: settings.minSize,
    maxSize: settings.maxSize,
    desired: settings.desired,
    warmPool: settings.warmPool ?? null,
    spot: settings.spot.enabled
      ? { onDemandBase: settings.spot.onDemandBase, onDemandPercentage: settings.spot.onDemandPercentage }
      : null,
    instanceTypes: settings.instanceTypes,
    onDemandHourlyUsd: catalog.onDemandHourlyUsd,
    targetJobsPerInstance: settings.targetJobsPerInstance,
    prewarmSchedule: settings.prewarmSchedule,
    slots,
    instanceHourlyUsd,
    spotHourlyUsd: instanceHourlyUsd * (1 - config.budgets.spotDiscountPercent / 100),
    stoppedHourlyUsd: (settings.rootVolumeGiB * GP3_USD_PER_GIB_MONTH) / HOURS_PER_MONTH,
    warmPoolIdleHourlyUsd: warmPoolIdleHourlyUsd(settings),
    fastScale: config.fleet.fastScale.enabled ? { jobsPerNode: fastScaleJobsPerNode(tier, settings) } : null,
    maxRuntimeSeconds: settings.limits?.maxRuntimeSeconds ?? catalog.maxRuntimeSeconds,
    timing: { ...config.fleet.startup, ...config.fleet.scaling },
    spotInterruptionsPerHour: config.fleet.spotInterruptionsPerHour,
  };
}

/**
 * A stack's tier from `Pulumi.<stack>.yaml` (or `config`, the file's flat key map), validated the
 * way the program validates it: a bad value fails with the same messages as `pulumi preview`.
 */
export function loadSimulatedTier(
  stack: string,
  tier: string,
  config?: Record<string, string>,
): SimulatedTier {
  if (!(STACKS as readonly string[]).includes(stack)) {
    throw new Error(`--stack: unknown stack "${stack}"; stacks are ${STACKS.join(", ")}`);
  }
  return simulatedTier(stackConfig(stack, config ?? readStackConfig(stack)), tier);
}
