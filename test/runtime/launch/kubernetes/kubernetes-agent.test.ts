import { GetObjectCommand } from "@aws-sdk/client-s3";
import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { Agent, AgentOptions } from "../../../../runtime/src/agent/agent";
import { openNodeDatasets } from "../../../../runtime/src/agent/job-datasets";
import type { Envelope } from "../../../../runtime/src/job/contract";
import { submitJob } from "../../../../runtime/src/job/submit";
import { connectKubernetes } from "../../../../runtime/src/launch/kubernetes/kubernetes-api";
import { KubernetesLauncher } from "../../../../runtime/src/launch/kubernetes/kubernetes-launcher";
import type { JobAddress } from "../../../../runtime/src/store/job-store";
import { readMetricHistory } from "../../../../runtime/src/store/job-metrics";
import { FakeCluster, fakeKubeconfig } from "../../../support/kubernetes-cluster";
import type { JobExit, PodJob } from "../../../support/kubernetes-kubelet";
import { FakeKubelet } from "../../../support/kubernetes-kubelet";
import { localAgent, next, useLocalPlatform } from "../../../support/local-agents";

/**
 * The agent with the Kubernetes launcher, on the local platform (the real store and queues on loopback)
 * and the loopback API server whose kubelet runs each job's program in its pod: what a Docker job's
 * workspace gives the agent, a Kubernetes job's gives it too. Checkpoints resume a later attempt, outputs
 * come back byte for byte, datasets are there and read-only, and a pod lost with its node resumes.
 */

const logger = pino({ level: process.env.AGENT_TEST_LOG ?? "silent" });
const TIER = "cpu-small";
const PROJECT = "demo";
const USER = "ada";
const WAIT_MS = 60_000;
const local = useLocalPlatform(TIER, logger, { visibilityTimeoutSeconds: 5 });

let cluster: FakeCluster;
let launcher: KubernetesLauncher;
let root: string;
let counter = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-k8s-agent-"));
  cluster = new FakeCluster();
  const api = await connectKubernetes(logger, await fakeKubeconfig(root, await cluster.start()));
  launcher = new KubernetesLauncher({
    api,
    namespace: "crucible-test",
    logger,
    node: "crucible-agent-cpu-small-x1",
    graceSeconds: 5,
    stopMarginSeconds: 5,
  });
});

afterAll(async () => {
  await cluster.stop();
  await rm(root, { recursive: true, force: true });
});

beforeEach(() => cluster.reset());

function newAgent(options: Partial<AgentOptions> = {}): Agent {
  return localAgent(local.platform, TIER, launcher, logger, options);
}

/** Submits a job (its code is never run: the kubelet runs its program) as the project's user. */
async function submit(datasets: readonly string[] = []): Promise<JobAddress> {
  const jobId = `k8s-agent-${process.pid}-${++counter}`;
  const dir = join(root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), "def main():\n    return 0\n");
  const as = local.platform.as(PROJECT, USER);
  return submitJob(as.store, as.queue(TIER), {
    path: dir,
    address: { project: PROJECT, user: USER, jobId },
    spec: {
      jobId,
      tier: TIER,
      imageFamily: "cpu",
      env: {},
      ...(datasets.length > 0 && { datasets: [...datasets] }),
    },
    quotaGiB: 1,
  });
}

async function object(address: JobAddress, path: string): Promise<Buffer> {
  const out = await local.platform.s3.send(
    new GetObjectCommand({
      Bucket: local.platform.bucket,
      Key: `${local.platform.store.jobPrefix(address)}${path}`,
    }),
  );
  return Buffer.from(await out.Body!.transformToByteArray());
}

const stepInStore = (address: JobAddress): Promise<string> =>
  object(address, "checkpoints/step").then(
    (b) => b.toString(),
    () => "",
  );

