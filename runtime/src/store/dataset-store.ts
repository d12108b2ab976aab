import type { S3Client } from "@aws-sdk/client-s3";
import { mapBounded } from "./map-bounded";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { lstat, readdir } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { DATASETS_PRECACHED_PREFIX, userDatasetsPrefix } from "../catalog/bucket-layout";
import type { DatasetFile, DatasetManifest, DatasetRef } from "../catalog/datasets";
import {
  buildManifest,
  datasetManifestSchema,
  datasetNameSchema,
  datasetPathProblem,
  formatDatasetRef,
  isPrecachedName,
  MAX_DATASET_FILES,
} from "../catalog/datasets";
import { jobAddressSchema } from "../job/contract";
import type { Logger } from "../logger";
import { partBytes } from "./job-store";

/**
 * Datasets in the datasets bucket (bucket-layout.ts): a researcher pushes a directory as the next
 * immutable version of a name under their own prefix, lists theirs and the platform's pre-cached sets,
 * and an agent resolves the version a job names and reads its files by content. Files go up once per
 * content (`blobs/<sha256>`), so a version that changes one file uploads one file.
 *
 * Everything under a user's prefix was written with that user's credentials and may be rewritten after the
 * push, so manifests are parsed again on every read and blobs are verified by whoever downloads them
 * (agent/dataset-cache.ts). Which prefix is read is decided here from the owner the caller passes (for an
 * agent, the job's authenticated address), never from what a manifest says.
 */

/** Whose datasets: a project's user, as a job's address names them. */
export interface DatasetOwner {
  readonly project: string;
  readonly user: string;
}

/** One version, as `crucible datasets ls` shows it. */
export interface DatasetVersion extends DatasetRef {
  readonly totalBytes: number;
  readonly fileCount: number;
  readonly createdAt: string;
  readonly digest: string;
  /** Pushed by the owner, or one of the platform's pre-cached sets. */
  readonly source: "yours" | "precached";
}

/** A version a job may use: its checked manifest, and the prefix whose `blobs/` hold its files. */
export interface ResolvedDataset {
  readonly manifest: DatasetManifest;
  readonly prefix: string;
}

export interface DatasetPushOptions {
  /** Called as blobs go up: bytes sent so far of the bytes that were not in the store already. */
  onProgress?(sentBytes: number, totalBytes: number): void;
}

/** The ref names no version there is; the message says which exist, or how to push the first. */
export class DatasetNotFoundError extends Error {
  override readonly name = "DatasetNotFoundError";
  constructor(
    readonly ref: DatasetRef,
    readonly versions: readonly number[],
    message: string,
  ) {
    super(message);
  }
}

/** What the caller named cannot be pushed (the name, the directory or a file in it); the message says why. */
export class DatasetInputError extends Error {
  override readonly name = "DatasetInputError";
}

/** A manifest in the store does not pass the schema: someone rewrote it after it was pushed. */
export class DatasetManifestError extends Error {
  override readonly name = "DatasetManifestError";
}

/** A file of a directory to push or seed: where it is, and its recorded size and SHA-256. */
export interface ScannedFile extends DatasetFile {
  readonly source: string;
}

/** Largest manifest read: 100,000 files at their longest paths fit well under it. */
const MAX_MANIFEST_BYTES = 128 * 2 ** 20;
/** S3 calls (HEADs, uploads) at once during a push. */
const PUSH_CONCURRENCY = 8;
/** Times a push looks for the next free version number when another push took it first. */
const MAX_VERSION_ATTEMPTS = 5;

const ownerSchema = jobAddressSchema.pick({ project: true, user: true });
const MANIFEST_KEY = /^v([1-9]\d{0,15})\.json$/;

export class DatasetStore {
  private readonly s3: S3Client;
  private readonly logger: Logger;
  readonly bucket: string;

  constructor(options: { readonly s3: S3Client; readonly bucket: string; readonly logger: Logger }) {
    this.s3 = options.s3;
    this.bucket = options.bucket;
    this.logger = options.logger;
  }

