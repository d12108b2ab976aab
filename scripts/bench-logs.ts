/**
 * `npm run bench:logs -- [--seconds N] [--flood-mb N]`: what live logs cost, on the local platform with a
 * real agent and the Docker engine.
 *
 * - **Log delay**: a job prints a line with its own clock every 100 ms for `--seconds`; a follower reads
 *   the log as `crucible logs -f` does (listing new chunks every second) and measures, for each line, how
 *   long after it was printed the follower had it. Printed: p50 and p95, against the baseline measured in
 *   the same run, the agent's own flush interval (the delay no follower can beat).
 * - **Agent memory under a flood**: a job prints `--flood-mb` MB as fast as it can, then a quiet job
 *   prints one line; the agent (the built `crucible agent`, in its own process, so the embedded store's
 *   memory is not counted) has its resident memory sampled every 100 ms during each. Printed: the growth
 *   over the job's start for both, and the flood's against the quiet job's (goal: the flood adds < 64 MiB).
 */
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { Command } from "commander";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pino from "pino";
import { submitJob } from "../runtime/src/job/submit";
import type { LocalPlatform } from "../runtime/src/local/local-platform";
import { startLocalPlatform } from "../runtime/src/local/local-platform";
import { readLogRecords } from "../runtime/src/store/job-log";
import type { JobAddress } from "../runtime/src/store/job-store";
import { numberFlag } from "./lib/flags";

const TIER = "cpu-large";
const AGENT = join(__dirname, "../runtime/dist/cli/bin/crucible.js");
/** The agent's default: what `logs -f` waits on at best. */
const FLUSH_MS = 2000;
const FOLLOW_POLL_MS = 1000;
const MiB = 2 ** 20;

const wholePositive = (flag: string) =>
  numberFlag(flag, "a whole number > 0", (n) => Number.isInteger(n) && n > 0);

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

interface Bench {
  readonly platform: LocalPlatform;
  readonly root: string;
  counter: number;
}

/** Submits `code` as ada; resolves with its address once its envelope is stored, calling `during` while it runs. */
async function runJob(
  bench: Bench,
  code: string,
  during: (address: JobAddress, ended: () => boolean) => Promise<unknown> = () => Promise.resolve(),
): Promise<JobAddress> {
  const jobId = `bench-logs-${process.pid}-${++bench.counter}`;
  const path = join(bench.root, `${jobId}.py`);
  await writeFile(path, code);
  const ada = bench.platform.as("bench", "ada");
  const address = await submitJob(ada.store, ada.queue(TIER), {
    path,
    address: { project: "bench", user: "ada", jobId },
    spec: { jobId, tier: TIER, imageFamily: "cpu", env: {}, timeoutSeconds: 600 },
    quotaGiB: 10,
  });
  let ended = false;
  const watching = during(address, () => ended);
  while (!(await bench.platform.store.getEnvelope(address))) await sleep(250);
  ended = true;
  await watching;
  return address;
}

