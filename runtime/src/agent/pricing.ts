import type { NodePrice } from "../cost/ledger";
import { costOf } from "../cost/ledger";
import type { AdmittedJob } from "../job/job-request";
import type { SchedulingPolicy } from "../catalog/scheduling";
import type { TierName } from "../catalog/tiers";
import { getTier } from "../catalog/tiers";

/**
 * What an attempt is charged: the tier's price on the node it runs on (its on-demand price, scaled on a
 * spot node by the spot discount), times the no-preempt factor when it applies.
 */
export interface Pricing {
  readonly pricePerHourUsd: number;
  readonly priceSource: NodePrice["source"];
  readonly priceFactor: number;
}

/** The price of an attempt at `job` in `tier` on a node priced at `node`. */
export function priceAttempt(
  tier: TierName,
  node: NodePrice,
  job: AdmittedJob,
  policy: SchedulingPolicy,
): Pricing {
  return {
    // To a millionth of a dollar: the ledger's costs are rounded far coarser, to a hundredth of a cent.
    pricePerHourUsd: Math.round(getTier(tier).onDemandHourlyUsd * node.factor * 1e6) / 1e6,
    priceSource: node.source,
    priceFactor: job.spec.preemptible === false ? policy.preemption.noPreemptPriceFactor : 1,
  };
}

/** The hourly rate an attempt is charged at. */
export const chargedHourlyUsd = (pricing: Pricing): number => pricing.pricePerHourUsd * pricing.priceFactor;

/** What a job may spend in `seconds` (before the next budget check has stopped it). */
export const spendWithin = (seconds: number, pricing: Pricing): number =>
  costOf(seconds, pricing.pricePerHourUsd, pricing.priceFactor);
