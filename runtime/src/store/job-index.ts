// The jobs index: what `crucible ls` reads instead of every job's state. Submit, the only writer, puts one
// small immutable entry per job under its owner's prefix, keyed so that S3's listing order is newest
// first and the key itself carries what a listing shows of the entry; a listing then lists only as many
// keys as it shows, and reads nothing but each shown job's mutable state.
import { mapBounded } from "./map-bounded";
import type { S3Client } from "@aws-sdk/client-s3";
import { ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import { basename } from "node:path";
import { z } from "zod";
import { jobIdSchema } from "../job/contract";
import type { Logger } from "../logger";
import type { Priority } from "../catalog/scheduling";
import { DEFAULT_PRIORITY, PRIORITIES } from "../catalog/scheduling";
import type { JobAddress, JobState, JobStore } from "./job-store";
import { SpecError } from "./job-store";

/** Below `<prefix><project>/<user>/`, beside the `jobs/` of the same owner: both expire under `workspaces/`. */
const INDEX_DIR = "index/";

/** Base-36 digits of a key's time: 36^9 ms from the epoch reach past the year 5000. */
const STAMP_WIDTH = 9;
const STAMP_MAX = 36 ** STAMP_WIDTH - 1;
/**
 * `<stamp>-<jobId>.<priority>[.<name>].json`, below an owner's `index/`: a job id holds no dot, so the
 * parts split unambiguously.
 */
const INDEX_NAME = new RegExp(
  `^([0-9a-z]{${STAMP_WIDTH}})-([a-z0-9][a-z0-9-]{2,62})\\.(${PRIORITIES.join("|")})(?:\\.([A-Za-z0-9._-]{1,64}))?\\.json$`,
);
/** S3 requests one listing has in flight at most. */
const CONCURRENCY = 16;
/** S3's own cap on the keys of one ListObjectsV2 page. */
const MAX_PAGE = 1000;
/** Keys a state-filtered listing reads at a time: most of them may not match. */
const FILTERED_BATCH = 100;

/** A job's name as it is shown: from its code's file or directory name, so printable and short. */
const JOB_NAME = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * What never changes about a job once submitted. Its key carries the submission time, job id, priority and
 * name, so a listing reads no entry; the object holds the entry whole, for anyone reading the bucket.
 */
export const indexEntrySchema = z.object({
  jobId: jobIdSchema,
  tier: z.string(),
  /** The class it was queued in. */
  priority: z.enum(PRIORITIES),
  submittedAt: z.iso.datetime(),
  name: z.string().regex(JOB_NAME).optional(),
});
export type IndexEntry = z.infer<typeof indexEntrySchema>;

/** A listed job: where it is, what its index key says of it, and its state as read for the listing. */
export interface IndexedJob {
  /** Its key below the owner's `index/`: where a listing that goes on after it starts ({@link ListOptions.after}). */
  readonly cursor: string;
  readonly address: JobAddress;
  readonly priority: Priority;
  readonly name?: string;
  readonly state: JobState;
}

export interface ListOptions {
  readonly project: string;
  /** Whose jobs: one user's, or every user's under the project (which needs the whole project's prefix). */
  readonly users: { readonly user: string } | "all";
  /** At most this many jobs. */
  readonly limit: number;
  /** Only jobs in one of these states. */
  readonly statuses?: ReadonlySet<JobState["status"]>;
  /** Only jobs submitted at or after this time. */
  readonly since?: Date;
  /** Only jobs whose id or name holds this text, ignoring case: told from the keys, before any state is read. */
  readonly text?: string;
  /** Only jobs listed after this one's {@link IndexedJob.cursor}: the next page of an earlier listing. */
  readonly after?: string;
}

/** Whether `cursor` is the form of an index key's name ({@link IndexedJob.cursor}). */
export const isIndexCursor = (cursor: string): boolean => INDEX_NAME.test(cursor);

/** The key-order stamp of a time: the milliseconds left to {@link STAMP_MAX}, fixed width, so later sorts first. */
export function indexStamp(ms: number): string {
  if (!Number.isSafeInteger(ms) || ms < 0 || ms > STAMP_MAX)
    throw new RangeError(`an index key holds a time from the epoch to ${STAMP_MAX} ms, got ${ms}`);
  return (STAMP_MAX - ms).toString(36).padStart(STAMP_WIDTH, "0");
}

/** A name to list a job by, from the path its code was submitted from; undefined when none is left. */
export function jobNameOf(codePath: string): string | undefined {
  const name = basename(codePath)
    .replace(/\.(py|zip)$/i, "")
    .replace(/[^A-Za-z0-9._-]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 64);
  return JOB_NAME.test(name) && /[A-Za-z0-9]/.test(name) ? name : undefined;
}

/** One index key, as listed: its stamp orders it, and it names the job, its priority and its name. */
export interface IndexKey {
  /** The key below the owner's `index/`. */
  readonly cursor: string;
  readonly stamp: string;
  readonly address: JobAddress;
  readonly priority: Priority;
  readonly name?: string;
}

/**
 * Every user's jobs index in a workspaces bucket, one entry per job ({@link IndexEntry}) at
 * `<prefix><project>/<user>/index/<stamp>-<jobId>.<priority>[.<name>].json`, written by submit after the
 * job's state and before its message.
 */
export class JobIndex {
  constructor(
    private readonly s3: S3Client,
    private readonly store: JobStore,
    private readonly logger: Logger,
  ) {}

  /** The index beside a store's jobs, through the store's own client and logger. */
  static of(store: JobStore): JobIndex {
    // JobStore keeps them private; sharing them here keeps every caller of submitJob unchanged, rather than
    // each handing submit a second client for the same bucket.
    const { s3, logger } = store as unknown as { s3: S3Client; logger: Logger };
    return new JobIndex(s3, store, logger);
  }

  private ownerPrefix(project: string, user: string): string {
    return `${this.store.prefix}${project}/${user}/`;
  }

  private indexPrefix(owner: Pick<JobAddress, "project" | "user">): string {
    return `${this.ownerPrefix(owner.project, owner.user)}${INDEX_DIR}`;
  }

  /** Records a submitted job. Its key's time is the entry's `submittedAt`, so listing order and entry agree. */
  async put(address: JobAddress, entry: IndexEntry): Promise<void> {
    const parsed = indexEntrySchema.parse(entry);
    if (parsed.jobId !== address.jobId)
      throw new Error(`index entry of job ${parsed.jobId} put at ${address.jobId}'s address`);
    const name = parsed.name === undefined ? "" : `.${parsed.name}`;
    const stamp = indexStamp(Date.parse(parsed.submittedAt));
    const key = `${this.indexPrefix(address)}${stamp}-${address.jobId}.${parsed.priority}${name}.json`;
    await this.s3.send(
      new PutObjectCommand({ Bucket: this.store.bucket, Key: key, Body: JSON.stringify(parsed) }),
    );
  }

  /**
   * The project's users that have a prefix (a delimiter listing of `<prefix><project>/`); names starting
   * with `_` are the project's own records (fair share's `_running/`), never a user.
   */
  async users(project: string): Promise<string[]> {
    const prefix = `${this.store.prefix}${project}/`;
    const users: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.store.bucket,
          Prefix: prefix,
          Delimiter: "/",
          ContinuationToken: token,
        }),
      );
      for (const common of page.CommonPrefixes ?? []) {
        const user = common.Prefix?.slice(prefix.length, -1);
        if (user && !user.startsWith("_")) users.push(user);
      }
      token = page.NextContinuationToken;
    } while (token);
    return users;
  }

  /**
   * Jobs newest first, at most `limit`, with their current state. Lists keys only as far as it needs: one
   * page of `limit` keys when nothing is filtered by state; with a state filter, batches until `limit`
   * match; with `since`, never past the first older key. Several users' listings are merged by key.
   */
  async list(options: ListOptions): Promise<IndexedJob[]> {
    const { project, limit, statuses, since, after } = options;
    const users = options.users === "all" ? await this.users(project) : [options.users.user];
    const text = options.text?.toLowerCase();
    const batch = statuses || text ? Math.max(limit, FILTERED_BATCH) : limit;
    const pageSize = Math.min(MAX_PAGE, batch);
    const until = since === undefined ? undefined : indexStamp(Math.max(0, since.getTime()));
    const streams = users.map((user) => new IndexStream(this, project, user, pageSize, until, after));
    const keys = newestFirst(streams);
    const found: IndexedJob[] = [];
    while (found.length < limit) {
      const next: IndexKey[] = [];
      while (next.length < batch) {
        const key = await keys.next();
        if (key.done) break;
        next.push(key.value);
      }
      if (next.length === 0) break;
      const named = text === undefined ? next : next.filter((k) => mentions(k, text));
      const read = await mapBounded(named, CONCURRENCY, (k) => this.read(k));
      for (const job of read) {
        if (!job || (statuses && !statuses.has(job.state.status))) continue;
        found.push(job);
        if (found.length === limit) break;
      }
      if (next.length < batch) break;
    }
    return found;
  }

  /**
   * One job's entry, found by the time it was submitted at (its key's stamp) with a listing of one key;
   * undefined when it has none (submitted before the index existed, or its state's time was rewritten).
   */
  async find(address: JobAddress, submittedAt: string): Promise<IndexKey | undefined> {
    const ms = Date.parse(submittedAt);
    if (!Number.isSafeInteger(ms) || ms < 0 || ms > STAMP_MAX) return undefined;
    const prefix = this.indexPrefix(address);
    const page = await this.s3.send(
      new ListObjectsV2Command({
        Bucket: this.store.bucket,
        Prefix: `${prefix}${indexStamp(ms)}-${address.jobId}.`,
        MaxKeys: 1,
      }),
    );
    const cursor = page.Contents?.[0]?.Key?.slice(prefix.length) ?? "";
    const [, stamp, , priority, name] = INDEX_NAME.exec(cursor) ?? [];
    if (!stamp || !priority) return undefined;
    return { cursor, stamp, address, priority: priority as Priority, ...(name !== undefined && { name }) };
  }

  /** Whether an owner has any job files at all: a listing that finds none indexed can say why. */
  async hasJobs(owner: Pick<JobAddress, "project" | "user">): Promise<boolean> {
    const page = await this.s3.send(
      new ListObjectsV2Command({
        Bucket: this.store.bucket,
        Prefix: `${this.ownerPrefix(owner.project, owner.user)}jobs/`,
        MaxKeys: 1,
      }),
    );
    return (page.Contents ?? []).length > 0;
  }

  /**
   * Indexes an owner's jobs that have none (submitted before the index existed), from their state and
   * spec; returns how many it added. Reads every job once: a one-off, not a listing.
   */
  async reindex(owner: Pick<JobAddress, "project" | "user">): Promise<number> {
    const indexed = new Set<string>();
    for (const key of await this.keys(this.indexPrefix(owner)))
      indexed.add(INDEX_NAME.exec(key.slice(this.indexPrefix(owner).length))?.[2] ?? "");
    const jobsPrefix = `${this.ownerPrefix(owner.project, owner.user)}jobs/`;
    const missing: JobAddress[] = [];
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.store.bucket,
          Prefix: jobsPrefix,
          Delimiter: "/",
          ContinuationToken: token,
        }),
      );
      for (const common of page.CommonPrefixes ?? []) {
        const jobId = common.Prefix?.slice(jobsPrefix.length, -1) ?? "";
        if (jobIdSchema.safeParse(jobId).success && !indexed.has(jobId)) missing.push({ ...owner, jobId });
      }
      token = page.NextContinuationToken;
    } while (token);
    const added = await mapBounded(missing, CONCURRENCY, async (address) => {
      const state = await this.stateOf(address);
      if (!state) return false;
      const spec = z.object({ priority: z.enum(PRIORITIES) }).safeParse(await this.specOf(address));
      await this.put(address, {
        jobId: address.jobId,
        tier: state.tier,
        submittedAt: state.submittedAt,
        // A spec without one predates priority classes, when every job was queued as the default.
        priority: spec.success ? spec.data.priority : DEFAULT_PRIORITY,
      });
      return true;
    });
    return added.filter(Boolean).length;
  }

  /**
   * One page of an owner's index keys, in S3's order (newest first), after `token`, or on the first page
   * after the key named `after` (a cursor).
   */
  async page(
    project: string,
    user: string,
    maxKeys: number,
    token: string | undefined,
    after?: string,
  ): Promise<{ keys: IndexKey[]; token: string | undefined }> {
    const prefix = this.indexPrefix({ project, user });
    const page = await this.s3.send(
      new ListObjectsV2Command({
        Bucket: this.store.bucket,
        Prefix: prefix,
        MaxKeys: maxKeys,
        ContinuationToken: token,
        ...(after !== undefined && token === undefined && { StartAfter: prefix + after }),
      }),
    );
    const keys: IndexKey[] = [];
    for (const object of page.Contents ?? []) {
      const cursor = object.Key?.slice(prefix.length) ?? "";
      const [, stamp, jobId, priority, name] = INDEX_NAME.exec(cursor) ?? [];
      if (stamp && jobId && priority)
        keys.push({
          cursor,
          stamp,
          address: { project, user, jobId },
          priority: priority as Priority,
          ...(name !== undefined && { name }),
        });
      else this.logger.warn({ key: object.Key }, "skipping an index key that names no job");
    }
    return { keys, token: page.IsTruncated ? page.NextContinuationToken : undefined };
  }

  /** A listed key's job with its state; undefined when the state is gone or (with a warning) malformed. */
  private async read(key: IndexKey): Promise<IndexedJob | undefined> {
    const state = await this.stateOf(key.address);
    // Gone while its entry lingers (removed by hand, or the lifecycle took it first): nothing to show.
    if (!state) return undefined;
    const { cursor, address, priority, name } = key;
    return { cursor, address, priority, ...(name !== undefined && { name }), state };
  }

  private async stateOf(address: JobAddress): Promise<JobState | undefined> {
    try {
      return await this.store.getState(address);
    } catch (error) {
      // The submitter can write anything there: one bad state must not fail the whole listing.
      if (!(error instanceof SyntaxError || error instanceof z.ZodError)) throw error;
      this.logger.warn({ jobId: address.jobId, err: error }, "skipping a job whose state does not parse");
      return undefined;
    }
  }

  private async specOf(address: JobAddress): Promise<unknown> {
    try {
      return await this.store.getSpec(address);
    } catch (error) {
      // An unreadable spec only leaves the rebuilt entry the default priority.
      if (error instanceof SpecError) return undefined;
      throw error;
    }
  }

  private async keys(prefix: string): Promise<string[]> {
    const keys: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({ Bucket: this.store.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      keys.push(...(page.Contents ?? []).flatMap((o) => (o.Key ? [o.Key] : [])));
      token = page.NextContinuationToken;
    } while (token);
    return keys;
  }
}

