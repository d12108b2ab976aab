import type { S3Client } from "@aws-sdk/client-s3";
import { GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import { WORKSPACES_PREFIX } from "../catalog/bucket-layout";
import type { Logger } from "../logger";
import type { SavedIdentities } from "./local-gateway";

/**
 * The local platform's state on disk, under `<data dir>/state/`, so a platform started again on the same
 * directory has the objects, the queued jobs and the identities of the last one. fauxqs (1.9.2) keeps
 * everything in memory and has no persistence of its own ("Limitations: persistence across restarts"),
 * so the platform saves what the gateway reports changed, before the change is acknowledged:
 *
 * - `objects/`: every object of the bucket, written through. After each write or delete the gateway
 *   forwarded, the key is read back from the embedded server and saved (or removed) here; a start puts
 *   them all back. Not kept: an object's last-modified time (restored objects are as new as the start)
 *   and tags, and agents' running markers (see {@link persisted}).
 * - `queues.json`: every queue's messages with their senders, rewritten (coalesced) after every send and
 *   delete, and once more as the platform stops. A start sends them again: messages in flight when a
 *   platform died are offered again, as after their visibility timeout, and every message starts with a
 *   receive count of 0 (fauxqs takes no count on a send).
 * - `identities.json`: the gateway's keys (secrets: the directory and files are the owner's only).
 */
export class LocalState {
  private readonly objectsDir: string;
  /** Per key, the save in progress: saves of one key run in order, so the last one wins. */
  private readonly saving = new Map<string, Promise<void>>();

  private constructor(
    readonly dir: string,
    private readonly logger: Logger,
  ) {
    this.objectsDir = join(dir, "objects");
  }

  static async open(dataDir: string, logger: Logger): Promise<LocalState> {
    const state = new LocalState(join(dataDir, "state"), logger);
    await mkdir(state.objectsDir, { recursive: true, mode: 0o700 });
    return state;
  }

  async identities(): Promise<SavedIdentities | undefined> {
    return this.readJson("identities.json", identitiesSchema);
  }

  async queues(): Promise<SavedQueues> {
    return (await this.readJson("queues.json", queuesSchema)) ?? { tiers: [], queues: {} };
  }

  /** Saves what `current` returns when the write runs; see {@link coalesced}. */
  identitiesWriter(current: () => SavedIdentities): () => Promise<void> {
    return coalesced(() => this.writeJson("identities.json", current()));
  }

  queuesWriter(current: () => Promise<SavedQueues>): () => Promise<void> {
    return coalesced(async () => this.writeJson("queues.json", await current()));
  }

  /** Saves the keys as the embedded server (`s3`, unauthenticated) now holds them: written, or gone. */
  async saveObjects(s3: S3Client, bucket: string, keys: readonly string[]): Promise<void> {
    await Promise.all(
      keys.filter(persisted).map((key) => {
        const run = (this.saving.get(key) ?? Promise.resolve())
          .catch(() => undefined)
          .then(() => this.saveObject(s3, bucket, key));
        this.saving.set(key, run);
        return run.finally(() => {
          if (this.saving.get(key) === run) this.saving.delete(key);
        });
      }),
    );
  }

  /** Resolves once the object saves in progress have ended. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.saving.values()]);
  }

  /** Puts every saved object back into the embedded server's bucket. */
  async restoreObjects(s3: S3Client, bucket: string): Promise<{ objects: number; bytes: number }> {
    let objects = 0;
    let bytes = 0;
    for (const name of await readdir(this.objectsDir)) {
      if (!name.endsWith(".json")) continue;
      const file = join(this.objectsDir, name);
      const meta = objectMetaSchema.safeParse(JSON.parse(await readFile(file, "utf8")));
      if (!meta.success)
        throw new Error(`${file} is not an object's record: ${meta.error.issues[0]?.message}`);
      const { key, contentType, metadata } = meta.data;
      const body = await readFile(this.dataFile(key)).catch((error: NodeJS.ErrnoException) => {
        if (error.code === "ENOENT") return undefined;
        throw error;
      });
      // Saved as data, then record: a record whose data is missing was never saved whole.
      if (!body) {
        this.logger.warn({ key }, "a saved object has no data; it is dropped");
        await rm(file, { force: true });
        continue;
      }
      await s3.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: body,
          ...(contentType && { ContentType: contentType }),
          Metadata: metadata,
        }),
      );
      objects += 1;
      bytes += body.length;
    }
    return { objects, bytes };
  }

  private async saveObject(s3: S3Client, bucket: string, key: string): Promise<void> {
    const record = join(this.objectsDir, `${hashOf(key)}.json`);
    let out;
    try {
      out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    } catch (error) {
      if ((error as { name?: string }).name !== "NoSuchKey") throw error;
      await rm(record, { force: true });
      await rm(this.dataFile(key), { force: true });
      return;
    }
    const data = this.dataFile(key);
    await pipeline(out.Body as Readable, createWriteStream(`${data}.tmp`, { mode: 0o600 }));
    await rename(`${data}.tmp`, data);
    const meta: ObjectMeta = {
      key,
      ...(out.ContentType && { contentType: out.ContentType }),
      metadata: out.Metadata ?? {},
    };
    await writeAtomically(record, JSON.stringify(meta));
  }

  private dataFile(key: string): string {
    return join(this.objectsDir, `${hashOf(key)}.data`);
  }

  private async readJson<T>(name: string, schema: z.ZodType<T>): Promise<T | undefined> {
    const file = join(this.dir, name);
    let text: string;
    try {
      text = await readFile(file, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
    const parsed = schema.safeParse(JSON.parse(text));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new Error(
        `${file} is not the local platform's ${name}: ${issue?.path.join(".")} ${issue?.message}; move it away to start afresh`,
      );
    }
    return parsed.data;
  }

  private writeJson(name: string, value: unknown): Promise<void> {
    return writeAtomically(join(this.dir, name), JSON.stringify(value));
  }
}

