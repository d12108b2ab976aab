import { describe, expect, it } from "vitest";
import { schedulingPolicy, submitterProjects } from "../../../infra/config";
import { DEFAULT_SCHEDULING, parseSchedulingPolicy } from "../../../runtime/src/catalog/scheduling";
import { STACKS } from "../../support/harness";
import { parseWith as parse } from "../../support/crucible-config";

/**
 * What components read off a validated config (infra/config/derived.ts): the scheduling policy and the
 * projects' submitters.
 */

describe("scheduling policy", () => {
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

describe("crucible:access", () => {
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
});
