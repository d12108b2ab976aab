/**
 * `npm run bench:ls -- [--jobs N] [--runs N] [--baseline-runs N] [--cli-runs N]`: how long `crucible ls`
 * takes to show a user's latest 50 jobs out of a long history, on the local platform (goal: under 1 s for
 * 10,000 jobs). Seeds the jobs' states and index entries straight into the platform's bucket, then times,
 * as the user's own submitter identity:
 *
 * - `ls` as the command runs it (one page of the index's newest-first keys listed, each shown job's state
 *   read, the table rendered): the median of `--runs`, after one warm-up;
 * - the baseline, in the same run: the naive listing without an index (list every state object under the
 *   user's prefix, read each one, sort by submission time, keep 50), and, as a lower bound on any listing
 *   without an index, only listing those objects;
 * - for reference, the CLI end to end in a fresh Node process (tsx loading the source included).
 *
 * It prints the medians, their ratios, and whether the goal was met; both listings must show the same jobs.
 */
import type { S3Client } from "@aws-sdk/client-s3";
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import { Command } from "commander";
import { execFile } from "node:child_process";
import { availableParallelism, loadavg } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import { jobRow, renderTable } from "../runtime/src/cli/commands/ls";
import { startLocalPlatform } from "../runtime/src/local/local-platform";
import type { IndexEntry } from "../runtime/src/store/job-index";
import { JobIndex } from "../runtime/src/store/job-index";
import { mapBounded } from "../runtime/src/store/map-bounded";
import type { JobState } from "../runtime/src/store/job-store";
import { jobStateSchema } from "../runtime/src/store/job-store";
import { median } from "./lib/bench-timing";
import { numberFlag } from "./lib/flags";

const run = promisify(execFile);
const CLI = join(__dirname, "../runtime/src/cli/bin/crucible.ts");
const PROJECT = "bench";
const USER = "ada";
const SHOWN = 50;
const GOAL_MS = 1000;
/** Writes in flight while seeding, which is not timed. */
const SEED_CONCURRENCY = 32;
/** The baseline reads as many states at once as `ls` does (job-index.ts). */
const READ_CONCURRENCY = 16;

const wholePositive = (flag: string) =>
  numberFlag(flag, "a whole number > 0", (n) => Number.isInteger(n) && n > 0);

async function timed<T>(runs: number, body: () => Promise<T>): Promise<{ ms: number[]; last: T }> {
  const ms: number[] = [];
  let last: T | undefined;
  for (let i = 0; i < runs; i++) {
    const started = performance.now();
    last = await body();
    ms.push(performance.now() - started);
  }
  return { ms, last: last! };
}

/** Job `i` of `n`: a minute apart, the newest last; the newest few running, most finished, some failed. */
function jobOf(i: number, n: number, now: number): { jobId: string; entry: IndexEntry; state: JobState } {
  const jobId = `bench-${String(i).padStart(6, "0")}`;
  const submitted = now - (n - i) * 60_000;
  const started = submitted + 30_000;
  const status = n - i <= 3 ? "running" : i % 10 === 0 ? "failed" : "succeeded";
  const iso = (ms: number) => new Date(ms).toISOString();
  const state: JobState = {
    status,
    tier: "cpu-large",
    attempts: 1,
    node: "i-0123456789abcdef0",
    submittedAt: iso(submitted),
    updatedAt: iso(started + 600_000),
    startedAt: iso(started),
    progress: { step: 100, total: 100, metrics: { loss: 1 / (1 + (i % 97)), lr: 3e-4 }, at: iso(started) },
    ...(status === "running"
      ? { chargedHourlyUsd: 0.17 }
      : { finishedAt: iso(started + 600_000), costUsd: 0.0283 }),
  };
  return {
    jobId,
    entry: { jobId, tier: "cpu-large", priority: "normal", submittedAt: state.submittedAt, name: "nanogpt" },
    state,
  };
}

/** The naive listing: every state object under the user's jobs, read, sorted newest first. */
async function naive(s3: S3Client, bucket: string, read: boolean): Promise<string[]> {
  const prefix = `workspaces/${PROJECT}/${USER}/jobs/`;
  const keys: string[] = [];
  let token: string | undefined;
  do {
    const page = await s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of page.Contents ?? []) if (o.Key?.endsWith("/state.json")) keys.push(o.Key);
    token = page.NextContinuationToken;
  } while (token);
  if (!read) return [];
  const states = await mapBounded(keys, READ_CONCURRENCY, async (key) => {
    const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const state = jobStateSchema.parse(JSON.parse(await out.Body!.transformToString()));
    return { jobId: key.slice(prefix.length, -"/state.json".length), submittedAt: state.submittedAt };
  });
  return states
    .sort((a, b) => (a.submittedAt < b.submittedAt ? 1 : a.submittedAt > b.submittedAt ? -1 : 0))
    .slice(0, SHOWN)
    .map((s) => s.jobId);
}

