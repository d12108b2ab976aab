import { describe, expect, it } from "vitest";
import { configProblems as problemsFor } from "../../support/harness";
import { kubernetes } from "../../support/crucible-config";

/** The checks between settings (infra/config/rules.ts), each reported at the key to change. */

describe("bad config is rejected with the key, the value and what is allowed", () => {
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
      'crucible:fleet.tiers.gpu-small.warmPool cannot be used on a spot group (warm pools only hold on-demand instances); set spot.enabled to false or use prewarmSchedule, got {"minSize":1,"maxPreparedCapacity":1,"state":"Stopped"}',
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
});

describe("crucible:kubernetes", () => {
  it("enabled without a kubeconfig", () => {
    expect(problemsFor("staging", { "crucible:kubernetes": { enabled: true } })).toEqual([
      'crucible:kubernetes.kubeconfig is required when crucible:kubernetes.enabled is true; set it as a secret: pulumi config set --secret --path crucible:kubernetes.kubeconfig "$(cat kubeconfig)", got nothing',
    ]);
  });

  it("an owner that cannot be a label value while enabled (and can while disabled)", () => {
    expect(problemsFor("staging", { ...kubernetes({}), "crucible:owner": "ML Platform" })).toEqual([
      'crucible:owner must be a Kubernetes label value (1 to 63 letters, digits, -, _ and ., starting and ending with a letter or digit) while crucible:kubernetes.enabled is true: it labels every Kubernetes object, got "ML Platform"',
    ]);
    expect(problemsFor("staging", { "crucible:owner": "ML Platform" })).toEqual([]);
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
});
