/**
 * List prices of the stack's fixed-cost items, for finance's outputs and the cost report. Instance
 * prices live with the instance types in `runtime/src/catalog/instance-types.ts`; these are the items a stack
 * pays for whether or not a job runs. Recorded 2026-11-24 from the pages below; re-check them before
 * quoting a figure in a contract.
 */

export interface FixedPrices {
  /** One NAT gateway, USD per hour (data processing is billed per GB on top). */
  readonly natGatewayHourlyUsd: number;
  /** One interface VPC endpoint in one availability zone, USD per hour. */
  readonly interfaceEndpointAzHourlyUsd: number;
  /** One customer-managed KMS key, USD per month (requests are billed on top). */
  readonly kmsKeyMonthlyUsd: number;
}

export const PRICE_SOURCES = {
  natGateway: "https://aws.amazon.com/vpc/pricing/",
  interfaceEndpoint: "https://aws.amazon.com/privatelink/pricing/",
  kmsKey: "https://aws.amazon.com/kms/pricing/",
  asOf: "2026-11-24",
} as const;

const US: FixedPrices = {
  natGatewayHourlyUsd: 0.045,
  interfaceEndpointAzHourlyUsd: 0.01,
  kmsKeyMonthlyUsd: 1,
};

const BY_REGION: Readonly<Record<string, FixedPrices>> = {
  "us-east-1": US,
  "us-east-2": US,
  "us-west-2": US,
  "eu-west-1": { natGatewayHourlyUsd: 0.048, interfaceEndpointAzHourlyUsd: 0.011, kmsKeyMonthlyUsd: 1 },
  "eu-central-1": { natGatewayHourlyUsd: 0.052, interfaceEndpointAzHourlyUsd: 0.012, kmsKeyMonthlyUsd: 1 },
};

/**
 * gp3 storage, USD per GiB-month (us-east-1 list price, https://aws.amazon.com/ebs/pricing/, 2026-11-24):
 * what a stopped or hibernated warm-pool instance costs, its root volume.
 */
export const GP3_USD_PER_GIB_MONTH = 0.08;

/** The fixed-cost prices of a region; throws for a region the table does not cover. */
export function fixedPrices(region: string): FixedPrices {
  const prices = BY_REGION[region];
  if (!prices) {
    throw new Error(
      `infra/prices.ts has no list prices for region ${region}; add them (from ${PRICE_SOURCES.natGateway}, ${PRICE_SOURCES.interfaceEndpoint}, ${PRICE_SOURCES.kmsKey}) or use one of ${Object.keys(BY_REGION).join(", ")}`,
    );
  }
  return prices;
}

/** Rounds to cents, the precision finance reads. */
export function usd(amount: number): number {
  return Math.round(amount * 100) / 100;
}
