import { readFileSync } from "node:fs";
import * as path from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../../scripts/lib/mock-engine";
import { STACKS, readStackConfig, runStack, type DeclaredResource, type Plan } from "../support/harness";

/**
 * Whether an AWS resource type takes a `tags` input, read from the provider's own type declarations
 * (`aws:s3/bucket:Bucket` → `@pulumi/aws/s3/bucket.d.ts`, `interface BucketArgs`), so a new resource
 * type needs no list kept here.
 */
const taggableCache = new Map<string, boolean>();
function isTaggable(type: string): boolean {
  const cached = taggableCache.get(type);
  if (cached !== undefined) return cached;
  const [, modulePath, className] = type.split(":");
  const [mod, file] = modulePath!.split("/");
  const dts = path.join(ROOT, "node_modules", "@pulumi", "aws", mod === "index" ? "" : mod!, `${file}.d.ts`);
  const text = readFileSync(dts, "utf8");
  const start = text.indexOf(`export interface ${className}Args {`);
  if (start < 0) throw new Error(`${dts} declares no ${className}Args`);
  const taggable = /\n\s+tags\?:/.test(text.slice(start, text.indexOf("\n}", start)));
  taggableCache.set(type, taggable);
  return taggable;
}

/** Tag keys on a resource: a map for most types, a list of `{ key, value }` for Auto Scaling groups. */
function tagsOf(r: DeclaredResource): Record<string, string> {
  const tags = r.inputs.tags;
  if (Array.isArray(tags)) {
    return Object.fromEntries((tags as { key: string; value: string }[]).map((t) => [t.key, t.value]));
  }
  return (tags ?? {}) as Record<string, string>;
}

/** Auto Scaling groups take no provider default tags (AWS provider limitation): they must carry them. */
const NO_DEFAULT_TAGS = new Set(["aws:autoscaling/group:Group"]);

describe("reading taggability from the provider's declarations", () => {
  it("tells taggable types from the rest", () => {
    expect(isTaggable("aws:s3/bucket:Bucket")).toBe(true);
    expect(isTaggable("aws:budgets/budget:Budget")).toBe(true);
    expect(isTaggable("aws:s3/bucketPolicy:BucketPolicy")).toBe(false);
    expect(isTaggable("aws:kms/alias:Alias")).toBe(false);
  });
});

describe.each(STACKS)("%s stack cost allocation tags", (stack) => {
  const config = readStackConfig(stack);
  const defaultTags = {
    "crucible:environment": config["crucible:environment"],
    "crucible:owner": config["crucible:owner"],
    "crucible:cost-center": config["crucible:costCenter"],
  };
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const awsResources = () => plan.resources.filter((r) => r.custom && r.type.startsWith("aws:"));

  it("has one AWS provider, whose default tags carry environment, owner and cost center", () => {
    const providers = plan.ofType("pulumi:providers:aws");
    expect(providers.map((p) => p.name)).toEqual(["aws"]);
    const inputs = providers[0]!.inputs;
    // Provider inputs reach the engine with nested objects as JSON text.
    const declared: unknown = JSON.parse(inputs.defaultTags as string);
    expect(declared).toEqual({ tags: defaultTags });
    expect(inputs.region).toBe(config["aws:region"]);
  });

  it("creates every AWS resource through that provider", () => {
    const provider = plan.get("pulumi:providers:aws", "aws");
    const elsewhere = awsResources()
      .filter((r) => !r.provider?.startsWith(`${provider.urn}::`))
      .map((r) => `${r.type} ${r.name} (provider ${r.provider ?? "default"})`);
    expect(elsewhere).toEqual([]);
    expect(awsResources().length).toBeGreaterThan(0);
  });

  it("tags every taggable resource with its component (and its tier where it has one)", () => {
    const untagged = awsResources()
      .filter((r) => isTaggable(r.type) && !tagsOf(r)["crucible:component"])
      .map((r) => `${r.type} ${r.name}`);
    expect(untagged).toEqual([]);
    const enabledTiers = Object.keys(plan.outputs.tiers as Record<string, unknown>);
    const strayTier = awsResources()
      .filter((r) => tagsOf(r)["crucible:tier"] !== undefined)
      .filter((r) => !enabledTiers.includes(tagsOf(r)["crucible:tier"]!))
      .map((r) => `${r.type} ${r.name}: ${tagsOf(r)["crucible:tier"]}`);
    expect(strayTier).toEqual([]);
  });

  it("repeats the default tags on the types the provider cannot default-tag", () => {
    const missing = awsResources()
      .filter((r) => NO_DEFAULT_TAGS.has(r.type))
      .filter((r) => Object.entries(defaultTags).some(([k, v]) => tagsOf(r)[k] !== v))
      .map((r) => `${r.type} ${r.name}: ${JSON.stringify(tagsOf(r))}`);
    expect(missing).toEqual([]);
  });
});
