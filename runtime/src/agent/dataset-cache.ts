import { createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import {
  chmod,
  copyFile,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  utimes,
  writeFile,
} from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import type { Readable } from "node:stream";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import type { DatasetFile, DatasetManifest, DatasetRef } from "../catalog/datasets";
import {
  buildManifest,
  datasetManifestSchema,
  formatDatasetBytes,
  formatDatasetRef,
} from "../catalog/datasets";
import type { Logger } from "../logger";
import type { DatasetStore, ResolvedDataset } from "../store/dataset-store";
import { scanDatasetDirectory } from "../store/dataset-store";
import { mapBounded } from "../store/map-bounded";

/**
 * A node's cache of the datasets its jobs name, on the node's disk so it outlives the agent: one entry per
 * content (a version's manifest digest, so two names or versions with the same files share it), holding
 * exactly the manifest's files, each verified against its SHA-256 as it arrives. The launcher bind-mounts
 * an entry read-only at `/datasets/NAME`; its files are 0444 and its directories 0555, owned by the agent,
 * so a job's uid can neither write nor change them back.
 *
 * Layout under the root: `entries/<digest hex>/` the files, and `entries/<digest hex>.json` the marker
 * (the manifest; whether it is pinned) written only once every file is verified, so an entry without its
 * marker is a download a crash cut short, removed at start with everything under `partial/`. The
 * marker's mtime is when the entry was last used: least recently used entries nobody holds are evicted to
 * make room, after a restart too. Pre-cached sets are pinned and never evicted.
 */

export interface DatasetCacheOptions {
  readonly root: string;
  readonly capacityBytes: number;
  readonly store: DatasetStore;
  readonly logger: Logger;
  /** How refusals name the node, as in "the 8 GiB dataset cache of a cpu-large node". Defaults to "this node". */
  readonly node?: string;
}

/** A cache entry a job uses: the directory to mount, until released. */
export interface DatasetLease {
  readonly dir: string;
  /** Lets the entry be evicted again; a second call does nothing. */
  release(): Promise<void>;
}

/** A directory to seed a pre-cached set from, as the node holds it. */
export interface PrecachedSeed {
  readonly dataset: DatasetRef;
  readonly dir: string;
  /** Top-level entries of `dir` that are not data. Defaults to none. */
  readonly exclude?: readonly string[];
}

/** The dataset is larger than the node's whole cache; the message names both sizes. */
export class DatasetTooLargeError extends Error {
  override readonly name = "DatasetTooLargeError";
}

/** There is room for the dataset only once datasets in use now are released. */
export class DatasetCacheBusyError extends Error {
  override readonly name = "DatasetCacheBusyError";
}

/** A file that arrived does not match the manifest; the message names the dataset and the file. */
export class DatasetIntegrityError extends Error {
  override readonly name = "DatasetIntegrityError";
}

/**
 * Refuses a dataset larger than a cache of `capacityBytes`, as admission does before a job runs:
 * "shakespeare@1 is 12.0 GiB, more than the 8 GiB dataset cache of a cpu-large node".
 */
export function checkFitsCache(manifest: DatasetManifest, capacityBytes: number, node = "this node"): void {
  if (manifest.totalBytes > capacityBytes)
    throw new DatasetTooLargeError(
      `${formatDatasetRef(manifest)} is ${formatDatasetBytes(manifest.totalBytes)}, more than the ` +
        `${formatDatasetBytes(capacityBytes, { whole: true })} dataset cache of ${node}`,
    );
}

/** Files downloaded at once into one entry. */
const DOWNLOAD_CONCURRENCY = 4;

const markerSchema = z.strictObject({ manifest: datasetManifestSchema, pinned: z.boolean() });

interface Entry {
  readonly key: string;
  readonly manifest: DatasetManifest;
  pinned: boolean;
  holders: number;
  /** Order of last use: larger is more recent. */
  lastUsed: number;
}

interface Loading {
  readonly done: Promise<Entry>;
  /** Acquires waiting for it besides the one that started it: each holds the entry once loaded. */
  waiters: number;
}

export class DatasetCache {
  private readonly root: string;
  private readonly capacityBytes: number;
  private readonly store: DatasetStore;
  private readonly logger: Logger;
  private readonly node: string;
  private readonly entries = new Map<string, Entry>();
  private readonly loading = new Map<string, Loading>();
  /** Bytes promised to downloads in progress, and bytes of evicted entries still being removed. */
  private reserved = 0;
  private deleting = 0;
  private clock = 0;
  private started: Promise<void> | undefined;

  constructor(options: DatasetCacheOptions) {
    this.root = options.root;
    this.capacityBytes = options.capacityBytes;
    this.store = options.store;
    this.logger = options.logger;
    this.node = options.node ?? "this node";
  }

  /** Takes up what an earlier agent left (once; every other method waits for it). */
  start(): Promise<void> {
    this.started ??= this.recover();
    return this.started;
  }

  /** Bytes the complete entries take. */
  get usedBytes(): number {
    return [...this.entries.values()].reduce((sum, e) => sum + e.manifest.totalBytes, 0);
  }

  /** The digests of the complete entries, least recently used first. */
  get digests(): string[] {
    return [...this.entries.values()].sort((a, b) => a.lastUsed - b.lastUsed).map((e) => `sha256:${e.key}`);
  }

  /**
   * The directory holding exactly the resolved version's files, downloaded and verified unless the cache
   * has them; held (not evicted) until released. Concurrent acquires of one content download it once.
   */
  async acquire(resolved: ResolvedDataset): Promise<DatasetLease> {
    await this.start();
    const { manifest } = resolved;
    checkFitsCache(manifest, this.capacityBytes, this.node);
    const key = keyOf(manifest);
    const entry = this.entries.get(key);
    if (entry) {
      entry.holders += 1;
      await this.touch(entry);
      return this.lease(entry);
    }
    const pending = this.loading.get(key);
    if (pending) {
      pending.waiters += 1;
      // The loader counted this acquire as a holder when it finished.
      return this.lease(await pending.done);
    }
    const loading: Loading = {
      done: this.load(key, resolved).finally(() => this.loading.delete(key)),
      waiters: 0,
    };
    this.loading.set(key, loading);
    const loaded = await loading.done;
    return this.lease(loaded);
  }

  /**
   * Builds pinned entries from directories the node holds (the runtime package's, one copied out of a job
   * image) and publishes each under `precached/` unless it is there. Answers the published manifests.
   */
  async seedPrecached(sources: readonly PrecachedSeed[]): Promise<DatasetManifest[]> {
    await this.start();
    const published: DatasetManifest[] = [];
    for (const { dataset, dir, exclude } of sources) {
      const files = await scanDatasetDirectory(dir, { ...(exclude && { exclude }) });
      const manifest = buildManifest(dataset, files);
      const key = keyOf(manifest);
      const entry = this.entries.get(key);
      if (entry) {
        if (!entry.pinned) {
          entry.pinned = true;
          await this.writeMarker(entry);
        }
      } else {
        const bySha = new Map(files.map((f) => [f.sha256, f.source]));
        this.logger.info(
          { dataset: formatDatasetRef(dataset), dir, bytes: manifest.totalBytes },
          "dataset seed",
        );
        await this.build(key, manifest, true, (file) =>
          Promise.resolve(createReadStream(bySha.get(file.sha256)!)),
        );
      }
      this.logger.info({ dataset: formatDatasetRef(dataset), digest: manifest.digest }, "dataset seeded");
      const { manifest: stored, created } = await this.store.publishPrecached(dataset, dir, {
        ...(exclude && { exclude }),
      });
      this.logger.info({ dataset: formatDatasetRef(dataset), created }, "pre-cached dataset published");
      published.push(stored);
    }
    return published;
  }

  private lease(entry: Entry): DatasetLease {
    let released = false;
    return {
      dir: this.entryDir(entry.key),
      release: async () => {
        if (released) return;
        released = true;
        entry.holders -= 1;
        await this.touch(entry);
      },
    };
  }

  private async load(key: string, resolved: ResolvedDataset): Promise<Entry> {
    const { manifest, prefix } = resolved;
    const ref = formatDatasetRef(manifest);
    this.logger.info(
      { dataset: ref, digest: manifest.digest, bytes: manifest.totalBytes },
      "dataset download",
    );
    const entry = await this.build(key, manifest, false, (file) => this.store.getBlob(prefix, file.sha256));
    this.logger.info({ dataset: ref, digest: manifest.digest }, "dataset downloaded");
    return entry;
  }

  /**
   * Makes room, writes every file of `manifest` from `open` into a fresh partial directory, verifying
   * each, makes it read-only and commits it; held once (by the acquire that asked, and each waiter).
   */
  private async build(
    key: string,
    manifest: DatasetManifest,
    pinned: boolean,
    open: (file: DatasetFile) => Promise<Readable>,
  ): Promise<Entry> {
    const bytes = manifest.totalBytes;
    await this.makeRoom(manifest);
    const partial = join(this.root, "partial", `${key}.${randomBytes(6).toString("hex")}`);
    try {
      await mkdir(partial, { recursive: true, mode: 0o755 });
      // A content several paths share is fetched once and copied.
      const first = new Map<string, DatasetFile>();
      for (const file of manifest.files) if (!first.has(file.sha256)) first.set(file.sha256, file);
      await mapBounded([...first.values()], DOWNLOAD_CONCURRENCY, async (file) =>
        writeVerified(await open(file), inside(partial, file.path), file, formatDatasetRef(manifest)),
      );
      for (const file of manifest.files) {
        const source = first.get(file.sha256)!;
        if (source === file) continue;
        await mkdir(dirname(inside(partial, file.path)), { recursive: true, mode: 0o755 });
        await copyFile(inside(partial, source.path), inside(partial, file.path));
      }
      await makeReadOnly(partial);
      const dir = this.entryDir(key);
      await removeTree(dir);
      await rename(partial, dir);
    } catch (error) {
      this.reserved -= bytes;
      await removeTree(partial);
      throw error;
    }
    const entry: Entry = { key, manifest, pinned, holders: 0, lastUsed: 0 };
    try {
      await this.writeMarker(entry);
    } finally {
      this.reserved -= bytes;
    }
    entry.holders = pinned ? 0 : 1 + (this.loading.get(key)?.waiters ?? 0);
    entry.lastUsed = ++this.clock;
    this.entries.set(key, entry);
    return entry;
  }

  /**
   * Reserves the manifest's bytes, evicting least recently used entries nobody holds first. Decided
   * without waiting, so two acquires never count the same free space; the evicted entries are removed
   * before this resolves.
   */
  private async makeRoom(manifest: DatasetManifest): Promise<void> {
    const needed = manifest.totalBytes;
    let free = this.capacityBytes - this.usedBytes - this.reserved - this.deleting;
    const victims: Entry[] = [];
    const candidates = [...this.entries.values()]
      .filter((e) => e.holders === 0 && !e.pinned)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    for (const candidate of candidates) {
      if (free >= needed) break;
      victims.push(candidate);
      free += candidate.manifest.totalBytes;
    }
    if (free < needed)
      throw new DatasetCacheBusyError(
        `${formatDatasetRef(manifest)} (${formatDatasetBytes(needed)}) does not fit in the ` +
          `${formatDatasetBytes(this.capacityBytes, { whole: true })} dataset cache of ${this.node} while the ` +
          `datasets in use there are held; it fits once they are released`,
      );
    this.reserved += needed;
    for (const victim of victims) {
      this.entries.delete(victim.key);
      this.deleting += victim.manifest.totalBytes;
    }
    await Promise.all(
      victims.map(async (victim) => {
        this.logger.info(
          { dataset: formatDatasetRef(victim.manifest), digest: victim.manifest.digest },
          "dataset evicted",
        );
        try {
          await rm(this.markerFile(victim.key), { force: true });
          await removeTree(this.entryDir(victim.key));
        } finally {
          this.deleting -= victim.manifest.totalBytes;
        }
      }),
    );
  }

  /** Removes what a crash left half done, and takes up the complete entries in their order of last use. */
  private async recover(): Promise<void> {
    const entriesDir = join(this.root, "entries");
    await mkdir(entriesDir, { recursive: true, mode: 0o755 });
    await removeTree(join(this.root, "partial"));
    await mkdir(join(this.root, "partial"), { recursive: true, mode: 0o755 });
    const names = await readdir(entriesDir);
    const found: { entry: Entry; mtime: number }[] = [];
    for (const name of names) {
      if (name.endsWith(".json") || name.endsWith(".tmp")) {
        // A marker is read with its directory; one without it (or a marker half written) is stale.
        if (!names.includes(name.replace(/\.json$/, ""))) await rm(join(entriesDir, name), { force: true });
        continue;
      }
      const key = name;
      if (!names.includes(`${name}.json`)) {
        // Never verified whole: a crash came between its rename and its marker.
        this.logger.info({ name }, "incomplete dataset cache entry removed");
        await removeTree(join(entriesDir, name));
        continue;
      }
      const marker = this.markerFile(key);
      const parsed = markerSchema.safeParse(await readJson(marker));
      if (!parsed.success || keyOf(parsed.data.manifest) !== key) {
        this.logger.warn({ marker }, "unreadable dataset cache marker; the entry is removed");
        await rm(marker, { force: true });
        await removeTree(join(entriesDir, name));
        continue;
      }
      const { mtimeMs } = await lstat(marker);
      found.push({
        entry: { key, manifest: parsed.data.manifest, pinned: parsed.data.pinned, holders: 0, lastUsed: 0 },
        mtime: mtimeMs,
      });
    }
    found.sort((a, b) => a.mtime - b.mtime || (a.entry.key < b.entry.key ? -1 : 1));
    for (const { entry } of found) {
      entry.lastUsed = ++this.clock;
      this.entries.set(entry.key, entry);
    }
    this.logger.info(
      { root: this.root, entries: found.length, bytes: this.usedBytes },
      "dataset cache opened",
    );
  }

  /** Marks an entry used now: in memory for this run, as its marker's mtime for the next. */
  private async touch(entry: Entry): Promise<void> {
    entry.lastUsed = ++this.clock;
    const now = new Date();
    await utimes(this.markerFile(entry.key), now, now).catch((error: NodeJS.ErrnoException) => {
      // Evicted meanwhile only if nobody held it, which a toucher does: anything else is worth knowing.
      this.logger.warn({ err: error, digest: entry.manifest.digest }, "dataset cache marker not touched");
    });
  }

  private async writeMarker(entry: Entry): Promise<void> {
    const file = this.markerFile(entry.key);
    await writeFile(`${file}.tmp`, JSON.stringify({ manifest: entry.manifest, pinned: entry.pinned }), {
      mode: 0o644,
    });
    await rename(`${file}.tmp`, file);
  }

  private entryDir(key: string): string {
    return join(this.root, "entries", key);
  }

  private markerFile(key: string): string {
    return join(this.root, "entries", `${key}.json`);
  }
}

const keyOf = (manifest: DatasetManifest): string => manifest.digest.slice("sha256:".length);

/** `path` (checked relative by the manifest schema) below `dir`, refused if it would land outside. */
function inside(dir: string, path: string): string {
  const full = resolve(dir, path);
  if (!full.startsWith(dir + sep))
    throw new DatasetIntegrityError(`${JSON.stringify(path)} is outside the dataset`);
  return full;
}

/**
 * Writes `source` to `dest` (a new file), hashing as it goes; refuses more bytes than the manifest's
 * size as they arrive (a rewritten blob could be endless), and a different size or SHA-256 at the end.
 */
async function writeVerified(
  source: Readable,
  dest: string,
  file: DatasetFile,
  dataset: string,
): Promise<void> {
  await mkdir(dirname(dest), { recursive: true, mode: 0o755 });
  const hash = createHash("sha256");
  let size = 0;
  const check = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      size += chunk.length;
      if (size > file.size) {
        callback(
          new DatasetIntegrityError(
            `${dataset}: ${JSON.stringify(file.path)} is larger than its manifest says (${file.size} bytes); the stored file was changed`,
          ),
        );
        return;
      }
      hash.update(chunk);
      callback(null, chunk);
    },
  });
  await pipeline(source, check, createWriteStream(dest, { flags: "wx", mode: 0o600 }));
  const sha256 = hash.digest("hex");
  if (size !== file.size || sha256 !== file.sha256)
    throw new DatasetIntegrityError(
      `${dataset}: ${JSON.stringify(file.path)} does not match its manifest (expected ${file.size} bytes, ` +
        `sha256 ${file.sha256}; got ${size} bytes, sha256 ${sha256}); the stored file was changed`,
    );
}

/** Files 0444, directories 0555, deepest first. */
async function makeReadOnly(dir: string): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await makeReadOnly(path);
    else await chmod(path, 0o444);
  }
  await chmod(dir, 0o555);
}

/** Removes a tree whose directories may be read-only (an agent not running as root could not otherwise). */
async function removeTree(path: string): Promise<void> {
  const info = await lstat(path).catch(() => undefined);
  if (!info) return;
  if (info.isDirectory()) {
    await chmod(path, 0o755);
    for (const name of await readdir(path)) await removeTree(join(path, name));
  }
  await rm(path, { recursive: true, force: true });
}

async function readJson(file: string): Promise<unknown> {
  try {
    return JSON.parse(await readFile(file, "utf8"));
  } catch {
    return undefined;
  }
}
