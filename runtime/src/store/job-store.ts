import type { S3Client } from "@aws-sdk/client-s3";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import type { GetObjectCommandOutput } from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { randomUUID } from "node:crypto";
import { constants } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { lstat, mkdir, open, readdir, readlink, realpath, rename, rm, stat, unlink } from "node:fs/promises";
import { basename, join, relative, sep } from "node:path";
import type { Readable } from "node:stream";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import type { Envelope } from "../job/contract";
import type { JobAddress } from "../job/contract";
import { CHECKPOINT_OBJECT_TAG, envelopeSchema, jobAddressSchema } from "../job/contract";
import type { LedgerEntry } from "../cost/ledger";
import { LEDGER_PREFIX, WORKSPACES_PREFIX } from "../catalog/bucket-layout";
import { LEDGER_PARTITION_PATH, ledgerEntrySchema, ledgerMonths, ledgerPartitionPath } from "../cost/ledger";
import type { SubmittedSpecInput } from "../job/job-request";
import { MAX_SPEC_BYTES } from "../job/job-request";
import type { Logger } from "../logger";
import { ChunkSeries } from "./chunk-series";
import { checkArchiveSize, CodeError, describeBytes, MAX_CODE_ARCHIVE_BYTES } from "../job/code-source";
import { SHA256_METADATA, sha256Of } from "./job-files";

/** Who a job belongs to, and so where everything about it lives. */
// A job's address is part of the job contract (contract.ts); re-exported for the store's callers.
export { jobAddressSchema, type JobAddress };

