import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { V1Job } from "@kubernetes/client-node" with { "resolution-mode": "import" };
import type { Envelope, JobSpecInput, ProgressEvent } from "../../../../runtime/src/job/contract";
import { envelopeSchema, StopRequest } from "../../../../runtime/src/job/contract";
import type { KubernetesApi } from "../../../../runtime/src/launch/kubernetes/kubernetes-api";
import { connectKubernetes } from "../../../../runtime/src/launch/kubernetes/kubernetes-api";
import { KubernetesLauncher } from "../../../../runtime/src/launch/kubernetes/kubernetes-launcher";
import { crucible } from "../../../support/cli";
import type { KObject } from "../../../support/kubernetes-cluster";
import { FakeCluster, fakeKubeconfig } from "../../../support/kubernetes-cluster";
import { FakeKubelet, podNameOf } from "../../../support/kubernetes-kubelet";

const logger = pino({ level: "silent" });
const NAMESPACE = "crucible-test";
const NODE = "crucible-agent-cpu-small-abc12";
const RUNNER = {
  status: "success",
  result: { answer: 42 },
  python: "3.13.5",
  resources: { cpuSeconds: 0.5 },
};

let cluster: FakeCluster;
let api: KubernetesApi;
let root: string;
let code: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-k8s-test-"));
  cluster = new FakeCluster();
  api = await connectKubernetes(logger, await fakeKubeconfig(root, await cluster.start()));
  code = join(root, "job");
  await mkdir(code);
  await writeFile(join(code, "main.py"), "def main():\n    return 42\n");
});

afterAll(async () => {
  await cluster.stop();
  await rm(root, { recursive: true, force: true });
});

beforeEach(() => cluster.reset());

const launcher = (graceSeconds = 10) =>
  new KubernetesLauncher({ api, namespace: NAMESPACE, logger, node: NODE, graceSeconds, tailBytes: 1024 });
const spec = (jobId: string, extra: Partial<JobSpecInput> = {}): JobSpecInput => ({
  jobId,
  code,
  tier: "cpu-small",
  image: "crucible/cpu:py3.13",
  ...extra,
});

/** The pod the Job controller would make, in a given container state. */
function podOf(object: KObject, state: Record<string, unknown>): KObject {
  const job = object as unknown as V1Job;
  const name = `${object.metadata.name}-p0d`;
  return {
    kind: "Pod",
    apiVersion: "v1",
    metadata: {
      name,
      namespace: NAMESPACE,
      labels: { ...job.spec?.template.metadata?.labels, "job-name": object.metadata.name },
    },
    spec: job.spec?.template.spec,
    status: {
      phase: state.terminated ? "Succeeded" : "Running",
      containerStatuses: [
        {
          name: "job",
          state,
          ready: !state.terminated,
          restartCount: 0,
          image: "crucible/cpu:py3.13",
          imageID: `crucible/cpu@sha256:${"ab".repeat(32)}`,
        },
      ],
    },
  };
}

const running = { running: { startedAt: "2026-01-05T10:00:02Z" } };
const ended = (exitCode: number, message?: string) => ({
  terminated: {
    exitCode,
    reason: exitCode === 0 ? "Completed" : "Error",
    startedAt: "2026-01-05T10:00:02Z",
    finishedAt: "2026-01-05T10:00:04Z",
    ...(message !== undefined && { message }),
  },
});
const complete = (job: KObject): KObject => ({
  ...job,
  status: { conditions: [{ type: "Complete", status: "True" }] },
});

