import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { AgentOptions } from "../../../runtime/src/agent/agent";
import type { Agent } from "../../../runtime/src/agent/agent";
import type { Envelope } from "../../../runtime/src/job/contract";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import type { JobAddress, RunningMarker } from "../../../runtime/src/store/job-store";
import type { LedgerEntry } from "../../../runtime/src/cost/ledger";
import { costOf } from "../../../runtime/src/cost/ledger";
import type { Priority, SchedulingPolicyInput } from "../../../runtime/src/catalog/scheduling";
import { schedulingPolicySchema } from "../../../runtime/src/catalog/scheduling";
import { submitJob } from "../../../runtime/src/job/submit";
import { getTier } from "../../../runtime/src/catalog/tiers";
import { localAgentEnv } from "../../../scripts/lib/soak";
import { localAgent, next, useLocalPlatform } from "../../support/local-agents";
import { crucible } from "../../support/cli";

/**
 * Scheduling against the local platform: the embedded SQS/S3 server, real agents and the Docker engine.
 * Every job is a small Python main(); what is asserted is the order and the bookkeeping around them.
 */

const logger = pino({ level: process.env.AGENT_TEST_LOG ?? "silent" });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
const TIER = "cpu-large";
const WAIT_MS = 120_000;
/** A test's own limit: its waits plus starting and stopping agents. */
const TEST_MS = 180_000;

const local = useLocalPlatform(TIER, logger, { maxReceiveCount: 3, visibilityTimeoutSeconds: 5 });
let counter = 0;

const QUICK = "def main():\n    return 1\n";
/** Counts to `steps` at 10 per second, saving its step on SIGTERM and resuming from it. */
const CHECKPOINTED = (steps: number): string =>
  [
    "import signal, time",
    "from crucible import checkpoint_dir, progress",
    "def main():",
    '    path = checkpoint_dir() / "step"',
    "    start = int(path.read_text()) if path.exists() else 0",
    "    stop = []",
    "    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))",
    "    step = start",
    `    while step < ${steps}:`,
    "        if stop:",
    "            path.write_text(str(step))",
    '            return {"stopped": step}',
    "        step += 1",
    `        progress(step=step, total=${steps})`,
    "        time.sleep(0.1)",
    '    return {"resumed_from": start, "steps": step}',
  ].join("\n");

function newAgent(policy: SchedulingPolicyInput = {}, options: Partial<AgentOptions> = {}): Agent {
  return localAgent(local.platform, TIER, launcher, logger, {
    policy: schedulingPolicySchema.parse(policy),
    ...options,
  });
}

async function submit(
  code: string,
  { user = "ada", priority = "normal" }: { user?: string; priority?: Priority } = {},
): Promise<JobAddress> {
  const jobId = `sched-${process.pid}-${++counter}`;
  const dir = join(local.root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), code);
  return submitJob(local.platform.store, local.platform.queue(TIER, priority), {
    path: dir,
    address: { project: "lab", user, jobId },
    spec: { jobId, tier: TIER, imageFamily: "cpu", env: {}, priority },
    quotaGiB: 1,
  });
}

/** Runs the agent until `done` settles, then stops it and waits for it to end. */
async function whileRunning<T>(agent: Agent, done: (agent: Agent) => Promise<T>): Promise<T> {
  const running = agent.run();
  try {
    return await done(agent);
  } finally {
    agent.stop("interrupted", 0);
    await running;
  }
}

/** The job ids in the order the agent started them, until `count` jobs have finished. */
function startsUntilFinished(
  agent: Agent,
  count: number,
): Promise<{ started: string[]; finished: string[] }> {
  const started: string[] = [];
  const finished: string[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`only ${finished.length} of ${count} jobs finished in ${WAIT_MS} ms`)),
      WAIT_MS,
    );
    agent.on("started", (a) => started.push(a.jobId));
    agent.on("finished", (a) => {
      finished.push(a.jobId);
      if (finished.length === count) {
        clearTimeout(timer);
        resolve({ started, finished });
      }
    });
  });
}