export const JOB_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"] as const;
export const jobStateSchema = z.object({
  status: z.enum(JOB_STATUSES),
  tier: z.string(),
  attempts: z.number().int().nonnegative(),
  node: z.string().optional(),
  submittedAt: z.string(),
  updatedAt: z.string(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  /** Why the job was handed back, or why it could not be run at all. */
  note: z.string().optional(),
  /** The iteration or file the job last resumed from, when it did. */
  resumedFromCheckpoint: z.boolean().optional(),
  /** The job's latest progress (step, total, metrics), as the agent last recorded it while it ran. */
  progress: z
    .object({
      step: z.number().nonnegative().optional(),
      total: z.number().nonnegative().optional(),
      metrics: z.record(z.string(), z.number()),
      /** When the job reported it (ISO 8601). */
      at: z.string(),
    })
    .optional(),
  /** What the job's finished attempts cost, in USD (the ledger's amounts, summed). */
  costUsd: z.number().nonnegative().optional(),
  /** The rate the running attempt is charged at, USD per hour, from its start: cost so far is elapsed × rate. */
  chargedHourlyUsd: z.number().nonnegative().optional(),
});
export type JobState = z.infer<typeof jobStateSchema>;

/** Largest record (state, envelope, logs, ledger entry) read into memory: an envelope's result is up to 16 MiB. */
export const MAX_RECORD_BYTES = 64 * 1024 * 1024;

/** A `spec.json` that cannot even be read as a spec: too large, or not JSON. */
export class SpecError extends Error {
  override readonly name = "SpecError";
}

/** A job's place in its tier's fair share: who, where, and when it claimed the place (epoch ms). */
export interface RunningMarker {
  readonly address: JobAddress;
  readonly tier: string;
  readonly claimedAt: number;
}

/** `<user>/<claimedAt>-<jobId>`, below a tier's `_running/`. */
const RUNNING_KEY = /^([^/]+)\/(\d+)-(.+)$/;

/** Sorts as claims were made: the time zero-padded, so keys and comparisons agree; ties by job id. */
const claimOrder = (claimedAt: number, jobId: string): string =>
  `${String(claimedAt).padStart(15, "0")}-${jobId}`;

/** Which entries of the ledger to read; `until` defaults to now. */
export interface LedgerScope {
  readonly project?: string;
  readonly user?: string;
  readonly since?: Date;
  readonly until?: Date;
}

const KEYS = {
  code: "code.zip",
  spec: "spec.json",
  state: "state.json",
  envelope: "envelope.json",
  cancel: "cancel",
  logs: "logs/",
  liveLogs: "logs/live/",
  metrics: "metrics/",
  checkpoints: "checkpoints/",
  outputs: "outputs/",
  attempts: "attempts/",
} as const;

/** A job store's S3 object that does not exist. */
function isMissing(error: unknown): boolean {
  const e = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === "NoSuchKey" || e.name === "NotFound" || e.$metadata?.httpStatusCode === 404;
}

/**
 * Everything about a job, kept next to it under `<prefix><project>/<user>/jobs/<jobId>/` in the workspaces
 * bucket: code, spec, state, envelope, logs, checkpoints, outputs and a cancel marker. No database: the
 * queue message only carries the address, and an envelope, once written, is final.
 */
export class JobStore {
  constructor(
    private readonly s3: S3Client,
    readonly bucket: string,
    private readonly logger: Logger,
    readonly prefix = WORKSPACES_PREFIX,
  ) {}

  jobPrefix(address: JobAddress): string {
    return `${this.prefix}${address.project}/${address.user}/jobs/${address.jobId}/`;
  }

  /** Uploads the job's code.zip, streamed from the file; one over {@link MAX_CODE_ARCHIVE_BYTES} is refused. */
  async putCode(address: JobAddress, zipPath: string): Promise<void> {
    const handle = await open(zipPath, constants.O_RDONLY | constants.O_NOFOLLOW);
    try {
      const { size } = await handle.stat();
      checkArchiveSize(basename(zipPath), size);
      await this.putFile(address, KEYS.code, handle, size);
    } finally {
      await handle.close();
    }
  }

  /**
   * Streams the job's code.zip to `zipPath`; false when there is none. The submitter wrote it, so its
   * size is checked first: over {@link MAX_CODE_ARCHIVE_BYTES}, a {@link CodeError} naming both, before
   * anything is read or written.
   */
  async getCode(address: JobAddress, zipPath: string): Promise<boolean> {
    const out = await this.getObject(this.jobPrefix(address) + KEYS.code);
    if (!out) return false;
    const body = out.Body as Readable;
    try {
      checkArchiveSize(KEYS.code, out.ContentLength ?? 0);
    } catch (error) {
      body.destroy();
      throw error;
    }
    const file = await open(
      zipPath,
      constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW,
      0o644,
    );
    const written = file.createWriteStream({ autoClose: false });
    try {
      await pipeline(body, atMost(MAX_CODE_ARCHIVE_BYTES, KEYS.code), written);
    } catch (error) {
      await rm(zipPath, { force: true });
      throw error;
    } finally {
      // A stream that does not close its handle keeps a hold on it until destroyed.
      written.destroy();
      await file.close();
    }
    return true;
  }

  async putSpec(address: JobAddress, spec: SubmittedSpecInput): Promise<void> {
    await this.put(address, KEYS.spec, JSON.stringify(spec));
  }

  /**
   * `spec.json` as stored: JSON of unchecked shape (the submitter can rewrite it), which the agent parses
   * with {@link admitJob}. Missing: undefined. Over {@link MAX_SPEC_BYTES} or not JSON: a {@link SpecError}.
   */
  async getSpec(address: JobAddress): Promise<unknown> {
    const key = this.jobPrefix(address) + KEYS.spec;
    let out;
    try {
      out = await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
    if ((out.ContentLength ?? 0) > MAX_SPEC_BYTES) {
      await out.Body?.transformToWebStream().cancel();
      throw new SpecError(`spec.json is ${out.ContentLength} bytes, more than the ${MAX_SPEC_BYTES} allowed`);
    }
    const text = await out.Body!.transformToString("utf8");
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new SpecError("spec.json is not JSON");
    }
  }

  async getState(address: JobAddress): Promise<JobState | undefined> {
    const body = await this.get(address, KEYS.state);
    return body ? jobStateSchema.parse(JSON.parse(body.toString("utf8"))) : undefined;
  }

  /** Writes the state with `changes` applied to the current one; the first write names the tier. */
  async updateState(
    address: JobAddress,
    changes: Partial<JobState> & Pick<JobState, "status">,
  ): Promise<JobState> {
    const now = new Date().toISOString();
    const current = await this.getState(address);
    const next = jobStateSchema.parse({
      attempts: 0,
      submittedAt: now,
      tier: "",
      ...current,
      ...changes,
      updatedAt: now,
    });
    await this.put(address, KEYS.state, JSON.stringify(next));
    return next;
  }

  /**
   * Writes the final envelope, at most once: where the store honours conditional writes, a second
   * agent finishing the same job is refused (and told so by `false`).
   */
  async putEnvelope(address: JobAddress, envelope: Envelope): Promise<boolean> {
    try {
      await this.put(address, KEYS.envelope, JSON.stringify(envelope), { IfNoneMatch: "*" });
      return true;
    } catch (error) {
      if ((error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 412)
        return false;
      throw error;
    }
  }

  async getEnvelope(address: JobAddress): Promise<Envelope | undefined> {
    const body = await this.get(address, KEYS.envelope);
    return body ? envelopeSchema.parse(JSON.parse(body.toString("utf8"))) : undefined;
  }

  async putLogs(address: JobAddress, logs: Envelope["logs"]): Promise<void> {
    await this.put(address, `${KEYS.logs}stdout.txt`, logs.stdout);
    await this.put(address, `${KEYS.logs}stderr.txt`, logs.stderr);
  }

  async getLog(address: JobAddress, stream: "stdout" | "stderr"): Promise<string | undefined> {
    return (await this.get(address, `${KEYS.logs}${stream}.txt`))?.toString("utf8");
  }

  /** The job's whole log, every attempt's, as the agent streams it while the job runs. */
  logSeries(address: JobAddress): ChunkSeries {
    return new ChunkSeries(this.s3, this.bucket, this.jobPrefix(address) + KEYS.liveLogs);
  }

  /** The job's progress and metric history, every attempt's. */
  metricSeries(address: JobAddress): ChunkSeries {
    return new ChunkSeries(this.s3, this.bucket, this.jobPrefix(address) + KEYS.metrics);
  }

  async requestCancel(address: JobAddress): Promise<void> {
    await this.put(address, KEYS.cancel, new Date().toISOString());
  }

  async cancelRequested(address: JobAddress): Promise<boolean> {
    try {
      await this.s3.send(
        new HeadObjectCommand({ Bucket: this.bucket, Key: this.jobPrefix(address) + KEYS.cancel }),
      );
      return true;
    } catch (error) {
      if (isMissing(error)) return false;
      throw error;
    }
  }

  /**
   * Uploads the files of `dir` that changed since `seen` (path → "size:mtime"), as checkpoints or outputs;
   * returns how many went up. Each file carries its SHA-256 ({@link SHA256_METADATA}); checkpoints also
   * the tag the bucket's checkpoint lifecycle selects by.
   */
  async uploadDir(
    address: JobAddress,
    kind: "checkpoints" | "outputs",
    dir: string,
    seen: Map<string, string>,
  ): Promise<number> {
    // The job owns `dir` and may swap any of it for a link at any time: only regular files that are
    // still inside the directory once opened go up, streamed from the descriptor that was checked.
    const root = await realDirectory(dir);
    if (!root) return 0;
    let uploaded = 0;
    for (const file of await filesUnder(root)) {
      const opened = await openRegularFile(root, file);
      if (!opened) {
        this.logger.warn(
          { jobId: address.jobId, file },
          "not syncing a file swapped for a link or special file",
        );
        continue;
      }
      try {
        const signature = `${opened.size}:${opened.mtimeMs}`;
        const name = relative(root, file).split(sep).join("/");
        if (seen.get(name) === signature) continue;
        // What `crucible pull` verifies a download by (job-files.ts says why not the ETag or S3's own
        // checksum). Read first, as the metadata goes with the upload's first request; a file the job
        // rewrites meanwhile fails that check at pull, and goes up again at the next sync, changed.
        const sha256 = await sha256Of(opened.handle, opened.size);
        await this.putFile(address, `${KEYS[kind]}${name}`, opened.handle, opened.size, {
          Metadata: { [SHA256_METADATA]: sha256 },
          ...(kind === "checkpoints" && {
            Tagging: `${CHECKPOINT_OBJECT_TAG.key}=${CHECKPOINT_OBJECT_TAG.value}`,
          }),
        });
        seen.set(name, signature);
        uploaded += 1;
      } finally {
        await opened.handle.close();
      }
    }
    return uploaded;
  }

  /** The names of a job's stored checkpoint files, relative to its `checkpoints/` (what resuming needs). */
  async checkpointNames(address: JobAddress): Promise<string[]> {
    const prefix = this.jobPrefix(address) + KEYS.checkpoints;
    return (await this.keys(prefix)).map((key) => key.slice(prefix.length));
  }

  /**
   * Restores a job's checkpoints into `dir`; returns how many files came back. Never writes through a
   * link: parents are created one at a time and must be real directories, each file is streamed into a
   * new temporary name (`O_EXCL|O_NOFOLLOW`) checked to be inside `dir`, then renamed over the target
   * (which replaces a planted link instead of following it). With `only`, just the files whose names
   * (relative to `checkpoints/`) it accepts.
   */
  async downloadCheckpoints(
    address: JobAddress,
    dir: string,
    only: (name: string) => boolean = () => true,
  ): Promise<number> {
    const prefix = this.jobPrefix(address) + KEYS.checkpoints;
    const root = await realDirectory(dir);
    if (!root) throw new Error(`cannot restore checkpoints into ${dir}: not a directory`);
    let count = 0;
    for (const key of await this.keys(prefix)) {
      if (!only(key.slice(prefix.length))) continue;
      const parts = key.slice(prefix.length).split("/");
      if (parts.some((p) => p === "" || p === "." || p === ".." || p.includes("\0"))) continue;
      const parent = await makeDirectories(root, parts.slice(0, -1));
      if (!parent) {
        this.logger.warn({ jobId: address.jobId, key }, "not restoring a checkpoint below a link or file");
        continue;
      }
      const out = await this.getObject(key);
      if (!out) continue;
      if (await writeNewFile(root, join(parent, parts.at(-1)!), out.Body as Readable)) count += 1;
      else
        this.logger.warn({ jobId: address.jobId, key }, "not restoring a checkpoint outside its directory");
    }
    return count;
  }

  /**
   * Records one attempt's cost in finance's partition of the month it ended in ({@link LEDGER_PREFIX}),
   * which outlives the job's files. Never under the job: the submitter can write there, and only agents
   * write the ledger.
   */
  async putLedgerEntry(entry: LedgerEntry): Promise<void> {
    const body = JSON.stringify(entry);
    const key = LEDGER_PREFIX + ledgerPartitionPath(entry);
    await this.s3.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: body }));
  }

  /**
   * The ledger's entries, from finance's partitions: of the months from `since` to `until` (every month
   * without `since`), of one project, one project's user, or one user across projects. Entries never
   * change, so `seen` (key → entry) lets a caller that reads again fetch only the new ones. Entries that
   * do not parse are skipped with a warning rather than failing a whole report.
   */
  async ledgerEntries(
    scope: LedgerScope = {},
    seen = new Map<string, LedgerEntry>(),
  ): Promise<LedgerEntry[]> {
    const under = scope.project ? `${scope.project}/${scope.user ? `${scope.user}/` : ""}` : "";
    const prefixes = scope.since
      ? ledgerMonths(scope.since, scope.until ?? new Date()).map(
          (month) => `${LEDGER_PREFIX}${month}/${under}`,
        )
      : [LEDGER_PREFIX];
    const entries: LedgerEntry[] = [];
    for (const prefix of prefixes) {
      for (const key of await this.keys(prefix)) {
        const match = LEDGER_PARTITION_PATH.exec(key.slice(LEDGER_PREFIX.length));
        const [, month, project, user] = match?.index === 0 ? match : [];
        if (!month || (scope.project && project !== scope.project) || (scope.user && user !== scope.user))
          continue;
        const entry = seen.get(key) ?? (await this.ledgerEntry(key));
        if (!entry) continue;
        seen.set(key, entry);
        entries.push(entry);
      }
    }
    return entries;
  }

  private async ledgerEntry(key: string): Promise<LedgerEntry | undefined> {
    const body = await this.getKey(key);
    if (!body) return undefined;
    let json: unknown;
    try {
      json = JSON.parse(body.toString("utf8"));
    } catch {
      json = undefined;
    }
    const parsed = ledgerEntrySchema.safeParse(json);
    if (parsed.success) return parsed.data;
    this.logger.warn({ key }, "skipping a ledger entry that does not parse");
    return undefined;
  }

  /**
   * Fair share's count of running jobs lives next to the jobs: one marker per running job at
   * `<prefix><project>/_running/<tier>/<user>/<claimedAt>-<jobId>` (no user name starts with `_`). The
   * agent re-puts it with every heartbeat, so a marker left by a dead agent goes stale and stops counting.
   */
  async markRunning(marker: RunningMarker, node: string): Promise<void> {
    await this.s3.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: this.runningKey(marker),
        Body: JSON.stringify({ node, at: new Date().toISOString() }),
      }),
    );
  }

  async clearRunning(marker: RunningMarker): Promise<void> {
    await this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.runningKey(marker) }));
  }

  /**
   * Jobs running in the marker's tier for its user and for its project that claimed their place no later
   * than it did (the marker itself included), counting markers refreshed within `freshSeconds`. Claims
   * are ordered by time, then job id, the same for every agent that lists them: of two agents claiming a
   * user's last place at once, exactly one sees itself within the share, and the other backs off.
   */
  async runningAhead(
    marker: RunningMarker,
    freshSeconds: number,
  ): Promise<{ user: number; project: number }> {
    const { address, tier } = marker;
    const prefix = `${this.prefix}${address.project}/_running/${tier}/`;
    const since = Date.now() - freshSeconds * 1000;
    const own = claimOrder(marker.claimedAt, address.jobId);
    let user = 0;
    let project = 0;
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const object of page.Contents ?? []) {
        if (!object.Key || (object.LastModified?.getTime() ?? 0) < since) continue;
        const [, owner, claimedAt, jobId] = RUNNING_KEY.exec(object.Key.slice(prefix.length)) ?? [];
        if (!owner || claimOrder(Number(claimedAt), jobId!) > own) continue;
        project += 1;
        if (owner === address.user) user += 1;
      }
      token = page.NextContinuationToken;
    } while (token);
    return { user, project };
  }

  private runningKey({ address, tier, claimedAt }: RunningMarker): string {
    return `${this.prefix}${address.project}/_running/${tier}/${address.user}/${claimOrder(claimedAt, address.jobId)}`;
  }

  /** The envelope of one attempt, kept beside the final one: a preempted attempt's says `preempted`. */
  async putAttemptEnvelope(address: JobAddress, attempt: number, envelope: Envelope): Promise<void> {
    await this.put(address, `${KEYS.attempts}${attempt}/envelope.json`, JSON.stringify(envelope));
  }

  async getAttemptEnvelope(address: JobAddress, attempt: number): Promise<Envelope | undefined> {
    const body = await this.get(address, `${KEYS.attempts}${attempt}/envelope.json`);
    return body ? envelopeSchema.parse(JSON.parse(body.toString("utf8"))) : undefined;
  }

  /**
   * Bytes one user holds in a project: what a submission is checked against, since a submitter may list
   * nothing of the project beyond their own prefix.
   */
  async ownerBytes(owner: Pick<JobAddress, "project" | "user">): Promise<number> {
    let total = 0;
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: `${this.prefix}${owner.project}/${owner.user}/`,
          ContinuationToken: token,
        }),
      );
      for (const object of page.Contents ?? []) total += object.Size ?? 0;
      token = page.NextContinuationToken;
    } while (token);
    return total;
  }

  private async keys(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      keys.push(...(page.Contents ?? []).flatMap((o) => (o.Key ? [o.Key] : [])));
      token = page.NextContinuationToken;
    } while (token);
    return keys;
  }

  private async put(
    address: JobAddress,
    name: string,
    body: string | Buffer,
    extra: Partial<ConstructorParameters<typeof PutObjectCommand>[0]> = {},
  ): Promise<void> {
    const key = this.jobPrefix(address) + name;
    this.logger.debug({ jobId: address.jobId, key }, "s3 put");
    await this.s3.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: key,
        Body: body as PutObjectCommand["input"]["Body"],
        ...extra,
      }),
    );
  }

  private async get(address: JobAddress, name: string): Promise<Buffer | undefined> {
    return this.getKey(this.jobPrefix(address) + name);
  }

  /**
   * A small record read whole: state, envelope, logs, ledger entries. A submitter can rewrite those under
   * their own prefix, so the size is checked before the body is read ({@link MAX_RECORD_BYTES}).
   */
  private async getKey(key: string): Promise<Buffer | undefined> {
    const out = await this.getObject(key);
    if (!out) return undefined;
    if ((out.ContentLength ?? 0) > MAX_RECORD_BYTES) {
      await out.Body?.transformToWebStream().cancel();
      throw new Error(
        `s3://${this.bucket}/${key} is ${out.ContentLength} bytes, more than the ${MAX_RECORD_BYTES} a record may hold; it was not read`,
      );
    }
    return Buffer.from(await out.Body!.transformToByteArray());
  }

  /** The object with its body unread, or undefined when it does not exist. */
  private async getObject(key: string): Promise<GetObjectCommandOutput | undefined> {
    try {
      return await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
  }

  /**
   * Uploads `size` bytes of an open file, streamed: one PUT up to {@link partBytes}, a multipart upload
   * above (files over 2 GiB, and over S3's 5 GB single-PUT limit). Bytes the file gains meanwhile are not
   * read; a file that shrinks meanwhile fails the upload.
   */
  private async putFile(
    address: JobAddress,
    name: string,
    handle: FileHandle,
    size: number,
    extra: Partial<ConstructorParameters<typeof PutObjectCommand>[0]> = {},
  ): Promise<void> {
    const key = this.jobPrefix(address) + name;
    this.logger.debug({ jobId: address.jobId, key, size }, "s3 upload");
    const body =
      size === 0 ? Buffer.alloc(0) : handle.createReadStream({ start: 0, end: size - 1, autoClose: false });
    const upload = new Upload({
      client: this.s3,
      params: { Bucket: this.bucket, Key: key, Body: body, ...extra },
      partSize: partBytes(size),
      queueSize: UPLOAD_QUEUE,
    });
    try {
      await upload.done();
    } finally {
      // A stream that does not close its handle keeps a hold on it until destroyed.
      if (!Buffer.isBuffer(body)) body.destroy();
    }
    this.logger.debug({ jobId: address.jobId, key, size }, "s3 uploaded");
  }
}

