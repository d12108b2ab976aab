import { mkdir, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import type { Envelope } from "../../../runtime/src/job/contract";
import { JobIndex } from "../../../runtime/src/store/job-index";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { crucible } from "../../support/cli";
import { localAgent, next, useLocalPlatform } from "../../support/local-agents";

const logger = pino({ level: "silent" });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
const TIER = "cpu-large";
const local = useLocalPlatform(TIER, logger, { visibilityTimeoutSeconds: 15 });

/** ada's CLI in another process, with her own credentials. */
const ada = (): NodeJS.ProcessEnv => ({
  ...local.platform.as("demo", "ada").env(),
  CRUCIBLE_PROJECT: "demo",
  CRUCIBLE_USER: "ada",
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
});

/** An earlier job of ada's that stored these checkpoint files (each holding its own name). */
async function earlierJob(jobId: string, names: readonly string[]): Promise<JobAddress> {
  const job = { project: "demo", user: "ada", jobId };
  const source = join(local.root, jobId);
  for (const name of names) {
    await mkdir(dirname(join(source, name)), { recursive: true });
    await writeFile(join(source, name), name);
  }
  const { store } = local.platform.as("demo", "ada");
  await store.updateState(job, { status: "succeeded", tier: TIER });
  await store.uploadDir(job, "checkpoints", source, new Map());
  return job;
}

/** A job that returns what it found in its checkpoint directory: each file's path and content. */
async function checkpointReader(): Promise<string> {
  const dir = join(local.root, "reader");
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, "main.py"),
    [
      "import os",
      "def main():",
      "    root = os.environ['CRUCIBLE_CHECKPOINT_DIR']",
      "    found = {}",
      "    for base, _, files in os.walk(root):",
      "        for f in files:",
      "            path = os.path.join(base, f)",
      "            found[os.path.relpath(path, root)] = open(path).read()",
      "    return found",
    ].join("\n"),
  );
  return dir;
}

describe("crucible submit --resume-from JOB@STEP", () => {
  it("starts the job from that step's checkpoint files only, and refuses a step the job lacks", async () => {
    const files = ["step-100/model.pt", "step-100/optim.pt", "step-200/model.pt", "step-200/optim.pt"];
    const earlier = await earlierJob("pretrain-1", files);
    const code = await checkpointReader();

    const missing = await crucible(
      ["submit", code, "--tier", TIER, "--resume-from", `${earlier.jobId}@150`],
      undefined,
      ada(),
    );
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain(
      `crucible: --resume-from pretrain-1@150: job pretrain-1 has no checkpoint at step 150; it has steps 100, 200`,
    );

    const submitted = await crucible(
      ["submit", code, "--tier", TIER, "--resume-from", `${earlier.jobId}@100`],
      undefined,
      ada(),
    );
    expect(submitted).toMatchObject({ code: 0, stderr: "" });
    const jobId = submitted.stdout.trim();
    expect(await local.platform.store.getSpec({ ...earlier, jobId })).toMatchObject({
      resumeFrom: "pretrain-1",
      resumeStep: 100,
    });

    const agent = localAgent(local.platform, TIER, launcher, logger);
    const running = agent.run();
    try {
      const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", jobId, 120_000);
      expect(envelope).toMatchObject({
        status: "success",
        result: { "step-100/model.pt": "step-100/model.pt", "step-100/optim.pt": "step-100/optim.pt" },
      });
      expect(Object.keys(envelope.result as object)).toHaveLength(2);
      expect(await local.platform.store.getState({ ...earlier, jobId })).toMatchObject({
        status: "succeeded",
        resumedFromCheckpoint: true,
      });
    } finally {
      agent.stop();
      await running;
    }
  });
});

describe("crucible submit --dataset", () => {
  it("queues a job naming the submitter's dataset, and refuses one they do not have before queuing", async () => {
    const corpus = join(local.root, "corpus");
    await mkdir(corpus, { recursive: true });
    await writeFile(join(corpus, "train.txt"), "to be or not to be\n");
    await local.platform.as("demo", "ada").datasets.push({ project: "demo", user: "ada" }, "corpus", corpus);
    const code = await checkpointReader();
    const missing = await crucible(
      ["submit", code, "--tier", TIER, "--dataset", "corpus@2"],
      undefined,
      ada(),
    );
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/^crucible: --dataset corpus@2: .*\b1\b/m);
    const bobs = await crucible(["submit", code, "--tier", TIER, "--dataset", "corpus@1"], undefined, {
      ...ada(),
      ...local.platform.as("demo", "bob").env(),
      CRUCIBLE_USER: "bob",
    });
    expect(bobs.code).not.toBe(0);
    expect(bobs.stderr).toMatch(/^crucible: --dataset corpus@1: /m);
    const bobsJobs = await JobIndex.of(local.platform.store).list({
      project: "demo",
      users: { user: "bob" },
      limit: 10,
    });
    expect(bobsJobs).toEqual([]);

    const queued = await crucible(
      ["submit", code, "--tier", TIER, "--dataset", "corpus@1"],
      undefined,
      ada(),
    );
    expect(queued).toMatchObject({ code: 0, stderr: "" });
    const job = { project: "demo", user: "ada", jobId: queued.stdout.trim() };
    expect(await local.platform.store.getSpec(job)).toMatchObject({ datasets: ["corpus@1"] });
  });
});
