import type { S3Client } from "@aws-sdk/client-s3";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import { mkdir, readdir, readFile, stat, writeFile } from "node:fs/promises";
import { dirname, join, relative, resolve, sep } from "node:path";
import { z } from "zod";
import type { Envelope, JobSpecInput } from "./contract";
import { CHECKPOINT_OBJECT_TAG, envelopeSchema, jobIdSchema } from "./contract";
import type { LedgerEntry } from "./ledger";
import { LEDGER_PREFIX, WORKSPACES_PREFIX } from "./bucket-layout";
import { LEDGER_PARTITION_PATH, ledgerEntrySchema, ledgerMonths, ledgerPartitionPath } from "./ledger";
import type { Logger } from "./logger";

/** Who a job belongs to, and so where everything about it lives. */
export const jobAddressSchema = z.strictObject({
  project: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, { error: "must be lowercase letters, digits and dashes" }),
  user: z
    .string()
    .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, { error: "must be lowercase letters, digits, dots and dashes" }),
  jobId: jobIdSchema,
});
export type JobAddress = z.infer<typeof jobAddressSchema>;

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
});
export type JobState = z.infer<typeof jobStateSchema>;

/** What `spec.json` holds: the job as submitted, less its code (which is `code.zip` beside it). */
export type StoredSpec = Omit<JobSpecInput, "code" | "workspaceDir" | "datasetsDir">;

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
  checkpoints: "checkpoints/",
  outputs: "outputs/",
  ledger: "ledger/",
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

  async putCode(address: JobAddress, zipPath: string): Promise<void> {
    await this.put(address, KEYS.code, await readFile(zipPath));
  }

  async getCode(address: JobAddress, zipPath: string): Promise<boolean> {
    const body = await this.get(address, KEYS.code);
    if (!body) return false;
    await writeFile(zipPath, body);
    return true;
  }

  async putSpec(address: JobAddress, spec: StoredSpec): Promise<void> {
    await this.put(address, KEYS.spec, JSON.stringify(spec));
  }

  async getSpec(address: JobAddress): Promise<StoredSpec | undefined> {
    const body = await this.get(address, KEYS.spec);
    return body ? (JSON.parse(body.toString("utf8")) as StoredSpec) : undefined;
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
   * returns how many went up. Checkpoints carry the tag the bucket's checkpoint lifecycle selects by.
   */
  async uploadDir(
    address: JobAddress,
    kind: "checkpoints" | "outputs",
    dir: string,
    seen: Map<string, string>,
  ): Promise<number> {
    let uploaded = 0;
    for (const file of await filesUnder(dir)) {
      const info = await stat(file);
      const signature = `${info.size}:${info.mtimeMs}`;
      const name = relative(dir, file).split(sep).join("/");
      if (seen.get(name) === signature) continue;
      // Whole files in one request: fine for checkpoints of the tiers' sizes up to S3's 5 GB single PUT.
      await this.put(address, `${KEYS[kind]}${name}`, await readFile(file), {
        ...(kind === "checkpoints" && {
          Tagging: `${CHECKPOINT_OBJECT_TAG.key}=${CHECKPOINT_OBJECT_TAG.value}`,
        }),
      });
      seen.set(name, signature);
      uploaded += 1;
    }
    return uploaded;
  }

  /** Restores a job's checkpoints into `dir`; returns how many files came back. */
  async downloadCheckpoints(address: JobAddress, dir: string): Promise<number> {
    const prefix = this.jobPrefix(address) + KEYS.checkpoints;
    let count = 0;
    for (const key of await this.keys(prefix)) {
      const target = resolve(dir, key.slice(prefix.length));
      if (!target.startsWith(resolve(dir) + sep)) continue;
      const body = await this.getKey(key);
      if (!body) continue;
      await mkdir(dirname(target), { recursive: true });
      await writeFile(target, body);
      count += 1;
    }
    return count;
  }

  /**
   * Records one attempt's cost twice: under its job (`ledger/<attempt>.json`), where it goes with the job's
   * files, and in finance's partition of the month it ended in ({@link LEDGER_PREFIX}), which outlives them.
   */
  async putLedgerEntry(address: JobAddress, entry: LedgerEntry): Promise<void> {
    const body = JSON.stringify(entry);
    await this.put(address, `${KEYS.ledger}${entry.attempt}.json`, body);
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

  /** Bytes a project holds in the bucket: what its quota is measured against. */
  async projectBytes(project: string): Promise<number> {
    let total = 0;
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: `${this.prefix}${project}/`,
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

  private async getKey(key: string): Promise<Buffer | undefined> {
    try {
      const out = await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return Buffer.from(await out.Body!.transformToByteArray());
    } catch (error) {
      if (isMissing(error)) return undefined;
      throw error;
    }
  }
}

async function filesUnder(dir: string): Promise<string[]> {
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
