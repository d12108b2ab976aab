import { describe, expect, it } from "vitest";
import { ConfigError, parseCrucibleConfig, schedulingPolicy, submitterProjects } from "../../infra/config";
import { DEFAULT_SCHEDULING, parseSchedulingPolicy } from "../../runtime/src/catalog/scheduling";
import { STACKS, configWith, readStackConfig, runStack } from "../support/harness";

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
    expect(parsed.workspaces.ledgerRetentionDays).toBe(400);
  });
});

describe("scheduling policy", () => {
  const parse = (stack: string, overrides: Record<string, unknown> = {}) => {
    const config = configWith(stack, overrides);
    return parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"]! });
  };

  it("is the runtime's defaults where a stack file says nothing (staging), with no budgets", () => {
    const { weights, fairShare, preemption } = DEFAULT_SCHEDULING;
    expect(schedulingPolicy(parse("staging"))).toEqual({
      weights,
      fairShare,
      preemption,
      budgets: { users: {}, projects: {} },
    });
  });

  it("merges a partial crucible:scheduling over the defaults and adds the user and project budgets", () => {
    expect(schedulingPolicy(parse("prod"))).toEqual({
      weights: { high: 6, normal: 3, low: 1 },
      fairShare: { perUser: 16, perProject: 64, deferSeconds: 15 },
      preemption: { enabled: true, afterSeconds: 900, noPreemptPriceFactor: 1.5 },
      budgets: {
        users: { alice: 4000, bob: 2500, "ravi.k": 2500 },
        projects: { "llm-pretrain": 12000, "vision-eval": 5000 },
      },
    });
    expect(
      schedulingPolicy(parse("dev", { "crucible:scheduling": { weights: { high: 8 } } })).weights,
    ).toEqual({ high: 8, normal: 3, low: 1 });
  });

  it.each(STACKS)("%s: the agents' own parser reads back exactly what the stack hands them", (stack) => {
    const policy = schedulingPolicy(parse(stack));
    expect(parseSchedulingPolicy(JSON.stringify(policy))).toEqual(policy);
  });
});

