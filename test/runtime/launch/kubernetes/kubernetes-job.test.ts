import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  codeConfigMap,
  jobManifest,
  kubernetesSandboxFacts,
  ownerReference,
  RUNNER_WRAPPER,
  runnerConfig,
  TERMINATION_MESSAGE_PATH,
} from "../../../../runtime/src/launch/kubernetes/kubernetes-job";
import type { KubernetesJobInput } from "../../../../runtime/src/launch/kubernetes/kubernetes-job";
import { KEEPER_SCRIPT } from "../../../../runtime/src/launch/kubernetes/pod-layout";
import { effectiveTier, ROOTLESS_FALLBACK_USER, sandboxFacts } from "../../../../runtime/src/launch/sandbox";
import type { TierName } from "../../../../runtime/src/catalog/tiers";
import { TIER_NAMES } from "../../../../runtime/src/catalog/tiers";

function input(tier: TierName, overrides: Partial<KubernetesJobInput> = {}): KubernetesJobInput {
  return {
    name: "crucible-job-1-abcde",
    namespace: "crucible-dev",
    jobId: "job-1",
    tier: effectiveTier(tier).tier,
    image: "registry.example/crucible/cpu@sha256:abc",
    env: { SEED: "7" },
    priority: "normal",
    deadlineSeconds: 1265,
    graceSeconds: 10,
    collectSeconds: 30,
    ttlSecondsAfterFinished: 3600,
    user: ROOTLESS_FALLBACK_USER,
    owner: { pod: "crucible-agent-cpu-small-5d8f7-x2x4z", start: "1767607200000" },
    gpuNodeLabel: { key: "nvidia.com/gpu.present", value: "true" },
    waitForReady: false,
    datasets: false,
    ...overrides,
  };
}

/**
 * The values each tier's pod must carry: [cpu, memory, tmp size, GPUs, workspace size, largest file in
 * bytes, open files] (runtime/src/catalog/tiers.ts).
 */
const EXPECTED: Record<TierName, [string, string, string, number, string, number, number]> = {
  "cpu-small": ["500m", "512Mi", "64Mi", 0, "1024Mi", 256 * 2 ** 20, 1024],
  "cpu-large": ["2000m", "4096Mi", "1024Mi", 0, "10240Mi", 4096 * 2 ** 20, 4096],
  "gpu-small": ["4000m", "14336Mi", "4096Mi", 1, "51200Mi", 16384 * 2 ** 20, 65536],
  "gpu-medium": ["8000m", "30720Mi", "8192Mi", 1, "81920Mi", 32768 * 2 ** 20, 65536],
  "gpu-large": ["8000m", "30720Mi", "8192Mi", 1, "102400Mi", 65536 * 2 ** 20, 65536],
};

/** Both containers' security context: the same lock-down as the Docker sandbox, as a pod spec says it. */
const LOCKED = {
  runAsNonRoot: true,
  readOnlyRootFilesystem: true,
  allowPrivilegeEscalation: false,
  privileged: false,
  capabilities: { drop: ["ALL"] },
  seccompProfile: { type: "RuntimeDefault" },
};

