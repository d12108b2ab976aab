import type { V1ConfigMap, V1Job, V1OwnerReference } from "@kubernetes/client-node" with {
  "resolution-mode": "import",
};
import { basename, dirname } from "node:path";
import { CONTAINER_PATHS } from "../../job/contract";
import type { NodeLabel } from "../../catalog/kubernetes-names";
import { KUBERNETES, priorityClassFor } from "../../catalog/kubernetes-names";
import type { SandboxUser } from "../sandbox";
import { jobEnvironment } from "../sandbox";
import type { Priority } from "../../catalog/scheduling";
import type { Tier } from "../../catalog/tiers";

/**
 * The Kubernetes objects of one job: a ConfigMap carrying its code and a Job whose pod gives the same
 * sandbox as the Docker launcher's container (sandbox.ts), as far as a pod spec can say it.
 */

/** What the API server accepts in one ConfigMap (data and binaryData together). */
export const CONFIGMAP_MAX_BYTES = 1024 * 1024;
/** What the kubelet keeps of a container's termination message (it cuts the file there). */
export const TERMINATION_MESSAGE_MAX_BYTES = 4096;
/** The kubelet's own default path, outside every directory the job can write. */
export const TERMINATION_MESSAGE_PATH = "/dev/termination-log";
/** The one container of a job pod. */
export const JOB_CONTAINER = "job";
/** Where the job images keep the runner (images/*: `COPY images/runner/ /opt/crucible/`). */
export const RUNNER_DIR = "/opt/crucible";

/** Labels that say which agent process created an object, so `gc` can tell when it is gone. */
export const OWNER_LABELS = {
  /** The agent's pod (its HOSTNAME). */
  owner: "crucible.dev/owner",
  /** The agent process's start: a restarted agent container keeps its pod's name. */
  ownerStart: "crucible.dev/owner-start",
} as const;

/**
 * GPU pods tolerate the taint GPU node groups carry so that CPU pods stay off them, and select GPU nodes
 * by label (KubernetesJobInput.gpuNodeLabel). The `nvidia.com/gpu` request alone would schedule too,
 * but the selector makes an unschedulable pod's reason say what is missing.
 */
export const GPU_TOLERATION = {
  key: KUBERNETES.gpuResource,
  operator: "Exists",
  effect: "NoSchedule",
} as const;

/**
 * The container's command: the image's runner, then its runner.json copied to the termination message,
 * fitted into the kubelet's 4 KiB. The message cannot be runner.json itself: the kubelet bind-mounts the
 * file there, and the runner's unlink and atomic rename onto a mount point fail with EBUSY. A record over
 * 4 KiB keeps its status and error with the traceback's end cut to fit; a success whose result does not
 * fit becomes a `ResultTooLarge` error, since a cut result is no result. Runs in the runner's own process
 * (runpy), so its signal forwarding works as under the image's entrypoint. The runner gets no `--job-user`:
 * it runs the job as its own (non-root) uid, since the pod, not a uid, is the boundary between jobs here
 * and a `runAsNonRoot` pod cannot start a root supervisor; the Docker launcher's root supervisor is the
 * node's per-job isolation (sandbox.ts, SUPERVISOR_CAPABILITIES).
 */
export const RUNNER_WRAPPER = `
import json, os, runpy, stat, sys
RUNNER = "${RUNNER_DIR}/supervise.py"
LIMIT = ${TERMINATION_MESSAGE_MAX_BYTES}
sys.path.insert(0, "${RUNNER_DIR}")
sys.argv = [RUNNER]
status = 1
try:
    runpy.run_path(RUNNER, run_name="__main__")
    status = 0
except SystemExit as done:
    status = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)

def size(record):
    return len(json.dumps(record).encode())

def fit(data):
    if len(data) <= LIMIT:
        return data
    try:
        record = json.loads(data)
    except ValueError:
        return data[:LIMIT]
    if record.get("status") == "success":
        record = {"status": "error", "reason": "exception", "error": {"type": "ResultTooLarge", "message":
            "the result and the runner's record are %d bytes; Kubernetes carries at most %d bytes of a job's"
            " result (the container's termination message): return a smaller value, write large outputs"
            " to files" % (len(data), LIMIT)}, "python": record.get("python"), "resources": record.get("resources")}
    error = record.get("error") if isinstance(record.get("error"), dict) else {}
    error["message"] = str(error.get("message", ""))[:1024]
    trace = str(error.pop("traceback", ""))
    while trace and size(dict(record, error=dict(error, traceback="..." + trace))) > LIMIT:
        trace = trace[len(trace) // 4 + 1:]
    if trace:
        error["traceback"] = "..." + trace
    record["error"] = error
    return json.dumps(record).encode() if size(record) <= LIMIT else data[:LIMIT]

try:
    fd = os.open("${CONTAINER_PATHS.runnerResult}", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as result:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            with open("${TERMINATION_MESSAGE_PATH}", "wb") as message:
                message.write(fit(result.read(${16 * 1024 * 1024})))
except OSError:
    pass
sys.stdout.flush()
sys.stderr.flush()
os._exit(status)
`.trimStart();

/** Everything a job's Kubernetes objects are made from. */
export interface KubernetesJobInput {
  /** Name of the Job and of its ConfigMap. */
  readonly name: string;
  readonly namespace: string;
  readonly jobId: string;
  /** The tier with its effective limits. */
  readonly tier: Tier;
  readonly image: string;
  readonly env: Readonly<Record<string, string>>;
  readonly priority: Priority;
  readonly timeoutSeconds: number;
  /** Seconds between SIGTERM and SIGKILL when the cluster stops the pod (deadline, deletion). */
  readonly graceSeconds: number;
  /** Seconds a finished Job stays for inspection before the cluster deletes it. */
  readonly ttlSecondsAfterFinished: number;
  /** Who the job runs as: the images' job user. */
  readonly user: SandboxUser;
  readonly owner: { readonly pod: string; readonly start: string };
  /** The node label GPU pods select by: the one the cluster's GPU nodes carry (the stack's `gpuNodeLabel`). */
  readonly gpuNodeLabel: NodeLabel;
}

