import type { Command } from "commander";
import { setTimeout as sleep } from "node:timers/promises";
import type { ChunkSeries, StoredChunk } from "../../store/chunk-series";
import type { LogFilter, LogRecord } from "../../store/job-log";
import { readLogRecords } from "../../store/job-log";
import type { Owner } from "./platform-access";
import { ownerOptions } from "./platform-access";
import { findJob, isFinal } from "./jobs";
import { pastTime, positiveCount, UsageError } from "./shared";

/** How often `--follow` looks for new chunks: the agent ships every 2 s, so a line shows within ~3 s. */
const FOLLOW_POLL_MS = 1000;

interface LogsFlags extends Owner {
  readonly follow?: boolean;
  readonly tail?: number;
  readonly since?: number;
  readonly stderr?: boolean;
  readonly stdout?: boolean;
}

/** `logs`: a job's whole output (every attempt's), or its last lines, or followed while it runs. */
export function registerLogs(program: Command): void {
  ownerOptions(
    program
      .command("logs")
      .description("a job's output and errors, every attempt's; -f follows a running job")
      .argument("<job>", "job id"),
  )
    .option("-f, --follow", "keep printing new lines as the job prints them, until it ends")
    .option("--tail <n>", "start from the last N lines", positiveCount)
    .option("--since <when>", "only lines printed since then: 30m, 24h, 7d, or an ISO date-time", pastTime)
    .option("--stderr", "only the error stream")
    .option("--stdout", "only the output stream")
    .action(async (jobId: string, flags: LogsFlags) => {
      if (flags.stderr && flags.stdout)
        throw new UsageError("--stderr and --stdout exclude each other; leave both out for both streams");
      const { store, target, state } = await findJob(jobId, flags);
      const filter: LogFilter = {
        ...(flags.stderr && { stream: "stderr" as const }),
        ...(flags.stdout && { stream: "stdout" as const }),
        ...(flags.since !== undefined && { since: flags.since }),
      };
      const series = store.logSeries(target);
      const chunks = await series.list();
      if (chunks.length === 0 && !flags.follow) {
        // Jobs finished before logs were streamed kept only the tails their envelopes hold.
        const tails = await Promise.all(
          (filter.stream ? [filter.stream] : (["stdout", "stderr"] as const)).map((s) =>
            store.getLog(target, s),
          ),
        );
        if (tails.every((t) => t === undefined))
          throw new UsageError(
            `job ${jobId} has no logs yet (it is ${state.status}); \`crucible logs -f ${jobId}\` waits for them`,
          );
        if (tails[0]) process.stdout.write(tails[0]);
        if (tails[1]) process.stderr.write(tails[1]);
        return;
      }
      print(
        flags.tail !== undefined
          ? await lastLines(series, chunks, filter, flags.tail)
          : await readLogRecords(series, chunks, filter),
      );
      if (!flags.follow) return;
      let last = chunks.at(-1)?.key;
      for (;;) {
        // The job's end is read before the last listing: the agent ships its final lines before it ends it.
        const ended = isFinal((await store.getState(target)) ?? state);
        const fresh = await series.list(last);
        print(await readLogRecords(series, fresh, filter));
        last = fresh.at(-1)?.key ?? last;
        if (ended) return;
        await sleep(FOLLOW_POLL_MS);
      }
    });
}

/**
 * The last `count` lines of the log that pass `filter`, reading chunks back from the end only as far as
 * needed: a long job's gigabyte of log is not read to show its last lines.
 */
async function lastLines(
  series: ChunkSeries,
  chunks: readonly StoredChunk[],
  filter: LogFilter,
  count: number,
): Promise<LogRecord[]> {
  let records: LogRecord[] = [];
  for (let i = chunks.length - 1; i >= 0 && lineCount(records) <= count; i--)
    records = [...(await readLogRecords(series, [chunks[i]!], filter)), ...records];
  // Back from the end, `count` line endings; a partial record before them continues the first line.
  let ends = 0;
  let start = records.length;
  while (start > 0) {
    const ending = !records[start - 1]!.p;
    if (ending && ends === count) break;
    if (ending) ends += 1;
    start -= 1;
  }
  return records.slice(start);
}

const lineCount = (records: readonly LogRecord[]): number => records.filter((r) => !r.p).length;

function print(records: readonly LogRecord[]): void {
  for (const record of records) {
    const text = record.p ? record.l : `${record.l}\n`;
    (record.s === "stderr" ? process.stderr : process.stdout).write(text);
  }
}