  /**
   * Pushes `dir` (regular files and directories only) as the next version of `name` under the owner's
   * prefix, uploading only the files whose content the prefix does not hold yet. When the newest version
   * holds the same content, nothing is written and it is answered with `created: false`.
   */
  async push(
    owner: DatasetOwner,
    name: string,
    dir: string,
    options: DatasetPushOptions = {},
  ): Promise<{ manifest: DatasetManifest; created: boolean }> {
    const checkedName = checkName(name);
    if (isPrecachedName(checkedName))
      throw new DatasetInputError(
        `"${checkedName}" is the name of one of the platform's pre-cached datasets (crucible datasets ls); push under another name`,
      );
    const prefix = userDatasetsPrefix(...ownerParts(owner));
    const files = await scanDatasetDirectory(dir);
    await this.uploadBlobs(prefix, files, options);
    for (let attempt = 0; attempt < MAX_VERSION_ATTEMPTS; attempt++) {
      const versions = await this.versionsOf(prefix, checkedName);
      const latest = versions.at(-1);
      if (latest !== undefined) {
        const newest = await this.readManifest(prefix, { name: checkedName, version: latest }).catch(
          (error: unknown) => {
            // A rewritten newest version is no reason to refuse a push: the next version is new content.
            if (error instanceof DatasetManifestError) return undefined;
            throw error;
          },
        );
        const digest = buildManifest({ name: checkedName, version: 1 }, files).digest;
        if (newest?.digest === digest) return { manifest: newest, created: false };
      }
      const manifest = buildManifest({ name: checkedName, version: (latest ?? 0) + 1 }, files);
      if (await this.putManifest(prefix, manifest)) return { manifest, created: true };
      this.logger.info(
        { key: manifestKey(prefix, manifest) },
        "dataset version taken by another push; trying the next",
      );
    }
    throw new Error(
      `pushing ${checkedName} failed: ${MAX_VERSION_ATTEMPTS} other pushes of the same name took each next version first`,
    );
  }

