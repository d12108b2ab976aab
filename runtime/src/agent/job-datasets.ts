import type { S3Client } from "@aws-sdk/client-s3";
import type Dockerode from "dockerode";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { z } from "zod";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { DatasetRef } from "../catalog/datasets";
import { formatDatasetRef, PRECACHED_DATASETS } from "../catalog/datasets";
import { imageRef } from "../catalog/image-matrix";
import { InvalidJobError } from "../job/job-spec";
import type { DatasetOwner, ResolvedDataset } from "../store/dataset-store";
import { DatasetManifestError, DatasetNotFoundError } from "../store/dataset-store";
import type { DatasetLease } from "./dataset-cache";
import { checkFitsCache, DatasetCache, DatasetIntegrityError, DatasetTooLargeError } from "./dataset-cache";
import { DatasetStore } from "../store/dataset-store";
import { precachedSeeds } from "./image-files";
import type { ImageFamily } from "../catalog/image-matrix";
import type { TierName } from "../catalog/tiers";
import { getTier } from "../catalog/tiers";
import type { Logger } from "../logger";

/** What a node offers jobs that name datasets: the datasets bucket, and its own cache of them. */
export interface NodeDatasets {
  readonly store: DatasetStore;
  readonly cache: DatasetCache;
  /** The cache's size, which no dataset a job names may pass. */
  readonly capacityBytes: number;
  /** The node as refusals name it: "a cpu-large node". */
  readonly description: string;
}

/**
 * The cache's directory under an agent's scratch root (its TMPDIR, which a fleet node bind-mounts into
 * the agent at the same path, so the engine finds the directories the agent names: infra/fleet/user-data.ts).
 */
export const DATASET_CACHE_DIR = "crucible-dataset-cache";

export interface NodeDatasetsOptions {
  /** A client of the datasets bucket with the node's (agent's) credentials. */
  readonly s3: S3Client;
  readonly bucket: string;
  readonly tier: TierName;
  /** The cache's directory: a path the Docker engine sees as it is (it is bind-mounted into jobs). */
  readonly root: string;
  readonly logger: Logger;
  /** The engine to copy pre-cached sets out of job images with. Required unless `precached` is false. */
  readonly docker?: Dockerode;
  /** The node's pinned job images. Defaults to the local matrix tags. */
  readonly images?: Partial<Record<ImageFamily, string>>;
  /** Defaults to the tier's `datasetCacheGiB`. */
  readonly capacityBytes?: number;
  /** Whether to seed (and publish) the platform's pre-cached sets. Defaults to true. */
  readonly precached?: boolean;
}

/**
 * A node's datasets, ready for jobs: the cache takes up what an earlier agent left, then is seeded with
 * the platform's pre-cached sets from what the node already holds (pinned, published under `precached/`
 * for `crucible datasets ls` and for other nodes' jobs).
 */
export async function openNodeDatasets(options: NodeDatasetsOptions): Promise<NodeDatasets> {
  const { s3, bucket, tier, root, logger } = options;
  const capacityBytes = options.capacityBytes ?? getTier(tier).datasetCacheGiB * 2 ** 30;
  const description = `a ${tier} node`;
  const store = new DatasetStore({ s3, bucket, logger });
  const cache = new DatasetCache({ root, capacityBytes, store, logger, node: description });
  await cache.start();
  if (options.precached ?? true) {
    if (!options.docker) throw new Error("seeding the pre-cached datasets needs the Docker engine");
    await seedPrecachedSets(cache, { ...options, docker: options.docker });
  }
  return { store, cache, capacityBytes, description };
}

/**
 * Which image (by id) and directory each pre-cached set was copied out of, and the digest it was
 * published with, kept beside the cache: an agent restarted on the same node (a warm pool's, after
 * every start) finds the entry already there and skips copying it out of the image again.
 */
const SEEDED_RECORD = "seeded-from-images.json";
const seededRecordSchema = z.record(z.string(), z.string());

/** The record as it was left; none (every set copied again) when it is missing or damaged. */
async function readSeededRecord(path: string): Promise<Record<string, string>> {
  try {
    return seededRecordSchema.parse(JSON.parse(await readFile(path, "utf8")));
  } catch {
    return {};
  }
}