describe("scheduling on the local platform", () => {
  it(
    "starts high-priority jobs before a backlog of low ones submitted earlier",
    async () => {
      const low = [];
      for (let i = 0; i < 5; i++) low.push(await submit(QUICK, { priority: "low" }));
      const high = [];
      for (let i = 0; i < 3; i++) high.push(await submit(QUICK, { priority: "high" }));
      const { started } = await whileRunning(newAgent(), (agent) => startsUntilFinished(agent, 8));
      expect(started.slice(0, 3).sort()).toEqual(high.map((a) => a.jobId).sort());
      expect(started.slice(3).sort()).toEqual(low.map((a) => a.jobId).sort());
    },
    TEST_MS,
  );

  it(
    "with a per-user limit of 1, two users' 20 jobs each alternate and never run two at once",
    async () => {
      const ids = new Map<string, string>();
      for (const user of ["alice", "bob"])
        for (let i = 0; i < 20; i++) {
          const address = await submit("import time\ndef main():\n    time.sleep(0.3)\n    return 1\n", {
            user,
          });
          ids.set(address.jobId, user);
        }
      const agent = newAgent({ fairShare: { perUser: 1, deferSeconds: 1 } }, { concurrency: 2 });
      const running = new Map<string, number>();
      let most = 0;
      let deferred = 0;
      agent.on("started", (a) => {
        running.set(a.user, (running.get(a.user) ?? 0) + 1);
        most = Math.max(most, running.get(a.user)!);
      });
      agent.on("finished", (a) => running.set(a.user, running.get(a.user)! - 1));
      agent.on("deferred", () => (deferred += 1));
      const { started } = await whileRunning(agent, (a) => startsUntilFinished(a, 40));

      expect(most).toBe(1);
      expect(deferred).toBeGreaterThan(0);
      const users = started.map((id) => ids.get(id));
      expect(users.filter((u) => u === "alice")).toHaveLength(20);
      // Alternating: both run side by side, each starting its next job as its last one ends, so starts take
      // turns; one user starts twice in a row when their job ends first, three times at most when the
      // other's next message is still sitting out its deferral (1 s). First come, first served would start
      // all of alice's 20 first. (Which user is ahead overall drifts with the jobs' own run times.)
      const order = users.join(" ");
      // While both still have jobs to start: after one user's last, the other's remaining run back to back.
      const bothWaiting = Math.min(users.lastIndexOf("alice"), users.lastIndexOf("bob"));
      let streak = 0;
      users.slice(0, bothWaiting + 1).forEach((user, i) => {
        streak = user === users[i - 1] ? streak + 1 : 1;
        expect(streak, order).toBeLessThanOrEqual(3);
      });
      const firstHalf = users.slice(0, 20);
      expect(firstHalf.filter((u) => u === "alice").length, order).toBeGreaterThanOrEqual(8);
      expect(firstHalf.filter((u) => u === "bob").length, order).toBeGreaterThanOrEqual(8);
      // Every deferral was a fresh message: none of the jobs reached the dead-letter queue.
      for (const id of ids.keys())
        expect(
          await local.platform.store.getEnvelope({ project: "lab", user: ids.get(id)!, jobId: id }),
        ).toMatchObject({
          status: "success",
        });
    },
    TEST_MS,
  );

  it(
    "preempts a running low-priority job for a high one that waited past the threshold; the low one resumes from its checkpoint",
    async () => {
      const agent = newAgent({ preemption: { afterSeconds: 2 } });
      await whileRunning(agent, async () => {
        const low = await submit(CHECKPOINTED(80), { priority: "low" });
        await new Promise<void>((resolve) =>
          agent.on("progress", (a, event) => {
            if (a.jobId === low.jobId && (event.step ?? 0) >= 5) resolve();
          }),
        );
        const lowHandedBack = next<[JobAddress, string]>(agent, "handedBack", low.jobId, WAIT_MS);
        const lowFinished = next<[JobAddress, Envelope]>(agent, "finished", low.jobId, WAIT_MS);
        const preempting = new Promise<[JobAddress, JobAddress]>((resolve) =>
          agent.once("preempting", (victim, forJob) => resolve([victim, forJob])),
        );
        const high = await submit(QUICK, { priority: "high" });
        const highFinished = next<[JobAddress, Envelope]>(agent, "finished", high.jobId, WAIT_MS);

        const [victim, forJob] = await preempting;
        expect([victim.jobId, forJob.jobId]).toEqual([low.jobId, high.jobId]);
        expect((await lowHandedBack)[1]).toBe("preempted");
        const saved = await local.platform.store.getAttemptEnvelope(low, 1);
        expect(saved).toMatchObject({ status: "error", reason: "preempted" });
        const stoppedAt = (saved!.result as { stopped: number } | undefined)?.stopped;

        expect((await highFinished)[1]).toMatchObject({ status: "success", result: 1 });
        const [, final] = await lowFinished;
        expect(final).toMatchObject({ status: "success", result: { steps: 80 } });
        const resumedFrom = (final.result as { resumed_from: number }).resumed_from;
        expect(resumedFrom).toBeGreaterThanOrEqual(5);
        if (stoppedAt !== undefined) expect(resumedFrom).toBe(stoppedAt);
        expect(await local.platform.store.getState(low)).toMatchObject({
          status: "succeeded",
          attempts: 2,
          resumedFromCheckpoint: true,
        });
        expect(await local.platform.store.getEnvelope(low)).toEqual(final);
        const ledger = await local.platform.store.ledgerEntries({ project: "lab", user: "ada" });
        expect(
          ledger
            .filter((e) => e.jobId === low.jobId)
            .map((e) => [e.attempt, e.outcome, e.reason ?? null, e.priority])
            .sort(),
        ).toEqual([
          [1, "preempted", "preempted", "low"],
          [2, "finished", null, "low"],
        ]);
      });
    },
    TEST_MS,
  );

  it(
    "stops a running job with reason budget when its owner's spend would pass the limit, keeping its checkpoint, and refuses the owner's next submission",
    async () => {
      const price = getTier(TIER).onDemandHourlyUsd;
      const limit = 1;
      // Spent so far this month: all but what the job may spend in about 8 s (one check, the grace, a little run).
      const earlier: LedgerEntry = {
        jobId: "earlier-job",
        project: "lab",
        user: "carol",
        tier: TIER,
        priority: "normal",
        attempt: 1,
        node: "elsewhere",
        startedAt: new Date().toISOString(),
        endedAt: new Date().toISOString(),
        seconds: 0,
        outcome: "finished",
        status: "success",
        pricePerHourUsd: price,
        priceSource: "on-demand",
        priceFactor: 1,
        // Rounded like every ledger entry: to a hundredth of a cent.
        costUsd: Math.round((limit - costOf(8, price)) * 10_000) / 10_000,
      };
      await local.platform.store.putLedgerEntry(earlier);
      const policy = { budgets: { users: { carol: limit } } };
      const agent = newAgent(policy);
      const job = await whileRunning(agent, async () => {
        const address = await submit(CHECKPOINTED(600), { user: "carol" });
        const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", address.jobId, WAIT_MS);
        expect(envelope).toMatchObject({ status: "error", reason: "budget" });
        return address;
      });
      expect(await local.platform.store.getState(job)).toMatchObject({
        status: "failed",
        note: "stopped: its owner's budget is spent; checkpoints kept",
      });
      const checkpoints = join(local.root, "restored");
      await mkdir(checkpoints);
      expect(await local.platform.store.downloadCheckpoints(job, checkpoints)).toBe(1);
      const [entry] = (await local.platform.store.ledgerEntries({ project: "lab", user: "carol" })).filter(
        (e) => e.jobId === job.jobId,
      );
      expect(entry).toMatchObject({ outcome: "finished", reason: "budget", user: "carol" });

      const dir = join(local.root, "next-job");
      await mkdir(dir);
      await writeFile(join(dir, "main.py"), QUICK);
      const refused = await crucible(
        ["submit", dir, "--tier", TIER, "--project", "lab", "--user", "carol"],
        undefined,
        {
          ...localAgentEnv(local.platform),
          CRUCIBLE_SCHEDULING: JSON.stringify(policy),
        },
      );
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(
        /refused: user carol has spent \$\d+\.\d\d of a \$1\.00 monthly budget \(\$\d+\.\d\d left\), and this job may cost up to \$0\.0160 \(cpu-large at \$0\.096\/h for up to 600 s\)/,
      );
    },
    TEST_MS,
  );

  it(
    "`crucible usage --by user --format csv` over these runs adds up to the sum of the attempts' costs",
    async () => {
      const entries = await local.platform.store.ledgerEntries();
      const since = new Date(Date.now() - 3_600_000).toISOString();
      const out = await crucible(
        ["usage", "--by", "user", "--since", since, "--format", "csv"],
        undefined,
        localAgentEnv(local.platform),
      );
      expect(out.code).toBe(0);
      const [header, ...rows] = out.stdout
        .trim()
        .split("\n")
        .map((line) => line.split(","));
      expect(header).toEqual(["user", "attempts", "jobs", "seconds", "hours", "cost_usd", "share_percent"]);
      expect(rows.map((r) => r[0]).sort()).toEqual(["ada", "alice", "bob", "carol"]);
      const tenThousandths = (usd: number): number => Math.round(usd * 10_000);
      expect(rows.reduce((sum, r) => sum + tenThousandths(Number(r[5])), 0)).toBe(
        entries.reduce((sum, e) => sum + tenThousandths(e.costUsd), 0),
      );
      expect(rows.reduce((sum, r) => sum + Number(r[1]), 0)).toBe(entries.length);
    },
    TEST_MS,
  );
});

