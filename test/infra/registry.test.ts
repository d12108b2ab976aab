import { cpSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { IMAGE_FAMILIES, IMAGE_MATRIX, buildArgs, imageTag } from "../../runtime/src/catalog/image-matrix";
import { inputsHash, repositoryArnOf } from "../../infra/registry";
import { MOCK_ACCOUNT_ID, ROOT, UPSTREAM_REGION } from "../../scripts/lib/mock-engine";
import { configProblems, configWith, readStackConfig, runStack, type Plan } from "../support/harness";

const ECR_REPOSITORY = "aws:ecr/repository:Repository";
const LIFECYCLE = "aws:ecr/lifecyclePolicy:LifecyclePolicy";
const REPOSITORY_POLICY = "aws:ecr/repositoryPolicy:RepositoryPolicy";
const IMAGE = "docker:index/image:Image";

interface LifecycleRule {
  rulePriority: number;
  selection: Record<string, unknown>;
  action: { type: string };
}

// Dev builds the matrix once per push to main; staging and prod run those digests (dev → staging → prod),
// so dev's registry keeps more images and lets prod's account pull.
describe.each([
  { stack: "dev", keepImages: 50, pullAccounts: ["210987654321"], label: "as its stack file says" },
  { stack: "dev", keepImages: 50, pullAccounts: [] as string[], label: "granting no pulls" },
])("$stack builds the image matrix into its own registry, $label", ({ stack, keepImages, pullAccounts }) => {
  let plan: Plan;
  const region = readStackConfig(stack)["aws:region"]!;
  beforeAll(async () => {
    const registry = JSON.parse(readStackConfig(stack)["crucible:registry"]!) as Record<string, unknown>;
    plan = await runStack(
      stack,
      configWith(stack, { "crucible:registry": { ...registry, pullAccountIds: pullAccounts } }),
    );
  });

  it.each(IMAGE_FAMILIES)("declares an immutable, scanned, encrypted repository for %s", (family) => {
    expect(plan.get(ECR_REPOSITORY, `registry-${family}`).inputs).toMatchObject({
      name: `crucible/${stack}/${family}`,
      imageTagMutability: "IMMUTABLE",
      imageScanningConfiguration: { scanOnPush: true },
      encryptionConfigurations: [{ encryptionType: "KMS" }],
      tags: { "crucible:component": "registry" },
    });
  });

  it.each(IMAGE_FAMILIES)("expires untagged %s images and keeps the last N of its tag", (family) => {
    const policy = JSON.parse(plan.get(LIFECYCLE, `registry-${family}`).inputs.policy as string) as {
      rules: LifecycleRule[];
    };
    expect(policy.rules.map((r) => [r.rulePriority, r.selection, r.action.type])).toEqual([
      [
        1,
        { tagStatus: "untagged", countType: "sinceImagePushed", countUnit: "days", countNumber: 3 },
        "expire",
      ],
      [
        2,
        {
          tagStatus: "tagged",
          tagPrefixList: [imageTag(family)],
          countType: "imageCountMoreThan",
          countNumber: keepImages,
        },
        "expire",
      ],
    ]);
  });

  it("lets exactly the downstream accounts pull, and only pull", () => {
    const policies = plan.ofType(REPOSITORY_POLICY);
    if (pullAccounts.length === 0) {
      expect(policies).toEqual([]);
      return;
    }
    expect(policies).toHaveLength(IMAGE_FAMILIES.length);
    for (const policy of policies) {
      const doc = JSON.parse(policy.inputs.policy as string) as {
        Statement: { Effect: string; Principal: { AWS: string[] }; Action: string[] }[];
      };
      expect(doc.Statement).toEqual([
        {
          Sid: "DownstreamPull",
          Effect: "Allow",
          Principal: { AWS: pullAccounts.map((a) => `arn:aws:iam::${a}:root`) },
          Action: ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
        },
      ]);
    }
  });

  it.each(IMAGE_FAMILIES)("builds %s with the matrix's build args and a tag naming its inputs", (family) => {
    const image = plan.get(IMAGE, `registry-${family}`).inputs as {
      imageName: string;
      build: { dockerfile: string; context: string; platform: string; args: Record<string, string> };
      registry: { server: string; username: string };
    };
    const repository = `${MOCK_ACCOUNT_ID}.dkr.ecr.${region}.amazonaws.com/crucible/${stack}/${family}`;
    expect(image.imageName).toBe(`${repository}:${imageTag(family)}-${inputsHash(family)}`);
    expect(image.build.context).toBe(ROOT);
    expect(image.build.dockerfile).toBe(join(ROOT, IMAGE_MATRIX[family].dockerfile));
    expect(image.build.platform).toBe("linux/amd64");
    expect(image.registry).toMatchObject({ server: repository, username: "AWS" });
    const { BASE_IMAGE, ...axes } = buildArgs(family);
    expect(image.build.args).toMatchObject({ ...axes, VERSION: inputsHash(family) });
    // A family built on another family runs on the digest just pushed for it, not on a local tag.
    const base = IMAGE_MATRIX[family].base;
    expect(image.build.args.BASE_IMAGE).toBe(
      "family" in base
        ? plan.outputs.imageRefs && (plan.outputs.imageRefs as Record<string, string>)[base.family]
        : BASE_IMAGE,
    );
  });

  it("exports every family by digest", () => {
    const refs = plan.outputs.imageRefs as Record<string, string>;
    expect(Object.keys(refs).sort()).toEqual([...IMAGE_FAMILIES].sort());
    for (const [family, ref] of Object.entries(refs)) {
      expect(ref).toMatch(
        new RegExp(
          `^${MOCK_ACCOUNT_ID}\\.dkr\\.ecr\\.${region}\\.amazonaws\\.com/crucible/${stack}/${family}@sha256:[0-9a-f]{64}$`,
        ),
      );
    }
  });
});

describe.each([
  { stack: "staging", upstream: "dev" },
  { stack: "prod", upstream: "staging" },
])("$stack promotes $upstream's images", ({ stack, upstream }) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });

  it("declares no build and no repository", () => {
    expect(plan.ofType(IMAGE)).toEqual([]);
    expect(plan.ofType(ECR_REPOSITORY)).toEqual([]);
  });

  it(`runs exactly the digests ${upstream} exported, through a stack reference`, () => {
    const reference = plan.get("pulumi:pulumi:StackReference", "registry-upstream");
    expect(reference.inputs.name).toBe(`acme/crucible/${upstream}`);
    const refs = plan.outputs.imageRefs as Record<string, string>;
    for (const family of IMAGE_FAMILIES) {
      expect(refs[family]).toMatch(
        new RegExp(
          `^${MOCK_ACCOUNT_ID}\\.dkr\\.ecr\\.${UPSTREAM_REGION}\\.amazonaws\\.com/crucible/${upstream}/${family}@sha256:[0-9a-f]{64}$`,
        ),
      );
    }
  });
});

