import { z } from "zod";
import type { ChunkSeries, StoredChunk } from "./chunk-series";

/**
 * One line of a job's live log, as the agent stores it (a JSON line in a {@link ChunkSeries} under
 * `<job>/logs/live/`). Short keys: a job may print a gibibyte, and every byte of a key is stored per line.
 */
export const logRecordSchema = z.object({
  /** When the agent received it, in milliseconds since the epoch. */
  t: z.number(),
  s: z.enum(["stdout", "stderr"]),
  /** The text, without its line break. */
  l: z.string(),
  /** The line had not ended when it was flushed: the text that follows continues it. */
  p: z.literal(true).optional(),
  /** Written by the platform (a dropped-output marker), not printed by the job. */
  x: z.literal(true).optional(),
  /** The attempt that printed it. */
  a: z.number().int().positive(),
});
export type LogRecord = z.infer<typeof logRecordSchema>;

/** Per-job cap on stored log bytes, over every attempt, unless the agent is told otherwise. */
export const DEFAULT_LOG_CAP_BYTES = 1024 ** 3;

export interface LogFilter {
  readonly stream?: "stdout" | "stderr";
  /** Only lines received at or after this time (ms since the epoch). */
  readonly since?: number;
}

/** Records of `chunks` in order that pass `filter` (platform markers always pass: they explain gaps). */
export async function readLogRecords(
  series: ChunkSeries,
  chunks: readonly StoredChunk[],
  filter: LogFilter = {},
): Promise<LogRecord[]> {
  const records: LogRecord[] = [];
  for (const chunk of chunks)
    for (const record of await series.read(chunk, logRecordSchema))
      if (passes(record, filter)) records.push(record);
  return records;
}

const passes = (record: LogRecord, { stream, since }: LogFilter): boolean =>
  record.x === true || ((!stream || record.s === stream) && (since === undefined || record.t >= since));

/** The text of records as the job printed it: line breaks back where they were. */
export function logText(records: readonly LogRecord[]): string {
  return records.map((r) => (r.p ? r.l : `${r.l}\n`)).join("");
}