  /** The owner's versions and the published pre-cached ones, by name then version. */
  async list(owner: DatasetOwner): Promise<DatasetVersion[]> {
    const own = userDatasetsPrefix(...ownerParts(owner));
    const found = [
      ...(await this.listPrefix(own, "yours")),
      ...(await this.listPrefix(DATASETS_PRECACHED_PREFIX, "precached")),
    ];
    return found.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.version - b.version));
  }

  /**
   * The version `ref` names: a pre-cached set's under `precached/`, any other under the owner's prefix
   * only. A {@link DatasetNotFoundError} when there is no such version, a {@link DatasetManifestError}
   * when its manifest was rewritten into something invalid.
   */
  async resolve(owner: DatasetOwner, ref: DatasetRef): Promise<ResolvedDataset> {
    const name = checkName(ref.name);
    const prefix = isPrecachedName(name)
      ? DATASETS_PRECACHED_PREFIX
      : userDatasetsPrefix(...ownerParts(owner));
    // Listed first, rather than reading and taking a 404 as absence: a submitter may list only below their
    // own prefix, and S3 answers such a caller 403, not 404, for a key that does not exist.
    const versions = await this.versionsOf(prefix, name);
    const manifest = versions.includes(ref.version)
      ? await this.readManifest(prefix, { name, version: ref.version })
      : undefined;
    if (manifest) return { manifest, prefix };
    const wanted = formatDatasetRef(ref);
    if (versions.length === 0) {
      const message = isPrecachedName(name)
        ? `no dataset ${wanted}: the pre-cached set ${name} is not published yet (an agent publishes it when it starts)`
        : `no dataset ${wanted}: ${owner.project}/${owner.user} has no dataset named ${name}; push one with \`crucible datasets push ${name} DIR\``;
      throw new DatasetNotFoundError(ref, versions, message);
    }
    throw new DatasetNotFoundError(
      ref,
      versions,
      `no dataset ${wanted}: ${name} has version${versions.length === 1 ? "" : "s"} ${versions.join(", ")}`,
    );
  }

  /** The stored content of one file, to be verified against the manifest by the reader. */
  async getBlob(prefix: string, sha256: string): Promise<Readable> {
    const key = blobKey(prefix, sha256);
    this.logger.debug({ key }, "dataset blob get");
    try {
      const out = await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return out.Body as Readable;
    } catch (error) {
      // A manifest naming content its prefix does not hold: someone removed or never pushed it.
      if (isNotFound(error))
        throw new DatasetManifestError(
          `the file with SHA-256 ${sha256} that the manifest names is missing from ${prefix}blobs/; push the dataset again`,
        );
      throw error;
    }
  }

  /**
   * Puts a pre-cached set (`dir`, as a node holds it) under `precached/` unless its version is there
   * already; versions are immutable, so one published with other content (a node built from an older image)
   * stays, and is what jobs get. Answers the stored manifest.
   */
  async publishPrecached(
    ref: DatasetRef,
    dir: string,
    options: { readonly exclude?: readonly string[] } = {},
  ): Promise<{ manifest: DatasetManifest; created: boolean }> {
    if (!isPrecachedName(ref.name))
      throw new DatasetInputError(`${ref.name} is not one of the platform's pre-cached datasets`);
    const prefix = DATASETS_PRECACHED_PREFIX;
    const files = await scanDatasetDirectory(dir, options);
    const existing = await this.readManifest(prefix, ref);
    const digest = buildManifest(ref, files).digest;
    if (existing) {
      if (existing.digest !== digest)
        this.logger.warn(
          { dataset: formatDatasetRef(ref), stored: existing.digest, local: digest },
          "the published pre-cached dataset differs from this node's copy; jobs get the published one",
        );
      return { manifest: existing, created: false };
    }
    await this.uploadBlobs(prefix, files, {});
    const manifest = buildManifest(ref, files);
    if (await this.putManifest(prefix, manifest)) return { manifest, created: true };
    // Another node published it between the read and the write.
    return { manifest: (await this.readManifest(prefix, ref))!, created: false };
  }

  /** Uploads the blobs the prefix does not hold, each checked against its hash as it goes up. */
  private async uploadBlobs(
    prefix: string,
    files: readonly ScannedFile[],
    options: DatasetPushOptions,
  ): Promise<void> {
    const byHash = new Map<string, ScannedFile>();
    for (const file of files) if (!byHash.has(file.sha256)) byHash.set(file.sha256, file);
    const unique = [...byHash.values()];
    const present = await mapBounded(unique, PUSH_CONCURRENCY, (f) => this.exists(blobKey(prefix, f.sha256)));
    const missing = unique.filter((_, i) => !present[i]);
    const total = missing.reduce((sum, f) => sum + f.size, 0);
    this.logger.info(
      { prefix, files: files.length, blobs: unique.length, missing: missing.length, bytes: total },
      "dataset blobs to upload",
    );
    let sent = 0;
    await mapBounded(missing, PUSH_CONCURRENCY, async (file) => {
      await this.uploadBlob(prefix, file, (bytes) => {
        sent += bytes;
        options.onProgress?.(sent, total);
      });
    });
    this.logger.info({ prefix, blobs: missing.length, bytes: total }, "dataset blobs uploaded");
  }

  /**
   * Uploads one file to its blob key, hashing what is read: a file changed since it was hashed would
   * leave a blob that is not its key's content, so that blob is deleted and the push refused.
   */
  private async uploadBlob(
    prefix: string,
    file: ScannedFile,
    onBytes: (bytes: number) => void,
  ): Promise<void> {
    const key = blobKey(prefix, file.sha256);
    const hash = createHash("sha256");
    let size = 0;
    const body = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        size += chunk.length;
        onBytes(chunk.length);
        callback(null, chunk);
      },
    });
    const reading = pipeline(createReadStream(file.source), body);
    this.logger.debug({ key, size: file.size }, "s3 upload");
    const upload = new Upload({
      client: this.s3,
      params: { Bucket: this.bucket, Key: key, Body: body },
      partSize: partBytes(file.size),
      queueSize: 2,
    });
    try {
      await Promise.all([upload.done(), reading]);
    } catch (error) {
      // The file is not read further once the upload failed.
      body.destroy();
      throw error;
    }
    this.logger.debug({ key, size }, "s3 uploaded");
    const sha256 = hash.digest("hex");
    if (sha256 !== file.sha256 || size !== file.size) {
      await this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key }));
      throw new DatasetInputError(
        `${file.source} changed while it was pushed; push again once nothing writes to it`,
      );
    }
  }

  /**
   * Writes a new version's manifest, never over an existing one: false when the key is taken. Real S3
   * honours `If-None-Match: *` and answers 412 to the second of two racing pushes; the local emulator
   * (fauxqs 1.9.2) ignores the header, so the HEAD before it is what keeps a local push from overwriting
   * (racing local pushes of one name could still both write).
   */
  private async putManifest(prefix: string, manifest: DatasetManifest): Promise<boolean> {
    const key = manifestKey(prefix, manifest);
    if (await this.exists(key)) return false;
    this.logger.debug({ key }, "s3 put dataset manifest");
    try {
      await this.s3.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: JSON.stringify(manifest),
          ContentType: "application/json",
          IfNoneMatch: "*",
        }),
      );
    } catch (error) {
      if (httpStatus(error) === 412) return false;
      throw error;
    }
    this.logger.info({ key, digest: manifest.digest, bytes: manifest.totalBytes }, "dataset version written");
    return true;
  }

  /** A version's manifest, checked, or undefined when there is none. */
  private async readManifest(prefix: string, ref: DatasetRef): Promise<DatasetManifest | undefined> {
    const key = manifestKey(prefix, ref);
    let text: string;
    try {
      const out = await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      if ((out.ContentLength ?? 0) > MAX_MANIFEST_BYTES)
        throw new DatasetManifestError(`${key} is ${out.ContentLength} bytes, more than a manifest may be`);
      text = await out.Body!.transformToString("utf8");
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new DatasetManifestError(`the manifest of ${formatDatasetRef(ref)} (${key}) is not JSON`);
    }
    const parsed = datasetManifestSchema.safeParse(json);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new DatasetManifestError(
        `the manifest of ${formatDatasetRef(ref)} (${key}) is invalid: ${issue?.path.join(".")} ${issue?.message}`,
      );
    }
    if (parsed.data.name !== ref.name || parsed.data.version !== ref.version)
      throw new DatasetManifestError(
        `the manifest at ${key} says it is ${formatDatasetRef(parsed.data)}, not ${formatDatasetRef(ref)}`,
      );
    return parsed.data;
  }

  /** The version numbers of `name` under `prefix`, ascending. */
  private async versionsOf(prefix: string, name: string): Promise<number[]> {
    const keys = await this.keys(`${prefix}${name}/`);
    return keys
      .map((key) => MANIFEST_KEY.exec(key.slice(prefix.length + name.length + 1))?.[1])
      .filter((v): v is string => v !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
  }

  /** Every valid version under a prefix; a rewritten manifest is left out with a warning. */
  private async listPrefix(prefix: string, source: DatasetVersion["source"]): Promise<DatasetVersion[]> {
    const refs = (await this.keys(prefix)).flatMap((key): DatasetRef[] => {
      const [name, file, ...rest] = key.slice(prefix.length).split("/");
      const version = MANIFEST_KEY.exec(file ?? "")?.[1];
      if (rest.length > 0 || version === undefined || !datasetNameSchema.safeParse(name).success) return [];
      return [{ name: name!, version: Number(version) }];
    });
    const manifests = await mapBounded(refs, PUSH_CONCURRENCY, (ref) =>
      this.readManifest(prefix, ref).catch((error: unknown) => {
        if (!(error instanceof DatasetManifestError)) throw error;
        this.logger.warn({ err: error }, "dataset manifest left out of the list");
        return undefined;
      }),
    );
    return manifests.flatMap((m) =>
      m
        ? [
            {
              name: m.name,
              version: m.version,
              totalBytes: m.totalBytes,
              fileCount: m.files.length,
              createdAt: m.createdAt,
              digest: m.digest,
              source,
            },
          ]
        : [],
    );
  }

  private async keys(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    this.logger.debug({ prefix }, "s3 list");
    do {
      const out = await this.s3.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const object of out.Contents ?? []) if (object.Key) keys.push(object.Key);
      token = out.IsTruncated ? out.NextContinuationToken : undefined;
    } while (token);
    this.logger.debug({ prefix, keys: keys.length }, "s3 listed");
    return keys;
  }

  /**
   * Whether an object exists, by listing its key: a submitter's HEAD of a missing key is answered 403
   * rather than 404 on S3, as their list permission holds only below their own prefix.
   */
  private async exists(key: string): Promise<boolean> {
    const page = await this.s3.send(
      new ListObjectsV2Command({ Bucket: this.bucket, Prefix: key, MaxKeys: 1 }),
    );
    return page.Contents?.[0]?.Key === key;
  }
}

