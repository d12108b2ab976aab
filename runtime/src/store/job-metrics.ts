import { z } from "zod";
import type { ChunkSeries } from "./chunk-series";

/**
 * One progress or metric event of a job, as the agent stores it (a JSON line in a chunk series under
 * `<job>/metrics/`): the step the job was at, its total when known, and the named numbers it reported.
 * Every attempt appends to the same series, so a resumed job's history continues where it left off.
 */
export const metricRecordSchema = z.object({
  /** When the agent received it, in milliseconds since the epoch. */
  t: z.number(),
  /** The attempt that reported it: a resume starts a new one. */
  a: z.number().int().positive(),
  step: z.number().nonnegative().optional(),
  total: z.number().nonnegative().optional(),
  m: z.record(z.string(), z.number()),
  /**
   * `protocol` (crucible.progress) or `log` (a recognised training log line): what the job reported;
   * `resources`: what its launcher measured it using ({@link RESOURCE_METRICS}).
   */
  src: z.enum(["protocol", "log", "resources"]),
});
export type MetricRecord = z.infer<typeof metricRecordSchema>;

/** The names of a `resources` record's numbers: apart from what the job reports, so none can pose as them. */
export const RESOURCE_METRICS = {
  memoryMiB: "memory_mib",
  cpuCores: "cpu_cores",
  gpuUtilPercent: "gpu_util_percent",
  gpuMemoryMiB: "gpu_memory_mib",
} as const;

/** Whether a record holds what the job reported, not a sample of its resources. */
export const reportedByJob = (record: MetricRecord): boolean => record.src !== "resources";

/** Every record of a job's metric history, in the order it was recorded, over all its attempts. */
export async function readMetricHistory(series: ChunkSeries): Promise<MetricRecord[]> {
  const records: MetricRecord[] = [];
  for (const chunk of await series.list()) records.push(...(await series.read(chunk, metricRecordSchema)));
  return records;
}

/**
 * The records of `attempt`'s first and last chunks: enough for {@link progressRate}, which looks at the
 * attempt's first and last steps, without reading a long run's whole history.
 */
export async function readAttemptEnds(series: ChunkSeries, attempt: number): Promise<MetricRecord[]> {
  const chunks = (await series.list()).filter((c) => c.attempt === attempt);
  const ends = chunks.length > 1 ? [chunks[0]!, chunks.at(-1)!] : chunks;
  return (await Promise.all(ends.map((c) => series.read(c, metricRecordSchema)))).flat();
}

/** How fast a running job moves through its steps, and when it should be done. */
export interface ProgressRate {
  readonly stepsPerSecond: number;
  /** Seconds until `total` at that rate, from `now`; undefined without a total. */
  readonly etaSeconds?: number;
}

/**
 * The rate of `attempt` over its recorded steps (first to last record with a step), and the time left to
 * its total from `now`; undefined until it has moved.
 */
export function progressRate(
  records: readonly MetricRecord[],
  attempt: number,
  now = Date.now(),
): ProgressRate | undefined {
  const stepped = records.filter((r) => r.a === attempt && r.step !== undefined);
  const first = stepped[0];
  const last = stepped.at(-1);
  if (!first || !last || last.t <= first.t || last.step! <= first.step!) return undefined;
  const stepsPerSecond = (last.step! - first.step!) / ((last.t - first.t) / 1000);
  const total = last.total ?? [...stepped].reverse().find((r) => r.total !== undefined)?.total;
  if (total === undefined) return { stepsPerSecond };
  const etaSeconds = Math.max(0, (total - last.step!) / stepsPerSecond - (now - last.t) / 1000);
  return { stepsPerSecond, etaSeconds };
}
