import { describe, expect, it } from "vitest";
import { costAllocationTags, gpuStacksHaveBudgets, isTaggable } from "../../policies/cost";
import { messages, validateResource, validateStack, type TestResource } from "./run-policy";

const provider = {
  type: "pulumi:providers:aws",
  name: "aws",
  urn: "urn:pulumi:test::crucible::pulumi:providers:aws::aws",
  props: {
    region: "us-east-1",
    defaultTags: JSON.stringify({
      tags: { "crucible:environment": "dev", "crucible:owner": "platform", "crucible:cost-center": "cc-1" },
    }),
  },
};
const topic = (tags?: Record<string, string>, withProvider = true): TestResource => ({
  type: "aws:sns/topic:Topic",
  name: "notifications-topic",
  props: { kmsMasterKeyId: "k", ...(tags ? { tags } : {}) },
  ...(withProvider ? { provider } : {}),
});

describe("isTaggable", () => {
  it("reads taggability from the @pulumi/aws resource classes", () => {
    expect(isTaggable("aws:s3/bucket:Bucket")).toBe(true);
    expect(isTaggable("aws:autoscaling/group:Group")).toBe(true);
    expect(isTaggable("aws:s3/bucketPolicy:BucketPolicy")).toBe(false);
    expect(isTaggable("aws:iam/rolePolicy:RolePolicy")).toBe(false);
    expect(isTaggable("pulumi:providers:aws")).toBe(false);
    expect(isTaggable("crucible:fleet:TierFleet")).toBe(false);
  });
});

describe("cost-allocation-tags", () => {
  const policy = costAllocationTags();

  it("passes a resource whose own tags and the provider's default tags cover every cost tag", async () => {
    expect(
      (await validateResource(policy, topic({ "crucible:component": "notifications" }))).violations,
    ).toEqual([]);
  });

  it("fails a resource without its component tag, naming the missing tags and the fix", async () => {
    expect(messages(await validateResource(policy, topic()))).toEqual([
      'notifications-topic (aws:sns/topic:Topic) lacks cost allocation tags crucible:component: create it with the stack\'s provider (whose defaultTags carry environment, owner and cost center) and tags from componentTags("<component>", tier?).',
    ]);
  });

  it("fails a resource on a provider without default tags", async () => {
    const bare = {
      ...topic({ "crucible:component": "notifications" }),
      provider: { ...provider, props: {} },
    };
    expect(messages(await validateResource(policy, bare))[0]).toMatch(
      /lacks cost allocation tags crucible:environment, crucible:owner, crucible:cost-center:/,
    );
  });

  it("checks only the component tag where the engine sends no provider", async () => {
    const o = await validateResource(policy, topic({ "crucible:component": "notifications" }, false));
    expect(o.violations).toEqual([]);
  });

  it("does not apply to untaggable types", async () => {
    const o = await validateResource(policy, {
      type: "aws:s3/bucketPolicy:BucketPolicy",
      name: "p",
      props: {},
    });
    expect(o.notApplicable).toBe("aws:s3/bucketPolicy:BucketPolicy takes no tags");
  });

  it("requires Auto Scaling groups to carry and propagate every cost tag themselves", async () => {
    const tags = [
      ["crucible:environment", "dev"],
      ["crucible:owner", "platform"],
      ["crucible:cost-center", "cc-1"],
      ["crucible:component", "fleet"],
    ].map(([key, value]) => ({ key, value, propagateAtLaunch: true }));
    const asg = (t: unknown[]): TestResource => ({
      type: "aws:autoscaling/group:Group",
      name: "g",
      props: { maxSize: 1, tags: t },
      provider,
    });
    expect((await validateResource(policy, asg(tags))).violations).toEqual([]);
    expect(
      messages(
        await validateResource(policy, asg([{ ...tags[0], propagateAtLaunch: false }, ...tags.slice(1)])),
      ),
    ).toEqual(["g: set propagateAtLaunch: true on tags crucible:environment."]);
    expect(messages(await validateResource(policy, asg(tags.slice(1))))).toEqual([
      "g: add tags crucible:environment with propagateAtLaunch: true (groups do not get the provider's default tags).",
    ]);
  });
});

describe("gpu-stacks-have-budgets", () => {
  const policy = gpuStacksHaveBudgets();
  const gpuGroup: TestResource = {
    type: "aws:autoscaling/group:Group",
    name: "fleet-gpu-small",
    props: { maxSize: 1, tags: [{ key: "crucible:tier", value: "gpu-small", propagateAtLaunch: true }] },
  };
  const budget = (notifications: unknown[]): TestResource => ({
    type: "aws:budgets/budget:Budget",
    name: "budgets-environment",
    props: { budgetType: "COST", limitAmount: "500.00", notifications },
  });

  it("passes a GPU stack with a notified budget", async () => {
    const o = await validateStack(policy, [
      gpuGroup,
      budget([{ threshold: 80, subscriberSnsTopicArns: ["arn:aws:sns:us-east-1:1:t"] }]),
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails a GPU stack whose budget notifies nobody", async () => {
    const o = await validateStack(policy, [gpuGroup, budget([{ threshold: 80 }])]);
    expect(messages(o)).toEqual([
      "the stack runs GPU tiers (gpu-small) but declares no aws.budgets.Budget with a notification that has a subscriber: add a budget with notifications sent to the notifications topic or an email address.",
    ]);
  });

  it("recognises GPU nodes by instance type too, and skips CPU-only stacks", async () => {
    const lt: TestResource = {
      type: "aws:ec2/launchTemplate:LaunchTemplate",
      name: "lt",
      props: { instanceType: "g5.xlarge" },
    };
    expect(messages(await validateStack(policy, [lt]))[0]).toMatch(/runs GPU tiers \(GPU instances of lt\)/);
    const cpu = { ...gpuGroup, props: { maxSize: 1, tags: [{ key: "crucible:tier", value: "cpu-small" }] } };
    expect((await validateStack(policy, [cpu])).notApplicable).toBe("the stack runs no GPU tier");
  });
});
