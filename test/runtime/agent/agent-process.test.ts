import { GetObjectCommand } from "@aws-sdk/client-s3";
import Dockerode from "dockerode";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import { LABELS } from "../../../runtime/src/launch/sandbox";
import { submitJob } from "../../../runtime/src/job/submit";
import { AgentProcess, localAgentEnv, runSoak } from "../../../scripts/lib/soak";

const logger = pino({ level: "silent" });
const TIER = "cpu-large";

describe("an agent killed mid-job (SIGKILL)", () => {
  let platform: LocalPlatform;
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "crucible-agent-kill-"));
    platform = await startLocalPlatform({ tiers: [TIER], logger, visibilityTimeoutSeconds: 6 });
  });
  afterAll(async () => {
    await platform.stop();
    await rm(root, { recursive: true, force: true });
  });

  it("loses nothing: a new agent removes the orphan, and the job resumes from its last uploaded checkpoint", async () => {
    const dir = join(root, "steps");
    await mkdir(dir);
    await writeFile(
      join(dir, "main.py"),
      [
        "import time",
        "from crucible import checkpoint_dir",
        "def main():",
        '    path = checkpoint_dir() / "step"',
        "    start = int(path.read_text()) if path.exists() else 0",
        "    for step in range(start, 60):",
        '        tmp = checkpoint_dir() / "step.tmp"',
        "        tmp.write_text(str(step))",
        "        tmp.rename(path)",
        "        time.sleep(0.25)",
        '    return {"resumed_from": start}',
      ].join("\n"),
    );
    const jobId = `kill-${process.pid}`;
    const address = await submitJob(platform.store, platform.queue(TIER), {
      path: dir,
      address: { project: "demo", user: "ada", jobId },
      spec: { jobId, tier: TIER, imageFamily: "cpu", env: {} },
      quotaGiB: 1,
    });
    const env = {
      ...localAgentEnv(platform),
      CRUCIBLE_HEARTBEAT_SECONDS: "1",
      CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS: "6",
      CRUCIBLE_CHECKPOINT_SECONDS: "1",
    };
    const checkpointKey = `${platform.store.jobPrefix(address)}checkpoints/step`;
    const uploadedStep = async (): Promise<number> => {
      try {
        const out = await platform.s3.send(
          new GetObjectCommand({ Bucket: platform.bucket, Key: checkpointKey }),
        );
        return Number(await out.Body!.transformToString());
      } catch {
        return -1;
      }
    };
    const docker = new Dockerode();
    const containers = () =>
      docker.listContainers({ all: true, filters: { label: [`${LABELS.jobId}=${jobId}`] } });

    const first = new AgentProcess(TIER, env);
    let second: AgentProcess | undefined;
    try {
      await expect.poll(uploadedStep, { timeout: 60_000 }).toBeGreaterThanOrEqual(5);
      expect(await first.kill("SIGKILL")).toBeNull();
      const saved = await uploadedStep();
      // The dead agent's container runs on, orphaned, until the next agent on this host starts.
      expect(await containers()).toHaveLength(1);

      second = new AgentProcess(TIER, env);
      // The state turns succeeded last, after the envelope is stored.
      await expect
        .poll(async () => (await platform.store.getState(address))?.status, { timeout: 60_000 })
        .toBe("succeeded");
      const envelope = await platform.store.getEnvelope(address);
      expect(envelope?.status).toBe("success");
      const resumedFrom = (envelope?.result as { resumed_from: number }).resumed_from;
      // The uploads run every second: the resumed run starts at least where the last one seen stood.
      expect(resumedFrom).toBeGreaterThanOrEqual(saved);
      expect(await platform.store.getState(address)).toMatchObject({
        status: "succeeded",
        attempts: 2,
        resumedFromCheckpoint: true,
      });
      // The envelope is stored before the agent deletes the message and logs the finish.
      await expect.poll(() => second?.jobsLogged("job finished"), { timeout: 10_000 }).toEqual([jobId]);
      expect(second.lines.some((l) => l.msg === "removed orphaned job container" && l.jobId === jobId)).toBe(
        true,
      );
    } finally {
      await first.kill("SIGKILL");
      await second?.kill("SIGTERM");
    }
    expect(await containers()).toEqual([]);
  }, 180_000);
});

describe("the agent soak", () => {
  it(
    "runs 200 short jobs through 2 agents at concurrency 2 while agents are SIGKILLed, and accounts for every job",
    async () => {
      const report = await runSoak({
        jobs: 200,
        agents: 2,
        concurrency: 2,
        meanKillIntervalMs: 15_000,
        seed: 7,
        timeoutMs: 20 * 60_000,
        logger,
      });
      expect(report).toMatchObject({
        jobs: 200,
        succeeded: 200,
        missing: [],
        finishedTwice: [],
        messagesLeft: 0,
        deadLetters: 0,
        containersLeft: 0,
      });
      expect(report.kills).toBeGreaterThan(0);
      expect(report.agentStarts).toBe(2 + report.kills);
      // A killed agent's jobs run again elsewhere: attempts exceed jobs exactly by the runs it lost.
      expect(report.attempts).toBeGreaterThanOrEqual(200);
    },
    25 * 60_000,
  );
});
