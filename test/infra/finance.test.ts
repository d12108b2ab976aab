import { beforeAll, describe, expect, it } from "vitest";
import type { FixedCostItem, TierHourlyCost } from "../../infra/finance";
import { STACKS, runStack, type Plan } from "../support/harness";

describe.each(STACKS)("%s stack cost outputs", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const item = (name: FixedCostItem["item"]) =>
    (plan.outputs.fixedMonthlyCost as FixedCostItem[]).find((f) => f.item === name)!;

  it("counts every NAT gateway the stack declares, at $0.045 an hour", () => {
    const count = plan.ofType("aws:ec2/natGateway:NatGateway").length;
    expect(item("nat-gateway")).toEqual({
      item: "nat-gateway",
      count,
      unitPriceUsd: 0.045,
      unit: "hour",
      monthlyUsd: Math.round(count * 0.045 * 730 * 100) / 100,
      source: "https://aws.amazon.com/vpc/pricing/",
    });
  });

  it("counts every interface endpoint once per subnet (AZ) it sits in, at $0.01 an hour", () => {
    const endpointAzs = plan
      .ofType("aws:ec2/vpcEndpoint:VpcEndpoint")
      .filter((e) => e.inputs.vpcEndpointType === "Interface")
      .reduce((sum, e) => sum + (e.inputs.subnetIds as string[]).length, 0);
    expect(item("interface-endpoint-az")).toMatchObject({
      count: endpointAzs,
      unitPriceUsd: 0.01,
      monthlyUsd: Math.round(endpointAzs * 0.01 * 730 * 100) / 100,
    });
  });

  it("counts every KMS key the stack declares, at $1 a month", () => {
    const keys = plan.ofType("aws:kms/key:Key").length;
    expect(item("kms-key")).toMatchObject({ count: keys, unitPriceUsd: 1, unit: "month", monthlyUsd: keys });
  });
});

describe("prod tier prices", () => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack("prod");
  });

  it("blends on-demand and spot (60 % off) by each tier's on-demand share", () => {
    const costs = plan.outputs.tierHourlyCost as Record<string, TierHourlyCost>;
    expect(costs).toEqual({
      // Spot only: the expected price is the spot price.
      "cpu-small": {
        onDemandHourlyUsd: 0.02,
        spotHourlyUsd: 0.008,
        onDemandShare: 0,
        expectedHourlyUsd: 0.008,
        minInstances: 1,
        nodeInstanceType: "m6i.xlarge",
        nodeExpectedHourlyUsd: 0.0768,
      },
      // 10 % on-demand: 0.1 × 0.096 + 0.9 × 0.0384 = 0.04416.
      "cpu-large": {
        onDemandHourlyUsd: 0.096,
        spotHourlyUsd: 0.0384,
        onDemandShare: 0.1,
        expectedHourlyUsd: 0.0442,
        minInstances: 0,
        nodeInstanceType: "m6i.xlarge",
        nodeExpectedHourlyUsd: 0.0883,
      },
      // No spot: all on-demand.
      "gpu-small": {
        onDemandHourlyUsd: 0.526,
        spotHourlyUsd: 0.2104,
        onDemandShare: 1,
        expectedHourlyUsd: 0.526,
        minInstances: 1,
        nodeInstanceType: "g4dn.xlarge",
        nodeExpectedHourlyUsd: 0.526,
        // max(warmPool.minSize 2, maxPreparedCapacity 6 − minSize 1) = 5 stopped instances, each its
        // 200 GiB gp3 root volume: 200 × $0.08 = $16 a month, $0.0219 an hour.
        warmPool: { state: "Stopped", idleInstances: 5, idleHourlyUsdEach: 0.0219, monthlyUsd: 80 },
      },
      "gpu-medium": {
        onDemandHourlyUsd: 0.752,
        spotHourlyUsd: 0.3008,
        onDemandShare: 0,
        expectedHourlyUsd: 0.3008,
        minInstances: 0,
        nodeInstanceType: "g4dn.2xlarge",
        nodeExpectedHourlyUsd: 0.3008,
      },
      "gpu-large": {
        onDemandHourlyUsd: 2.012,
        spotHourlyUsd: 0.8048,
        onDemandShare: 0,
        expectedHourlyUsd: 0.8048,
        minInstances: 0,
        nodeInstanceType: "g5.2xlarge",
        nodeExpectedHourlyUsd: 0.4848,
      },
    });
  });
});