describe("registry settings", () => {
  it("rejects a promotion source that is not a stack reference, naming the key", () => {
    expect(
      configProblems("prod", {
        "crucible:registry": { families: ["cpu", "agent", "builder"], promoteFrom: "staging" },
      }),
    ).toEqual([
      'crucible:registry.promoteFrom must be a stack reference of the form org/project/stack, got "staging"',
    ]);
  });

  it("rejects a family outside the matrix", () => {
    const problems = configProblems("dev", { "crucible:registry": { families: ["cpu", "agent", "rocm"] } });
    expect(problems.join("\n")).toContain("crucible:registry.families");
    expect(problems.join("\n")).toContain("rocm");
  });
});

describe("the builder image", () => {
  it("is pushed and promoted like every family, and is no job family", () => {
    expect(IMAGE_FAMILIES).toContain("builder");
    expect(IMAGE_MATRIX.builder).toMatchObject({ runsJobs: false, gpu: false });
    for (const stack of ["dev", "staging", "prod"])
      expect(JSON.parse(readStackConfig(stack)["crucible:registry"]!)).toMatchObject({
        families: expect.arrayContaining(["builder"]) as unknown,
      });
  });
});

describe("image references", () => {
  it("turns an ECR reference into its repository's ARN and refuses anything else", () => {
    expect(
      repositoryArnOf(
        "210987654321.dkr.ecr.us-east-1.amazonaws.com/crucible/staging/cpu@sha256:" + "a".repeat(64),
      ),
    ).toBe("arn:aws:ecr:us-east-1:210987654321:repository/crucible/staging/cpu");
    expect(() => repositoryArnOf("docker.io/library/python:3.13")).toThrow(/is not an ECR image reference/);
  });

  describe("the inputs hash in every tag", () => {
    let copy: string;
    beforeAll(() => {
      copy = mkdtempSync(join(tmpdir(), "crucible-inputs-"));
      for (const dir of ["images", "runtime/src", "runtime/templates"])
        cpSync(join(ROOT, dir), join(copy, dir), { recursive: true });
      for (const file of ["package-lock.json", "runtime/package.json", "runtime/tsconfig.build.json"])
        cpSync(join(ROOT, file), join(copy, file));
    });
    afterAll(() => rmSync(copy, { recursive: true, force: true }));

    it("is stable for the same files and changes with the runner, for every family built on it", () => {
      const before = Object.fromEntries(IMAGE_FAMILIES.map((f) => [f, inputsHash(f, copy)]));
      expect(before).toEqual(Object.fromEntries(IMAGE_FAMILIES.map((f) => [f, inputsHash(f, ROOT)])));
      writeFileSync(join(copy, "images/runner/supervise.py"), "# changed\n", { flag: "a" });
      const after = Object.fromEntries(IMAGE_FAMILIES.map((f) => [f, inputsHash(f, copy)]));
      expect(after.cpu).not.toBe(before.cpu);
      expect(after["ml-cpu"]).not.toBe(before["ml-cpu"]);
      expect(after["ml-cuda"]).not.toBe(before["ml-cuda"]);
      expect(after.agent).toBe(before.agent);
      // The builder holds pip only: the runner is none of its inputs.
      expect(after.builder).toBe(before.builder);
    });
  });
});