/** Resolves once the agent has pulled the pod's workspace after now (its checkpoint sync), or the job is stopped. */
function nextPull(job: PodJob): Promise<void> {
  const seen = cluster.execs.length;
  const pulled = cluster
    .nextExec((e) => e.pod === job.pod && e.command[0] === "tar" && cluster.execs.indexOf(e) >= seen, WAIT_MS)
    .then(() => undefined);
  const stopped = new Promise<void>((resolve) => job.signal.addEventListener("abort", () => resolve()));
  return Promise.race([pulled, stopped]);
}

/**
 * A training job as its pod runs it: from its checkpoint's step (0 without one), one step at a time up to
 * `total`, each step's checkpoint written and pulled by the agent before the next, progress on its log;
 * at `slowAt` it waits for its stop. Stopped, it checkpoints its step and exits as SIGTERM made it.
 * Done, it writes `model` as its output.
 */
const training =
  (total: number, slowAt: number, model: Buffer) =>
  async (job: PodJob): Promise<JobExit> => {
    const start = Number((await job.read("/workspace/checkpoints/step").catch(() => "0")).toString());
    let step = start;
    while (step < total) {
      if (job.signal.aborted) {
        await job.write("/workspace/checkpoints/step", String(step));
        return { exitCode: 143 };
      }
      step += 1;
      await job.write("/workspace/checkpoints/step", String(step));
      job.print(`##crucible:progress {"step": ${step}, "total": ${total}, "loss": ${1 / step}}`);
      await nextPull(job);
      if (step === slowAt) await new Promise((resolve) => job.signal.addEventListener("abort", resolve));
    }
    await job.write("/workspace/outputs/model.bin", model);
    await job.write("/workspace/outputs/notes/run.txt", `from ${start}`);
    return {
      exitCode: 0,
      runner: {
        status: "success",
        result: { resumed_from: start, steps: step },
        python: "3.13.5",
        resources: {},
      },
    };
  };

/** Resolves once the agent reports the job at `step`. */
function reaching(agent: Agent, address: JobAddress, step: number): Promise<void> {
  return new Promise((resolve) =>
    agent.on("progress", (a, event) => {
      if (a.jobId === address.jobId && (event.step ?? 0) >= step) resolve();
    }),
  );
}

