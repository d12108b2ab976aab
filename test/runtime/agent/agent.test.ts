import { ReceiveMessageCommand, SendMessageCommand } from "@aws-sdk/client-sqs";
import { DeleteObjectCommand, GetObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { AgentOptions, Agent } from "../../../runtime/src/agent/agent";
import { AGENT_SCRATCH_PREFIX } from "../../../runtime/src/agent/agent";
import { pauseMarkerKey } from "../../../runtime/src/catalog/bucket-layout";
import { pauseCheck } from "../../../runtime/src/agent/budget-pause";
import { createQuotaDir, isQuotaDir, releaseQuotaDirsUnder } from "../../../runtime/src/launch/quota-volume";
import { processStart } from "../../../runtime/src/launch/sandbox";
import type { Envelope } from "../../../runtime/src/job/contract";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { submitJob } from "../../../runtime/src/job/submit";
import { queueDepth } from "../../../scripts/lib/soak";
import { localAgent, next, useLocalPlatform } from "../../support/local-agents";

const logger = pino({ level: process.env.AGENT_TEST_LOG ?? "silent" });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
const TIER = "cpu-large";
const WAIT_MS = 60_000;

const local = useLocalPlatform(TIER, logger, { maxReceiveCount: 2, visibilityTimeoutSeconds: 5 });
let counter = 0;

function newAgent(options: Partial<AgentOptions> = {}): Agent {
  return localAgent(local.platform, TIER, launcher, logger, { concurrency: 2, ...options });
}

/** Writes main.py and submits it; the job is addressed under project "demo", user "ada". */
async function submit(code: string): Promise<JobAddress> {
  const jobId = `agent-${process.pid}-${++counter}`;
  const dir = join(local.root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), code);
  return submitJob(local.platform.store, local.platform.queue(TIER), {
    path: dir,
    address: { project: "demo", user: "ada", jobId },
    spec: { jobId, tier: TIER, imageFamily: "cpu", env: {} },
    quotaGiB: 1,
  });
}

async function object(key: string): Promise<string> {
  const out = await local.platform.s3.send(new GetObjectCommand({ Bucket: local.platform.bucket, Key: key }));
  return out.Body!.transformToString();
}

