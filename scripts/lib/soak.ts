/**
 * The agent soak: many short jobs through several `crucible agent` processes on the local platform
 * (embedded SQS/S3, the local Docker engine) while agents are SIGKILLed at random and restarted, then
 * an account of every job: one success envelope with its own result, never finished twice, no message
 * left in the queue or the dead-letter queue, no job container left on the engine.
 */
import { GetQueueAttributesCommand } from "@aws-sdk/client-sqs";
import Dockerode from "dockerode";
import type { ChildProcessWithoutNullStreams } from "node:child_process";
import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JobAddress } from "../../runtime/src/store/job-store";
import type { LocalPlatform } from "../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../runtime/src/local/local-platform";
import type { Logger } from "../../runtime/src/logger";
import { LABELS } from "../../runtime/src/launch/sandbox";
import { submitJob } from "../../runtime/src/job/submit";
import { exponential, mulberry32 } from "./random";
import type { TierName } from "../../runtime/src/catalog/tiers";

const ROOT = join(__dirname, "../..");
const BIN = join(ROOT, "runtime/src/cli/bin/crucible.ts");

/** A `crucible agent` process, with the structured log lines it has written so far. */
export class AgentProcess {
  readonly lines: Record<string, unknown>[] = [];
  readonly exited: Promise<number | null>;
  private readonly child: ChildProcessWithoutNullStreams;

  constructor(tier: TierName, env: Readonly<Record<string, string>>) {
    // In-process tsx: the tsx wrapper would SIGKILL the agent on SIGTERM before its jobs are handed back.
    this.child = spawn(process.execPath, ["--import", "tsx", BIN, "agent", "--tier", tier], {
      cwd: ROOT,
      env: { ...process.env, CRUCIBLE_LOG_LEVEL: "info", ...env },
    });
    let partial = "";
    this.child.stderr.on("data", (chunk: Buffer) => {
      const text = partial + chunk.toString();
      const complete = text.split("\n");
      partial = complete.pop() ?? "";
      for (const line of complete) {
        try {
          this.lines.push(JSON.parse(line) as Record<string, unknown>);
        } catch {
          this.lines.push({ msg: line });
        }
      }
    });
    this.child.stdout.resume();
    this.exited = new Promise((resolve) => this.child.on("exit", (code) => resolve(code)));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends `signal` and resolves once the process is gone (and reaped, so its pid reads as dead). */
  async kill(signal: NodeJS.Signals): Promise<number | null> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }

  /** The job ids of log lines with this message. */
  jobsLogged(msg: string): string[] {
    return this.lines.filter((l) => l.msg === msg).map((l) => String(l.jobId));
  }
}

/**
 * The environment that points an agent at the local platform's queues and bucket, as the node role, with
 * small job workspaces: several agents share this machine's disk.
 */
export function localAgentEnv(platform: LocalPlatform): Record<string, string> {
  return { ...platform.env(), CRUCIBLE_WORKSPACE_MIB: "64" };
}

export interface SoakOptions {
  readonly jobs: number;
  readonly agents: number;
  /** Jobs each agent runs at once. */
  readonly concurrency: number;
  /** Mean milliseconds between SIGKILLs of a random agent (exponentially distributed); 0: no kills. */
  readonly meanKillIntervalMs: number;
  readonly seed: number;
  /** Give up after this long. */
  readonly timeoutMs: number;
  readonly logger: Logger;
  /** Called as jobs complete, for a progress display. */
  readonly onProgress?: (done: number, total: number, kills: number) => void;
}

export interface SoakReport {
  readonly jobs: number;
  readonly succeeded: number;
  /** Jobs with no success envelope carrying their own number. */
  readonly missing: readonly string[];
  /** Jobs some agent finished more than once. */
  readonly finishedTwice: readonly string[];
  readonly kills: number;
  readonly agentStarts: number;
  /** Job runs started, across agents (a killed agent's job starts again elsewhere). */
  readonly attempts: number;
  readonly messagesLeft: number;
  readonly deadLetters: number;
  readonly containersLeft: number;
  readonly seconds: number;
}

const TIER: TierName = "cpu-small";
const JOB = 'import os\ndef main():\n    return int(os.environ["SOAK_N"])\n';

