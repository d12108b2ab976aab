import { describe, expect, it } from "vitest";
import { configProblems as problemsFor } from "../../support/harness";
import { kubernetes } from "../../support/crucible-config";

/**
 * Each setting's own checks (infra/config/schema.ts): a bad value is rejected with its key, what it must be
 * and what it got.
 */

describe("bad config is rejected with the key, the value and what is allowed", () => {
  it("negative user budget", () => {
    expect(problemsFor("dev", { "crucible:budgets": { users: { alice: -5 } } })).toEqual([
      "crucible:budgets.users.alice must be a positive amount of US dollars, got -5",
    ]);
  });

  it("a fair share of 0", () => {
    expect(problemsFor("dev", { "crucible:scheduling": { fairShare: { perUser: 0 } } })).toEqual([
      "crucible:scheduling.fairShare.perUser must be a whole number from 1 to 10000, got 0",
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

  it("malformed email", () => {
    expect(problemsFor("dev", { "crucible:budgets": { emails: ["finance-at-example.com"] } })).toEqual([
      'crucible:budgets.emails[0] must be an email address such as finance@example.com, got "finance-at-example.com"',
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

describe("crucible:kubernetes", () => {
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

  it("a device plugin image with neither tag nor digest", () => {
    expect(
      problemsFor("staging", kubernetes({ devicePluginImage: "nvcr.io/nvidia/k8s-device-plugin" })),
    ).toEqual([
      'crucible:kubernetes.devicePluginImage must be an image reference with a tag or a digest, such as nvcr.io/nvidia/k8s-device-plugin:v0.17.0@sha256:<64 hex digits>, got "nvcr.io/nvidia/k8s-device-plugin"',
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
