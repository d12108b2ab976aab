import { describe, expect, it } from "vitest";
import { ConfigError } from "../../../infra/config";
import { loadSimulatedTier } from "../../../scripts/lib/simulation";
import { prodWithFleet } from "./stack-config";

describe("prod gpu-small, as the stack declares it", () => {
  const tier = loadSimulatedTier("prod", "gpu-small");

  it("reads the group, warm pool, prices and timing from the validated config", () => {
    expect(tier).toMatchObject({
      minSize: 1,
      maxSize: 24,
      targetJobsPerInstance: 1,
      warmPool: { minSize: 2, maxPreparedCapacity: 6 },
      spot: null,
      slots: 1,
      instanceHourlyUsd: 0.526,
      timing: { coldBootSeconds: 240, warmStartSeconds: 60, metricPeriodSeconds: 60 },
    });
  });
});

describe("stack and config errors", () => {
  it("names the stacks when --stack is unknown", () => {
    expect(() => loadSimulatedTier("qa", "gpu-small")).toThrow(
      '--stack: unknown stack "qa"; stacks are dev, staging, prod',
    );
  });

  it("names the enabled tiers when --tier is not one", () => {
    expect(() => loadSimulatedTier("dev", "gpu-large")).toThrow(
      "--tier: tier gpu-large is not enabled in stack dev; enabled: cpu-small, cpu-large, gpu-small",
    );
  });

  it("fails on bad scaling config the way the program does", () => {
    const config = prodWithFleet({ startup: { coldBootSeconds: 30, warmStartSeconds: 60 } });
    expect(() => loadSimulatedTier("prod", "gpu-small", config)).toThrow(ConfigError);
    expect(() => loadSimulatedTier("prod", "gpu-small", config)).toThrow(
      "crucible:fleet.startup.warmStartSeconds must be at most fleet.startup.coldBootSeconds (30): a warm instance has already booted, got 60",
    );
  });
});
