import { describe, expect, it } from "vitest";
import { configSchema, policyConfigMatchesStack } from "../../policies/config";
import { cruciblePolicies } from "../../policies/pack";
import { messages, validateStack, type TestResource } from "./run-policy";

const provider = (environment: string): TestResource => ({
  type: "pulumi:providers:aws",
  name: "aws",
  props: { defaultTags: JSON.stringify({ tags: { "crucible:environment": environment } }) },
});

describe("the pack", () => {
  const policies = cruciblePolicies();

  it("has unique kebab-case names, all mandatory by default", () => {
    const names = policies.map((p) => p.name);
    expect(new Set(names).size).toBe(names.length);
    for (const p of policies) {
      expect(p.name).toMatch(/^[a-z0-9]+(-[a-z0-9]+)*$/);
      expect(p.enforcementLevel).toBe("mandatory");
      expect(p.description.length).toBeGreaterThan(10);
    }
  });

  it("declares every setting it reads as required in its schema", () => {
    const schema = configSchema("environment", "maxInstancesPerTier");
    expect(schema.required).toEqual(["environment", "maxInstancesPerTier"]);
    expect(schema.properties.environment).toMatchObject({ type: "string", enum: ["dev", "staging", "prod"] });
    expect(schema.properties.maxInstancesPerTier).toMatchObject({ type: "integer", minimum: 1 });
    const configured = Object.fromEntries(
      policies.filter((p) => p.configSchema).map((p) => [p.name, p.configSchema!.required]),
    );
    expect(configured).toEqual({
      "s3-workspaces-expire": ["workspaceRetentionDays"],
      "asg-max-within-cap": ["maxInstancesPerTier"],
      "asg-tiers-have-agent-config": ["environment"],
      "policy-config-matches-stack": ["environment"],
    });
  });
});

describe("policy-config-matches-stack", () => {
  const policy = policyConfigMatchesStack();

  it("passes when the config names the stack's environment", async () => {
    expect((await validateStack(policy, [provider("prod")], { environment: "prod" })).violations).toEqual([]);
  });

  it("fails a dev config passed to a prod stack", async () => {
    const o = await validateStack(policy, [provider("prod")], { environment: "dev" });
    expect(messages(o)).toEqual([
      'the policy config says environment "dev" but urn:pulumi:test::crucible::pulumi:providers:aws::aws is tagged crucible:environment=prod: regenerate the config for this stack with `npm run policy-config -- <stack>`',
    ]);
  });

  it("also reads the environment a resource is tagged with", async () => {
    const bucket: TestResource = {
      type: "aws:s3/bucket:Bucket",
      name: "b",
      props: { tags: { "crucible:environment": "staging" } },
    };
    expect(messages(await validateStack(policy, [bucket], { environment: "prod" }))[0]).toMatch(
      /tagged crucible:environment=staging/,
    );
  });

  it("rejects a config with an unknown environment", async () => {
    await expect(validateStack(policy, [provider("prod")], { environment: "production" })).rejects.toThrow(
      'policy policy-config-matches-stack: config environment must be one of dev, staging, prod, got "production"',
    );
  });
});
