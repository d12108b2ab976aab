import type { _InstanceType, EC2Client } from "@aws-sdk/client-ec2";
import { INSTANCE_TYPES } from "../catalog/instance-types";
import type { Logger } from "../logger";
import type { NodePrice } from "../cost/ledger";
import { ON_DEMAND } from "../cost/ledger";
import type { InstanceMetadata } from "./node-lifecycle";

export interface SpotPriceLookupOptions {
  readonly metadata: Pick<InstanceMetadata, "get">;
  /** The region whose EC2 API answers spot prices: the node's. */
  readonly region: string;
  readonly logger: Logger;
  /** Seconds a looked-up spot price is used before it is looked up again. Defaults to 3600. */
  readonly refreshSeconds?: number;
  /** Seconds before a failed lookup is tried again; until then jobs are charged on-demand. Defaults to 300. */
  readonly retrySeconds?: number;
  /** The clock, in milliseconds. Defaults to Date.now. */
  readonly now?: () => number;
}

/**
 * The price of the node an agent runs on, for the cost ledger: on a spot instance (instance metadata's
 * `instance-life-cycle`) the spot price in effect for its instance type and Availability Zone, from EC2's
 * spot price history; on-demand otherwise. When the price cannot be known (the lookup fails, or the
 * instance type is not in the catalog to compare with) jobs are charged on-demand, an upper bound, and
 * the ledger says so in `priceSource`.
 */
export class SpotPriceLookup {
  private cached: { price: NodePrice; until: number } | undefined;
  /** The lookup under way: jobs starting together share it. */
  private pending: Promise<NodePrice> | undefined;
  private ec2: EC2Client | undefined;
  private readonly now: () => number;

  constructor(private readonly options: SpotPriceLookupOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Never rejects: what cannot be looked up is charged on-demand, and tried again later. */
  current(): Promise<NodePrice> {
    const now = this.now();
    if (this.cached && now < this.cached.until) return Promise.resolve(this.cached.price);
    this.pending ??= this.refresh(now).finally(() => (this.pending = undefined));
    return this.pending;
  }

  private async refresh(now: number): Promise<NodePrice> {
    try {
      this.cached = await this.lookUp(now);
    } catch (error) {
      this.options.logger.warn({ err: error }, "spot price lookup failed; charging on-demand");
      this.cached = { price: ON_DEMAND, until: now + (this.options.retrySeconds ?? 300) * 1000 };
    }
    return this.cached.price;
  }

  private async lookUp(now: number): Promise<{ price: NodePrice; until: number }> {
    const { metadata, logger } = this.options;
    // An instance's purchase option never changes: an on-demand node is asked once.
    if ((await metadata.get("instance-life-cycle")) !== "spot") return { price: ON_DEMAND, until: Infinity };
    const instanceType = await metadata.get("instance-type");
    const onDemand = instanceType ? INSTANCE_TYPES.get(instanceType)?.onDemandHourlyUsd : undefined;
    if (!instanceType || onDemand === undefined) {
      logger.warn({ instanceType }, "spot node of an instance type not in the catalog; charging on-demand");
      return { price: ON_DEMAND, until: Infinity };
    }
    const availabilityZone = await metadata.get("placement/availability-zone");
    const spot = await this.spotPrice(instanceType, availabilityZone, new Date(now));
    logger.info(
      { instanceType, availabilityZone, spotHourlyUsd: spot, onDemandHourlyUsd: onDemand },
      "spot price looked up",
    );
    return {
      price: { source: "spot", factor: spot / onDemand },
      until: now + (this.options.refreshSeconds ?? 3600) * 1000,
    };
  }

  /** The price in effect at `at`: with start and end both `at`, EC2 answers the records covering it. */
  private async spotPrice(
    instanceType: string,
    availabilityZone: string | undefined,
    at: Date,
  ): Promise<number> {
    // Loaded on the first spot lookup only: on-demand nodes, and every other command, never load it.
    const { EC2Client, DescribeSpotPriceHistoryCommand } = await import("@aws-sdk/client-ec2");
    this.ec2 ??= new EC2Client({ region: this.options.region });
    const { SpotPriceHistory: history = [] } = await this.ec2.send(
      new DescribeSpotPriceHistoryCommand({
        // Any name the catalog knows; EC2's enum of names is only as new as this SDK.
        InstanceTypes: [instanceType as _InstanceType],
        ProductDescriptions: ["Linux/UNIX"],
        ...(availabilityZone && { AvailabilityZone: availabilityZone }),
        StartTime: at,
        EndTime: at,
      }),
    );
    const latest = history
      .filter((record) => record.SpotPrice !== undefined && record.Timestamp !== undefined)
      .sort((a, b) => b.Timestamp!.getTime() - a.Timestamp!.getTime())[0];
    const price = Number(latest?.SpotPrice);
    if (!latest || !Number.isFinite(price) || price <= 0) {
      throw new Error(`EC2 returned no spot price for ${instanceType} in ${availabilityZone ?? "any zone"}`);
    }
    return price;
  }
}