describe("KubernetesLauncher.run against a loopback API server, with the real client", () => {
  it("creates the ConfigMap and Job, follows the log, and maps the end to an envelope", async () => {
    cluster.onJobCreated = (job) => {
      const pod = podOf(job, running);
      cluster.putPod(pod);
      cluster.log(
        pod.metadata.name,
        'step 1/2 loss=0.5\n##crucible:progress {"step": 2, "total": 2, "loss": 0.25}\nbye\n',
      );
      cluster.endLog(pod.metadata.name);
      cluster.putPod(podOf(job, ended(0, JSON.stringify(RUNNER))));
      cluster.putJob(complete(job));
    };
    const progress: ProgressEvent[] = [];
    const envelope = await launcher().run(spec("k8s-ok"), { onProgress: (e) => progress.push(e) });
    expect(envelopeSchema.parse(envelope)).toEqual(envelope);
    expect(envelope).toMatchObject({
      jobId: "k8s-ok",
      status: "success",
      result: { answer: 42 },
      exitCode: 0,
      executionTime: 2,
      resources: { cpuSeconds: 0.5 },
      metrics: { loss: 0.25 },
      systemInfo: {
        jobId: "k8s-ok",
        tier: "cpu-small",
        image: "crucible/cpu:py3.13",
        node: NODE,
        python: "3.13.5",
        imageDigest: `sha256:${"ab".repeat(32)}`,
      },
      logs: {
        stdout: 'step 1/2 loss=0.5\n##crucible:progress {"step": 2, "total": 2, "loss": 0.25}\nbye\n',
        stderr: "",
        truncated: false,
      },
    });
    expect(envelope.reason).toBeUndefined();
    expect(progress).toEqual([
      { jobId: "k8s-ok", step: 1, total: 2, metrics: { loss: 0.5 }, source: "log" },
      { jobId: "k8s-ok", step: 2, total: 2, metrics: { loss: 0.25 }, source: "protocol" },
    ]);
    const createdMap = await cluster.nextCall("POST", "/configmaps");
    const createdJob = await cluster.nextCall("POST", "/jobs");
    const name = (createdJob.body as { metadata: { name: string } }).metadata.name;
    expect(name).toMatch(/^crucible-k8s-ok-[0-9a-f]{5}$/);
    expect(cluster.calls.indexOf(createdMap)).toBeLessThan(cluster.calls.indexOf(createdJob));
    expect((createdMap.body as { binaryData: Record<string, string> }).binaryData["code.zip"]).toMatch(
      /^UEsDB/,
    );
    expect((await cluster.nextCall("PATCH", `/configmaps/${name}`)).body).toEqual([
      {
        op: "add",
        path: "/metadata/ownerReferences",
        value: [{ apiVersion: "batch/v1", kind: "Job", name, uid: `uid-${name}`, blockOwnerDeletion: false }],
      },
    ]);
    expect((await cluster.nextCall("DELETE", `/jobs/${name}`)).query).toMatchObject({
      propagationPolicy: "Background",
    });
    await cluster.nextCall("DELETE", `/configmaps/${name}`);
    expect(cluster.configMaps.has(name)).toBe(false);
    const watches = cluster.calls
      .filter((c) => c.query.watch === "true")
      .map((c) => [c.path, c.query.labelSelector ?? c.query.fieldSelector]);
    expect(watches).toEqual(
      expect.arrayContaining([
        [`/api/v1/namespaces/${NAMESPACE}/pods`, `job-name=${name}`],
        [`/apis/batch/v1/namespaces/${NAMESPACE}/jobs`, `metadata.name=${name}`],
      ]),
    );
  });

  it("a stop reaches the job's container alone, SIGTERM first: reason cancelled, the exit it caused", async () => {
    new FakeKubelet(cluster, async (job) => {
      job.print("step 1/100 loss=2.0");
      await new Promise((resolve) => job.signal.addEventListener("abort", resolve));
      return { exitCode: 143 };
    }).install();
    const stop = new AbortController();
    const envelope: Envelope = await launcher().run(spec("k8s-stop"), {
      signal: stop.signal,
      onProgress: () => stop.abort(new StopRequest("cancelled", 3)),
    });
    expect(envelope).toMatchObject({
      status: "error",
      reason: "cancelled",
      exitCode: 143,
      error: {
        type: "Stopped",
        message: "the job was stopped (cancelled); it got SIGTERM and 3 s to checkpoint before SIGKILL",
      },
      logs: { stdout: "step 1/100 loss=2.0\n" },
    });
    const name = (cluster.calls.find((c) => c.method === "POST" && c.path.endsWith("/jobs"))!.body as KObject)
      .metadata.name;
    // SIGTERM to the runner, the job's container's first process, and nothing to the keeper's.
    expect(cluster.execs.map((e) => [e.container, e.command.slice(-2)])).toEqual([
      ["job", ["1", "SIGTERM"]],
      ["keeper", ["touch", "/crucible/control/collected"]],
    ]);
    expect(cluster.execs[0]!.pod).toBe(podNameOf(name));
    expect((await cluster.nextCall("DELETE", `/jobs/${name}`)).query).toMatchObject({
      propagationPolicy: "Background",
    });
    expect(cluster.jobs.size + cluster.configMaps.size).toBe(0);
  });

  it("a stop before the pod started deletes the Job in the foreground with the stop's grace", async () => {
    cluster.onJobCreated = (job) =>
      cluster.putPod(podOf(job, { waiting: { reason: "ContainerCreating", message: "" } }));
    const stop = new AbortController();
    const running = launcher().run(spec("k8s-stop-early"), { signal: stop.signal });
    // Made, with its pod waiting: the launcher sets the ConfigMap's owner once the Job exists.
    await cluster.nextCall("PATCH", "/configmaps/");
    stop.abort(new StopRequest("budget", 4));
    expect(await running).toMatchObject({
      status: "error",
      reason: "budget",
      exitCode: null,
      executionTime: 0,
      error: { type: "Stopped", message: "the job was stopped (budget) before it started" },
    });
    const deletion = await cluster.nextCall("DELETE", "/jobs/");
    expect(deletion.query).toMatchObject({ propagationPolicy: "Foreground", gracePeriodSeconds: "4" });
    expect(cluster.execs).toEqual([]);
  });

  it("an aborted signal starts nothing", async () => {
    const envelope = await launcher().run(spec("k8s-early"), {
      signal: AbortSignal.abort(new StopRequest("budget", 0)),
    });
    expect(envelope).toMatchObject({ status: "error", reason: "budget", exitCode: null, executionTime: 0 });
    expect(cluster.calls).toEqual([]);
  });

  it("a bad image of the job's choosing that cannot be created is invalid_job, at once", async () => {
    cluster.onJobCreated = (job) =>
      cluster.putPod(
        podOf(job, {
          waiting: {
            reason: "InvalidImageName",
            message: 'Failed to apply default image tag "Bad:Image": invalid reference format',
          },
        }),
      );
    const envelope = await launcher().run(spec("k8s-bad-image", { image: "Bad:Image" }));
    expect(envelope).toMatchObject({
      status: "error",
      reason: "invalid_job",
      exitCode: null,
      error: {
        type: "ImageUnavailable",
        message: `the job's pod could not start (InvalidImageName): Failed to apply default image tag "Bad:Image": invalid reference format`,
      },
    });
    expect(cluster.jobs.size + cluster.configMaps.size).toBe(0);
  });

  it("refuses code over the ConfigMap limit before calling the API, naming the size", async () => {
    const big = join(root, "big");
    await mkdir(big);
    await writeFile(join(big, "main.py"), "def main():\n    return 1\n");
    await writeFile(join(big, "weights.bin"), randomBytes(1100 * 1024));
    const envelope = await launcher().run(spec("k8s-big", { code: big }));
    expect(envelope).toMatchObject({
      status: "error",
      reason: "invalid_job",
      error: { type: "InvalidJobError" },
    });
    const size = Number(/^code\.zip is (\d+) bytes/.exec(envelope.error?.message ?? "")?.[1]);
    expect(size).toBeGreaterThan(1024 * 1024);
    expect(envelope.error?.message).toBe(
      `code.zip is ${size} bytes, more than the 1048576 bytes (1 MiB) a Kubernetes ConfigMap holds; keep data out of the code and read it from a dataset (crucible datasets)`,
    );
    expect(cluster.calls).toEqual([]);
  });
});