export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const started = Date.now();
  const random = mulberry32(options.seed);
  const platform = await startLocalPlatform({
    tiers: [TIER],
    logger: options.logger,
    // Short enough that a killed agent's jobs return soon, and receives to spare before dead-lettering.
    visibilityTimeoutSeconds: 8,
    maxReceiveCount: 50,
  });
  const scratch = await mkdtemp(join(tmpdir(), "crucible-soak-"));
  const agents: AgentProcess[] = [];
  const retired: AgentProcess[] = [];
  const env = {
    ...localAgentEnv(platform),
    CRUCIBLE_CONCURRENCY: String(options.concurrency),
    CRUCIBLE_HEARTBEAT_SECONDS: "2",
    CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS: "8",
  };
  let kills = 0;
  try {
    const code = join(scratch, "main.py");
    await writeFile(code, JOB);
    const run = `soak-${Date.now().toString(36)}`;
    const addresses: JobAddress[] = [];
    for (let n = 0; n < options.jobs; n++) {
      const jobId = `${run}-${n}`;
      addresses.push(
        await submitJob(platform.store, platform.queue(TIER), {
          path: code,
          address: { project: "soak", user: "agent", jobId },
          spec: { jobId, tier: TIER, imageFamily: "cpu", env: { SOAK_N: String(n) } },
          quotaGiB: 10,
        }),
      );
    }
    for (let i = 0; i < options.agents; i++) agents.push(new AgentProcess(TIER, env));

    const pending = new Map(addresses.map((a, n) => [a.jobId, { address: a, n }]));
    let nextKill = Date.now() + exponential(random, 1 / options.meanKillIntervalMs);
    while (pending.size > 0) {
      if (Date.now() - started > options.timeoutMs) {
        throw new Error(`soak timed out after ${options.timeoutMs} ms with ${pending.size} jobs unfinished`);
      }
      if (options.meanKillIntervalMs > 0 && Date.now() >= nextKill) {
        const victim = Math.floor(random() * agents.length);
        const agent = agents[victim]!;
        await agent.kill("SIGKILL");
        retired.push(agent);
        kills++;
        agents[victim] = new AgentProcess(TIER, env);
        nextKill = Date.now() + exponential(random, 1 / options.meanKillIntervalMs);
      }
      for (const [jobId, { address }] of pending) {
        if (await platform.store.getEnvelope(address)) pending.delete(jobId);
      }
      options.onProgress?.(options.jobs - pending.size, options.jobs, kills);
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
    await Promise.all(agents.map((a) => a.kill("SIGTERM")));

    const everyAgent = [...retired, ...agents];
    const missing: string[] = [];
    for (const [n, address] of addresses.entries()) {
      const envelope = await platform.store.getEnvelope(address);
      if (envelope?.status !== "success" || envelope.result !== n) missing.push(address.jobId);
    }
    const finished = everyAgent.flatMap((a) => a.jobsLogged("job finished"));
    const finishedTwice = [...new Set(finished.filter((id, i) => finished.indexOf(id) !== i))];
    const depth = (url: string) => queueDepth(platform, url);
    return {
      jobs: options.jobs,
      succeeded: options.jobs - missing.length,
      missing,
      finishedTwice,
      kills,
      agentStarts: everyAgent.length,
      attempts: everyAgent.flatMap((a) => a.jobsLogged("job started")).length,
      messagesLeft: await depth(platform.queue(TIER).queueUrl),
      deadLetters: await depth(platform.dlqUrl(TIER)),
      containersLeft: await containersOf(run),
      seconds: (Date.now() - started) / 1000,
    };
  } finally {
    await Promise.all([...agents, ...retired].map((a) => a.kill("SIGKILL")));
    await platform.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Messages in a local queue, waiting or in flight. */
export async function queueDepth(platform: LocalPlatform, url: string): Promise<number> {
  const out = await platform.sqs.send(
    new GetQueueAttributesCommand({
      QueueUrl: url,
      AttributeNames: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    }),
  );
  return (
    Number(out.Attributes?.ApproximateNumberOfMessages ?? 0) +
    Number(out.Attributes?.ApproximateNumberOfMessagesNotVisible ?? 0)
  );
}

/** Job containers of this soak run still on the engine. */
async function containersOf(run: string): Promise<number> {
  const containers = await new Dockerode().listContainers({
    all: true,
    filters: { label: [`${LABELS.managed}=true`] },
  });
  return containers.filter((c) => c.Labels[LABELS.jobId]?.startsWith(run)).length;
}