async function main(): Promise<void> {
  const opts = new Command("bench-ls")
    .option("--jobs <n>", "jobs in the user's history", wholePositive("--jobs"), 10_000)
    .option("--runs <n>", "timed `ls` runs (after one warm-up)", wholePositive("--runs"), 9)
    .option("--baseline-runs <n>", "timed runs of each baseline", wholePositive("--baseline-runs"), 3)
    .option("--cli-runs <n>", "CLI runs in a fresh process", wholePositive("--cli-runs"), 3)
    .parse()
    .opts<{ jobs: number; runs: number; baselineRuns: number; cliRuns: number }>();
  const platform = await startLocalPlatform({ tiers: [], logger: pino({ level: "silent" }) });
  try {
    const ada = platform.as(PROJECT, USER);
    const seeder = JobIndex.of(platform.store);
    const now = Date.now();
    const seeding = performance.now();
    await mapBounded(
      Array.from({ length: opts.jobs }, (_, i) => i),
      SEED_CONCURRENCY,
      async (i) => {
        const { jobId, entry, state } = jobOf(i, opts.jobs, now);
        const address = { project: PROJECT, user: USER, jobId };
        // Written whole rather than through updateState, which reads the state first: seeding is not timed.
        await platform.s3.send(
          new PutObjectCommand({
            Bucket: platform.bucket,
            Key: `${platform.store.jobPrefix(address)}state.json`,
            Body: JSON.stringify(state),
          }),
        );
        await seeder.put(address, entry);
      },
    );
    console.log(
      `seeded ${opts.jobs} jobs (state and index entry each) in ${((performance.now() - seeding) / 1000).toFixed(1)} s`,
    );

    const index = JobIndex.of(ada.store);
    const ls = async (): Promise<string[]> => {
      const jobs = await index.list({ project: PROJECT, users: { user: USER }, limit: SHOWN });
      const at = new Date();
      renderTable(
        jobs.map((job) => jobRow(job, at)),
        false,
      );
      return jobs.map((j) => j.address.jobId);
    };
    await ls();
    const indexed = await timed(opts.runs, ls);
    const baseline = await timed(opts.baselineRuns, () => naive(ada.s3, platform.bucket, true));
    const listOnly = await timed(opts.baselineRuns, () => naive(ada.s3, platform.bucket, false));
    if (JSON.stringify(indexed.last) !== JSON.stringify(baseline.last))
      throw new Error(`ls and the baseline disagree on the latest ${SHOWN} jobs`);
    const env = { ...process.env, ...ada.env(), CRUCIBLE_PROJECT: PROJECT, CRUCIBLE_USER: USER };
    const cli = await timed(opts.cliRuns, async () => {
      const { stdout } = await run(process.execPath, ["--import", "tsx", CLI, "ls", "--json"], {
        env,
        maxBuffer: 2 ** 24,
      });
      return (JSON.parse(stdout) as { jobId: string }[]).length;
    });

    const ms = median(indexed.ms);
    const fmt = (v: number) => `${v.toFixed(0)} ms`;
    const spread = (v: readonly number[]) => `${fmt(Math.min(...v))}-${fmt(Math.max(...v))}`;
    // The local platform serves from this very process: a busy machine slows both sides alike.
    console.log(
      `latest ${SHOWN} of ${opts.jobs} jobs, local platform, the user's own credentials ` +
        `(${availableParallelism()} CPUs, load average ${loadavg()[0]!.toFixed(1)}):`,
    );
    console.log(
      `  crucible ls (index):              median ${fmt(ms)} of ${opts.runs} (${spread(indexed.ms)})`,
    );
    console.log(
      `  baseline (list + read every state): median ${fmt(median(baseline.ms))} of ${opts.baselineRuns} (${spread(baseline.ms)}): ${(median(baseline.ms) / ms).toFixed(1)}x the index's time`,
    );
    console.log(
      `  listing the state objects alone:  median ${fmt(median(listOnly.ms))} of ${opts.baselineRuns}: ${(median(listOnly.ms) / ms).toFixed(1)}x the index's time`,
    );
    console.log(
      `  CLI end to end (fresh node + tsx): median ${fmt(median(cli.ms))} of ${opts.cliRuns}, for reference (${cli.last} jobs printed)`,
    );
    console.log(
      `goal (under ${GOAL_MS} ms for the latest ${SHOWN}): ${ms < GOAL_MS ? "met" : "NOT met"} (${fmt(ms)})`,
    );
  } finally {
    await platform.stop();
  }
}

main().catch((error: unknown) => {
  console.error(`bench-ls: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