const MiB = 2 ** 20;
/** Parts uploaded at once: an upload holds at most this many parts in memory. */
const UPLOAD_QUEUE = 4;
/** S3 takes at most this many parts in one multipart upload. */
const MAX_PARTS = 10_000;

/**
 * The part size of a file's upload: 8 MiB (S3's minimum is 5 MiB), or more for files over 78 GiB so
 * they fit in {@link MAX_PARTS} parts, up to S3's 5 TiB object limit.
 */
export function partBytes(size: number): number {
  return Math.max(8 * MiB, Math.ceil(size / MAX_PARTS / MiB) * MiB);
}

/** Passes at most `limit` bytes, then fails the stream: a body larger than it said it was. */
function atMost(limit: number, name: string): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _encoding, done) {
      seen += chunk.length;
      if (seen > limit) done(new CodeError(`code: ${name} is more than the ${describeBytes(limit)} allowed`));
      else done(null, chunk);
    },
  });
}

/**
 * The regular files below `dir`, by lstat: links (to files or directories), FIFOs, sockets and devices
 * are skipped, and links to directories are not descended into.
 */
export async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  const nested = await Promise.all(
    entries.map((e) => {
      const path = join(dir, e.name);
      if (e.isDirectory()) return filesUnder(path);
      return Promise.resolve(e.isFile() ? [path] : []);
    }),
  );
  return nested.flat();
}

