import { describe, expect, it } from "vitest";
import {
  codeConfigMap,
  jobManifest,
  ownerReference,
  RUNNER_WRAPPER,
  TERMINATION_MESSAGE_PATH,
} from "../../../../runtime/src/launch/kubernetes/kubernetes-job";
import type { KubernetesJobInput } from "../../../../runtime/src/launch/kubernetes/kubernetes-job";
import { effectiveTier, ROOTLESS_FALLBACK_USER } from "../../../../runtime/src/launch/sandbox";
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
    timeoutSeconds: 25,
    graceSeconds: 10,
    ttlSecondsAfterFinished: 3600,
    user: ROOTLESS_FALLBACK_USER,
    owner: { pod: "crucible-agent-cpu-small-5d8f7-x2x4z", start: "1767607200000" },
    gpuNodeLabel: { key: "nvidia.com/gpu.present", value: "true" },
    ...overrides,
  };
}

/** The values each tier's pod must carry: [cpu, memory, tmp size, GPUs]. */
const EXPECTED: Record<TierName, [string, string, string, number]> = {
  "cpu-small": ["500m", "512Mi", "64Mi", 0],
  "cpu-large": ["2000m", "4096Mi", "1024Mi", 0],
  "gpu-small": ["4000m", "14336Mi", "4096Mi", 1],
  "gpu-medium": ["8000m", "30720Mi", "8192Mi", 1],
  "gpu-large": ["8000m", "30720Mi", "8192Mi", 1],
};

describe("the Job of each tier", () => {
  for (const tier of TIER_NAMES) {
    it(`${tier}: the sandbox, limits, deadline and labels, field by field`, () => {
      const [cpu, memory, tmp, gpus] = EXPECTED[tier];
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
          activeDeadlineSeconds: 25,
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
              terminationGracePeriodSeconds: 10,
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
                  command: ["python3", "-c", RUNNER_WRAPPER],
                  env: [
                    { name: "SEED", value: "7" },
                    { name: "CRUCIBLE_JOB_ID", value: "job-1" },
                    { name: "CRUCIBLE_TIER", value: tier },
                    { name: "CRUCIBLE_CHECKPOINT_DIR", value: "/workspace/checkpoints" },
                    { name: "HOME", value: "/tmp" },
                    ...(gpus > 0 ? [{ name: "CUDA_VISIBLE_DEVICES", value: "0" }] : []),
                  ],
                  resources: { requests: limits, limits },
                  securityContext: {
                    runAsNonRoot: true,
                    readOnlyRootFilesystem: true,
                    allowPrivilegeEscalation: false,
                    privileged: false,
                    capabilities: { drop: ["ALL"] },
                    seccompProfile: { type: "RuntimeDefault" },
                  },
                  terminationMessagePath: "/dev/termination-log",
                  terminationMessagePolicy: "File",
                  volumeMounts: [
                    { name: "code", mountPath: "/crucible/input", readOnly: true },
                    { name: "output", mountPath: "/crucible/output" },
                    { name: "workspace", mountPath: "/workspace" },
                    { name: "tmp", mountPath: "/tmp" },
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
                { name: "workspace", emptyDir: {} },
                { name: "tmp", emptyDir: { medium: "Memory", sizeLimit: tmp } },
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
