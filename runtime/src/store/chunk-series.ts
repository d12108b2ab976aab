import type { S3Client } from "@aws-sdk/client-s3";
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import type { z } from "zod";

/** One stored chunk of a series: its key and size in bytes. */
export interface StoredChunk {
  readonly key: string;
  readonly attempt: number;
  readonly size: number;
}

/** The biggest chunk a reader takes: writers flush long before, so a bigger one was not written by one. */
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;

const CHUNK_NAME = /(\d{4})-(\d{8})\.jsonl$/;

/**
 * An append-only series of JSON-lines chunks under one prefix of the workspaces bucket, written by a
 * single writer (the agent running the job) and read while it grows: `<prefix><attempt>-<seq>.jsonl`,
 * both numbers fixed-width, so the bucket's key order is the order they were written in, across attempts,
 * and a reader that remembers the last key it saw lists only what came after.
 */
export class ChunkSeries {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
    /** Ends with `/`. */
    readonly prefix: string,
  ) {}

  /**
   * Stores chunk `seq` of `attempt`: `lines` (JSON, without line breaks), or their JSON-lines body as
   * bytes, each line ending with `\n` (what a writer that encodes as it goes holds). Resolves with its size.
   */
  async put(attempt: number, seq: number, lines: readonly string[] | Uint8Array): Promise<number> {
    const body = lines instanceof Uint8Array ? lines : lines.map((line) => `${line}\n`).join("");
    await this.s3.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: `${this.prefix}${chunkName(attempt, seq)}`,
        Body: body,
        ContentType: "application/x-ndjson",
      }),
    );
    return typeof body === "string" ? Buffer.byteLength(body) : body.length;
  }

  /** The chunks written after `startAfter` (a key from an earlier listing), in order. */
  async list(startAfter?: string): Promise<StoredChunk[]> {
    const chunks: StoredChunk[] = [];
    let token: string | undefined;
    do {
      const page = await this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.bucket,
          Prefix: this.prefix,
          ContinuationToken: token,
          ...(startAfter && !token && { StartAfter: startAfter }),
        }),
      );
      for (const object of page.Contents ?? []) {
        const match = object.Key ? CHUNK_NAME.exec(object.Key) : null;
        // Anything else under the prefix (the job's own writes, say) is not part of the series.
        if (!match || !object.Key!.startsWith(this.prefix)) continue;
        chunks.push({ key: object.Key!, attempt: Number(match[1]), size: object.Size ?? 0 });
      }
      token = page.NextContinuationToken;
    } while (token);
    return chunks;
  }

  /** Bytes stored so far, by every attempt: what a per-job cap counts against. */
  async storedBytes(): Promise<number> {
    return (await this.list()).reduce((sum, chunk) => sum + chunk.size, 0);
  }

  /** The records of one chunk that parse as `schema`; a malformed line is skipped, not fatal. */
  async read<T>(chunk: StoredChunk, schema: z.ZodType<T>): Promise<T[]> {
    if (chunk.size > MAX_CHUNK_BYTES)
      throw new Error(
        `${chunk.key} is ${chunk.size} bytes, more than the ${MAX_CHUNK_BYTES} a chunk may hold; it was not read`,
      );
    const out = await this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key: chunk.key }));
    const text = await out.Body!.transformToString("utf8");
    const records: T[] = [];
    for (const line of text.split("\n")) {
      if (line === "") continue;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch {
        continue;
      }
      const parsed = schema.safeParse(value);
      if (parsed.success) records.push(parsed.data);
    }
    return records;
  }
}

const chunkName = (attempt: number, seq: number): string =>
  `${String(attempt).padStart(4, "0")}-${String(seq).padStart(8, "0")}.jsonl`;