/**
 * Whether an object is worth keeping across a restart: not an agent's running marker
 * (`workspaces/<project>/_running/...`, JobStore.markRunning). Those say an agent of this run is alive;
 * restored, they would look fresh and count against the fair share for a visibility timeout. They are
 * also rewritten at every heartbeat, which would otherwise be saved each time.
 */
function persisted(key: string): boolean {
  return (
    !key.startsWith(WORKSPACES_PREFIX) || !/^[^/]+\/_running\//.test(key.slice(WORKSPACES_PREFIX.length))
  );
}

const hashOf = (key: string): string => createHash("sha256").update(key).digest("hex");

/** Written beside, then renamed over: a reader (or a crash) sees the old file or the new, whole. */
async function writeAtomically(file: string, text: string): Promise<void> {
  await writeFile(`${file}.tmp`, text, { mode: 0o600 });
  await rename(`${file}.tmp`, file);
}

/**
 * `task` run again after each call, one run at a time: every call resolves after a run that started after
 * it, so a caller knows its change is in; calls made while one waits to start share that run.
 */
function coalesced(task: () => Promise<void>): () => Promise<void> {
  let queued: Promise<void> | undefined;
  let last: Promise<void> = Promise.resolve();
  return () => {
    if (!queued) {
      const run = last.then(() => {
        queued = undefined;
        return task();
      });
      queued = run;
      last = run.catch(() => undefined);
    }
    return queued;
  };
}

const credentialsSchema = z.object({ accessKeyId: z.string().min(1), secretAccessKey: z.string().min(1) });

const identitiesSchema = z.object({
  agent: credentialsSchema,
  submitters: z.array(
    z.object({ project: z.string().min(1), user: z.string().min(1), credentials: credentialsSchema }),
  ),
});

const savedMessageSchema = z.object({
  body: z.string(),
  /** As the gateway stamped it; absent for a message that reached the server some other way. */
  sender: z.string().optional(),
  /** What was left of its delay. */
  delaySeconds: z.number().int().min(1).max(900).optional(),
});

const queuesSchema = z.object({
  /** The tiers whose queues the platform had: started with fewer, it still makes these. */
  tiers: z.array(z.string()),
  /** By queue name, oldest message first. */
  queues: z.record(z.string(), z.array(savedMessageSchema)),
});

export type SavedMessage = z.infer<typeof savedMessageSchema>;
export type SavedQueues = z.infer<typeof queuesSchema>;

const objectMetaSchema = z.object({
  key: z.string(),
  contentType: z.string().optional(),
  metadata: z.record(z.string(), z.string()),
});

type ObjectMeta = z.infer<typeof objectMetaSchema>;