/**
 * The regular files under `dir`, each hashed (streaming), in path order. A link, socket, device or
 * FIFO anywhere refuses the directory (naming it): a dataset is what the directory holds, not what it
 * points at. At most {@link MAX_DATASET_FILES} files; `exclude` names top-level entries to leave out.
 */
export async function scanDatasetDirectory(
  dir: string,
  options: { readonly exclude?: readonly string[] } = {},
): Promise<ScannedFile[]> {
  const top = await lstat(dir).catch((error: NodeJS.ErrnoException) => {
    throw new DatasetInputError(
      error.code === "ENOENT" ? `${dir} does not exist` : `cannot read ${dir} (${error.code})`,
    );
  });
  if (!top.isDirectory()) throw new DatasetInputError(`${dir} is not a directory; push a directory of files`);
  const found: { path: string; source: string }[] = [];
  const walk = async (relative: string): Promise<void> => {
    const here = relative === "" ? dir : join(dir, relative);
    const entries = await readdir(here, { withFileTypes: true });
    for (const entry of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (relative === "" && options.exclude?.includes(entry.name)) continue;
      const path = relative === "" ? entry.name : `${relative}/${entry.name}`;
      const source = join(dir, path);
      const problem = datasetPathProblem(path);
      if (problem)
        throw new DatasetInputError(`${JSON.stringify(source)} cannot be in a dataset: its path ${problem}`);
      if (entry.isDirectory()) await walk(path);
      else if (entry.isFile()) {
        found.push({ path, source });
        if (found.length > MAX_DATASET_FILES)
          throw new DatasetInputError(
            `${dir} holds more than ${MAX_DATASET_FILES} files, more than a dataset may`,
          );
      } else
        throw new DatasetInputError(
          `${source} is ${entry.isSymbolicLink() ? "a symbolic link" : "not a regular file (a socket, device or FIFO)"}: a dataset holds regular files only; copy what it points to into the directory instead`,
        );
    }
  };
  await walk("");
  if (found.length === 0) throw new DatasetInputError(`${dir} holds no files; a dataset needs at least one`);
  return mapBounded(found, PUSH_CONCURRENCY, async ({ path, source }) => ({
    path,
    source,
    ...(await hashFile(source)),
  }));
}

