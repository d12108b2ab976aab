import { describe, expect, it } from "vitest";
import { ecrImmutableTags, ecrLifecyclePolicies, ecrScanOnPush } from "../../policies/ecr";
import {
  UNKNOWN_VALUE,
  messages,
  urnOf,
  validateResource,
  validateStack,
  type TestResource,
} from "./run-policy";

const REPO = "aws:ecr/repository:Repository";
const LIFECYCLE = "aws:ecr/lifecyclePolicy:LifecyclePolicy";
const repo = (props: Record<string, unknown> = {}): TestResource => ({
  type: REPO,
  name: "registry-cpu",
  props: {
    name: "crucible-cpu",
    imageTagMutability: "IMMUTABLE",
    imageScanningConfiguration: { scanOnPush: true },
    ...props,
  },
});
const rules = JSON.stringify({
  rules: [
    {
      rulePriority: 1,
      selection: { tagStatus: "untagged", countType: "sinceImagePushed", countUnit: "days", countNumber: 3 },
      action: { type: "expire" },
    },
  ],
});

describe("ecr-immutable-tags", () => {
  it("passes an immutable repository", async () => {
    expect((await validateResource(ecrImmutableTags(), repo())).violations).toEqual([]);
  });

  it("fails a repository left mutable by default", async () => {
    expect(
      messages(await validateResource(ecrImmutableTags(), repo({ imageTagMutability: undefined }))),
    ).toEqual(['registry-cpu: set imageTagMutability to "IMMUTABLE" (got nothing, which means "MUTABLE").']);
  });
});

describe("ecr-scan-on-push", () => {
  it("passes a repository that scans on push", async () => {
    expect((await validateResource(ecrScanOnPush(), repo())).violations).toEqual([]);
  });

  it("fails one that does not", async () => {
    const o = await validateResource(
      ecrScanOnPush(),
      repo({ imageScanningConfiguration: { scanOnPush: false } }),
    );
    expect(messages(o)).toEqual(["registry-cpu: set imageScanningConfiguration.scanOnPush to true."]);
  });
});

describe("ecr-lifecycle-policies", () => {
  const policy = ecrLifecyclePolicies();

  it("passes a repository with a lifecycle policy that has rules", async () => {
    const o = await validateStack(policy, [
      repo(),
      { type: LIFECYCLE, name: "registry-cpu", props: { repository: "crucible-cpu", policy: rules } },
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails a repository without one", async () => {
    const o = await validateStack(policy, [repo()]);
    expect(o.violations).toEqual([
      {
        message:
          "ECR repository registry-cpu has no lifecycle policy: add an aws.ecr.LifecyclePolicy that expires untagged and old images.",
        urn: urnOf(REPO, "registry-cpu"),
      },
    ]);
  });

  it("fails a lifecycle policy without rules", async () => {
    const o = await validateStack(policy, [
      repo(),
      {
        type: LIFECYCLE,
        name: "lc",
        props: { repository: "crucible-cpu", policy: JSON.stringify({ rules: [] }) },
      },
    ]);
    expect(messages(o)).toEqual([
      "ECR lifecycle policy lc (of registry-cpu) has no rules: add at least one rule.",
    ]);
  });

  it("treats an unknown repository reference as undecided, not as a violation", async () => {
    const o = await validateStack(policy, [
      repo({ name: UNKNOWN_VALUE.string }),
      {
        type: LIFECYCLE,
        name: "lc",
        props: { repository: UNKNOWN_VALUE.string, policy: UNKNOWN_VALUE.string },
      },
    ]);
    expect(o).toEqual({ violations: [] });
  });
});