/** Labels on the Job, its pod and its ConfigMap. */
export function jobLabels(input: KubernetesJobInput): Record<string, string> {
  return {
    [KUBERNETES.managedBy.key]: KUBERNETES.managedBy.value,
    [KUBERNETES.labels.role]: "job",
    [KUBERNETES.labels.tier]: input.tier.name,
    [KUBERNETES.labels.jobId]: input.jobId,
    [KUBERNETES.labels.priority]: input.priority,
    [OWNER_LABELS.owner]: input.owner.pod,
    [OWNER_LABELS.ownerStart]: input.owner.start,
  };
}

/** The job's code, as the one key of a ConfigMap; owned by its Job once that exists. */
export function codeConfigMap(input: KubernetesJobInput, codeZip: Buffer): V1ConfigMap {
  return {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: input.name, namespace: input.namespace, labels: jobLabels(input) },
    binaryData: { [basename(CONTAINER_PATHS.code)]: codeZip.toString("base64") },
    immutable: true,
  };
}

/** Makes the Job the ConfigMap's owner, so the cluster's garbage collector removes both together. */
export function ownerReference(job: { readonly name: string; readonly uid: string }): V1OwnerReference {
  return { apiVersion: "batch/v1", kind: "Job", name: job.name, uid: job.uid, blockOwnerDeletion: false };
}

const VOLUMES = { code: "code", output: "output", workspace: "workspace", tmp: "tmp" } as const;

/**
 * The one place a job's Kubernetes Job is defined: a non-root user, no capabilities or privilege gain,
 * the default seccomp profile, a read-only root with a memory-backed `/tmp` capped per tier, the code
 * read-only, `/workspace` and the runner's output as empty directories, requests equal to the tier's
 * limits, the deadline, one attempt, no API token, no host namespaces, GPUs only for GPU tiers.
 */
export function jobManifest(input: KubernetesJobInput): V1Job {
  const { tier, user } = input;
  const labels = jobLabels(input);
  const gpus = tier.gpu?.count ?? 0;
  const limits: Record<string, string> = {
    cpu: `${Math.round(tier.vcpus * 1000)}m`,
    memory: `${tier.memoryMiB}Mi`,
    ...(gpus > 0 && { [KUBERNETES.gpuResource]: String(gpus) }),
  };
  return {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: { name: input.name, namespace: input.namespace, labels },
    spec: {
      backoffLimit: 0,
      activeDeadlineSeconds: input.timeoutSeconds,
      ttlSecondsAfterFinished: input.ttlSecondsAfterFinished,
      template: {
        metadata: { labels },
        spec: {
          restartPolicy: "Never",
          serviceAccountName: KUBERNETES.jobServiceAccount,
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          hostNetwork: false,
          hostPID: false,
          hostIPC: false,
          priorityClassName: priorityClassFor(input.priority),
          terminationGracePeriodSeconds: input.graceSeconds,
          securityContext: {
            runAsNonRoot: true,
            runAsUser: user.uid,
            runAsGroup: user.gid,
            fsGroup: user.gid,
            seccompProfile: { type: "RuntimeDefault" },
          },
          ...(gpus > 0 && {
            nodeSelector: { [input.gpuNodeLabel.key]: input.gpuNodeLabel.value },
            tolerations: [{ ...GPU_TOLERATION }],
          }),
          containers: [
            {
              name: JOB_CONTAINER,
              image: input.image,
              imagePullPolicy: "IfNotPresent",
              command: ["python3", "-c", RUNNER_WRAPPER],
              env: Object.entries(jobEnvironment(input.jobId, tier, input.env)).map(([name, value]) => ({
                name,
                value,
              })),
              resources: { requests: limits, limits },
              securityContext: {
                runAsNonRoot: true,
                readOnlyRootFilesystem: true,
                allowPrivilegeEscalation: false,
                privileged: false,
                capabilities: { drop: ["ALL"] },
                seccompProfile: { type: "RuntimeDefault" },
              },
              terminationMessagePath: TERMINATION_MESSAGE_PATH,
              terminationMessagePolicy: "File",
              volumeMounts: [
                { name: VOLUMES.code, mountPath: dirname(CONTAINER_PATHS.code), readOnly: true },
                { name: VOLUMES.output, mountPath: CONTAINER_PATHS.output },
                { name: VOLUMES.workspace, mountPath: CONTAINER_PATHS.workspace },
                { name: VOLUMES.tmp, mountPath: CONTAINER_PATHS.tmp },
              ],
            },
          ],
          volumes: [
            {
              name: VOLUMES.code,
              configMap: {
                name: input.name,
                defaultMode: 0o444,
                items: [{ key: basename(CONTAINER_PATHS.code), path: basename(CONTAINER_PATHS.code) }],
              },
            },
            // Room for the largest runner.json the runner writes (16 MiB) and its temporary copy.
            { name: VOLUMES.output, emptyDir: { sizeLimit: "32Mi" } },
            { name: VOLUMES.workspace, emptyDir: {} },
            // Memory-backed like Docker's tmpfs, so its pages count against the memory limit as there.
            { name: VOLUMES.tmp, emptyDir: { medium: "Memory", sizeLimit: `${tier.tmpfsMiB}Mi` } },
          ],
        },
      },
    },
  };
}
