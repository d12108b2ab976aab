import { describe, expect, it } from "vitest";
import {
  INSTANCE_TYPES,
  TIER_NAMES,
  TIERS,
  getTier,
  isGpuInstanceType,
  unfitReason,
} from "../../../runtime/src/catalog";

describe("tier catalog", () => {
  const tiers = TIER_NAMES.map((t) => TIERS[t]);

  it("holds the five tiers of the original brief, smallest first", () => {
    expect(TIER_NAMES).toEqual(["cpu-small", "cpu-large", "gpu-small", "gpu-medium", "gpu-large"]);
    for (const name of TIER_NAMES) expect(TIERS[name].name).toBe(name);
  });

  it("gives GPU tiers only GPU instance types and CPU tiers none", () => {
    for (const tier of tiers) {
      for (const type of tier.allowedInstanceTypes)
        expect(isGpuInstanceType(type)).toBe(tier.gpu !== undefined);
      expect(tier.allowedInstanceTypes).toEqual(expect.arrayContaining([...tier.instanceTypes]));
    }
  });

  it("fits every tier on every instance type it allows, with the node's reserve kept", () => {
    for (const tier of tiers) {
      for (const type of tier.allowedInstanceTypes)
        expect(unfitReason(tier, type), `${tier.name} on ${type}`).toBeUndefined();
    }
  });

  it("raises the maximum runtime with every tier", () => {
    const runtimes = tiers.map((t) => t.maxRuntimeSeconds);
    expect(runtimes).toEqual([...runtimes].sort((a, b) => a - b));
    expect(new Set(runtimes).size).toBe(runtimes.length);
  });

  it("prices every tier and every instance type above zero, GPU tiers at their node's price", () => {
    for (const tier of tiers) expect(tier.onDemandHourlyUsd).toBeGreaterThan(0);
    for (const type of INSTANCE_TYPES.values()) expect(type.onDemandHourlyUsd).toBeGreaterThan(0);
    expect(TIERS["gpu-small"].onDemandHourlyUsd).toBe(INSTANCE_TYPES.get("g4dn.xlarge")!.onDemandHourlyUsd);
    expect(TIERS["cpu-large"].onDemandHourlyUsd).toBe(0.096);
  });

  it("keeps defaults within the ceilings stacks may raise them to", () => {
    for (const tier of tiers) {
      expect(tier.maxRuntimeSeconds).toBeLessThanOrEqual(tier.ceilings.maxRuntimeSeconds);
      expect(tier.memoryMiB).toBeLessThanOrEqual(tier.ceilings.memoryMiB);
      expect(tier.vcpus).toBeLessThanOrEqual(tier.ceilings.vcpus);
    }
  });

  it("names the allowed tiers when asked for an unknown one", () => {
    expect(() => getTier("gpu-huge")).toThrow(
      'unknown tier "gpu-huge"; expected one of cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large',
    );
  });
});