/** One owner's index keys, newest first, listed a page at a time as they are taken. */
class IndexStream {
  private buffer: IndexKey[] = [];
  private token: string | undefined;
  private ended = false;

  constructor(
    private readonly index: JobIndex,
    private readonly project: string,
    private readonly user: string,
    private readonly pageSize: number,
    /** The stamp of the oldest time wanted: keys past it end the stream, unlisted. */
    private readonly until: string | undefined,
    /** The cursor the stream starts after. */
    private readonly after: string | undefined,
  ) {}

  /** The next key without taking it; undefined at the end. */
  async peek(): Promise<IndexKey | undefined> {
    while (this.buffer.length === 0 && !this.ended) {
      const { keys, token } = await this.index.page(
        this.project,
        this.user,
        this.pageSize,
        this.token,
        this.after,
      );
      const older = this.until === undefined ? -1 : keys.findIndex((k) => k.stamp > this.until!);
      this.buffer = older < 0 ? keys : keys.slice(0, older);
      this.token = token;
      this.ended = token === undefined || older >= 0;
    }
    return this.buffer[0];
  }

  take(): void {
    this.buffer.shift();
  }
}

/** Whether a key's job id or name holds `text` (lower case). */
const mentions = (key: IndexKey, text: string): boolean =>
  key.address.jobId.includes(text) || (key.name?.toLowerCase().includes(text) ?? false);

/**
 * The streams' keys merged newest first. Stamps alone order them: within one millisecond the order is
 * each stream's own, as S3 listed it.
 */
async function* newestFirst(streams: readonly IndexStream[]): AsyncGenerator<IndexKey> {
  for (;;) {
    const heads = await mapBounded(streams, CONCURRENCY, (s) => s.peek());
    let best = -1;
    heads.forEach((head, i) => {
      if (head && (best < 0 || head.stamp < heads[best]!.stamp)) best = i;
    });
    if (best < 0) return;
    streams[best]!.take();
    yield heads[best]!;
  }
}
