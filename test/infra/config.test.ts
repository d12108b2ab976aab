import { describe, expect, it } from "vitest";
import { ConfigError, parseCrucibleConfig } from "../../infra/config";
import { STACKS, configWith, readStackConfig, runStack } from "../harness";

/** The `crucible:*` settings of a stack file, namespace stripped, as the engine would hand them over. */
function settingsOf(config: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(config)
      .filter(([k]) => k.startsWith("crucible:"))
      .map(([k, v]) => [k.slice("crucible:".length), v]),
  );
}

function problemsFor(stack: string, overrides: Record<string, unknown>): string[] {
  const config = configWith(stack, overrides);
  try {
    parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"] ?? "us-east-1" });
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
  return [];
}

describe("stack config files", () => {
  it.each(STACKS)("%s parses and names its own environment", (stack) => {
    const config = readStackConfig(stack);
    const parsed = parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"]! });
    expect(parsed.environment).toBe(stack);
  });

  it("sizes prod above dev: more AZs, a larger cap, a warm pool only in prod", () => {
    const [dev, prod] = (["dev", "prod"] as const).map((stack) => {
      const config = readStackConfig(stack);
      return parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"]! });
    });
    expect(dev!.network.azCount).toBe(2);
    expect(prod!.network.azCount).toBe(3);
    expect(prod!.fleet.maxInstancesPerTier).toBeGreaterThan(dev!.fleet.maxInstancesPerTier);
    expect(dev!.fleet.tiers["gpu-small"]?.warmPool).toBeUndefined();
    expect(prod!.fleet.tiers["gpu-small"]?.warmPool).toEqual({ minSize: 2, maxPreparedCapacity: 6 });
  });

  it("applies environment defaults for keys a stack file leaves out", () => {
    const problems = problemsFor("dev", { "crucible:workspaces": undefined });
    expect(problems).toEqual([]);
    const config = configWith("dev", { "crucible:workspaces": undefined });
    const parsed = parseCrucibleConfig(settingsOf(config), { stack: "dev", region: "us-east-1" });
    expect(parsed.workspaces.retentionDays).toBe(30);
  });
});

describe("bad config is rejected with the key, the value and what is allowed", () => {
  it("negative budget", () => {
    expect(problemsFor("dev", { "crucible:budgets": { monthlyLimitUsd: -5 } })).toEqual([
      "crucible:budgets.monthlyLimitUsd must be a positive number, got -5",
    ]);
  });

  it("zero quota", () => {
    expect(problemsFor("dev", { "crucible:workspaces": { quotaGiBPerProject: 0 } })).toEqual([
      "crucible:workspaces.quotaGiBPerProject must be a positive number, got 0",
    ]);
  });

  it("unknown tier", () => {
    expect(problemsFor("dev", { "crucible:fleet": { tiers: { "gpu-huge": { enabled: true } } } })).toEqual([
      "crucible:fleet.tiers.gpu-huge is not a known setting; allowed here: cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large",
    ]);
  });

  it("unknown top-level key (a typo must not deploy a default)", () => {
    const [problem] = problemsFor("dev", { "crucible:budget": { monthlyLimitUsd: 10 } });
    expect(problem).toMatch(
      /^crucible:budget is not a known setting; allowed here: environment, owner, .*budgets/,
    );
  });

  it("unknown nested key", () => {
    expect(problemsFor("dev", { "crucible:workspaces": { retentionDay: 3 } })).toEqual([
      "crucible:workspaces.retentionDay is not a known setting; allowed here: retentionDays, checkpointRetentionDays, noncurrentVersionDays, abortMultipartDays, quotaGiBPerProject, encryption",
    ]);
  });

  it("malformed email", () => {
    expect(problemsFor("dev", { "crucible:budgets": { emails: ["finance-at-example.com"] } })).toEqual([
      'crucible:budgets.emails[0] must be an email address such as finance@example.com, got "finance-at-example.com"',
    ]);
  });

  it("min > max", () => {
    expect(
      problemsFor("dev", {
        "crucible:fleet": { tiers: { "cpu-small": { minSize: 3, desired: 3, maxSize: 2 } } },
      }),
    ).toEqual([
      "crucible:fleet.tiers.cpu-small.minSize must be at most maxSize (2), got 3",
      "crucible:fleet.tiers.cpu-small.desired must lie between minSize (3) and maxSize (2), got 3",
    ]);
  });

  it("a GPU tier on a non-GPU instance type", () => {
    expect(
      problemsFor("dev", { "crucible:fleet": { tiers: { "gpu-small": { instanceTypes: ["m5.large"] } } } }),
    ).toEqual([
      'crucible:fleet.tiers.gpu-small.instanceTypes[0] must be a GPU instance type (g4dn, g5, g6, g6e, p3, p4d, p5), got "m5.large"',
    ]);
  });

  it("a group larger than the environment cap", () => {
    expect(problemsFor("dev", { "crucible:fleet": { tiers: { "cpu-small": { maxSize: 40 } } } })).toEqual([
      "crucible:fleet.tiers.cpu-small.maxSize must be at most the environment cap fleet.maxInstancesPerTier (4), got 40",
    ]);
  });

  it("a warm pool on a spot group", () => {
    const problems = problemsFor("dev", {
      "crucible:fleet": { tiers: { "gpu-small": { warmPool: { minSize: 1, maxPreparedCapacity: 1 } } } },
    });
    expect(problems).toEqual([
      'crucible:fleet.tiers.gpu-small.warmPool cannot be used on a spot group (warm pools only hold on-demand instances); set spot.enabled to false or use prewarmSchedule, got {"minSize":1,"maxPreparedCapacity":1}',
    ]);
  });

  it("a limit above the tier's ceiling", () => {
    expect(
      problemsFor("dev", {
        "crucible:fleet": { tiers: { "cpu-small": { limits: { maxRuntimeSeconds: 3600 } } } },
      }),
    ).toEqual([
      "crucible:fleet.tiers.cpu-small.limits.maxRuntimeSeconds must be at most the cpu-small ceiling of 300, got 3600",
    ]);
  });

  it("a budget for a tier that is not enabled", () => {
    expect(problemsFor("dev", { "crucible:budgets": { tiers: { "gpu-large": 100 } } })).toEqual([
      "crucible:budgets.tiers.gpu-large is a budget for tier gpu-large, which is not enabled in crucible:fleet.tiers, got 100",
    ]);
  });

  it("a threshold outside 1-1000 %", () => {
    expect(
      problemsFor("dev", { "crucible:budgets": { thresholds: [{ type: "ACTUAL", percent: 0 }] } }),
    ).toEqual(["crucible:budgets.thresholds[0].percent must be a percentage from 1 to 1000, got 0"]);
  });

  it("an unknown environment", () => {
    expect(problemsFor("dev", { "crucible:environment": "qa" })[0]).toBe(
      'crucible:environment must be one of dev, staging, prod, got "qa"',
    );
  });
});

describe("the program fails before declaring anything on bad config", () => {
  it("rejects the stack with every problem listed", async () => {
    const config = configWith("dev", { "crucible:budgets": { monthlyLimitUsd: 0 }, "crucible:nat": "none" });
    await expect(runStack("dev", config)).rejects.toThrow(
      /crucible:budgets.monthlyLimitUsd must be a positive number, got 0\n\s+crucible:nat is not a known setting/,
    );
  });
});
