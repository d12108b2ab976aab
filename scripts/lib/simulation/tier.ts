import type { CrucibleConfig, TierConfig } from "../../../infra/config";
import type { TierCapacity } from "../../../infra/fleet";
import {
  HOURS_PER_MONTH,
  TIER_NAMES,
  TIERS,
  getInstanceType,
  isTierName,
  type TierName,
} from "../../../runtime/src/catalog";
import { STACKS, readStackConfig } from "../mock-engine";
import { stackConfig } from "../policy-config";

/** gp3 storage, USD per GiB-month (us-east-1 list price, https://aws.amazon.com/ebs/pricing/, 2026-11-24). */
export const GP3_USD_PER_GIB_MONTH = 0.08;

export interface SimulationTiming {
  readonly coldBootSeconds: number;
  readonly warmStartSeconds: number;
  readonly metricPeriodSeconds: number;
  readonly scaleOutDelaySeconds: number;
  readonly scaleInCooldownSeconds: number;
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
  readonly maxRuntimeSeconds: number;
  readonly timing: SimulationTiming;
  readonly spotInterruptionsPerHour: number;
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