describe("KubernetesLauncher.gc", () => {
  it("deletes the Jobs and ConfigMaps of agents that are gone, and only those", async () => {
    const object = (name: string, owner: string, start: string) => ({
      metadata: {
        name,
        labels: {
          "app.kubernetes.io/managed-by": "crucible",
          "crucible.dev/owner": owner,
          "crucible.dev/owner-start": start,
        },
      },
    });
    const gc = launcher();
    cluster.otherPods.add("agent-alive");
    cluster.onJobDeleted = (job) => cluster.jobs.delete(job.metadata.name);
    for (const [name, owner, start] of [
      ["j-dead", "agent-dead", "1"],
      ["j-alive", "agent-alive", "1"],
      ["j-restarted", NODE, "0"],
    ]) {
      cluster.jobs.set(name!, object(name!, owner!, start!));
      cluster.configMaps.set(name!, object(name!, owner!, start!));
    }
    cluster.jobs.set("unmanaged", { metadata: { name: "unmanaged", labels: {} } });
    expect(await gc.gc()).toBe(4);
    expect([...cluster.jobs.keys()].sort()).toEqual(["j-alive", "unmanaged"]);
    expect([...cluster.configMaps.keys()]).toEqual(["j-alive"]);
    expect(await gc.gc()).toBe(0);
  });
});

