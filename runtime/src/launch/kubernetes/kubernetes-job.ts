import type { V1ConfigMap, V1Job, V1OwnerReference } from "@kubernetes/client-node" with {
  "resolution-mode": "import",
};
import { basename, dirname } from "node:path";
import { CONTAINER_PATHS } from "../../job/contract";
import type { NodeLabel } from "../../catalog/kubernetes-names";
import { KUBERNETES, priorityClassFor } from "../../catalog/kubernetes-names";
import type { SandboxFacts, SandboxUser } from "../sandbox";
import { effectiveTier, ROOTLESS_FALLBACK_USER, sandboxEnvironment } from "../sandbox";
import type { Priority } from "../../catalog/scheduling";
import type { Tier, TierName } from "../../catalog/tiers";
import { CONTROL_DIR, JOB_CONTAINER, KEEPER_CONTAINER, KEEPER_SCRIPT, MARKERS } from "./pod-layout";

/**
 * The Kubernetes objects of one job: a ConfigMap carrying its code and a Job whose pod gives the same
 * sandbox as the Docker launcher's container (sandbox.ts), as far as a pod spec can say it, with the
 * keeper beside the job (pod-files.ts) through which the agent moves its files.
 */

/** What the API server accepts in one ConfigMap (data and binaryData together). */
export const CONFIGMAP_MAX_BYTES = 1024 * 1024;
/** What the kubelet keeps of a container's termination message (it cuts the file there). */
export const TERMINATION_MESSAGE_MAX_BYTES = 4096;
/** The kubelet's own default path, outside every directory the job can write. */
export const TERMINATION_MESSAGE_PATH = "/dev/termination-log";
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
 *
 * Before the runner, what a pod spec cannot say ({@link RunnerConfig}, its one argument): the file-size and
 * open-file limits the Docker sandbox sets as ulimits, lowered here where the job inherits them; and, when
 * the agent has files to put in place first (checkpoints to resume from, datasets, an environment), a wait
 * for its ready marker. `/workspace/checkpoints` is made, as the agent makes it for a Docker job.
 */