/** A regular file opened for sync, with its size and mtime from the descriptor. */
export interface OpenedFile {
  readonly handle: FileHandle;
  readonly size: number;
  readonly mtimeMs: number;
}

/**
 * Opens `path` for reading if, as opened, it is a regular file inside the real directory `root`: without
 * following a final link (`O_NOFOLLOW`), without blocking on a FIFO (`O_NONBLOCK`), checked by `fstat`,
 * and with the descriptor's own path inside `root` (a directory above it swapped for a link is otherwise
 * followed). Anything else: undefined, and nothing left open.
 */
export async function openRegularFile(root: string, path: string): Promise<OpenedFile | undefined> {
  const flags = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
  const handle = await open(path, flags).catch(() => undefined);
  if (!handle) return undefined;
  try {
    const info = await handle.stat();
    if (info.isFile() && isInside(root, await openedPath(handle, path, info)))
      return { handle, size: info.size, mtimeMs: info.mtimeMs };
  } catch {
    // Gone or changed while opened: not synced.
  }
  await handle.close();
  return undefined;
}

/** `dir`'s real path, when `dir` is a directory and not a link to one; otherwise undefined. */
async function realDirectory(dir: string): Promise<string | undefined> {
  const flags = constants.O_RDONLY | constants.O_DIRECTORY | constants.O_NOFOLLOW;
  const handle = await open(dir, flags).catch(() => undefined);
  if (!handle) return undefined;
  try {
    return await openedPath(handle, dir, await handle.stat());
  } finally {
    await handle.close();
  }
}

