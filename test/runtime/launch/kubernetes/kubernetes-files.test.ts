import { randomBytes } from "node:crypto";
import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { beforeEach, describe, expect, it } from "vitest";
import type { JobSpecInput, WorkspaceSync } from "../../../../runtime/src/job/contract";
import { StopRequest } from "../../../../runtime/src/job/contract";
import { KubernetesLauncher } from "../../../../runtime/src/launch/kubernetes/kubernetes-launcher";
import { UNPACK_FRAMES } from "../../../../runtime/src/launch/kubernetes/workspace-archive";
import type { KObject } from "../../../support/kubernetes-cluster";
import { EXEC_PROTOCOLS, useFakeCluster } from "../../../support/kubernetes-cluster";
import type { JobProgram, PodJob } from "../../../support/kubernetes-kubelet";
import { FakeKubelet, podNameOf } from "../../../support/kubernetes-kubelet";

/**
 * The Kubernetes launcher moving a job's files over `pods/exec`, against the loopback API server and its
 * exec channel (the keeper's commands run for real on directories standing for the pod's volumes): the
 * workspace in before the job starts and back while it runs and after, datasets and an environment in
 * place and read-only, stops to the job's container alone, and the pod taken away.
 */

const logger = pino({ level: "silent" });
const NAMESPACE = "crucible-test";
const SUCCESS = (result: unknown) => ({ status: "success", result, python: "3.13.5", resources: {} });

const k8s = useFakeCluster(logger, "k8s-files");
let counter = 0;

const launcher = (graceSeconds = 5) =>
  new KubernetesLauncher({
    api: k8s.api,
    namespace: NAMESPACE,
    logger,
    node: "crucible-agent-cpu-small-abc12",
    graceSeconds,
    stopMarginSeconds: 5,
  });

/** A fresh workspace directory of the agent's, with `files` in it. */
async function workspace(files: Record<string, string | Buffer> = {}): Promise<string> {
  const dir = join(k8s.root, `workspace-${++counter}`);
  for (const [path, data] of Object.entries(files)) {
    await mkdir(join(dir, path, ".."), { recursive: true });
    await writeFile(join(dir, path), data);
  }
  await mkdir(dir, { recursive: true });
  return dir;
}

const spec = (extra: Partial<JobSpecInput> = {}): JobSpecInput => ({
  jobId: `k8s-files-${++counter}`,
  code: k8s.code,
  tier: "cpu-small",
  image: "crucible/cpu:py3.13",
  ...extra,
});

/** The Job the launcher created, as the API server got it. */
function createdJob(): KObject {
  return k8s.cluster.calls.find((c) => c.method === "POST" && c.path.endsWith("/jobs"))!.body as KObject;
}

/** A job that waits for its stop and, in its grace, checkpoints where it got to. */
const checkpointsWhenStopped =
  (step: string): JobProgram =>
  async (job) => {
    await job.write("/workspace/checkpoints/step", "1");
    job.print("step 1/10");
    await new Promise((resolve) => job.signal.addEventListener("abort", resolve));
    await job.write("/workspace/checkpoints/step", step);
    return { exitCode: 143 };
  };

describe.each(EXEC_PROTOCOLS)("the workspace over %s", (protocol) => {
  beforeEach(() => {
    k8s.cluster.execProtocols = [protocol];
  });

  it("goes into the pod before the job starts, and its checkpoints and outputs come back byte for byte", async () => {
    const model = randomBytes(1_500_000);
    const dir = await workspace({ "checkpoints/step": "3", "checkpoints/optimizer.bin": "adam" });
    let seen: { step: string; optimizer: string } | undefined;
    new FakeKubelet(k8s.cluster, async (job) => {
      seen = {
        step: (await job.read("/workspace/checkpoints/step")).toString(),
        optimizer: (await job.read("/workspace/checkpoints/optimizer.bin")).toString(),
      };
      await job.write("/workspace/checkpoints/step", "6");
      await job.write("/workspace/outputs/model.bin", model);
      await job.write("/workspace/outputs/plots/loss.csv", "step,loss\n6,0.1\n");
      return { exitCode: 0, runner: SUCCESS({ steps: 6 }) };
    }).install();

    const envelope = await launcher().run(spec({ workspaceDir: dir }));

    expect(envelope).toMatchObject({ status: "success", result: { steps: 6 }, exitCode: 0 });
    expect(seen).toEqual({ step: "3", optimizer: "adam" });
    expect(await readFile(join(dir, "checkpoints", "step"), "utf8")).toBe("6");
    expect((await readFile(join(dir, "outputs", "model.bin"))).equals(model)).toBe(true);
    expect(await readFile(join(dir, "outputs", "plots", "loss.csv"), "utf8")).toBe("step,loss\n6,0.1\n");
    expect((await readdir(dir)).sort()).toEqual(["checkpoints", "outputs"]);
    const pod = podNameOf(createdJob().metadata.name);
    // Into the keeper, then the marker the runner waits for; after the job, its files, then the keeper's leave.
    expect(k8s.cluster.execs.map((e) => [e.pod, e.container, e.protocol, e.exitCode])).toEqual(
      Array.from({ length: 4 }, () => [pod, "keeper", protocol, 0]),
    );
    expect(k8s.cluster.execs.map((e) => e.command)).toEqual([
      ["python3", "-I", "-c", UNPACK_FRAMES, "/workspace"],
      ["touch", "/crucible/control/ready"],
      [
        "tar",
        "-c",
        "-f",
        "-",
        "--format=pax",
        "--ignore-failed-read",
        "-C",
        "/workspace",
        "--",
        "checkpoints",
        "outputs",
      ],
      ["touch", "/crucible/control/collected"],
    ]);
  });
});

