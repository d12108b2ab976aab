import type { PolicyResource, StackValidationPolicy } from "@pulumi/policy";
import { beforeAll, describe, expect, it } from "vitest";
import { COST_TAGS as PROGRAM_COST_TAGS } from "../../infra/providers";
import { COST_TAGS } from "../../runtime/src/catalog";
import { cruciblePolicies } from "../../policies/pack";
import { isWorkspacesBucket } from "../../policies/s3";
import { policyPackConfig, stackConfig } from "../../scripts/lib/policy-config";
import { MOCK_ACCOUNT_ID } from "../../scripts/lib/mock-engine";
import { STACKS, runStack, type DeclaredResource, type Plan } from "../support/harness";
import {
  UNKNOWN_VALUE,
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

/** What the analyzer sees of each resource: its inputs, its outputs, and its properties' dependencies. */
interface Seen {
  readonly resource: DeclaredResource;
  readonly inputs: Record<string, unknown>;
  readonly outputs: Record<string, unknown>;
  readonly propertyDependencies?: Record<string, string[]>;
}

const asSeen = (plan: Plan): Seen[] =>
  plan.resources.map((r) => ({ resource: r, inputs: r.inputs, outputs: r.state }));

/**
 * The same stack as a first `pulumi preview` sees it: what the provider computes (ids, ARNs, names,
 * URLs) is unknown, so is every input built from it (a bucket reference, a policy document naming an
 * ARN), and the engine records which resource each such property came from.
 */
function asPreview(plan: Plan): Seen[] {
  const computed = new Map<string, string>();
  for (const r of plan.resources) {
    for (const [k, v] of Object.entries(r.state)) {
      if (typeof v === "string" && v !== r.inputs[k] && v.length >= 8 && v !== MOCK_ACCOUNT_ID)
        computed.set(v, r.urn);
    }
  }
  const origins = (text: string) => [...computed].filter(([v]) => text.includes(v)).map(([, urn]) => urn);
  return plan.resources.map((r) => {
    const propertyDependencies: Record<string, string[]> = {};
    const blank = (value: unknown, key: string): unknown => {
      if (typeof value === "string") {
        const from = origins(value);
        if (from.length === 0) return value;
        propertyDependencies[key] = [...new Set([...(propertyDependencies[key] ?? []), ...from])];
        return UNKNOWN_VALUE.string;
      }
      if (Array.isArray(value)) return value.map((v) => blank(v, key));
      if (typeof value === "object" && value !== null) {
        return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, blank(v, key)]));
      }
      return value;
    };
    const inputs = Object.fromEntries(Object.entries(r.inputs).map(([k, v]) => [k, blank(v, k)]));
    const outputs = {
      ...inputs,
      ...Object.fromEntries(
        Object.keys(r.state)
          .filter((k) => !(k in r.inputs))
          .map((k) => [k, UNKNOWN_VALUE.string]),
      ),
    };
    return { resource: r, inputs, outputs, propertyDependencies };
  });
}

function toTestResources(seen: readonly Seen[], view: "inputs" | "outputs"): TestResource[] {
  const byUrn = new Map(seen.map((s) => [s.resource.urn, s]));
  const providerOf = (r: DeclaredResource) => {
    const ref = r.provider?.split("::").slice(0, -1).join("::");
    const p = ref ? byUrn.get(ref) : undefined;
    return p
      ? { type: p.resource.type, name: p.resource.name, urn: p.resource.urn, props: p.inputs }
      : undefined;
  };
  return seen.map((s) => {
    const r = s.resource;
    const provider = providerOf(r);
    return {
      type: r.type,
      name: r.name,
      urn: r.urn,
      props: s[view],
      ...(r.parent ? { parent: r.parent } : {}),
      ...(provider ? { provider } : {}),
      ...(s.propertyDependencies ? { propertyDependencies: s.propertyDependencies } : {}),
    };
  });
}

async function runPack(
  plan: Plan,
  seen: readonly Seen[] = asSeen(plan),
): Promise<{ findings: Finding[]; applied: Map<string, number>; unknown: number }> {
  const config = policyPackConfig(stackConfig(plan.stack));
  let unknown = 0;
  const findings: Finding[] = [];
  const applied = new Map<string, number>();
  const record = (policy: string, outcome: Outcome, resource?: string) => {
    if (outcome.notApplicable === undefined) applied.set(policy, (applied.get(policy) ?? 0) + 1);
    for (const v of outcome.violations)
      findings.push({ policy, resource: resource ?? v.urn, message: v.message });
    if (outcome.unknown) unknown++;
  };
  for (const policy of cruciblePolicies()) {
    const settings = config[policy.name] as Record<string, unknown>;
    if (isStackPolicy(policy)) {
      record(policy.name, await validateStack(policy, toTestResources(seen, "outputs"), settings));
    } else {
      for (const r of toTestResources(seen, "inputs")) {
        record(policy.name, await validateResource(policy, r, settings), r.urn);
      }
    }
  }
  return { findings, applied, unknown };
}

it("the pack's cost tag keys are the program's", () => {
  expect(PROGRAM_COST_TAGS).toBe(COST_TAGS);
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
    expect(result.unknown).toBe(0);
  });

  it("violates no policy as a first preview sees it, with unknown ids, ARNs and references", async () => {
    const preview = await runPack(plan, asPreview(plan));
    expect(preview.findings).toEqual([]);
    // The resource policies that met unknowns leave advisory notes; the stack policies join by dependency.
    expect(preview.unknown).toBeGreaterThan(0);
  });

  it("still finds a missing public-access block during preview, through the engine's dependencies", async () => {
    const PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock";
    const preview = asPreview(plan);
    const pab = preview.find((s) => s.resource.type === PAB && s.resource.name === "workspaces-datasets")!;
    expect(pab.inputs.bucket).toBe(UNKNOWN_VALUE.string);
    const without = await runPack(
      plan,
      preview.filter((s) => s !== pab),
    );
    expect(without.findings.map((f) => [f.policy, f.resource])).toEqual([
      ["s3-buckets-have-public-access-blocks", plan.get("aws:s3/bucket:Bucket", "workspaces-datasets").urn],
    ]);
  });

  it("hands every AWS resource its provider, so default tags are checked", () => {
    const aws = toTestResources(asSeen(plan), "inputs").filter((r) => r.type.startsWith("aws:"));
    expect(aws.filter((r) => r.provider?.type !== "pulumi:providers:aws").map((r) => r.urn)).toEqual([]);
  });

  it("catches this stack previewed with another environment's config", async () => {
    const other = stack === "dev" ? "prod" : "dev";
    const guard = cruciblePolicies().find((p) => p.name === "policy-config-matches-stack");
    const outcome = await validateStack(
      guard as StackValidationPolicy,
      toTestResources(asSeen(plan), "outputs"),
      {
        environment: other,
      },
    );
    expect(outcome.violations.length).toBeGreaterThan(0);
    expect(outcome.violations[0]?.message).toContain(`the policy config says environment "${other}"`);
  });

  it("recognises the workspaces bucket, so its expiry is checked", () => {
    const buckets = toTestResources(asSeen(plan), "outputs").filter((r) => r.type === "aws:s3/bucket:Bucket");
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
        ? ["s3-buckets-have-public-access-blocks", "s3-workspaces-expire", "s3-ledger-kept"]
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
      ...(declares("aws:ec2/vpcEndpoint:VpcEndpoint") ? ["vpc-endpoints-have-policies"] : []),
    ];
    for (const policy of expected) expect(result.applied.get(policy) ?? 0, policy).toBeGreaterThan(0);
  });
});