/** A file's size and SHA-256, read once. */
export async function hashFile(file: string): Promise<{ size: number; sha256: string }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { size, sha256: hash.digest("hex") };
}

/** The key of a version's manifest. */
export const manifestKey = (prefix: string, ref: DatasetRef): string =>
  `${prefix}${ref.name}/v${ref.version}.json`;

/** The key of a file's content under a prefix (`precached/` or a user's). */
export function blobKey(prefix: string, sha256: string): string {
  if (!/^[0-9a-f]{64}$/.test(sha256))
    throw new Error(`a blob is named by 64 lowercase hex digits, got "${sha256}"`);
  if (
    prefix !== DATASETS_PRECACHED_PREFIX &&
    !/^users\/[a-z0-9][a-z0-9-]*\/[a-z0-9][a-z0-9._-]*\/$/.test(prefix)
  )
    throw new Error(`datasets live under precached/ or users/<project>/<user>/, not "${prefix}"`);
  return `${prefix}blobs/${sha256}`;
}

function checkName(name: string): string {
  const parsed = datasetNameSchema.safeParse(name);
  if (!parsed.success) throw new DatasetInputError(`dataset name ${parsed.error.issues[0]?.message}`);
  return parsed.data;
}

function ownerParts(owner: DatasetOwner): [project: string, user: string] {
  const parsed = ownerSchema.safeParse({ project: owner.project, user: owner.user });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const key = String(issue?.path[0]);
    throw new DatasetInputError(
      `${key} ${issue?.message}, got "${String(owner[key as keyof DatasetOwner])}"`,
    );
  }
  return [parsed.data.project, parsed.data.user];
}

function httpStatus(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

function isNotFound(error: unknown): boolean {
  const name = (error as { name?: string }).name;
  return name === "NoSuchKey" || name === "NotFound" || httpStatus(error) === 404;
}