describe("the workspace while the job runs", () => {
  it("comes back each time the agent's sync pulls, one pull for asks at once, none once collected", async () => {
    const dir = await workspace();
    let pulled!: () => void;
    const firstPull = new Promise<void>((resolve) => (pulled = resolve));
    let sync: WorkspaceSync | undefined;
    new FakeKubelet(k8s.cluster, async (job) => {
      await job.write("/workspace/checkpoints/step", "1");
      job.print("wrote step 1");
      await firstPull;
      await job.write("/workspace/checkpoints/step", "2");
      return { exitCode: 0, runner: SUCCESS(2) };
    }).install();

    const envelope = await launcher().run(spec({ workspaceDir: dir }), {
      onWorkspace: (offered) => (sync = offered),
      onLog: () => {
        // The job has written step 1: the agent's next sync brings it here. Asks that come while a pull
        // waits join it: one pull, not three.
        const asks = [1, 2, 3].map(() => sync!.pull(["checkpoints"]));
        void Promise.all(asks).then(async () => {
          expect(await readFile(join(dir, "checkpoints", "step"), "utf8")).toBe("1");
          pulled();
        });
      },
    });

    expect(envelope).toMatchObject({ status: "success", result: 2 });
    expect(await readFile(join(dir, "checkpoints", "step"), "utf8")).toBe("2");
    const pulls = k8s.cluster.execs.filter((e) => e.command[0] === "tar");
    expect(pulls.map((e) => e.command.slice(9))).toEqual([["checkpoints"], ["checkpoints", "outputs"]]);
    // Nothing to restore: no wait for the agent, so no ready marker.
    expect(k8s.cluster.execs.some((e) => e.command.at(-1) === "/crucible/control/ready")).toBe(false);
    await sync!.pull(["checkpoints"]);
    expect(k8s.cluster.execs.filter((e) => e.command[0] === "tar")).toHaveLength(2);
  });
});

describe("datasets and the job's environment", () => {
  it("are in place before the job starts, read-only to it, the environment on its Python path", async () => {
    const corpus = await workspace({ "train.txt": "to be or not to be\n", "labels/classes.csv": "id\n1\n" });
    const env = await workspace({ "site-packages/tinylib.py": "VERSION = '1.0'\n" });
    let read: Record<string, string> | undefined;
    new FakeKubelet(k8s.cluster, async (job: PodJob) => {
      const write = await job.write("/datasets/corpus/planted.txt", "x").then(
        () => "written",
        (error: NodeJS.ErrnoException) => error.code ?? "?",
      );
      read = {
        train: (await job.read("/datasets/corpus/train.txt")).toString(),
        classes: (await job.read("/datasets/corpus/labels/classes.csv")).toString(),
        lib: (await job.read("/opt/crucible/env/site-packages/tinylib.py")).toString(),
        write,
      };
      return { exitCode: 0, runner: SUCCESS("read") };
    }).install();

    const envelope = await launcher().run(
      spec({ datasetDirs: { corpus }, environment: { dir: env, pythonPath: ["site-packages"] } }),
    );

    expect(envelope).toMatchObject({ status: "success", result: "read" });
    expect(read).toEqual({
      train: "to be or not to be\n",
      classes: "id\n1\n",
      lib: "VERSION = '1.0'\n",
      write: "EROFS",
    });
    const pod = (createdJob().spec as { template: { spec: { containers: Record<string, unknown>[] } } })
      .template.spec;
    expect(pod.containers[0]!.env).toContainEqual({
      name: "PYTHONPATH",
      value: "/opt/crucible/env/site-packages",
    });
    expect(k8s.cluster.execs.map((e) => e.command.at(-1))).toEqual([
      "/datasets/corpus",
      "/opt/crucible/env",
      "/crucible/control/ready",
      "/crucible/control/collected",
    ]);
  });
});