async function seedPrecachedSets(
  cache: DatasetCache,
  options: NodeDatasetsOptions & { readonly docker: Dockerode },
): Promise<void> {
  const { docker, logger } = options;
  const record = await readSeededRecord(join(options.root, SEEDED_RECORD));
  const held = new Set(cache.digests);
  const sources = await Promise.all(
    PRECACHED_DATASETS.map(async (dataset) => {
      const { source } = dataset;
      if (source.kind !== "image") return { dataset, key: undefined };
      const image = options.images?.[source.family] ?? imageRef(source.family);
      const { Id } = await docker.getImage(image).inspect();
      return { dataset, key: `${Id} ${source.path}` };
    }),
  );
  // Sets from the runtime package are read where they are, which is cheap: only image copies are skipped.
  const due = sources.filter(({ key }) => key === undefined || !held.has(record[key] ?? ""));
  const workDir = await mkdtemp(join(tmpdir(), "crucible-precached-"));
  try {
    const seeds = await precachedSeeds({
      docker,
      logger,
      workDir,
      datasets: due.map(({ dataset }) => dataset),
      ...(options.images && { images: options.images }),
    });
    const published = await cache.seedPrecached(seeds);
    due.forEach(({ key }, i) => {
      if (key !== undefined) record[key] = published[i]!.digest;
    });
    await writeFile(join(options.root, SEEDED_RECORD), JSON.stringify(record));
    logger.info(
      {
        seeded: published.map(formatDatasetRef),
        kept: sources.filter((s) => !due.includes(s)).map(({ dataset }) => formatDatasetRef(dataset)),
      },
      "pre-cached datasets ready",
    );
  } finally {
    await rm(workDir, { recursive: true, force: true });
  }
}

/**
 * The datasets a job names, resolved in its owner's prefix (or the pre-cached sets) and checked to fit
 * the node's cache: what admission does before anything runs. A missing name or version, a manifest the
 * owner rewrote into something invalid, or a set larger than the cache makes the job an `invalid_job`
 * ({@link InvalidJobError} on `datasets`), the message naming the dataset and what exists or fits.
 */
export async function resolveJobDatasets(
  node: NodeDatasets | undefined,
  owner: DatasetOwner,
  refs: readonly DatasetRef[],
): Promise<ResolvedDataset[]> {
  if (refs.length === 0) return [];
  if (!node)
    throw new InvalidJobError(
      "datasets",
      `datasets ${refs.map(formatDatasetRef).join(", ")}: this agent has no dataset cache (that needs CRUCIBLE_DATASETS_BUCKET), so it runs no job that names datasets`,
    );
  const resolved: ResolvedDataset[] = [];
  for (const ref of refs) {
    try {
      const dataset = await node.store.resolve(owner, ref);
      checkFitsCache(dataset.manifest, node.capacityBytes, node.description);
      resolved.push(dataset);
    } catch (error) {
      throw asInvalidDatasets(error);
    }
  }
  return resolved;
}

/**
 * Each resolved dataset from the node cache, downloaded and verified if it is not there yet: the
 * directories to mount by name, held until `release`. Should one fail, those taken are released.
 * A file that is missing or does not match its manifest makes the job an `invalid_job`; a cache too full of sets in
 * use (`DatasetCacheBusyError`) and store failures are thrown as they are, for the caller to retry later.
 */
export async function acquireJobDatasets(
  cache: DatasetCache,
  datasets: readonly ResolvedDataset[],
): Promise<{ readonly dirs: Record<string, string>; release(): Promise<void> }> {
  const leases: DatasetLease[] = [];
  const release = async (): Promise<void> => {
    await Promise.all(leases.map((lease) => lease.release()));
  };
  const dirs: Record<string, string> = {};
  try {
    for (const dataset of datasets) {
      const lease = await cache.acquire(dataset);
      leases.push(lease);
      dirs[dataset.manifest.name] = lease.dir;
    }
  } catch (error) {
    await release();
    throw asInvalidDatasets(error);
  }
  return { dirs, release };
}

function asInvalidDatasets(error: unknown): unknown {
  const invalid =
    error instanceof DatasetNotFoundError ||
    error instanceof DatasetManifestError ||
    error instanceof DatasetTooLargeError ||
    error instanceof DatasetIntegrityError;
  return invalid ? new InvalidJobError("datasets", `datasets: ${(error as Error).message}`) : error;
}
