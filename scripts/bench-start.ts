/**
 * `npm run bench:start -- [--jobs N] [--max-gap S]`: how fast a job starts on an idle agent, on the local
 * platform with a real agent (the built `crucible agent`, in its own process) and the Docker engine.
 *
 * - **Agent readiness**: from spawning the agent to its first receive from the queues (its `receiving jobs`
 *   log line, at debug level). Baseline in the same run: spawning the same CLI for `--version` until it exits
 *   (what any start of the CLI costs before the agent does anything of its own).
 * - **Submit to container start**: with the agent idle (polling), `--jobs` trivial jobs submitted one at a
 *   time as a researcher (`submitJob`), each after a random pause of up to `--max-gap` seconds past the last
 *   one's end, so submissions land anywhere in the agent's polling. Timed from the call to `submitJob` to the
 *   job container's `start` event on the Docker engine (matched by its `crucible.job-id` label). Printed: p50
 *   and p95 (goal: p95 under 3 s), against the baseline measured in the same run: a bare create+start of the
 *   same image through the engine, timed the same way to its `start` event.
 */
import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { Command } from "commander";
import Dockerode from "dockerode";
import { createWriteStream } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";
import pino from "pino";
import { submitJob } from "../runtime/src/job/submit";
import { LABELS } from "../runtime/src/launch/sandbox";
import type { LocalPlatform } from "../runtime/src/local/local-platform";
import { startLocalPlatform } from "../runtime/src/local/local-platform";
import { numberFlag } from "./lib/flags";

const TIER = "cpu-large";
const AGENT = join(__dirname, "../runtime/dist/cli/bin/crucible.js");
/** The agent's log line just before each receive (runtime/src/agent/agent.ts). */
const RECEIVING = "receiving jobs";
const START_TIMEOUT_MS = 120_000;

const wholePositive = (flag: string) =>
  numberFlag(flag, "a whole number > 0", (n) => Number.isInteger(n) && n > 0);

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const ms = (n: number): string => `${n.toFixed(0)} ms`;

/** Container `start` events of the engine, by a label's value, with the engine's own time in ms. */
class StartEvents {
  private readonly seen = new Map<string, { at: number; image: string }>();
  private readonly waiting = new Map<string, (event: { at: number; image: string }) => void>();

  private constructor(private readonly stream: NodeJS.ReadableStream) {
    createInterface({ input: stream }).on("line", (line) => {
      const event = JSON.parse(line) as {
        timeNano: number;
        Actor: { Attributes: Record<string, string> };
      };
      const attributes = event.Actor.Attributes;
      const key = attributes[LABELS.jobId] ?? attributes["crucible.bench"];
      if (!key) return;
      const started = { at: event.timeNano / 1e6, image: attributes.image ?? "" };
      this.seen.set(key, started);
      this.waiting.get(key)?.(started);
    });
  }

  static async open(docker: Dockerode): Promise<StartEvents> {
    const stream = await docker.getEvents({ filters: { type: ["container"], event: ["start"] } });
    return new StartEvents(stream);
  }

  /** The start of the container labelled `key`, once the engine reports it. */
  async of(key: string): Promise<{ at: number; image: string }> {
    const seen = this.seen.get(key);
    if (seen) return seen;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`no container start for ${key} in ${START_TIMEOUT_MS} ms`)),
        START_TIMEOUT_MS,
      );
      this.waiting.set(key, (event) => {
        clearTimeout(timer);
        resolve(event);
      });
    });
  }

  close(): void {
    (this.stream as NodeJS.ReadableStream & { destroy(): void }).destroy();
  }
}

/** Spawns the built CLI; resolves with the ms from spawn to the first stderr log line `msg`, or to exit. */
function timeCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  until: { msg: string } | "exit",
  log?: NodeJS.WritableStream,
): { child: ChildProcess; elapsed: Promise<number> } {
  const spawnedAt = performance.now();
  const child = spawn(process.execPath, [AGENT, ...args], { env, stdio: ["ignore", "ignore", "pipe"] });
  const elapsed = new Promise<number>((resolve, reject) => {
    child.once("error", reject);
    if (until === "exit") {
      child.once("exit", () => resolve(performance.now() - spawnedAt));
      child.stderr.resume();
      return;
    }
    child.once("exit", (code) => reject(new Error(`the agent exited (${code}) before its first receive`)));
    createInterface({ input: child.stderr }).on("line", (line) => {
      log?.write(`${line}\n`);
      let record: { msg?: string; level?: number } = {};
      try {
        record = JSON.parse(line) as typeof record;
      } catch {
        return; // the AWS SDK's console warnings
      }
      if (record.msg === until.msg) resolve(performance.now() - spawnedAt);
      else if ((record.level ?? 0) >= 40) process.stderr.write(`${line}\n`);
    });
  });
  return { child, elapsed };
}