describe("the Job of each tier", () => {
  for (const tier of TIER_NAMES) {
    it(`${tier}: the sandbox, limits, keeper, deadline and labels, field by field`, () => {
      const [cpu, memory, tmp, gpus, workspace, fileSize, openFiles] = EXPECTED[tier];
      const labels = {
        "app.kubernetes.io/managed-by": "crucible",
        "crucible.dev/role": "job",
        "crucible.dev/tier": tier,
        "crucible.dev/job-id": "job-1",
        "crucible.dev/priority": "high",
        "crucible.dev/owner": "crucible-agent-cpu-small-5d8f7-x2x4z",
        "crucible.dev/owner-start": "1767607200000",
      };
      const limits = { cpu, memory, ...(gpus > 0 && { "nvidia.com/gpu": "1" }) };
      expect(jobManifest(input(tier, { priority: "high" }))).toEqual({
        apiVersion: "batch/v1",
        kind: "Job",
        metadata: { name: "crucible-job-1-abcde", namespace: "crucible-dev", labels },
        spec: {
          backoffLimit: 0,
          activeDeadlineSeconds: 1265,
          ttlSecondsAfterFinished: 3600,
          template: {
            metadata: { labels },
            spec: {
              restartPolicy: "Never",
              serviceAccountName: "crucible-job",
              automountServiceAccountToken: false,
              enableServiceLinks: false,
              hostNetwork: false,
              hostPID: false,
              hostIPC: false,
              priorityClassName: "crucible-interactive",
              // The job's grace and the agent's time to collect what it wrote in it.
              terminationGracePeriodSeconds: 40,
              securityContext: {
                runAsNonRoot: true,
                runAsUser: 1000,
                runAsGroup: 1000,
                fsGroup: 1000,
                seccompProfile: { type: "RuntimeDefault" },
              },
              ...(gpus > 0 && {
                nodeSelector: { "nvidia.com/gpu.present": "true" },
                tolerations: [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }],
              }),
              containers: [
                {
                  name: "job",
                  image: "registry.example/crucible/cpu@sha256:abc",
                  imagePullPolicy: "IfNotPresent",
                  command: [
                    "python3",
                    "-c",
                    RUNNER_WRAPPER,
                    JSON.stringify({ fileSizeBytes: fileSize, openFiles }),
                  ],
                  env: [
                    { name: "SEED", value: "7" },
                    { name: "CRUCIBLE_JOB_ID", value: "job-1" },
                    { name: "CRUCIBLE_TIER", value: tier },
                    { name: "CRUCIBLE_CHECKPOINT_DIR", value: "/workspace/checkpoints" },
                    { name: "HOME", value: "/tmp" },
                    ...(gpus > 0 ? [{ name: "CUDA_VISIBLE_DEVICES", value: "0" }] : []),
                  ],
                  resources: { requests: limits, limits },
                  securityContext: LOCKED,
                  terminationMessagePath: "/dev/termination-log",
                  terminationMessagePolicy: "File",
                  volumeMounts: [
                    { name: "code", mountPath: "/crucible/input", readOnly: true },
                    { name: "output", mountPath: "/crucible/output" },
                    { name: "tmp", mountPath: "/tmp" },
                    { name: "workspace", mountPath: "/workspace" },
                    { name: "control", mountPath: "/crucible/control", readOnly: true },
                  ],
                },
                {
                  name: "keeper",
                  image: "registry.example/crucible/cpu@sha256:abc",
                  imagePullPolicy: "IfNotPresent",
                  command: ["sh", "-c", KEEPER_SCRIPT],
                  resources: {
                    requests: { cpu: "200m", memory: "128Mi" },
                    limits: { cpu: "200m", memory: "128Mi" },
                  },
                  securityContext: LOCKED,
                  volumeMounts: [
                    { name: "workspace", mountPath: "/workspace" },
                    { name: "control", mountPath: "/crucible/control" },
                  ],
                },
              ],
              volumes: [
                {
                  name: "code",
                  configMap: {
                    name: "crucible-job-1-abcde",
                    defaultMode: 0o444,
                    items: [{ key: "code.zip", path: "code.zip" }],
                  },
                },
                { name: "output", emptyDir: { sizeLimit: "32Mi" } },
                { name: "workspace", emptyDir: { sizeLimit: workspace } },
                { name: "tmp", emptyDir: { medium: "Memory", sizeLimit: tmp } },
                { name: "control", emptyDir: { sizeLimit: "1Mi" } },
              ],
            },
          },
        },
      });
    });
  }

  it("puts normal and low priority jobs in the batch class", () => {
    for (const priority of ["normal", "low"] as const)
      expect(jobManifest(input("cpu-small", { priority })).spec?.template.spec?.priorityClassName).toBe(
        "crucible-batch",
      );
  });

  it("sends GPU pods to the nodes of the configured label; CPU pods select no nodes", () => {
    const gpuNodeLabel = { key: "node.crucible.dev/gpu", value: "yes" };
    expect(jobManifest(input("gpu-small", { gpuNodeLabel })).spec?.template.spec?.nodeSelector).toEqual({
      "node.crucible.dev/gpu": "yes",
    });
    expect(
      jobManifest(input("cpu-large", { gpuNodeLabel })).spec?.template.spec?.nodeSelector,
    ).toBeUndefined();
  });

  it("caps /tmp by a stack's smaller memory override, as the Docker sandbox does", () => {
    const tier = effectiveTier("cpu-large", { memoryMiB: 512 }).tier;
    const volumes = jobManifest(input("cpu-large", { tier })).spec?.template.spec?.volumes;
    expect(volumes?.find((v) => v.name === "tmp")?.emptyDir).toEqual({
      medium: "Memory",
      sizeLimit: "512Mi",
    });
  });

  it("runs the image's runner and copies its result to the termination message", () => {
    expect(RUNNER_WRAPPER).toContain('RUNNER = "/opt/crucible/supervise.py"');
    expect(RUNNER_WRAPPER).toContain('os.open("/crucible/output/runner.json"');
    expect(RUNNER_WRAPPER).toContain(`open("${TERMINATION_MESSAGE_PATH}", "wb")`);
    expect(RUNNER_WRAPPER).toContain("LIMIT = 4096");
  });

  it("gives datasets and an environment volumes the keeper fills and the job only reads", () => {
    const spec = jobManifest(
      input("cpu-small", {
        datasets: true,
        environment: { pythonPath: ["site-packages", "lib"] },
        waitForReady: true,
      }),
    ).spec!.template.spec!;
    const [job, keeper] = spec.containers;
    expect(job!.volumeMounts!.slice(3)).toEqual([
      { name: "workspace", mountPath: "/workspace" },
      { name: "control", mountPath: "/crucible/control", readOnly: true },
      { name: "datasets", mountPath: "/datasets", readOnly: true },
      { name: "environment", mountPath: "/opt/crucible/env", readOnly: true },
    ]);
    expect(keeper!.volumeMounts).toEqual([
      { name: "workspace", mountPath: "/workspace" },
      { name: "control", mountPath: "/crucible/control" },
      { name: "datasets", mountPath: "/datasets" },
      { name: "environment", mountPath: "/opt/crucible/env" },
    ]);
    expect(spec.volumes!.slice(5)).toEqual([
      { name: "datasets", emptyDir: {} },
      { name: "environment", emptyDir: {} },
    ]);
    expect(job!.env).toContainEqual({
      name: "PYTHONPATH",
      value: "/opt/crucible/env/site-packages:/opt/crucible/env/lib",
    });
    expect(JSON.parse(job!.command![3]!)).toEqual({
      fileSizeBytes: 256 * 2 ** 20,
      openFiles: 1024,
      waitFor: "/crucible/control/ready",
    });
    // The keeper sees none of the job's variables: they may hold secrets.
    expect(keeper!.env).toBeUndefined();
  });

  it("the wrapper lowers the file-size and open-file limits and waits for the ready marker first", async () => {
    const dir = await mkdtemp(join(tmpdir(), "crucible-wrapper-"));
    try {
      // The wrapper as the pod runs it, pointed at a stand-in runner and this directory's paths.
      const runner = join(dir, "supervise.py");
      await writeFile(
        runner,
        [
          "import json, os, resource, sys",
          "print(json.dumps({",
          "  'fsize': resource.getrlimit(resource.RLIMIT_FSIZE),",
          "  'nofile': resource.getrlimit(resource.RLIMIT_NOFILE),",
          `  'ready': os.path.exists(${JSON.stringify(join(dir, "ready"))}),`,
          `  'checkpoints': os.path.isdir(${JSON.stringify(join(dir, "checkpoints"))}),`,
          "}), flush=True)",
        ].join("\n"),
      );
      const wrapper = RUNNER_WRAPPER.replace('"/opt/crucible/supervise.py"', JSON.stringify(runner))
        .replace('"/opt/crucible"', JSON.stringify(dir))
        .replace('"/workspace/checkpoints"', JSON.stringify(join(dir, "checkpoints")));
      const config = { ...runnerConfig(effectiveTier("cpu-small").tier, true), waitFor: join(dir, "ready") };
      const child = spawn("python3", ["-c", wrapper, JSON.stringify(config)], {
        stdio: ["ignore", "pipe", "inherit"],
      });
      let out = "";
      child.stdout.on("data", (chunk: Buffer) => (out += chunk.toString()));
      const exited = new Promise<number | null>((resolve) => child.once("close", resolve));
      // The runner has not run: the marker is not there yet, whenever this line runs.
      await writeFile(join(dir, "ready"), "");
      expect(await exited).toBe(0);
      expect(JSON.parse(out)).toEqual({
        fsize: [256 * 2 ** 20, 256 * 2 ** 20],
        nofile: [1024, 1024],
        ready: true,
        checkpoints: true,
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("the sandbox facts of a Kubernetes job", () => {
  it.each(TIER_NAMES)(
    "%s: the Docker sandbox's, but for the supervisor's capabilities, per-job uids and the pids limit",
    (tier) => {
      expect(kubernetesSandboxFacts(tier)).toEqual({
        ...sandboxFacts(tier),
        // The runner runs as the job's own uid: it keeps no capability (README, Kubernetes target).
        capAdd: [],
        // The pod is the boundary between jobs; they all run as the images' user.
        perJobUser: false,
        // A pod spec has no pids limit: the kubelet's podPidsLimit is the node's.
        pidsLimit: 0,
      });
    },
  );
});

describe("the code's ConfigMap", () => {
  it("holds code.zip as binary data, immutable, with the Job's labels", () => {
    const zip = Buffer.from("PK\u0003\u0004 not really a zip");
    expect(codeConfigMap(input("cpu-small"), zip)).toEqual({
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: {
        name: "crucible-job-1-abcde",
        namespace: "crucible-dev",
        labels: {
          "app.kubernetes.io/managed-by": "crucible",
          "crucible.dev/role": "job",
          "crucible.dev/tier": "cpu-small",
          "crucible.dev/job-id": "job-1",
          "crucible.dev/priority": "normal",
          "crucible.dev/owner": "crucible-agent-cpu-small-5d8f7-x2x4z",
          "crucible.dev/owner-start": "1767607200000",
        },
      },
      binaryData: { "code.zip": zip.toString("base64") },
      immutable: true,
    });
  });

  it("is owned by its Job, without blocking the Job's deletion", () => {
    expect(ownerReference({ name: "crucible-job-1-abcde", uid: "u-1" })).toEqual({
      apiVersion: "batch/v1",
      kind: "Job",
      name: "crucible-job-1-abcde",
      uid: "u-1",
      blockOwnerDeletion: false,
    });
  });
});