describe("the agent on the local platform", () => {
  it("runs a queued job and stores its envelope, logs and outputs, and deletes its message", async () => {
    const agent = newAgent();
    const running = agent.run();
    try {
      const address = await submit(
        [
          "from crucible import output_dir",
          "def main():",
          '    (output_dir() / "model.txt").write_text("weights")',
          '    print("trained", flush=True)',
          '    return {"accuracy": 0.9}',
        ].join("\n"),
      );
      const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", address.jobId);
      expect(envelope).toMatchObject({ status: "success", result: { accuracy: 0.9 } });
      const prefix = local.platform.store.jobPrefix(address);
      expect(prefix).toBe(`workspaces/demo/ada/jobs/${address.jobId}/`);
      expect(await local.platform.store.getEnvelope(address)).toEqual(envelope);
      expect(await object(`${prefix}logs/stdout.txt`)).toBe("trained\n");
      expect(await object(`${prefix}outputs/model.txt`)).toBe("weights");
      expect(await local.platform.store.getState(address)).toMatchObject({
        status: "succeeded",
        attempts: 1,
      });
      expect(await queueDepth(local.platform, local.platform.queue(TIER).queueUrl)).toBe(0);
    } finally {
      agent.stop();
      await running;
    }
  });

  it("finishes a job that fails on its own merits once, and never runs a finished job again", async () => {
    const agent = newAgent();
    const running = agent.run();
    try {
      const address = await submit('def main():\n    raise ValueError("bad data")\n');
      const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", address.jobId);
      expect(envelope).toMatchObject({ status: "error", reason: "exception", error: { type: "ValueError" } });
      expect(await local.platform.store.getState(address)).toMatchObject({ status: "failed", attempts: 1 });
      // A duplicate delivery of a finished job is dropped without running it.
      let started = false;
      agent.on("started", (a) => (started ||= a.jobId === address.jobId));
      await local.platform.queue(TIER).send(address);
      await expect
        .poll(() => queueDepth(local.platform, local.platform.queue(TIER).queueUrl), { timeout: WAIT_MS })
        .toBe(0);
      expect(started).toBe(false);
      expect(await local.platform.store.getState(address)).toMatchObject({ attempts: 1 });
    } finally {
      agent.stop();
      await running;
    }
  });

  it("sends a poison message to the dead-letter queue after maxReceiveCount, with the reason logged", async () => {
    const agent = newAgent();
    const problems: string[] = [];
    agent.on("poison", (problem) => problems.push(problem));
    const running = agent.run();
    try {
      await local.platform.sqs.send(
        new SendMessageCommand({ QueueUrl: local.platform.queue(TIER).queueUrl, MessageBody: "not json" }),
      );
      const dlq = local.platform.dlqUrl(TIER);
      await expect.poll(() => queueDepth(local.platform, dlq), { timeout: WAIT_MS }).toBe(1);
      expect(problems[0]).toBe('the message body is not JSON: "not json"');
      const moved = await local.platform.sqs.send(
        new ReceiveMessageCommand({ QueueUrl: dlq, WaitTimeSeconds: 1 }),
      );
      expect(moved.Messages?.[0]?.Body).toBe("not json");
    } finally {
      agent.stop();
      await running;
    }
  });

  it("sees a cancel request within seconds and stops the job as cancelled", async () => {
    const agent = newAgent();
    const running = agent.run();
    try {
      const address = await submit("import time\ndef main():\n    time.sleep(300)\n");
      await next(agent, "started", address.jobId);
      const finished = next<[JobAddress, Envelope]>(agent, "finished", address.jobId);
      const asked = performance.now();
      await local.platform.store.requestCancel(address);
      const [, envelope] = await finished;
      expect(envelope).toMatchObject({ status: "error", reason: "cancelled" });
      expect(performance.now() - asked).toBeLessThan(20_000);
      expect(await local.platform.store.getState(address)).toMatchObject({ status: "cancelled" });
    } finally {
      agent.stop();
      await running;
    }
  });

  it("hands an interrupted job back with its checkpoint, and another agent resumes it", async () => {
    const job = [
      "import os, signal, time",
      "from crucible import checkpoint_dir, progress",
      "def main():",
      '    path = checkpoint_dir() / "step"',
      "    start = int(path.read_text()) if path.exists() else 0",
      "    stop = []",
      "    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))",
      "    step = start",
      "    while step < 40:",
      "        if stop:",
      "            path.write_text(str(step))",
      '            return {"stopped": step}',
      "        step += 1",
      "        progress(step=step, total=40)",
      "        time.sleep(0.1)",
      '    return {"resumed_from": start, "steps": step}',
    ].join("\n");
    const first = newAgent();
    const firstRun = first.run();
    const address = await submit(job);
    // Stopped once it has made progress, so its SIGTERM handler is in place.
    await new Promise<void>((resolve) =>
      first.on("progress", (a, event) => {
        if (a.jobId === address.jobId && (event.step ?? 0) >= 3) resolve();
      }),
    );
    const handedBack = next<[JobAddress, string]>(first, "handedBack", address.jobId);
    first.stop("interrupted", 5);
    const [, reason] = await handedBack;
    await firstRun;
    expect(reason).toBe("interrupted");
    expect(await local.platform.store.getState(address)).toMatchObject({ status: "queued", attempts: 1 });
    const saved = Number(await object(`${local.platform.store.jobPrefix(address)}checkpoints/step`));

    const second = newAgent();
    const secondRun = second.run();
    try {
      const [, envelope] = await next<[JobAddress, Envelope]>(second, "finished", address.jobId);
      expect(envelope).toMatchObject({ status: "success", result: { resumed_from: saved, steps: 40 } });
      expect(await local.platform.store.getState(address)).toMatchObject({
        status: "succeeded",
        attempts: 2,
        resumedFromCheckpoint: true,
      });
    } finally {
      second.stop();
      await secondRun;
    }
  });

  it("fails closed on a budget pause: stops its running job as budget with its checkpoint, takes nothing until resumed", async () => {
    const marker = pauseMarkerKey(TIER);
    const check = pauseCheck(local.platform.s3, local.platform.bucket, TIER);
    let checks = 0;
    const agent = newAgent({ paused: () => ((checks += 1), check()) });
    const pauses: (string | undefined)[] = [];
    agent.on("paused", (reason) => pauses.push(reason));
    const running = agent.run();
    try {
      const address = await submit(
        [
          "import signal, time",
          "from crucible import checkpoint_dir, progress",
          "def main():",
          '    signal.signal(signal.SIGTERM, lambda *_: ((checkpoint_dir() / "step").write_text("5"), exit(0)))',
          "    progress(step=1, total=2)",
          "    time.sleep(300)",
        ].join("\n"),
      );
      // Paused once the job reports progress, so its SIGTERM handler is in place.
      await new Promise<void>((resolve) =>
        agent.on("progress", (a) => {
          if (a.jobId === address.jobId) resolve();
        }),
      );
      const finished = next<[JobAddress, Envelope]>(agent, "finished", address.jobId);
      const reason = "crucible-dev-cpu-large: ACTUAL spend reached 100 %";
      await local.platform.s3.send(
        new PutObjectCommand({
          Bucket: local.platform.bucket,
          Key: marker,
          Body: JSON.stringify({ reason, budget: "crucible-dev-cpu-large", at: new Date().toISOString() }),
        }),
      );
      const [, envelope] = await finished;
      expect(envelope).toMatchObject({ reason: "budget" });
      expect(pauses).toEqual([reason]);
      expect(await object(`${local.platform.store.jobPrefix(address)}checkpoints/step`)).toBe("5");
      expect(await local.platform.store.getState(address)).toMatchObject({
        note: `stopped: the tier's budget is paused (${reason}); checkpoints kept`,
      });

      let started = false;
      const queued = await submit('def main():\n    return "after the pause"\n');
      agent.on("started", (a) => (started ||= a.jobId === queued.jobId));
      // The agent looks at the pause several more times while the job waits in the queue, untaken.
      const looked = checks;
      await expect.poll(() => checks, { timeout: WAIT_MS }).toBeGreaterThan(looked + 4);
      expect(started).toBe(false);
      expect(await queueDepth(local.platform, local.platform.queue(TIER).queueUrl)).toBe(1);
      await local.platform.s3.send(new DeleteObjectCommand({ Bucket: local.platform.bucket, Key: marker }));
      const [, after] = await next<[JobAddress, Envelope]>(agent, "finished", queued.jobId);
      expect(after).toMatchObject({ status: "success", result: "after the pause" });
      expect(pauses).toEqual([reason, undefined]);
    } finally {
      agent.stop();
      await running;
    }
  });

  it("reclaims the workspace volumes and files of a dead agent's jobs, and leaves a live one's", async () => {
    const dead = spawnSync("true").pid;
    const scratch = async (name: string, owner: string): Promise<string> => {
      const dir = join(local.root, `${AGENT_SCRATCH_PREFIX}${name}-x`);
      await createQuotaDir(join(dir, "workspace"), 8, undefined);
      await writeFile(join(dir, ".crucible-owner"), owner);
      return dir;
    };
    const orphans = await Promise.all(["a", "b", "c"].map((n) => scratch(`orphan-${n}`, `${dead} `)));
    const live = await scratch("live", `${process.pid} ${processStart(process.pid) ?? ""}`);
    // Two agents start at once on one scratch root, as a local platform's do (one a tier): both go for
    // the same dead agent's leftovers, and neither may fail for the other having been there first.
    const agents = [newAgent({ scratchRoot: local.root }), newAgent({ scratchRoot: local.root })];
    const runs = agents.map((agent) => agent.run());
    try {
      for (const orphan of orphans) {
        await expect.poll(() => existsSync(orphan), { timeout: WAIT_MS }).toBe(false);
        expect(await isQuotaDir(join(orphan, "workspace"))).toBe(false);
      }
      expect(await isQuotaDir(join(live, "workspace"))).toBe(true);
    } finally {
      for (const agent of agents) agent.stop();
      // Both ran and stopped: a failed reclaim would have rejected one of them.
      await Promise.all(runs);
      await releaseQuotaDirsUnder(live);
    }
  });
});
