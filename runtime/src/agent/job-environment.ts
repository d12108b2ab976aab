import type { S3Client } from "@aws-sdk/client-s3";
import type Dockerode from "dockerode";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { ImageFamily, JobImageFamily } from "../catalog/image-matrix";
import { imageRef } from "../catalog/image-matrix";
import type { TierName } from "../catalog/tiers";
import { ENVIRONMENT_CACHE_FACTOR, getTier } from "../catalog/tiers";
import type { BuildLimits, PackageSource } from "../environments/builder";
import { buildEnvironment, EnvironmentBuildError } from "../environments/builder";
import type { EnvironmentLease } from "../environments/environment-cache";
import { EnvironmentCache } from "../environments/environment-cache";
import { packEnvironment } from "../environments/environment-files";
import { EnvironmentStore } from "../environments/environment-store";
import { resolvePackageIndex } from "../environments/package-index";
import type { JobRequirements } from "../environments/requirements";
import { packageRefusal } from "../environments/requirements";
import { InvalidJobError } from "../job/job-spec";
import type { ContainerEngine } from "../launch/docker/container-engine";
import { releaseQuotaDirsUnder } from "../launch/quota-volume";
import type { Logger } from "../logger";
import { copyDirectoryFromImage } from "./image-files";

/**
 * The cache's directory under an agent's scratch root (a path the Docker engine sees as it is: it is
 * bind-mounted into jobs), beside the dataset cache.
 */
export const ENVIRONMENT_CACHE_DIR = "crucible-environment-cache";

/** Scratch of a fetch or build in progress, under the cache's root. */
const WORK_PREFIX = "work-";

/** A build's time limit: long enough for a large wheel set on a slow node, short of a stuck resolver. */
const BUILD_SECONDS = 20 * 60;

export interface NodeEnvironmentsOptions {
  /** A client of the datasets bucket (where environments are stored) with the node's credentials. */
  readonly s3: S3Client;
  readonly bucket: string;
  readonly tier: TierName;
  readonly docker: Dockerode;
  readonly engine: ContainerEngine;
  /** The cache's directory (and the builder's files beside it). */
  readonly root: string;
  readonly logger: Logger;
  /** The node's pinned images; the local matrix tags by default. */
  readonly images?: Partial<Record<ImageFamily, string>>;
  /**
   * Where packages come from: an index URL or the stack's CodeArtifact repository (agent-env.ts
   * `packageIndex`), resolved for each build (a CodeArtifact token lasts minutes). Undefined: none, so
   * only what the image holds can be required.
   */
  readonly index?: { readonly identity: string; resolve(): Promise<PackageSource> };
  readonly allow?: readonly string[];
  readonly deny?: readonly string[];
  /** Defaults to the tier's `environmentGiB` times {@link ENVIRONMENT_CACHE_FACTOR}. */
  readonly capacityBytes?: number;
}

/** What a job asks of its environment. */
export interface EnvironmentRequest {
  readonly jobId: string;
  readonly requirements: JobRequirements;
  readonly family: JobImageFamily;
  readonly signal?: AbortSignal;
  /** The build's output, for the job's log. */
  readonly onOutput: (text: string) => void;
}

/** An index URL's form for the environment key and logs: no credentials, which change and are secret. */
export function indexIdentity(url: string): string {
  const parsed = new URL(url);
  parsed.username = "";
  parsed.password = "";
  return parsed.toString();
}

/**
 * The stack's index as the agent's environment names it (agent-env.ts `packageIndex`): a URL, or its
 * CodeArtifact repository, whose endpoint and a short-lived token are asked for at each build.
 */
export function stackPackageIndex(
  value: string,
  region: string,
): NonNullable<NodeEnvironmentsOptions["index"]> {
  return {
    identity: value.startsWith("codeartifact://") ? value : indexIdentity(value),
    resolve: () => resolvePackageIndex(value, { region }),
  };
}

/**
 * A node's job environments: each (job image, builder, index, normalised requirements) is built once,
 * stored in the stack's bucket and cached here, so the next job with the same requirements — on this
 * node or another — starts without a build.
 */
export class NodeEnvironments {
  private readonly inFlight = new Map<string, Promise<EnvironmentLease>>();
  /** The builder image's files, copied out once per builder image, when the first job needs them. */
  private builder: Promise<{ readonly dir: string; readonly id: string }> | undefined;

  private constructor(
    private readonly options: NodeEnvironmentsOptions,
    private readonly store: EnvironmentStore,
    private readonly cache: EnvironmentCache,
  ) {}

  /** Takes up what an earlier agent cached, and removes the work it left half done. */
  static async open(options: NodeEnvironmentsOptions): Promise<NodeEnvironments> {
    const { root, tier, logger } = options;
    const capacity =
      options.capacityBytes ?? getTier(tier).environmentGiB * ENVIRONMENT_CACHE_FACTOR * 2 ** 30;
    await mkdir(root, { recursive: true });
    for (const name of await readdir(root))
      if (name.startsWith(WORK_PREFIX)) {
        // A build's volume stays mounted when its agent dies mid-build.
        await releaseQuotaDirsUnder(join(root, name));
        await rm(join(root, name), { recursive: true, force: true });
      }
    const cache = new EnvironmentCache(join(root, "entries"), capacity, logger);
    await cache.start();
    return new NodeEnvironments(options, new EnvironmentStore(options.s3, options.bucket), cache);
  }

