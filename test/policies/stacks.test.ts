import type { PolicyResource, StackValidationPolicy } from "@pulumi/policy";
import { beforeAll, describe, expect, it } from "vitest";
import { COST_TAGS } from "../../infra/providers";
import { COST_TAG_KEYS } from "../../policies/lib";
import { cruciblePolicies } from "../../policies/pack";
import { isWorkspacesBucket } from "../../policies/s3";
import { policyPackConfig, stackConfig } from "../../scripts/lib/policy-config";
import { STACKS, runStack, type DeclaredResource, type Plan } from "../harness";
import {
  isStackPolicy,
  validateResource,
  validateStack,
  type Outcome,
  type TestResource,
} from "./run-policy";

/**
 * The whole pack over everything each stack declares under the mock engine, with the config file
 * `npm run policy-config -- <stack>` writes: resource policies see each resource's inputs (what
 * `analyze` gets), stack policies see every resource's outputs (what `analyzeStack` gets), both with
 * the provider each resource was registered with.
 */

interface Finding {
  readonly policy: string;
  readonly resource?: string;
  readonly message: string;
}

function toTestResources(plan: Plan, view: "inputs" | "state"): TestResource[] {
  const byUrn = new Map(plan.resources.map((r) => [r.urn, r]));
  const providerOf = (r: DeclaredResource) => {
    const ref = r.provider?.split("::").slice(0, -1).join("::");
    const p = ref ? byUrn.get(ref) : undefined;
    return p ? { type: p.type, name: p.name, urn: p.urn, props: p.inputs } : undefined;
  };
  return plan.resources.map((r) => {
    const provider = providerOf(r);
    return {
      type: r.type,
      name: r.name,
      urn: r.urn,
      props: r[view],
      ...(r.parent ? { parent: r.parent } : {}),
      ...(provider ? { provider } : {}),
    };
  });
}

async function runPack(plan: Plan): Promise<{ findings: Finding[]; applied: Map<string, number> }> {
  const config = policyPackConfig(stackConfig(plan.stack));
  const findings: Finding[] = [];
  const applied = new Map<string, number>();
  const record = (policy: string, outcome: Outcome, resource?: string) => {
    if (outcome.notApplicable === undefined) applied.set(policy, (applied.get(policy) ?? 0) + 1);
    for (const v of outcome.violations)
      findings.push({ policy, resource: resource ?? v.urn, message: v.message });
    if (outcome.unknown)
      findings.push({ policy, resource, message: `unknown under mocks: ${outcome.unknown}` });
  };
  for (const policy of cruciblePolicies()) {
    const settings = config[policy.name] as Record<string, unknown>;
    if (isStackPolicy(policy)) {
      record(policy.name, await validateStack(policy, toTestResources(plan, "state"), settings));
    } else {
      for (const r of toTestResources(plan, "inputs")) {
        record(policy.name, await validateResource(policy, r, settings), r.urn);
      }
    }
  }
  return { findings, applied };
}

it("the pack's cost tag keys are the program's", () => {
  expect(COST_TAG_KEYS).toEqual(COST_TAGS);
});

describe.each(STACKS)("the %s stack under the whole pack", (stack) => {
  let result: Awaited<ReturnType<typeof runPack>>;
  let plan: Plan;

  beforeAll(async () => {
    plan = await runStack(stack);
    result = await runPack(plan);
  });

  it("violates no policy", () => {
    expect(result.findings).toEqual([]);
  });

  it("hands every AWS resource its provider, so default tags are checked", () => {
    const aws = toTestResources(plan, "inputs").filter((r) => r.type.startsWith("aws:"));
    expect(aws.filter((r) => r.provider?.type !== "pulumi:providers:aws").map((r) => r.urn)).toEqual([]);
  });

  it("catches this stack previewed with another environment's config", async () => {
    const other = stack === "dev" ? "prod" : "dev";
    const guard = cruciblePolicies().find((p) => p.name === "policy-config-matches-stack");
    const outcome = await validateStack(guard as StackValidationPolicy, toTestResources(plan, "state"), {
      environment: other,
    });
    expect(outcome.violations.length).toBeGreaterThan(0);
    expect(outcome.violations[0]?.message).toContain(`the policy config says environment "${other}"`);
  });

  it("recognises the workspaces bucket, so its expiry is checked", () => {
    const buckets = toTestResources(plan, "state").filter((r) => r.type === "aws:s3/bucket:Bucket");
    expect(
      buckets.filter((b) => isWorkspacesBucket(b as unknown as PolicyResource)).map((b) => b.name),
    ).toEqual(["workspaces-workspaces"]);
  });

  it("was actually checked: the policies for what the stack declares applied to it", () => {
    const declares = (type: string) => plan.ofType(type).length > 0;
    const expected = [
      "policy-config-matches-stack",
      "cost-allocation-tags",
      ...(declares("aws:s3/bucket:Bucket")
        ? ["s3-buckets-have-public-access-blocks", "s3-workspaces-expire"]
        : []),
      ...(declares("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
        ? ["s3-public-access-blocked"]
        : []),
      ...(declares("aws:sqs/queue:Queue") ? ["job-queues-have-dlq", "sqs-queues-encrypted"] : []),
      ...(declares("aws:sns/topic:Topic") ? ["sns-topics-encrypted"] : []),
      ...(declares("aws:ecr/repository:Repository") ? ["ecr-lifecycle-policies", "ecr-immutable-tags"] : []),
      ...(declares("aws:ec2/launchTemplate:LaunchTemplate") ? ["launch-templates-require-imdsv2"] : []),
      ...(declares("aws:autoscaling/group:Group")
        ? ["asg-max-within-cap", "asg-tiers-have-agent-config"]
        : []),
    ];
    for (const policy of expected) expect(result.applied.get(policy) ?? 0, policy).toBeGreaterThan(0);
  });
});
