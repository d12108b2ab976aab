import { mkdir, writeFile } from "node:fs/promises";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { V1Job } from "@kubernetes/client-node" with { "resolution-mode": "import" };
import type { Envelope, JobSpecInput, ProgressEvent } from "../../../../runtime/src/job/contract";
import { envelopeSchema, StopRequest } from "../../../../runtime/src/job/contract";
import { KubernetesLauncher } from "../../../../runtime/src/launch/kubernetes/kubernetes-launcher";
import { crucible } from "../../../support/cli";
import type { KObject } from "../../../support/kubernetes-cluster";
import { useFakeCluster } from "../../../support/kubernetes-cluster";
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

const k8s = useFakeCluster(logger, "k8s-test");

const launcher = (graceSeconds = 10) =>
  new KubernetesLauncher({
    api: k8s.api,
    namespace: NAMESPACE,
    logger,
    node: NODE,
    graceSeconds,
    tailBytes: 1024,
  });
const spec = (jobId: string, extra: Partial<JobSpecInput> = {}): JobSpecInput => ({
  jobId,
  code: k8s.code,
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
    k8s.cluster.onJobCreated = (job) => {
      const pod = podOf(job, running);
      k8s.cluster.putPod(pod);
      k8s.cluster.log(
        pod.metadata.name,
        'step 1/2 loss=0.5\n##crucible:progress {"step": 2, "total": 2, "loss": 0.25}\nbye\n',
      );
      k8s.cluster.endLog(pod.metadata.name);
      k8s.cluster.putPod(podOf(job, ended(0, JSON.stringify(RUNNER))));
      k8s.cluster.putJob(complete(job));
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
    const createdMap = await k8s.cluster.nextCall("POST", "/configmaps");
    const createdJob = await k8s.cluster.nextCall("POST", "/jobs");
    const name = (createdJob.body as { metadata: { name: string } }).metadata.name;
    expect(name).toMatch(/^crucible-k8s-ok-[0-9a-f]{5}$/);
    expect(k8s.cluster.calls.indexOf(createdMap)).toBeLessThan(k8s.cluster.calls.indexOf(createdJob));
    expect((createdMap.body as { binaryData: Record<string, string> }).binaryData["code.zip"]).toMatch(
      /^UEsDB/,
    );
    expect((await k8s.cluster.nextCall("PATCH", `/configmaps/${name}`)).body).toEqual([
      {
        op: "add",
        path: "/metadata/ownerReferences",
        value: [{ apiVersion: "batch/v1", kind: "Job", name, uid: `uid-${name}`, blockOwnerDeletion: false }],
      },
    ]);
    expect((await k8s.cluster.nextCall("DELETE", `/jobs/${name}`)).query).toMatchObject({
      propagationPolicy: "Background",
    });
    await k8s.cluster.nextCall("DELETE", `/configmaps/${name}`);
    expect(k8s.cluster.configMaps.has(name)).toBe(false);
    const watches = k8s.cluster.calls
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
    new FakeKubelet(k8s.cluster, async (job) => {
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
    const name = (
      k8s.cluster.calls.find((c) => c.method === "POST" && c.path.endsWith("/jobs"))!.body as KObject
    ).metadata.name;
    // SIGTERM to the runner, the job's container's first process, and nothing to the keeper's.
    expect(k8s.cluster.execs.map((e) => [e.container, e.command.slice(-2)])).toEqual([
      ["job", ["1", "SIGTERM"]],
      ["keeper", ["touch", "/crucible/control/collected"]],
    ]);
    expect(k8s.cluster.execs[0]!.pod).toBe(podNameOf(name));
    expect((await k8s.cluster.nextCall("DELETE", `/jobs/${name}`)).query).toMatchObject({
      propagationPolicy: "Background",
    });
    expect(k8s.cluster.jobs.size + k8s.cluster.configMaps.size).toBe(0);
  });

  it("a stop before the pod started deletes the Job in the foreground with the stop's grace", async () => {
    k8s.cluster.onJobCreated = (job) =>
      k8s.cluster.putPod(podOf(job, { waiting: { reason: "ContainerCreating", message: "" } }));
    const stop = new AbortController();
    const running = launcher().run(spec("k8s-stop-early"), { signal: stop.signal });
    // Made, with its pod waiting: the launcher sets the ConfigMap's owner once the Job exists.
    await k8s.cluster.nextCall("PATCH", "/configmaps/");
    stop.abort(new StopRequest("budget", 4));
    expect(await running).toMatchObject({
      status: "error",
      reason: "budget",
      exitCode: null,
      executionTime: 0,
      error: { type: "Stopped", message: "the job was stopped (budget) before it started" },
    });
    const deletion = await k8s.cluster.nextCall("DELETE", "/jobs/");
    expect(deletion.query).toMatchObject({ propagationPolicy: "Foreground", gracePeriodSeconds: "4" });
    expect(k8s.cluster.execs).toEqual([]);
  });

  it("an aborted signal starts nothing", async () => {
    const envelope = await launcher().run(spec("k8s-early"), {
      signal: AbortSignal.abort(new StopRequest("budget", 0)),
    });
    expect(envelope).toMatchObject({ status: "error", reason: "budget", exitCode: null, executionTime: 0 });
    expect(k8s.cluster.calls).toEqual([]);
  });

  it("a bad image of the job's choosing that cannot be created is invalid_job, at once", async () => {
    k8s.cluster.onJobCreated = (job) =>
      k8s.cluster.putPod(
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
    expect(k8s.cluster.jobs.size + k8s.cluster.configMaps.size).toBe(0);
  });

  it("refuses code over the ConfigMap limit before calling the API, naming the size", async () => {
    const big = join(k8s.root, "big");
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
    expect(k8s.cluster.calls).toEqual([]);
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
    k8s.cluster.otherPods.add("agent-alive");
    k8s.cluster.onJobDeleted = (job) => k8s.cluster.jobs.delete(job.metadata.name);
    for (const [name, owner, start] of [
      ["j-dead", "agent-dead", "1"],
      ["j-alive", "agent-alive", "1"],
      ["j-restarted", NODE, "0"],
    ]) {
      k8s.cluster.jobs.set(name!, object(name!, owner!, start!));
      k8s.cluster.configMaps.set(name!, object(name!, owner!, start!));
    }
    k8s.cluster.jobs.set("unmanaged", { metadata: { name: "unmanaged", labels: {} } });
    expect(await gc.gc()).toBe(4);
    expect([...k8s.cluster.jobs.keys()].sort()).toEqual(["j-alive", "unmanaged"]);
    expect([...k8s.cluster.configMaps.keys()]).toEqual(["j-alive"]);
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