  private builderFiles(): Promise<{ readonly dir: string; readonly id: string }> {
    this.builder ??= this.copyBuilder().catch((error: unknown) => {
      this.builder = undefined;
      throw error;
    });
    return this.builder;
  }

  private async copyBuilder(): Promise<{ readonly dir: string; readonly id: string }> {
    const { docker, logger, root } = this.options;
    const image = this.options.images?.builder ?? imageRef("builder");
    const id = await docker
      .getImage(image)
      .inspect()
      .then(
        (info) => info.Id,
        (error: unknown) => {
          throw new Error(
            `the environment builder image ${image} is not on this node (${(error as Error).message}); build it with \`npm run images -- build --family builder\``,
          );
        },
      );
    const dir = join(root, `builder-${id.replace(/^sha256:/, "").slice(0, 16)}`);
    if (!(await readdir(dir).catch(() => [] as string[])).includes("builder")) {
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { recursive: true });
      const dest = join(dir, "builder");
      await copyDirectoryFromImage({ docker, logger, image, path: "/opt/crucible/builder", dest });
    }
    return { dir: join(dir, "builder"), id };
  }

  /**
   * The job's environment, held until released: from this node's cache, else the stack's store, else
   * built. A refused package or a failed build is an {@link InvalidJobError} naming the cause.
   */
  async acquire(request: EnvironmentRequest): Promise<EnvironmentLease> {
    const { allow, deny } = this.options;
    const refusal = packageRefusal(request.requirements.names, { allow, deny });
    if (refusal) throw new InvalidJobError("requirements", `requirements: ${refusal}`);
    const image = this.options.images?.[request.family] ?? imageRef(request.family);
    const imageId = (await this.options.docker.getImage(image).inspect()).Id;
    const key = this.keyOf(imageId, (await this.builderFiles()).id, request.requirements);
    const cached = this.cache.lookup(key);
    if (cached) {
      request.onOutput(`crucible: environment ${key.slice(0, 12)} is cached on this node; no build\n`);
      return cached;
    }
    let pending = this.inFlight.get(key);
    if (!pending) {
      pending = this.fetchOrBuild(key, image, request).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, pending);
      return pending;
    }
    await pending.catch(() => undefined);
    return this.cache.lookup(key) ?? this.acquire(request);
  }

  private keyOf(imageId: string, builderId: string, requirements: JobRequirements): string {
    const identity = {
      v: 1,
      image: imageId,
      builder: builderId,
      index: this.options.index?.identity ?? "none",
      requirements: requirements.lines,
    };
    return createHash("sha256").update(JSON.stringify(identity)).digest("hex");
  }

  private async fetchOrBuild(
    key: string,
    image: string,
    request: EnvironmentRequest,
  ): Promise<EnvironmentLease> {
    const { logger, root } = this.options;
    const work = await mkdtemp(join(root, WORK_PREFIX));
    try {
      const archive = join(work, "env.tar");
      const stored = await this.store.find(key);
      if (stored) {
        request.onOutput(
          `crucible: environment ${key.slice(0, 12)} was built before; downloading it (${stored.packages.length} packages)\n`,
        );
        await this.store.download(stored, archive);
        this.checkInstalled(stored.packages);
        return await this.cache.install(stored, archive);
      }
      const started = performance.now();
      request.onOutput(
        `crucible: building environment ${key.slice(0, 12)} for ${request.requirements.source} (${request.requirements.lines.length} requirements)\n`,
      );
      let log = "";
      const built = await buildEnvironment({
        engine: this.options.engine,
        image,
        builderDir: (await this.builderFiles()).dir,
        requirements: request.requirements,
        ...(this.options.index && { index: await this.options.index.resolve() }),
        workDir: await mkdtemp(join(work, "build-")),
        limits: this.limits(),
        logger,
        jobId: request.jobId,
        ...(request.signal && { signal: request.signal }),
        onOutput: (text) => {
          if (log.length < 1024 ** 2) log += text;
          request.onOutput(text);
        },
      }).catch((error: unknown) => {
        if (error instanceof EnvironmentBuildError)
          throw new InvalidJobError("requirements", `requirements: ${error.message}`);
        throw error;
      });
      try {
        this.checkInstalled(built.packages);
        await packEnvironment(built.dir, archive);
      } finally {
        await built.release();
      }
      const buildSeconds = Math.round((performance.now() - started) / 100) / 10;
      const manifest = await this.store.put(
        {
          key,
          bytes: built.bytes,
          pythonPath: [...built.pythonPath],
          packages: [...built.packages],
          image,
          requirements: [...request.requirements.lines],
          builtAt: new Date().toISOString(),
          buildSeconds,
        },
        archive,
        log,
      );
      request.onOutput(`crucible: environment ${key.slice(0, 12)} built in ${buildSeconds} s and stored\n`);
      return await this.cache.install(manifest, archive);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** The deny list applies to everything installed, dependencies included (the allow list to what is asked). */
  private checkInstalled(packages: readonly { name: string }[]): void {
    const refusal = packageRefusal(
      packages.map((p) => p.name),
      { deny: this.options.deny ?? [] },
    );
    if (refusal)
      throw new InvalidJobError("requirements", `requirements: a dependency is refused: ${refusal}`);
  }

  private limits(): BuildLimits {
    const tier = getTier(this.options.tier);
    return {
      memoryMiB: tier.memoryMiB,
      vcpus: tier.vcpus,
      pidsLimit: Math.max(tier.pidsLimit, 256),
      seconds: BUILD_SECONDS,
      maxBytes: tier.environmentGiB * 2 ** 30,
    };
  }
}
