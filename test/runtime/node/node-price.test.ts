import pino from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { InstanceMetadata } from "../../../runtime/src/node/node-lifecycle";
import { SpotPriceLookup } from "../../../runtime/src/node/node-price";
import { Ec2Node } from "../../support/ec2-node";
import { spotPriceHistory } from "../../support/spot-prices";

const logger = pino({ level: "silent" });
const HOUR_MS = 3_600_000;

let node: Ec2Node;
let endpoint: string;
const saved = { ...process.env };

beforeAll(async () => {
  node = new Ec2Node();
  endpoint = await node.start();
  // The real EC2 client, pointed at the loopback node.
  Object.assign(process.env, {
    AWS_ENDPOINT_URL_EC2: endpoint,
    AWS_ACCESS_KEY_ID: "local",
    AWS_SECRET_ACCESS_KEY: "local",
  });
});

afterAll(async () => {
  process.env = saved;
  await node.stop();
});

beforeEach(() => {
  node.metadata.clear();
  node.answers.clear();
  node.failing.clear();
  node.calls.length = 0;
});

afterEach(() => expect(node.calls.every((c) => c.action === "DescribeSpotPriceHistory")).toBe(true));

function lookup(now: () => number = Date.now): SpotPriceLookup {
  return new SpotPriceLookup({ metadata: new InstanceMetadata(endpoint), region: "us-east-1", logger, now });
}

function spotNode(instanceType: string, zone = "us-east-1b"): void {
  node.metadata.set("instance-life-cycle", "spot");
  node.metadata.set("instance-type", instanceType);
  node.metadata.set("placement/availability-zone", zone);
}

describe("the price of the node an agent runs on", () => {
  it("is on-demand on an on-demand instance, asked once and without EC2", async () => {
    node.metadata.set("instance-life-cycle", "on-demand");
    const prices = lookup();
    expect(await prices.current()).toEqual({ source: "on-demand", factor: 1 });
    await prices.current();
    expect(node.calls).toEqual([]);
  });

  it("on a spot instance, is the spot price in effect for its type and zone against the type's on-demand price", async () => {
    spotNode("m6i.xlarge");
    // Two records cover the instant: EC2 lists them newest first, but nothing says it must.
    node.answers.set(
      "DescribeSpotPriceHistory",
      spotPriceHistory([
        { instanceType: "m6i.xlarge", zone: "us-east-1b", price: "0.090000", at: "2026-12-03T05:00:00Z" },
        { instanceType: "m6i.xlarge", zone: "us-east-1b", price: "0.076800", at: "2026-12-03T06:00:00Z" },
      ]),
    );
    const at = Date.parse("2026-12-03T06:30:00Z");
    const price = await lookup(() => at).current();
    // m6i.xlarge is 0.192 USD/h on demand in the catalog.
    expect(price.source).toBe("spot");
    expect(price.factor).toBeCloseTo(0.0768 / 0.192, 12);
    expect(node.calls.map((c) => c.params)).toEqual([
      {
        Action: "DescribeSpotPriceHistory",
        Version: "2016-11-15",
        "InstanceType.1": "m6i.xlarge",
        "ProductDescription.1": "Linux/UNIX",
        AvailabilityZone: "us-east-1b",
        StartTime: "2026-12-03T06:30:00Z",
        EndTime: "2026-12-03T06:30:00Z",
      },
    ]);
  });

  it("keeps a spot price for an hour, then looks it up again", async () => {
    spotNode("c6i.xlarge");
    node.answers.set(
      "DescribeSpotPriceHistory",
      spotPriceHistory([
        { instanceType: "c6i.xlarge", zone: "us-east-1b", price: "0.085", at: "2026-12-03T00:00:00Z" },
      ]),
    );
    let now = Date.parse("2026-12-03T06:00:00Z");
    const prices = lookup(() => now);
    expect((await prices.current()).factor).toBeCloseTo(0.5, 12);
    now += HOUR_MS - 1;
    await prices.current();
    expect(node.calls).toHaveLength(1);
    now += 1;
    await prices.current();
    expect(node.calls).toHaveLength(2);
  });

  it("looks up once for jobs that start together", async () => {
    spotNode("m6i.xlarge");
    node.answers.set(
      "DescribeSpotPriceHistory",
      spotPriceHistory([
        { instanceType: "m6i.xlarge", zone: "us-east-1b", price: "0.096", at: "2026-12-03T00:00:00Z" },
      ]),
    );
    const prices = lookup();
    const all = await Promise.all([prices.current(), prices.current(), prices.current()]);
    expect(all).toEqual(Array(3).fill({ source: "spot", factor: 0.5 }));
    expect(node.calls).toHaveLength(1);
  });

  it("charges on-demand while EC2 refuses, and asks again five minutes later", async () => {
    spotNode("m6i.xlarge");
    node.failing.set("DescribeSpotPriceHistory", "UnauthorizedOperation");
    let now = Date.parse("2026-12-03T06:00:00Z");
    const prices = lookup(() => now);
    expect(await prices.current()).toEqual({ source: "on-demand", factor: 1 });
    now += 299_000;
    await prices.current();
    expect(node.calls).toHaveLength(1);
    node.failing.clear();
    node.answers.set(
      "DescribeSpotPriceHistory",
      spotPriceHistory([
        { instanceType: "m6i.xlarge", zone: "us-east-1b", price: "0.096", at: "2026-12-03T00:00:00Z" },
      ]),
    );
    now += 1000;
    expect(await prices.current()).toEqual({ source: "spot", factor: 0.5 });
    expect(node.calls).toHaveLength(2);
  });

  it("charges on-demand when EC2 has no price for the instant (an empty history)", async () => {
    spotNode("m6i.xlarge");
    node.answers.set("DescribeSpotPriceHistory", spotPriceHistory([]));
    expect(await lookup().current()).toEqual({ source: "on-demand", factor: 1 });
    expect(node.calls).toHaveLength(1);
  });

  it("charges on-demand on a spot instance of a type the catalog has no price for, without asking EC2", async () => {
    spotNode("x9z.mega");
    expect(await lookup().current()).toEqual({ source: "on-demand", factor: 1 });
    expect(node.calls).toEqual([]);
  });

  it("charges on-demand, and does not fail the job, when instance metadata does not answer", async () => {
    node.issuesTokens = false;
    try {
      expect(await lookup().current()).toEqual({ source: "on-demand", factor: 1 });
    } finally {
      node.issuesTokens = true;
    }
  });
});
