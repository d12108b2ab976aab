import * as aws from "@pulumi/aws";
import * as docker from "@pulumi/docker";
import * as pulumi from "@pulumi/pulumi";
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import * as path from "node:path";
import { type ImageFamily, buildArgs, buildOrder, IMAGE_MATRIX, imageTag } from "@crucible/runtime/catalog";
import type { CrucibleConfig } from "./config";
import { componentTags } from "./providers";

/** The repository root: the build context of every family (trimmed by .dockerignore). */
const CONTEXT = path.resolve(__dirname, "..");

export interface RegistryArgs {
  readonly environment: CrucibleConfig["environment"];
  /** Families, upstream stack, pulling accounts and retention: `crucible:registry`. */
  readonly registry: CrucibleConfig["registry"];
  /**
   * Written to the images' `org.opencontainers.image.version` label. Defaults to the short hash of the
   * build inputs, which is also part of every tag.
   */
  readonly version?: string;
}

/**
 * The image matrix in ECR. A building stack declares one repository per family (immutable tags, scan on
 * push, KMS encryption, a lifecycle policy, pulls by downstream accounts) and builds and pushes the
 * families it enables; a promoting stack builds nothing and runs the digests its upstream stack exported,
 * so what reaches production is byte for byte what staging tested.
 */
export class Registry extends pulumi.ComponentResource {
  /** Each family's image as `<repository>@sha256:<digest>`: what nodes pull and run. */
  readonly imageRefs: Record<string, pulumi.Output<string>>;
  /** ARNs of the repositories the images come from (this stack's, or the upstream stack's). */
  readonly repositoryArns: Record<string, pulumi.Output<string>>;

  constructor(name: string, args: RegistryArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:registry:Registry", name, {}, opts);
    const { families, promoteFrom } = args.registry;
    if (promoteFrom) {
      const upstream = new pulumi.StackReference(`${name}-upstream`, { name: promoteFrom }, { parent: this });
      this.imageRefs = Object.fromEntries(families.map((f) => [f, upstreamRef(upstream, promoteFrom, f)]));
    } else {
      this.imageRefs = this.build(name, args);
    }
    this.repositoryArns = Object.fromEntries(
      Object.entries(this.imageRefs).map(([family, ref]) => [family, ref.apply(repositoryArnOf)]),
    );
    this.registerOutputs({ imageRefs: this.imageRefs, repositoryArns: this.repositoryArns });
  }

  private build(name: string, args: RegistryArgs): Record<string, pulumi.Output<string>> {
    const refs: Record<string, pulumi.Output<string>> = {};
    for (const family of buildOrder(args.registry.families)) {
      const repository = new aws.ecr.Repository(
        `${name}-${family}`,
        {
          name: `crucible/${args.environment}/${family}`,
          imageTagMutability: "IMMUTABLE",
          imageScanningConfiguration: { scanOnPush: true },
          encryptionConfigurations: [{ encryptionType: "KMS" }],
          tags: componentTags("registry"),
        },
        { parent: this },
      );
      new aws.ecr.LifecyclePolicy(
        `${name}-${family}`,
        { repository: repository.name, policy: JSON.stringify(lifecyclePolicy(family, args.registry)) },
        { parent: this },
      );
      if (args.registry.pullAccountIds.length > 0) {
        new aws.ecr.RepositoryPolicy(
          `${name}-${family}`,
          {
            repository: repository.name,
            policy: JSON.stringify(pullPolicy(args.registry.pullAccountIds)),
          },
          { parent: this },
        );
      }
      const hash = inputsHash(family);
      const base = IMAGE_MATRIX[family].base;
      const image = new docker.Image(
        `${name}-${family}`,
        {
          // Tags are immutable, so a tag names one set of build inputs; unchanged inputs push nothing.
          imageName: pulumi.interpolate`${repository.repositoryUrl}:${imageTag(family)}-${hash}`,
          build: {
            context: CONTEXT,
            dockerfile: path.join(CONTEXT, IMAGE_MATRIX[family].dockerfile),
            platform: "linux/amd64",
            args: {
              ...buildArgs(family),
              // A family built on another runs on exactly the digest just pushed for it.
              ...("family" in base && { BASE_IMAGE: refs[base.family]! }),
              VERSION: args.version ?? hash,
            },
          },
          registry: registryLogin(repository, this),
        },
        { parent: this },
      );
      refs[family] = image.repoDigest;
    }
    return Object.fromEntries(args.registry.families.map((f) => [f, refs[f]!]));
  }
}

