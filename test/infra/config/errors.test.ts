import { describe, expect, it } from "vitest";
import { configProblems as problemsFor } from "../../support/harness";
import { kubernetes } from "../../support/crucible-config";

/**
 * How problems read (infra/config/errors.ts): unknown keys name the keys allowed there, and secrets are
 * never printed.
 */

describe("bad config is rejected with the key, the value and what is allowed", () => {
  it("unknown priority weight", () => {
    expect(problemsFor("dev", { "crucible:scheduling": { weights: { urgent: 9 } } })).toEqual([
      "crucible:scheduling.weights.urgent is not a known setting; allowed here: high, normal, low",
    ]);
  });

  it("budgets under scheduling, where the stack does not take them", () => {
    expect(problemsFor("dev", { "crucible:scheduling": { budgets: { users: { alice: 5 } } } })).toEqual([
      "crucible:scheduling.budgets is not a known setting; allowed here: weights, fairShare, preemption",
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
});

describe("crucible:kubernetes", () => {
  it("a kubeconfig that is not one, without printing the secret", () => {
    const problems = problemsFor("staging", kubernetes({ kubeconfig: "token: s3cr3t-token" }));
    expect(problems).toEqual([
      "crucible:kubernetes.kubeconfig must be a kubeconfig: YAML or JSON text with a clusters list, got a secret (not shown)",
    ]);
  });
});