describe("bad config is rejected with the key, the value and what is allowed", () => {
  it("negative user budget", () => {
    expect(problemsFor("dev", { "crucible:budgets": { users: { alice: -5 } } })).toEqual([
      "crucible:budgets.users.alice must be a positive amount of US dollars, got -5",
    ]);
  });

  it("unknown priority weight", () => {
    expect(problemsFor("dev", { "crucible:scheduling": { weights: { urgent: 9 } } })).toEqual([
      "crucible:scheduling.weights.urgent is not a known setting; allowed here: high, normal, low",
    ]);
  });

  it("a fair share of 0", () => {
    expect(problemsFor("dev", { "crucible:scheduling": { fairShare: { perUser: 0 } } })).toEqual([
      "crucible:scheduling.fairShare.perUser must be a whole number from 1 to 10000, got 0",
    ]);
  });

  it("budgets under scheduling, where the stack does not take them", () => {
    expect(problemsFor("dev", { "crucible:scheduling": { budgets: { users: { alice: 5 } } } })).toEqual([
      "crucible:scheduling.budgets is not a known setting; allowed here: weights, fairShare, preemption",
    ]);
  });

  it("a preemption wait of a fraction of a second", () => {
    expect(problemsFor("prod", { "crucible:scheduling": { preemption: { afterSeconds: 0.5 } } })).toEqual([
      "crucible:scheduling.preemption.afterSeconds must be a whole number from 1 to 604800, got 0.5",
    ]);
  });

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
      "crucible:workspaces.retentionDay is not a known setting; allowed here: retentionDays, checkpointRetentionDays, ledgerRetentionDays, noncurrentVersionDays, abortMultipartDays, quotaGiBPerProject, encryption",
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

describe("crucible:kubernetes", () => {
  const kubeconfig =
    "apiVersion: v1\nkind: Config\nclusters: []\nusers:\n- name: x\n  user: { token: s3cr3t-token }\n";
  const kubernetes = (over: Record<string, unknown>) => ({
    "crucible:kubernetes": { enabled: true, kubeconfig, ...over },
  });

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

  it("enabled without a kubeconfig", () => {
    expect(problemsFor("staging", { "crucible:kubernetes": { enabled: true } })).toEqual([
      'crucible:kubernetes.kubeconfig is required when crucible:kubernetes.enabled is true; set it as a secret: pulumi config set --secret --path crucible:kubernetes.kubeconfig "$(cat kubeconfig)", got nothing',
    ]);
  });

  it("a kubeconfig that is not one, without printing the secret", () => {
    const problems = problemsFor("staging", kubernetes({ kubeconfig: "token: s3cr3t-token" }));
    expect(problems).toEqual([
      "crucible:kubernetes.kubeconfig must be a kubeconfig: YAML or JSON text with a clusters list, got a secret (not shown)",
    ]);
  });

  it("no jobs per tier", () => {
    expect(problemsFor("staging", kubernetes({ maxJobsPerTier: 0 }))).toEqual([
      "crucible:kubernetes.maxJobsPerTier must be a whole number from 1 to 1000, got 0",
    ]);
  });

  it("a GPU node label that Kubernetes would refuse", () => {
    expect(
      problemsFor(
        "staging",
        kubernetes({ gpuNodeLabel: { key: "nvidia.com/gpu present", value: "yes please" } }),
      ),
    ).toEqual([
      'crucible:kubernetes.gpuNodeLabel.key must be a Kubernetes label key: an optional DNS prefix and /, then up to 63 letters, digits, -, _ and ., such as nvidia.com/gpu.present, got "nvidia.com/gpu present"',
      'crucible:kubernetes.gpuNodeLabel.value must be a Kubernetes label value (1 to 63 letters, digits, -, _ and ., starting and ending with a letter or digit), got "yes please"',
    ]);
  });

  it("an owner that cannot be a label value while enabled (and can while disabled)", () => {
    expect(problemsFor("staging", { ...kubernetes({}), "crucible:owner": "ML Platform" })).toEqual([
      'crucible:owner must be a Kubernetes label value (1 to 63 letters, digits, -, _ and ., starting and ending with a letter or digit) while crucible:kubernetes.enabled is true: it labels every Kubernetes object, got "ML Platform"',
    ]);
    expect(problemsFor("staging", { "crucible:owner": "ML Platform" })).toEqual([]);
  });

  it("a device plugin image with neither tag nor digest", () => {
    expect(
      problemsFor("staging", kubernetes({ devicePluginImage: "nvcr.io/nvidia/k8s-device-plugin" })),
    ).toEqual([
      'crucible:kubernetes.devicePluginImage must be an image reference with a tag or a digest, such as nvcr.io/nvidia/k8s-device-plugin:v0.17.0@sha256:<64 hex digits>, got "nvcr.io/nvidia/k8s-device-plugin"',
    ]);
  });

  it("an OIDC provider that is not the issuer's", () => {
    const oidc = {
      issuerUrl: "https://oidc.eks.us-east-1.amazonaws.com/id/AAAA",
      providerArn: "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/BBBB",
    };
    expect(problemsFor("staging", kubernetes({ oidc }))).toEqual([
      'crucible:kubernetes.oidc.providerArn must be the provider of kubernetes.oidc.issuerUrl (its ARN ends in :oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/AAAA), got "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/...',
    ]);
  });

  it("cluster objects neither declared nor existing, and an unknown key", () => {
    expect(problemsFor("staging", kubernetes({ clusterObjects: "skip", replicas: 2 }))).toEqual([
      'crucible:kubernetes.clusterObjects must be one of declare, existing, got "skip"',
      "crucible:kubernetes.replicas is not a known setting; allowed here: enabled, kubeconfig, maxJobsPerTier, agentReplicas, gpuNodeLabel, devicePluginImage, clusterObjects, oidc",
    ]);
  });
});

describe("crucible:access", () => {
  const parse = (stack: string, overrides: Record<string, unknown> = {}) => {
    const config = configWith(stack, overrides);
    return parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"]! });
  };

  it("defaults to no projects: no one may submit until a stack names them", () => {
    expect(parse("dev", { "crucible:access": undefined }).access).toEqual({});
  });

  it("defaults a project's tiers to every enabled tier and its priorities to normal and low", () => {
    const alice = "arn:aws:iam::123456789012:user/alice";
    const cfg = parse("dev", { "crucible:access": { lab: { users: { alice } } } });
    expect(submitterProjects(cfg)).toEqual({
      lab: {
        users: { alice },
        tiers: ["cpu-small", "cpu-large", "gpu-small"],
        priorities: ["normal", "low"],
      },
    });
  });

  it("rejects a non-ARN principal and an unknown tier, naming the key (more cases: access.test.ts)", () => {
    expect(
      problemsFor("dev", {
        "crucible:access": { lab: { users: { alice: "alice@example.com" }, tiers: ["tpu"] } },
      }),
    ).toEqual([
      `crucible:access.lab.users.alice must be the ARN of one person's IAM user or role, such as arn:aws:iam::123456789012:user/alice (no wildcards, no assumed-role or root ARNs), got "alice@example.com"`,
      'crucible:access.lab.tiers[0] must be one of cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large, got "tpu"',
    ]);
  });
});