export const RUNNER_WRAPPER = `
import json, os, resource, runpy, signal, stat, sys, time
RUNNER = "${RUNNER_DIR}/supervise.py"
LIMIT = ${TERMINATION_MESSAGE_MAX_BYTES}
CONFIG = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
for name, key in (("RLIMIT_FSIZE", "fileSizeBytes"), ("RLIMIT_NOFILE", "openFiles")):
    if key in CONFIG:
        which = getattr(resource, name)
        hard = resource.getrlimit(which)[1]
        want = CONFIG[key] if hard == resource.RLIM_INFINITY else min(CONFIG[key], hard)
        resource.setrlimit(which, (want, want))
if CONFIG.get("waitFor"):
    # As the pod's first process it would ignore a stop it has no handler for.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    while not os.path.exists(CONFIG["waitFor"]):
        time.sleep(0.1)
os.makedirs("${CONTAINER_PATHS.checkpoints}", exist_ok=True)
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
  /**
   * The Job's `activeDeadlineSeconds`: a backstop for a pod whose agent is gone. The launcher stops the
   * job at its own timeout, which counts from the job's start, well before.
   */
  readonly deadlineSeconds: number;
  /** Seconds between SIGTERM and SIGKILL the job gets when stopped. */
  readonly graceSeconds: number;
  /**
   * Seconds the pod's grace period adds to the job's when the cluster deletes the pod, for the agent to
   * collect what the job checkpointed in its grace: the keeper outlives the job by up to this.
   */
  readonly collectSeconds: number;
  /** Seconds a finished Job stays for inspection before the cluster deletes it. */
  readonly ttlSecondsAfterFinished: number;
  /** Who the job runs as: the images' job user. */
  readonly user: SandboxUser;
  readonly owner: { readonly pod: string; readonly start: string };
  /** The node label GPU pods select by: the one the cluster's GPU nodes carry (the stack's `gpuNodeLabel`). */
  readonly gpuNodeLabel: NodeLabel;
  /** Whether the runner waits for the agent's ready marker: there are files to put in place first. */
  readonly waitForReady: boolean;
  /** Whether the job has datasets: a volume at /datasets, read-only to the job, filled by the agent. */
  readonly datasets: boolean;
  /** The job's environment: a volume at its mount path, read-only to the job, on its Python path. */
  readonly environment?: { readonly pythonPath: readonly string[] };
}

/** The runner wrapper's one argument ({@link RUNNER_WRAPPER}). */
export interface RunnerConfig {
  /** RLIMIT_FSIZE: the tier's largest file. */
  readonly fileSizeBytes: number;
  /** RLIMIT_NOFILE: the tier's open files. */
  readonly openFiles: number;
  /** The marker to wait for before the job starts, when there is one. */
  readonly waitFor?: string;
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

/** The job's `/workspace` volume: the kubelet names it when it evicts a pod that filled it. */
export const WORKSPACE_VOLUME = "workspace";

const VOLUMES = {
  code: "code",
  output: "output",
  workspace: WORKSPACE_VOLUME,
  tmp: "tmp",
  control: "control",
  datasets: "datasets",
  environment: "environment",
} as const;

/** Both containers of a job pod: non-root, read-only root, no capabilities or privilege gain, default seccomp. */
const CONTAINER_SECURITY = {
  runAsNonRoot: true,
  readOnlyRootFilesystem: true,
  allowPrivilegeEscalation: false,
  privileged: false,
  capabilities: { drop: ["ALL"] },
  seccompProfile: { type: "RuntimeDefault" },
};

/** The keeper's requests, equal to its limits (the pod keeps the Guaranteed class); the quota counts them. */
export function keeperResources(): Record<string, string> {
  const { millicpu, memoryMiB } = KUBERNETES.keeperResources;
  return { cpu: `${millicpu}m`, memory: `${memoryMiB}Mi` };
}

/** The wrapper's argument for a job of `tier`. */
export function runnerConfig(tier: Tier, waitForReady: boolean): RunnerConfig {
  return {
    fileSizeBytes: tier.maxFileSizeMiB * 1024 * 1024,
    openFiles: tier.openFiles,
    ...(waitForReady && { waitFor: MARKERS.ready }),
  };
}

/**
 * The one place a job's Kubernetes Job is defined: a non-root user, no capabilities or privilege gain,
 * the default seccomp profile, a read-only root with a memory-backed `/tmp` capped per tier, the code
 * read-only, `/workspace` capped at the tier's workspace size, requests equal to the tier's limits, the
 * backstop deadline, one attempt, no API token, no host namespaces, GPUs only for GPU tiers; and the
 * keeper, which shares the job's volumes (and alone may write its datasets and environment) so the agent
 * can move files in and out over `pods/exec`.
 */
export function jobManifest(input: KubernetesJobInput): V1Job {
  const { tier, user, environment } = input;
  const labels = jobLabels(input);
  const gpus = tier.gpu?.count ?? 0;
  const limits: Record<string, string> = {
    cpu: `${Math.round(tier.vcpus * 1000)}m`,
    memory: `${tier.memoryMiB}Mi`,
    ...(gpus > 0 && { [KUBERNETES.gpuResource]: String(gpus) }),
  };
  const keeper = keeperResources();
  /** The volumes the agent fills through the keeper, where the job reads them (read-only but /workspace). */
  const shared = [
    { name: VOLUMES.workspace, mountPath: CONTAINER_PATHS.workspace, readOnly: false },
    { name: VOLUMES.control, mountPath: CONTROL_DIR, readOnly: true },
    ...(input.datasets
      ? [{ name: VOLUMES.datasets, mountPath: CONTAINER_PATHS.datasets, readOnly: true }]
      : []),
    ...(environment
      ? [{ name: VOLUMES.environment, mountPath: CONTAINER_PATHS.environment, readOnly: true }]
      : []),
  ];
  const env = sandboxEnvironment(input.jobId, tier, input.env, environment);
  return {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: { name: input.name, namespace: input.namespace, labels },
    spec: {
      backoffLimit: 0,
      activeDeadlineSeconds: input.deadlineSeconds,
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
          terminationGracePeriodSeconds: input.graceSeconds + input.collectSeconds,
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
              command: [
                "python3",
                "-c",
                RUNNER_WRAPPER,
                JSON.stringify(runnerConfig(tier, input.waitForReady)),
              ],
              env: Object.entries(env).map(([name, value]) => ({ name, value })),
              resources: { requests: limits, limits },
              securityContext: { ...CONTAINER_SECURITY },
              terminationMessagePath: TERMINATION_MESSAGE_PATH,
              terminationMessagePolicy: "File",
              volumeMounts: [
                { name: VOLUMES.code, mountPath: dirname(CONTAINER_PATHS.code), readOnly: true },
                { name: VOLUMES.output, mountPath: CONTAINER_PATHS.output },
                { name: VOLUMES.tmp, mountPath: CONTAINER_PATHS.tmp },
                ...shared.map(({ name, mountPath, readOnly }) => ({
                  name,
                  mountPath,
                  ...(readOnly && { readOnly }),
                })),
              ],
            },
            {
              // The job's own image, which the node has pulled for the job anyway; no environment of the
              // job's (its variables may hold secrets), its own small share of the pod's resources.
              name: KEEPER_CONTAINER,
              image: input.image,
              imagePullPolicy: "IfNotPresent",
              command: ["sh", "-c", KEEPER_SCRIPT],
              resources: { requests: keeper, limits: keeper },
              securityContext: { ...CONTAINER_SECURITY },
              volumeMounts: shared.map(({ name, mountPath }) => ({ name, mountPath })),
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
            // The tier's workspace size, as the Docker sandbox's volume: past it the kubelet evicts the pod.
            { name: VOLUMES.workspace, emptyDir: { sizeLimit: `${tier.workspaceMiB}Mi` } },
            // Memory-backed like Docker's tmpfs, so its pages count against the memory limit as there.
            { name: VOLUMES.tmp, emptyDir: { medium: "Memory", sizeLimit: `${tier.tmpfsMiB}Mi` } },
            { name: VOLUMES.control, emptyDir: { sizeLimit: "1Mi" } },
            ...(input.datasets ? [{ name: VOLUMES.datasets, emptyDir: {} }] : []),
            ...(environment ? [{ name: VOLUMES.environment, emptyDir: {} }] : []),
          ],
        },
      },
    },
  };
}

/** What the deny-all NetworkPolicy of the namespace (infra/kubernetes/namespace.ts) selects: job pods. */
const NETWORKLESS_ROLE = "job";

/**
 * The facts of a tier's sandbox on Kubernetes, read off the very Job the launcher creates (as
 * {@link sandboxFacts} reads the Docker container's), for the stack to publish beside each agent and the
 * policy pack to check. Where they differ from the Docker sandbox's, the README's Kubernetes target says
 * why: no capability is kept (the runner runs as the job's uid), every job runs as the images' user (the
 * pod, not a uid, is the boundary between jobs), and the pids limit is the kubelet's (no pod field).
 */
export function kubernetesSandboxFacts(name: TierName): SandboxFacts {
  const { tier } = effectiveTier(name);
  const job = jobManifest({
    name: "sandbox-facts",
    namespace: "sandbox-facts",
    jobId: "sandbox-facts",
    tier,
    image: "crucible/facts",
    env: {},
    priority: "normal",
    deadlineSeconds: tier.maxRuntimeSeconds,
    graceSeconds: 10,
    collectSeconds: 30,
    ttlSecondsAfterFinished: 3600,
    user: ROOTLESS_FALLBACK_USER,
    owner: { pod: "sandbox-facts", start: "0" },
    gpuNodeLabel: KUBERNETES.defaultGpuNodeLabel,
    waitForReady: true,
    datasets: true,
    environment: { pythonPath: ["site-packages"] },
  });
  const template = job.spec!.template;
  const pod = template.spec!;
  const containers = pod.containers;
  const jobContainer = containers.find((c) => c.name === JOB_CONTAINER)!;
  const limit = (resource: string): string => String(jobContainer.resources?.limits?.[resource] ?? "0");
  const drops = containers.map((c) => c.securityContext?.capabilities?.drop ?? []);
  return {
    networkMode: pod.hostNetwork
      ? "host"
      : template.metadata?.labels?.[KUBERNETES.labels.role] === NETWORKLESS_ROLE
        ? "none"
        : "default",
    readonlyRootfs: containers.every((c) => c.securityContext?.readOnlyRootFilesystem === true),
    privileged: containers.some((c) => c.securityContext?.privileged === true),
    capDrop: drops[0]!.filter((cap) => drops.every((d) => d.includes(cap))),
    capAdd: [...new Set(containers.flatMap((c) => c.securityContext?.capabilities?.add ?? []))],
    perJobUser: false,
    noNewPrivileges: containers.every((c) => c.securityContext?.allowPrivilegeEscalation === false),
    dockerSocketMounted: (pod.volumes ?? []).some((v) => v.hostPath?.path.includes("docker.sock") === true),
    gpuCount: Number(limit(KUBERNETES.gpuResource)),
    memoryMiB: Number(/^(\d+)Mi$/.exec(limit("memory"))?.[1] ?? 0),
    pidsLimit: 0,
  };
}