describe("the CLI", () => {
  /** Accepted senders: the agent starts only with them, before it looks at the launcher's settings. */
  const SENDERS = JSON.stringify({ agents: ["AROAEXAMPLEAGENT00000"], submitters: {} });

  it("refuses to start an agent without CRUCIBLE_SENDERS, naming the variable", async () => {
    const { code: exit, stderr } = await crucible(["agent", "--tier", "cpu-small"], undefined, {
      CRUCIBLE_BUCKET: "b",
      CRUCIBLE_QUEUES: JSON.stringify({ "cpu-small": "https://sqs.us-east-1.amazonaws.com/1/q" }),
      CRUCIBLE_SENDERS: "",
    });
    expect(exit).toBe(2);
    expect(stderr).toContain(
      "crucible: CRUCIBLE_SENDERS is not set: the agent accepts messages only from the senders it names",
    );
  });

  it("rejects --launcher podman with exit code 2 and the allowed kinds", async () => {
    const { code: exit, stderr } = await crucible(["agent", "--tier", "cpu-small", "--launcher", "podman"]);
    expect(exit).toBe(2);
    expect(stderr).toContain(`argument 'podman' is invalid. must be one of docker, kubernetes, got "podman"`);
  });

  it("selects Kubernetes from CRUCIBLE_LAUNCHER and requires the namespace", async () => {
    const { code: exit, stderr } = await crucible(
      ["agent", "--tier", "cpu-small", "--queue-url", "http://127.0.0.1:1/q"],
      undefined,
      {
        CRUCIBLE_LAUNCHER: "kubernetes",
        CRUCIBLE_BUCKET: "b",
        CRUCIBLE_SENDERS: SENDERS,
        CRUCIBLE_K8S_NAMESPACE: "",
      },
    );
    expect(exit).toBe(2);
    expect(stderr).toContain("crucible: CRUCIBLE_K8S_NAMESPACE must name the namespace jobs run in");
  });

  it("refuses a GPU node label that is not key=value, naming the variable and the form", async () => {
    const { code: exit, stderr } = await crucible(
      ["agent", "--tier", "gpu-small", "--queue-url", "http://127.0.0.1:1/q"],
      undefined,
      {
        CRUCIBLE_LAUNCHER: "kubernetes",
        CRUCIBLE_BUCKET: "b",
        CRUCIBLE_SENDERS: SENDERS,
        CRUCIBLE_K8S_NAMESPACE: "crucible-dev",
        CRUCIBLE_K8S_GPU_NODE_LABEL: "nvidia.com/gpu.present",
      },
    );
    expect(exit).toBe(2);
    expect(stderr).toContain(
      'crucible: CRUCIBLE_K8S_GPU_NODE_LABEL must be a node label as key=value, such as nvidia.com/gpu.present=true, got "nvidia.com/gpu.present"',
    );
  });
});