async function main(): Promise<void> {
  const flags = new Command("bench:logs")
    .option("--seconds <n>", "how long the timed job prints", wholePositive("--seconds"), 30)
    .option("--flood-mb <n>", "megabytes the flooding job prints", wholePositive("--flood-mb"), 500)
    .parse()
    .opts<{ seconds: number; floodMb: number }>();
  const logger = pino({ level: "warn" });
  const bench: Bench = {
    platform: await startLocalPlatform({ tiers: [TIER], logger }),
    root: await mkdtemp(join(tmpdir(), "crucible-bench-logs-")),
    counter: 0,
  };
  // The agent takes the senders it accepts from its environment once: ada's identity must exist first.
  bench.platform.as("bench", "ada");
  const agent = spawn(process.execPath, [AGENT, "agent", "--tier", TIER, "--concurrency", "1"], {
    env: { ...process.env, ...bench.platform.env(), CRUCIBLE_LOG_LEVEL: "warn" },
    stdio: ["ignore", "inherit", "inherit"],
  });
  try {
    const delays = await followDelays(bench, flags.seconds);
    const p95 = percentile(delays, 95);
    process.stdout.write(
      `log delay, ${delays.length} lines followed: p50 ${percentile(delays, 50).toFixed(0)} ms, p95 ${p95.toFixed(0)} ms ` +
        `(goal: under 5000 ms); baseline, the agent's flush interval ${FLUSH_MS} ms: p95 ${(p95 / FLUSH_MS).toFixed(2)}×\n`,
    );
    const quiet = await rssGrowth(agent, () => runJob(bench, 'def main():\n    print("quiet")\n'));
    let flooded: JobAddress | undefined;
    const floodStarted = Date.now();
    const flood = await rssGrowth(agent, async () => {
      flooded = await runJob(
        bench,
        [
          "import sys",
          "def main():",
          '    line = "x" * 1023 + "\\n"',
          `    for _ in range(${flags.floodMb} * 1000):`,
          "        sys.stdout.write(line)",
          "    sys.stdout.flush()",
        ].join("\n"),
      );
    });
    const floodSeconds = (Date.now() - floodStarted) / 1000;
    const storedMiB = (await bench.platform.store.logSeries(flooded!).storedBytes()) / MiB;
    process.stdout.write(
      `flood: ran ${floodSeconds.toFixed(0)} s; its live log holds ${storedMiB.toFixed(1)} MiB ` +
        `(${flags.floodMb} MB printed, as JSON lines)\n`,
    );
    process.stdout.write(
      `agent RSS growth: ${flags.floodMb} MB flood ${(flood / MiB).toFixed(1)} MiB, quiet job ${(quiet / MiB).toFixed(1)} MiB; ` +
        `the flood adds ${((flood - quiet) / MiB).toFixed(1)} MiB over the quiet job (goal: under 64 MiB)\n`,
    );
  } finally {
    agent.kill("SIGTERM");
    await new Promise((resolve) =>
      agent.exitCode === null ? agent.once("exit", resolve) : resolve(undefined),
    );
    await bench.platform.stop();
    await rm(bench.root, { recursive: true, force: true });
  }
}

/** Each printed line's delay until a follower polling like `logs -f` had it, in ms. */
async function followDelays(bench: Bench, seconds: number): Promise<number[]> {
  const delays: number[] = [];
  const code = [
    "import time",
    "def main():",
    `    for i in range(${seconds * 10}):`,
    '        print(f"at {time.time() * 1000:.0f}", flush=True)',
    "        time.sleep(0.1)",
  ].join("\n");
  await runJob(bench, code, async (address, ended) => {
    const series = bench.platform.store.logSeries(address);
    let last: string | undefined;
    for (;;) {
      const finished = ended();
      const fresh = await series.list(last);
      const seenAt = Date.now();
      for (const record of await readLogRecords(series, fresh)) {
        const printed = /^at (\d+)$/.exec(record.l);
        if (printed) delays.push(seenAt - Number(printed[1]));
      }
      last = fresh.at(-1)?.key ?? last;
      if (finished) return;
      await sleep(FOLLOW_POLL_MS);
    }
  });
  return delays;
}

/** How far the agent's resident memory rose above where it was while `body` ran, in bytes. */
async function rssGrowth(agent: ChildProcess, body: () => Promise<unknown>): Promise<number> {
  const rss = async (): Promise<number> => {
    const status = await readFile(`/proc/${agent.pid}/status`, "utf8");
    return Number(/^VmRSS:\s+(\d+) kB$/m.exec(status)![1]) * 1024;
  };
  const start = await rss();
  let peak = start;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      peak = Math.max(peak, await rss());
      await sleep(100);
    }
  })();
  try {
    await body();
  } finally {
    sampling = false;
    await sampler;
  }
  return peak - start;
}

void main();