describe("fair share's markers", () => {
  const marker = (user: string, jobId: string, claimedAt: number): RunningMarker => ({
    address: { project: "race", user, jobId },
    tier: TIER,
    claimedAt,
  });

  it("order claims by time, then job id, so of two agents racing for a user's last place exactly one is within it", async () => {
    const { store } = local.platform;
    const earlier = marker("erin", "job-x", 1_000);
    // Claimed in the same millisecond: the job id decides, the same way for both agents.
    const first = marker("dora", "job-a", 2_000);
    const second = marker("dora", "job-b", 2_000);
    // Both marked before either counts: the race.
    for (const m of [earlier, first, second]) await store.markRunning(m, "node-1");
    expect(await store.runningAhead(first, 60)).toEqual({ user: 1, project: 2 });
    expect(await store.runningAhead(second, 60)).toEqual({ user: 2, project: 3 });
    // The one over its share takes its mark back; the other keeps its place.
    await store.clearRunning(second);
    expect(await store.runningAhead(first, 60)).toEqual({ user: 1, project: 2 });
    // A later claim counts everyone ahead of it, whoever started first.
    expect(await store.runningAhead(marker("dora", "job-c", 3_000), 60)).toEqual({ user: 1, project: 2 });
    for (const m of [earlier, first]) await store.clearRunning(m);
    expect(await store.runningAhead(marker("dora", "job-c", 3_000), 60)).toEqual({ user: 0, project: 0 });
  });
});