async function submitOne(
  platform: LocalPlatform,
  root: string,
  events: StartEvents,
  jobId: string,
): Promise<{ delay: number; image: string }> {
  const path = join(root, `${jobId}.py`);
  await writeFile(path, "def main():\n    pass\n");
  const ada = platform.as("bench", "ada");
  const submittedAt = Date.now();
  const address = await submitJob(ada.store, ada.queue(TIER), {
    path,
    address: { project: "bench", user: "ada", jobId },
    spec: { jobId, tier: TIER, imageFamily: "cpu", env: {}, timeoutSeconds: 600 },
    quotaGiB: 10,
  });
  const started = await events.of(jobId);
  // Finished before the next submission, so the agent is idle (polling) when it comes.
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await platform.store.getEnvelope(address))) {
    if (Date.now() > deadline) throw new Error(`job ${jobId} did not finish`);
    await sleep(100);
  }
  return { delay: started.at - submittedAt, image: started.image };
}

/** A bare create+start of `image` through the engine, timed to its `start` event like a job. */
async function bareStart(
  docker: Dockerode,
  events: StartEvents,
  image: string,
  key: string,
): Promise<number> {
  const startedAt = Date.now();
  const container = await docker.createContainer({
    Image: image,
    Cmd: ["true"],
    Labels: { "crucible.bench": key },
    HostConfig: { AutoRemove: false },
  });
  try {
    await container.start();
    return (await events.of(key)).at - startedAt;
  } finally {
    await container.remove({ force: true }).catch(() => undefined);
  }
}

async function main(): Promise<void> {
  const flags = new Command("bench:start")
    .option("--jobs <n>", "jobs submitted one at a time", wholePositive("--jobs"), 20)
    .option("--max-gap <s>", "longest random pause before each submission", wholePositive("--max-gap"), 5)
    .option("--agent-log <path>", "where to write the agent's debug log, to see where the time goes")
    .parse()
    .opts<{ jobs: number; maxGap: number; agentLog?: string }>();
  const logger = pino({ level: "warn" });
  const platform = await startLocalPlatform({ tiers: [TIER], logger });
  const root = await mkdtemp(join(tmpdir(), "crucible-bench-start-"));
  const docker = new Dockerode();
  const events = await StartEvents.open(docker);
  // The agent takes the senders it accepts from its environment once: ada's identity must exist first.
  platform.as("bench", "ada");
  const env = { ...process.env, ...platform.env(), CRUCIBLE_LOG_LEVEL: "debug" };
  let agent: ChildProcess | undefined;
  try {
    const version = await timeCli(["--version"], env, "exit").elapsed;
    const log = flags.agentLog === undefined ? undefined : createWriteStream(flags.agentLog);
    const spawned = timeCli(["agent", "--tier", TIER, "--concurrency", "1"], env, { msg: RECEIVING }, log);
    agent = spawned.child;
    const ready = await spawned.elapsed;
    process.stdout.write(
      `agent readiness: spawn to first receive ${ms(ready)}; baseline, the CLI's --version ${ms(version)}: ` +
        `${(ready / version).toFixed(2)}× (the agent's own start work: ${ms(ready - version)})\n`,
    );

    const delays: number[] = [];
    let image = "";
    for (let i = 1; i <= flags.jobs; i++) {
      await sleep(Math.random() * flags.maxGap * 1000);
      const job = await submitOne(platform, root, events, `bench-start-${process.pid}-${i}`);
      delays.push(job.delay);
      image = job.image;
    }
    const bare: number[] = [];
    for (let i = 1; i <= Math.min(flags.jobs, 10); i++)
      bare.push(await bareStart(docker, events, image, `bench-start-${process.pid}-bare-${i}`));
    const p95 = percentile(delays, 95);
    const bareP50 = percentile(bare, 50);
    process.stdout.write(
      `submit to container start, idle agent, ${delays.length} jobs: p50 ${ms(percentile(delays, 50))}, ` +
        `p95 ${ms(p95)}, max ${ms(Math.max(...delays))} (goal: p95 under 3000 ms)\n` +
        `baseline, a bare create+start of ${image}, ${bare.length} runs: p50 ${ms(bareP50)}, ` +
        `p95 ${ms(percentile(bare, 95))}; the job's p95 is ${(p95 / bareP50).toFixed(1)}× the bare p50\n`,
    );
  } finally {
    events.close();
    if (agent && agent.exitCode === null) {
      const exited = new Promise((resolve) => agent!.once("exit", resolve));
      agent.kill("SIGTERM");
      await exited;
    }
    await platform.stop();
    await rm(root, { recursive: true, force: true });
  }
}

void main();