function registryLogin(repository: aws.ecr.Repository, parent: pulumi.Resource): docker.types.input.Registry {
  const token = aws.ecr.getAuthorizationTokenOutput({ registryId: repository.registryId }, { parent });
  return {
    server: repository.repositoryUrl,
    username: token.userName,
    password: token.password,
  };
}

/** An upstream stack's exported image of a family, refusing anything not pinned by digest. */
function upstreamRef(
  upstream: pulumi.StackReference,
  stack: string,
  family: ImageFamily,
): pulumi.Output<string> {
  return upstream.requireOutput("imageRefs").apply((refs: unknown) => {
    const ref = (refs as Record<string, unknown> | undefined)?.[family];
    if (typeof ref !== "string" || !/@sha256:[0-9a-f]{64}$/.test(ref)) {
      throw new Error(
        `crucible:registry.promoteFrom: stack ${stack} exports no ${family} image by digest in imageRefs` +
          ` (got ${JSON.stringify(ref)}); deploy it with ${family} in its crucible:registry.families first`,
      );
    }
    return ref;
  });
}

/** `<account>.dkr.ecr.<region>.amazonaws.com/<name>@sha256:…` → the repository's ARN. */
export function repositoryArnOf(ref: string): string {
  const match = /^(\d{12})\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?\/([^@:]+)[@:]/.exec(ref);
  if (!match)
    throw new Error(
      `${ref} is not an ECR image reference (<account>.dkr.ecr.<region>.amazonaws.com/<name>@sha256:…)`,
    );
  const [, account, region, repository] = match;
  const partition = region!.startsWith("cn-") ? "aws-cn" : "aws";
  return `arn:${partition}:ecr:${region}:${account}:repository/${repository}`;
}

/** Untagged images go after a few days; each family keeps its last N images of its matrix tag. */
export function lifecyclePolicy(
  family: ImageFamily,
  registry: Pick<CrucibleConfig["registry"], "keepImages" | "untaggedExpiryDays">,
): object {
  return {
    rules: [
      {
        rulePriority: 1,
        description: `expire untagged images after ${registry.untaggedExpiryDays} days`,
        selection: {
          tagStatus: "untagged",
          countType: "sinceImagePushed",
          countUnit: "days",
          countNumber: registry.untaggedExpiryDays,
        },
        action: { type: "expire" },
      },
      {
        rulePriority: 2,
        description: `keep the last ${registry.keepImages} ${imageTag(family)} images`,
        selection: {
          tagStatus: "tagged",
          tagPrefixList: [imageTag(family)],
          countType: "imageCountMoreThan",
          countNumber: registry.keepImages,
        },
        action: { type: "expire" },
      },
    ],
  };
}

/** Lets downstream stacks' accounts pull (and only pull). */
export function pullPolicy(accountIds: readonly string[]): object {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "DownstreamPull",
        Effect: "Allow",
        Principal: { AWS: accountIds.map((id) => `arn:aws:iam::${id}:root`) },
        Action: ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
      },
    ],
  };
}

/**
 * Twelve hex digits of the SHA-256 of everything a family is built from, its base family's included:
 * the same inputs give the same tag, any change a new one.
 */
export function inputsHash(family: ImageFamily, root = CONTEXT): string {
  const hash = createHash("sha256");
  const spec = IMAGE_MATRIX[family];
  if ("family" in spec.base) hash.update(`base:${inputsHash(spec.base.family, root)}\n`);
  hash.update(`args:${JSON.stringify(buildArgs(family))}\n`);
  for (const file of spec.inputs.flatMap((input) => filesUnder(path.join(root, input))).sort()) {
    hash.update(`${path.relative(root, file)}\n`);
    hash.update(readFileSync(file));
  }
  return hash.digest("hex").slice(0, 12);
}

function filesUnder(target: string): string[] {
  if (!statSync(target).isDirectory()) return [target];
  return readdirSync(target, { withFileTypes: true })
    .filter((entry) => entry.name !== "__pycache__")
    .flatMap((entry) => filesUnder(path.join(target, entry.name)));
}
