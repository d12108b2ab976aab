import {
  HOURS_PER_MONTH,
  getInstanceType,
  TIER_NAMES,
  TIERS,
  type TierName,
} from "@crucible/runtime/catalog";
import type { CrucibleConfig, TierConfig, WarmPoolState } from "./config";
import { GP3_USD_PER_GIB_MONTH, PRICE_SOURCES, fixedPrices, usd } from "./prices";

/**
 * The cost figures finance reads from a stack's outputs: what an hour of each tier costs and what the
 * stack costs per month before any job runs. Pure functions of the config and of counts the
 * components report, so the program and the cost report cannot disagree.
 */

/** What one hour of a tier costs. */
export interface TierHourlyCost {
  /** Catalog price of one running job on on-demand capacity. */
  readonly onDemandHourlyUsd: number;
  /** The same on spot capacity: on-demand × (1 − budgets.spotDiscountPercent). */
  readonly spotHourlyUsd: number;
  /** Share of the tier's capacity that is on-demand (1 for a group without spot). */
  readonly onDemandShare: number;
  /** Blend of the two by the tier's on-demand share: what an average job hour is expected to cost. */
  readonly expectedHourlyUsd: number;
  /** Instances the group never goes below, billed all month. */
  readonly minInstances: number;
  /** The preferred instance type and its blended hourly price, for the always-on instances. */
  readonly nodeInstanceType: string;
  readonly nodeExpectedHourlyUsd: number;
  /** The warm pool's idle instances, on a tier that declares one. */
  readonly warmPool?: WarmPoolCost;
}

/** What a tier's warm pool costs while its group sits at its minimum. */
export interface WarmPoolCost {
  readonly state: WarmPoolState;
  /**
   * Instances the pool holds with the group at minSize: max(warmPool.minSize, prepared − minSize), where
   * the prepared capacity is maxPreparedCapacity, or maxSize when that is 0 (Auto Scaling's sizing).
   */
  readonly idleInstances: number;
  /**
   * One idle instance: Running bills the node's full on-demand hour; Stopped and Hibernated bill only the
   * root volume (gp3), which for Hibernated holds the RAM as config requires.
   */
  readonly idleHourlyUsdEach: number;
  readonly monthlyUsd: number;
}

/** One idle warm-pool instance of `settings`, USD per hour: see {@link WarmPoolCost.idleHourlyUsdEach}. */
export function warmPoolIdleHourlyUsd(settings: TierConfig): number {
  if (settings.warmPool?.state === "Running")
    return getInstanceType(settings.instanceTypes[0]!).onDemandHourlyUsd;
  return (settings.rootVolumeGiB * GP3_USD_PER_GIB_MONTH) / HOURS_PER_MONTH;
}

function warmPoolCost(settings: TierConfig): WarmPoolCost | undefined {
  const pool = settings.warmPool;
  if (!pool || settings.spot.enabled) return undefined;
  const prepared = pool.maxPreparedCapacity > 0 ? pool.maxPreparedCapacity : settings.maxSize;
  const idleInstances = Math.max(pool.minSize, prepared - settings.minSize);
  const each = warmPoolIdleHourlyUsd(settings);
  return {
    state: pool.state,
    idleInstances,
    idleHourlyUsdEach: round4(each),
    monthlyUsd: usd(idleInstances * each * HOURS_PER_MONTH),
  };
}

const round4 = (x: number) => Math.round(x * 10_000) / 10_000;

export function tierHourlyCosts(config: CrucibleConfig): Partial<Record<TierName, TierHourlyCost>> {
  const keep = 1 - config.budgets.spotDiscountPercent / 100;
  const out: Partial<Record<TierName, TierHourlyCost>> = {};
  for (const tier of TIER_NAMES) {
    const settings = config.fleet.tiers[tier];
    if (!settings?.enabled) continue;
    const onDemandShare = settings.spot.enabled ? settings.spot.onDemandPercentage / 100 : 1;
    const blend = (onDemand: number) => round4(onDemand * (onDemandShare + (1 - onDemandShare) * keep));
    const onDemandHourlyUsd = TIERS[tier].onDemandHourlyUsd;
    const nodeInstanceType = settings.instanceTypes[0]!;
    const warmPool = warmPoolCost(settings);
    out[tier] = {
      onDemandHourlyUsd,
      spotHourlyUsd: round4(onDemandHourlyUsd * keep),
      onDemandShare,
      expectedHourlyUsd: blend(onDemandHourlyUsd),
      minInstances: settings.minSize,
      nodeInstanceType,
      nodeExpectedHourlyUsd: blend(getInstanceType(nodeInstanceType).onDemandHourlyUsd),
      ...(warmPool && { warmPool }),
    };
  }
  return out;
}

/** One line of the stack's fixed monthly cost. */
export interface FixedCostItem {
  readonly item: "nat-gateway" | "interface-endpoint-az" | "kms-key";
  readonly count: number;
  readonly unitPriceUsd: number;
  readonly unit: "hour" | "month";
  readonly monthlyUsd: number;
  readonly source: string;
}

export interface FixedCostCounts {
  readonly natGateways: number;
  /** Interface endpoints × the availability zones each one is placed in (each is billed per AZ). */
  readonly interfaceEndpointAzs: number;
  readonly kmsKeys: number;
}

/** The stack's fixed monthly costs at list price ({@link HOURS_PER_MONTH} hours a month). */
export function fixedMonthlyCosts(region: string, counts: FixedCostCounts): FixedCostItem[] {
  const prices = fixedPrices(region);
  const hourly = (
    item: FixedCostItem["item"],
    count: number,
    price: number,
    source: string,
  ): FixedCostItem => ({
    item,
    count,
    unitPriceUsd: price,
    unit: "hour",
    monthlyUsd: usd(count * price * HOURS_PER_MONTH),
    source,
  });
  return [
    hourly("nat-gateway", counts.natGateways, prices.natGatewayHourlyUsd, PRICE_SOURCES.natGateway),
    hourly(
      "interface-endpoint-az",
      counts.interfaceEndpointAzs,
      prices.interfaceEndpointAzHourlyUsd,
      PRICE_SOURCES.interfaceEndpoint,
    ),
    {
      item: "kms-key",
      count: counts.kmsKeys,
      unitPriceUsd: prices.kmsKeyMonthlyUsd,
      unit: "month",
      monthlyUsd: usd(counts.kmsKeys * prices.kmsKeyMonthlyUsd),
      source: PRICE_SOURCES.kmsKey,
    },
  ];
}