/**
 * Where an open descriptor really is: `/proc/self/fd/N` on Linux. Elsewhere (a CLI on macOS), the path's
 * real path, trusted only if it names the same file as the descriptor.
 */
async function openedPath(
  handle: FileHandle,
  path: string,
  info: { dev: number; ino: number },
): Promise<string> {
  try {
    return await readlink(`/proc/self/fd/${handle.fd}`);
  } catch {
    const real = await realpath(path);
    const again = await stat(real);
    if (again.dev !== info.dev || again.ino !== info.ino) throw new Error(`${path} changed while opened`);
    return real;
  }
}

function isInside(root: string, path: string): boolean {
  return path.startsWith(root.endsWith(sep) ? root : root + sep);
}

/** Creates `parts` below `root` a directory at a time, never through a link; undefined if one is in the way. */
async function makeDirectories(root: string, parts: readonly string[]): Promise<string | undefined> {
  let current = root;
  for (const part of parts) {
    current = join(current, part);
    await mkdir(current, { mode: 0o755 }).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "EEXIST") throw error;
    });
    if (!(await lstat(current)).isDirectory()) return undefined;
  }
  return current;
}

/**
 * Streams `body` into `target` by way of a new temporary file beside it, created with `O_EXCL|O_NOFOLLOW`
 * and checked to be inside `root` before any byte is written, then renamed over `target` (replacing a
 * link or file there, never following it). False, with nothing written, when it would land outside `root`.
 */
async function writeNewFile(root: string, target: string, body: Readable): Promise<boolean> {
  const temporary = join(target, "..", `.${basename(target)}.${randomUUID()}.partial`);
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  const handle = await open(temporary, flags, 0o644);
  try {
    if (!isInside(root, await openedPath(handle, temporary, await handle.stat()))) {
      body.destroy();
      await unlink(temporary);
      return false;
    }
    const written = handle.createWriteStream({ autoClose: false });
    try {
      await pipeline(body, written);
    } finally {
      written.destroy();
    }
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    throw error;
  } finally {
    await handle.close();
  }
  try {
    await rename(temporary, target);
    return true;
  } catch (error) {
    await unlink(temporary).catch(() => undefined);
    if ((error as NodeJS.ErrnoException).code === "EISDIR") return false;
    throw error;
  }
}