describe("stops, the timeout and the pod taken away", () => {
  it("a stop's SIGTERM reaches the job alone, and what it checkpoints in its grace comes back", async () => {
    const dir = await workspace();
    new FakeKubelet(k8s.cluster, checkpointsWhenStopped("7")).install();
    const stop = new AbortController();
    const envelope = await launcher().run(spec({ workspaceDir: dir }), {
      signal: stop.signal,
      onLog: () => stop.abort(new StopRequest("preempted", 3)),
    });
    expect(envelope).toMatchObject({
      status: "error",
      reason: "preempted",
      exitCode: 143,
      error: { type: "Stopped" },
    });
    expect(await readFile(join(dir, "checkpoints", "step"), "utf8")).toBe("7");
    expect(k8s.cluster.execs.filter((e) => e.container === "job").map((e) => e.command.at(-1))).toEqual([
      "SIGTERM",
    ]);
  });

  it("a job that ignores SIGTERM gets SIGKILL once its grace is over", async () => {
    new FakeKubelet(k8s.cluster, async (job) => {
      job.print("ignoring every stop");
      return new Promise(() => undefined);
    }).install();
    const stop = new AbortController();
    const envelope = await launcher().run(spec(), {
      signal: stop.signal,
      onLog: () => stop.abort(new StopRequest("cancelled", 1)),
    });
    expect(envelope).toMatchObject({ status: "error", reason: "cancelled", exitCode: 137 });
    expect(k8s.cluster.execs.filter((e) => e.container === "job").map((e) => e.command.slice(-2))).toEqual([
      ["1", "SIGTERM"],
      ["-1", "SIGKILL"],
    ]);
  });

  it("the job's timeout counts from its start and stops it as Docker's does; the Job's deadline is a backstop", async () => {
    const dir = await workspace({ "checkpoints/step": "2" });
    new FakeKubelet(k8s.cluster, checkpointsWhenStopped("3")).install();
    const envelope = await launcher(2).run(spec({ workspaceDir: dir, timeoutSeconds: 1 }));
    expect(envelope).toMatchObject({
      status: "error",
      reason: "timeout",
      error: {
        type: "Timeout",
        message: "the job ran past its 1 s limit (tier cpu-small); it got SIGTERM and 2 s before SIGKILL",
      },
    });
    expect(await readFile(join(dir, "checkpoints", "step"), "utf8")).toBe("3");
    // The timeout, twice the pending timeout, the grace and the time to collect.
    expect((createdJob().spec as { activeDeadlineSeconds: number }).activeDeadlineSeconds).toBe(
      1 + 1200 + 2 + 30,
    );
  });

  it.each([
    [false, "7"],
    [true, "1"],
  ])(
    "a pod the k8s.cluster takes away (node gone: %s) is interrupted, with what could still be collected",
    async (lost, step) => {
      const dir = await workspace();
      const kubelet = new FakeKubelet(k8s.cluster, checkpointsWhenStopped("7")).install();
      let sync: WorkspaceSync | undefined;
      const envelope = await launcher().run(spec({ workspaceDir: dir }), {
        onWorkspace: (offered) => (sync = offered),
        onLog: () =>
          void sync!.pull(["checkpoints"]).then(() =>
            kubelet.disrupt(podNameOf(createdJob().metadata.name), {
              lost,
              reason: "DeletionByTaintManager",
            }),
          ),
      });
      expect(envelope).toMatchObject({
        status: "error",
        reason: "interrupted",
        error: {
          type: "PodDisrupted",
          message:
            "the job's pod was taken away (DeletionByTaintManager): node gone; the job goes back to its queue and resumes from its last checkpoint",
        },
        exitCode: lost ? null : 143,
      });
      expect(await readFile(join(dir, "checkpoints", "step"), "utf8")).toBe(step);
    },
  );

  it("a pod evicted for filling its workspace fails as DiskQuotaExceeded, and is not resumed", async () => {
    const kubelet = new FakeKubelet(k8s.cluster, async (job) => {
      await job.write("/workspace/big.bin", randomBytes(1024));
      job.print("filling the workspace");
      // Killed by the eviction.
      return new Promise(() => undefined);
    }).install();
    const evicted = 'Usage of EmptyDir volume "workspace" exceeds the limit "1024Mi". ';
    const envelope = await launcher().run(spec({ workspaceDir: await workspace() }), {
      onLog: () => void kubelet.evict(podNameOf(createdJob().metadata.name), evicted),
    });
    expect(envelope).toMatchObject({
      status: "error",
      reason: "exit_code",
      exitCode: 137,
      error: {
        type: "DiskQuotaExceeded",
        message:
          'the job filled its 1024 MiB workspace (/workspace, tier cpu-small workspaceMiB): past it the kubelet evicts the pod (evicted by its node: Usage of EmptyDir volume "workspace" exceeds the limit "1024Mi".)',
      },
    });
  });
});
