import { describe, expect, it } from "vitest";
import { parseCrucibleConfig } from "../../../infra/config";
import { configProblems as problemsFor, configWith, readStackConfig } from "../../support/harness";
import { kubernetes, parseWith as parse, settingsOf } from "../../support/crucible-config";

/** Each environment's defaults (infra/config/environments.ts), merged under what a stack file says. */

describe("stack config files", () => {
  it("sizes prod above dev: more AZs, a larger cap, a warm pool only in prod", () => {
    const [dev, prod] = (["dev", "prod"] as const).map((stack) => {
      const config = readStackConfig(stack);
      return parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"]! });
    });
    expect(dev!.network.azCount).toBe(2);
    expect(prod!.network.azCount).toBe(3);
    expect(prod!.fleet.maxInstancesPerTier).toBeGreaterThan(dev!.fleet.maxInstancesPerTier);
    expect(dev!.fleet.tiers["gpu-small"]?.warmPool).toBeUndefined();
    expect(prod!.fleet.tiers["gpu-small"]?.warmPool).toEqual({
      minSize: 2,
      maxPreparedCapacity: 6,
      state: "Stopped",
    });
  });

  it("applies environment defaults for keys a stack file leaves out", () => {
    const problems = problemsFor("dev", { "crucible:workspaces": undefined });
    expect(problems).toEqual([]);
    const config = configWith("dev", { "crucible:workspaces": undefined });
    const parsed = parseCrucibleConfig(settingsOf(config), { stack: "dev", region: "us-east-1" });
    expect(parsed.workspaces.retentionDays).toBe(30);
    expect(parsed.workspaces.ledgerRetentionDays).toBe(400);
  });
});

describe("crucible:kubernetes", () => {
  it("is off by default, with documented defaults", () => {
    const config = readStackConfig("prod");
    const parsed = parseCrucibleConfig(settingsOf(config), { stack: "prod", region: "us-west-2" });
    expect(parsed.kubernetes).toEqual({
      enabled: false,
      maxJobsPerTier: 4,
      agentReplicas: 1,
      gpuNodeLabel: { key: "nvidia.com/gpu.present", value: "true" },
      devicePluginImage: "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
      clusterObjects: "declare",
    });
    expect(problemsFor("staging", kubernetes({}))).toEqual([]);
  });
});

describe("crucible:access", () => {
  it("defaults to no projects: no one may submit until a stack names them", () => {
    expect(parse("dev", { "crucible:access": undefined }).access).toEqual({});
  });
});