describe("the agent with the Kubernetes launcher", () => {
  it("resumes a job from the checkpoint its earlier attempt wrote, and its outputs come back byte for byte", async () => {
    const model = randomBytes(2_000_000);
    new FakeKubelet(cluster, training(6, 3, model)).install();
    const first = newAgent();
    const firstRun = first.run();
    const address = await submit();
    await reaching(first, address, 3);
    const handedBack = next<[JobAddress, string]>(first, "handedBack", address.jobId, WAIT_MS);
    first.stop("interrupted", 5);
    expect((await handedBack)[1]).toBe("interrupted");
    await firstRun;
    // What the job checkpointed when it was stopped, collected from its pod and stored.
    expect(await stepInStore(address)).toBe("3");
    expect(await local.platform.store.getState(address)).toMatchObject({ status: "queued", attempts: 1 });

    const second = newAgent();
    const secondRun = second.run();
    try {
      const [, envelope] = await next<[JobAddress, Envelope]>(second, "finished", address.jobId, WAIT_MS);
      expect(envelope).toMatchObject({
        status: "success",
        result: { resumed_from: 3, steps: 6 },
        exitCode: 0,
      });
      expect(envelope.logs.stdout).toContain('##crucible:progress {"step": 6, "total": 6');
      expect(await local.platform.store.getState(address)).toMatchObject({
        status: "succeeded",
        attempts: 2,
        resumedFromCheckpoint: true,
      });
      expect((await object(address, "outputs/model.bin")).equals(model)).toBe(true);
      expect((await object(address, "outputs/notes/run.txt")).toString()).toBe("from 3");
      expect(await stepInStore(address)).toBe("6");
      expect((await object(address, "logs/stdout.txt")).toString()).toBe(envelope.logs.stdout);
      // The step count continues across the attempts, as the metric history shows it.
      const history = await readMetricHistory(local.platform.store.metricSeries(address));
      expect(history.map((r) => [r.a, r.step])).toEqual([
        [1, 1],
        [1, 2],
        [1, 3],
        [2, 4],
        [2, 5],
        [2, 6],
      ]);
      const ledger = (await local.platform.store.ledgerEntries({ project: PROJECT, user: USER })).filter(
        (e) => e.jobId === address.jobId,
      );
      expect(ledger.map((e) => [e.attempt, e.outcome, e.reason]).sort()).toEqual([
        [1, "handed-back", "interrupted"],
        [2, "finished", undefined],
      ]);
    } finally {
      second.stop();
      await secondRun;
    }
  });

  it("resumes a job whose pod was lost with its node from its last stored checkpoint, not losing it", async () => {
    const model = randomBytes(1000);
    const kubelet = new FakeKubelet(cluster, training(6, 3, model)).install();
    const agent = newAgent();
    const running = agent.run();
    try {
      const address = await submit();
      const started = next<[JobAddress]>(agent, "started", address.jobId, WAIT_MS);
      await reaching(agent, address, 3);
      await started;
      await expect.poll(() => stepInStore(address), { timeout: WAIT_MS }).toBe("3");
      const handedBack = next<[JobAddress, string]>(agent, "handedBack", address.jobId, WAIT_MS);
      const [pod] = [...cluster.pods.keys()];
      await kubelet.disrupt(pod!, { lost: true, reason: "DeletionByTaintManager" });
      expect((await handedBack)[1]).toBe("interrupted");
      const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", address.jobId, WAIT_MS);
      expect(envelope).toMatchObject({ status: "success", result: { resumed_from: 3, steps: 6 } });
      expect(await local.platform.store.getState(address)).toMatchObject({
        status: "succeeded",
        attempts: 2,
        resumedFromCheckpoint: true,
      });
      const attempts = await Promise.all(
        [1, 2].map((n) => local.platform.store.getAttemptEnvelope(address, n)),
      );
      expect(attempts.map((e) => [e?.reason, e?.error?.type])).toEqual([
        ["interrupted", "PodDisrupted"],
        [undefined, undefined],
      ]);
    } finally {
      agent.stop();
      await running;
    }
  });

  it("mounts the job's datasets from its cache, readable and read-only", async () => {
    const corpus = join(root, "corpus");
    await mkdir(join(corpus, "labels"), { recursive: true });
    await writeFile(join(corpus, "train.txt"), "to be or not to be\n");
    await writeFile(join(corpus, "labels", "classes.csv"), "id,label\n1,tragedy\n");
    await local.platform.as(PROJECT, USER).datasets.push({ project: PROJECT, user: USER }, "corpus", corpus);
    // A Kubernetes agent's cache: no Docker engine to copy the pre-cached sets out of images with.
    const datasets = await openNodeDatasets({
      s3: local.platform.s3,
      bucket: local.platform.datasetsBucket,
      tier: TIER,
      root: join(root, "dataset-cache"),
      logger,
      precached: false,
    });
    new FakeKubelet(cluster, async (job) => {
      const write = await job.write("/datasets/corpus/planted.txt", "x").then(
        () => "written",
        (error: NodeJS.ErrnoException) => error.code ?? "?",
      );
      const result = {
        train: (await job.read("/datasets/corpus/train.txt")).toString(),
        classes: (await job.read("/datasets/corpus/labels/classes.csv")).toString(),
        names: await job.list("/datasets"),
        write,
      };
      return { exitCode: 0, runner: { status: "success", result, python: "3.13.5", resources: {} } };
    }).install();
    const agent = newAgent({ datasets });
    const running = agent.run();
    try {
      const address = await submit(["corpus@1"]);
      const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", address.jobId, WAIT_MS);
      expect(envelope).toMatchObject({
        status: "success",
        result: {
          train: "to be or not to be\n",
          classes: "id,label\n1,tragedy\n",
          names: ["corpus"],
          write: "EROFS",
        },
      });
    } finally {
      agent.stop();
      await running;
    }
  });
});
