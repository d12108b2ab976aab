import { randomBytes } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { hostname } from "node:os";
import type { Envelope, JobSpecInput, Launcher, LauncherOptions, LaunchOptions } from "../../job/contract";
import { CONTAINER_PATHS } from "../../job/contract";
import { disposeJob, InvalidJobError, prepareJob } from "../../job/job-spec";
import type { PreparedJob } from "../../job/job-spec";
import type { KubernetesApi } from "./kubernetes-api";
import type { KubernetesJobInput } from "./kubernetes-job";
import {
  CONFIGMAP_MAX_BYTES,
  codeConfigMap,
  jobManifest,
  ownerReference,
  OWNER_LABELS,
} from "./kubernetes-job";
import type { NodeLabel } from "../../catalog/kubernetes-names";
import { KUBERNETES, KUBERNETES_LABEL_VALUE } from "../../catalog/kubernetes-names";
import type { Logger } from "../../logger";
import { createLogger } from "../../logger";
import type { EnvelopeFields, Stop } from "../outcome";
import { DISK_QUOTA_ERROR, drain, invalidJobEnvelope, runReporting, stopFrom } from "../outcome";
import { ROOTLESS_FALLBACK_USER } from "../sandbox";
import { DEFAULT_PRIORITY } from "../../catalog/scheduling";
import { Tracker } from "./job-tracker";
import type { PendingProblem } from "./pod-status";
import { kubernetesOutcome, terminatedOf } from "./pod-status";
import type { PodEnd, Restore } from "./pod-run";
import { PodRun } from "./pod-run";
import { holdsFiles } from "./workspace-archive";

// What the pod's status says is read in pod-status.ts; the launcher's callers and tests read it here too.
export {
  jobEndOf,
  kubernetesOutcome,
  pendingProblem,
  runnerFromMessage,
  startedOf,
  terminatedOf,
  type PendingProblem,
  type Terminated,
} from "./pod-status";

/** `node` is also the owner on every object the launcher creates: the agent's pod (HOSTNAME). */
export interface KubernetesLauncherOptions extends LauncherOptions {
  readonly api: KubernetesApi;
  /** Where jobs run: the stack environment's namespace (kubernetesNamespace()). */
  readonly namespace: string;
  /** How long a pod may wait for a node or an image before the attempt is given up. Defaults to 600. */
  readonly pendingTimeoutSeconds?: number;
  /** How long a finished Job stays for `kubectl describe` if the launcher could not delete it. Defaults to 3600. */
  readonly ttlSecondsAfterFinished?: number;
  /** How long one watch request lasts before it is renewed. Defaults to 300. */
  readonly watchTimeoutSeconds?: number;
  /** The node label GPU pods select by. Defaults to KUBERNETES.defaultGpuNodeLabel (nvidia.com/gpu.present=true). */
  readonly gpuNodeLabel?: NodeLabel;
  /**
   * Seconds a pod's grace adds to the job's when the cluster deletes it, for collecting what the job
   * checkpoints in its grace. Defaults to 30.
   */
  readonly collectSeconds?: number;
  /** After a stop's grace, how long the job's container may take to report its end. Defaults to 30. */
  readonly stopMarginSeconds?: number;
}

const DRAIN_TIMEOUT_MS = 5_000;
/** Entries a pull of the workspace may bring; its bytes are capped by the tier's workspace size. */
const MAX_WORKSPACE_ENTRIES = 200_000;

/** The agent process this launcher runs in: its pod, and when it started (a restart keeps the pod). */
function thisAgent(node: string): { pod: string; start: string } {
  return { pod: node, start: String(Math.round(performance.timeOrigin)) };
}

/**
 * Runs jobs as Kubernetes Jobs in one namespace, in the same sandbox and with the same envelope as the
 * Docker launcher: the code in a ConfigMap the Job owns, the runner's result in the termination message.
 * The agent's workspace directory, datasets and environment go into the pod through its keeper before the
 * job starts (pod-files.ts), the workspace comes back while it runs and once it has ended, and the job's
 * timeout and stops are delivered to its container alone, so what it writes in its grace is collected as
 * from a Docker job's bind mount. A pod the cluster takes away ends the attempt as `interrupted`, for the
 * agent to resume elsewhere. The Job and its ConfigMap are deleted whatever happens; the cluster's
 * garbage collector and `gc` catch what a crashed agent left.
 */
export class KubernetesLauncher implements Launcher {
  private readonly api: KubernetesApi;
  private readonly logger: Logger;
  private readonly node: string;
  private readonly graceSeconds: number;
  private readonly owner: { pod: string; start: string };

  constructor(private readonly options: KubernetesLauncherOptions) {
    this.api = options.api;
    this.logger = options.logger ?? createLogger();
    this.node = options.node ?? process.env.HOSTNAME ?? hostname();
    this.graceSeconds = options.graceSeconds ?? 10;
    if (!Number.isFinite(this.graceSeconds) || this.graceSeconds < 0) {
      throw new Error(`graceSeconds must be a number of seconds >= 0, got ${this.graceSeconds}`);
    }
    if (!KUBERNETES_LABEL_VALUE.test(this.node)) {
      throw new Error(
        `the node name labels every object and must be a Kubernetes label value, got "${this.node}"`,
      );
    }
    this.owner = thisAgent(this.node);
  }

  async run(input: JobSpecInput, options: LaunchOptions = {}): Promise<Envelope> {
    let job: PreparedJob;
    try {
      job = await prepareJob(input, {
        tierOverrides: this.options.tierOverrides,
        user: ROOTLESS_FALLBACK_USER,
        ...(this.options.images && { images: this.options.images }),
      });
    } catch (error) {
      if (error instanceof InvalidJobError) return invalidJobEnvelope(input, error, this.node, this.logger);
      throw error;
    }
    const log = this.logger.child({ jobId: job.spec.jobId });
    for (const line of job.capped) log.warn(`tier override capped: ${line}`);
    try {
      const { size } = await stat(job.codeZip);
      if (size > CONFIGMAP_MAX_BYTES) {
        throw new InvalidJobError(
          "code",
          `code.zip is ${size} bytes, more than the ${CONFIGMAP_MAX_BYTES} bytes (1 MiB) a Kubernetes ConfigMap holds; keep data out of the code and read it from a dataset (crucible datasets)`,
        );
      }
      return await this.runPrepared(job, await readFile(job.codeZip), options, log);
    } catch (error) {
      if (error instanceof InvalidJobError)
        return invalidJobEnvelope(job.spec, error, this.node, this.logger);
      throw error;
    } finally {
      await disposeJob(job).catch((error: unknown) =>
        log.error({ err: error }, "removing scratch files failed"),
      );
    }
  }

  async gc(): Promise<number> {
    const { namespace } = this.options;
    const selector = `${KUBERNETES.managedBy.key}=${KUBERNETES.managedBy.value}`;
    const [jobs, configMaps] = await Promise.all([
      this.api.listJobs(namespace, selector),
      this.api.listConfigMaps(namespace, selector),
    ]);
    const alive = new Map<string, Promise<boolean>>();
    const orphaned = async (labels: Record<string, string> | undefined): Promise<boolean> => {
      const pod = labels?.[OWNER_LABELS.owner];
      if (!pod) return false;
      if (pod === this.owner.pod) return labels[OWNER_LABELS.ownerStart] !== this.owner.start;
      if (!alive.has(pod)) alive.set(pod, this.api.podExists(namespace, pod));
      return !(await alive.get(pod));
    };
    const removed = await Promise.all([
      ...jobs.map(async (j) => {
        const name = j.metadata?.name;
        if (!name || !(await orphaned(j.metadata?.labels))) return false;
        const gone = await this.api.deleteJob(namespace, name, { propagationPolicy: "Background" });
        this.logger.info(
          { jobId: j.metadata?.labels?.[KUBERNETES.labels.jobId], name },
          "removed orphaned Kubernetes Job",
        );
        return gone;
      }),
      ...configMaps.map(async (c) => {
        const name = c.metadata?.name;
        if (!name || !(await orphaned(c.metadata?.labels))) return false;
        return this.api.deleteConfigMap(namespace, name);
      }),
    ]);
    return removed.filter(Boolean).length;
  }

  private async runPrepared(
    job: PreparedJob,
    zip: Buffer,
    options: LaunchOptions,
    log: Logger,
  ): Promise<Envelope> {
    const { spec, tier } = job;
    const { namespace } = this.options;
    const { output, envelope, stoppedBeforeStart } = runReporting(
      job,
      this.node,
      this.options.tailBytes,
      options,
    );
    if (options.signal?.aborted)
      return stoppedBeforeStart(stopFrom(options.signal.reason, this.graceSeconds));

    const name = `crucible-${spec.jobId.slice(0, 48)}-${randomBytes(4).toString("hex").slice(0, 5)}`;
    const restores = await restoresOf(job);
    const pendingTimeoutSeconds = this.options.pendingTimeoutSeconds ?? 600;
    const collectSeconds = this.options.collectSeconds ?? 30;
    const stopMarginMs = (this.options.stopMarginSeconds ?? 30) * 1000;
    const input: KubernetesJobInput = {
      name,
      namespace,
      jobId: spec.jobId,
      tier,
      image: job.image,
      env: spec.env,
      priority: spec.priority ?? DEFAULT_PRIORITY,
      // Past the job's own timeout, its waits (node, image, files) and its stop: only a pod whose agent is
      // gone meets it.
      deadlineSeconds: job.timeoutSeconds + 2 * pendingTimeoutSeconds + this.graceSeconds + collectSeconds,
      graceSeconds: this.graceSeconds,
      collectSeconds,
      ttlSecondsAfterFinished: this.options.ttlSecondsAfterFinished ?? 3600,
      user: ROOTLESS_FALLBACK_USER,
      owner: this.owner,
      gpuNodeLabel: this.options.gpuNodeLabel ?? KUBERNETES.defaultGpuNodeLabel,
      waitForReady: restores.length > 0,
      datasets: job.datasetsDir !== undefined || job.datasetDirs !== undefined,
      ...(job.environment && { environment: { pythonPath: job.environment.pythonPath } }),
    };
    const tracker = new Tracker(this.api, namespace, name, this.options.watchTimeoutSeconds ?? 300, log);
    const pod = new PodRun({
      api: this.api,
      namespace,
      tracker,
      output,
      log,
      timeoutSeconds: job.timeoutSeconds,
      graceSeconds: this.graceSeconds,
      pendingTimeoutSeconds,
      stopMarginMs,
      restores,
      // Only a workspace the caller gave comes back: one the launcher made is scratch.
      ...(spec.workspaceDir && {
        workspace: {
          dir: job.workspaceDir,
          limits: { maxBytes: tier.workspaceMiB * 1024 * 1024, maxEntries: MAX_WORKSPACE_ENTRIES },
        },
      }),
      ...(options.onWorkspace && { onWorkspace: options.onWorkspace }),
    });
    let stop: Stop | undefined;
    const onAbort = (): void => {
      stop ??= stopFrom(options.signal?.reason, this.graceSeconds);
      pod.requestStop(stop);
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let configMapMade = false;
    let created = false;
    try {
      await this.api.createConfigMap(namespace, codeConfigMap(input, zip));
      configMapMade = true;
      if (stop) return stoppedBeforeStart(stop);
      tracker.start();
      const made = await this.api.createJob(namespace, jobManifest(input));
      created = true;
      log.info(
        {
          tier: tier.name,
          image: job.image,
          name,
          timeoutSeconds: job.timeoutSeconds,
          restores: restores.length,
        },
        "kubernetes job created",
      );
      const uid = made.metadata?.uid;
      if (uid) {
        await this.api
          .setConfigMapOwner(namespace, name, ownerReference({ name, uid }))
          .catch((error: unknown) =>
            log.warn({ err: error }, "the code's ConfigMap got no owner; it is deleted after the job"),
          );
      }
      const end = await pod.untilEnd();
      if (end.kind === "never-started") return this.neverStarted(end, name, job, envelope, log);
      if (end.kind === "stopped-before-start") {
        await this.api.deleteJob(namespace, name, {
          propagationPolicy: "Foreground",
          gracePeriodSeconds: end.stop.graceSeconds,
        });
        return stoppedBeforeStart(end.stop);
      }
      await this.collect(pod, end, log);
      const logs = pod.logStream;
      if (logs)
        await drain(
          logs.done.catch(() => undefined),
          log,
          DRAIN_TIMEOUT_MS,
        );
      output.end();
      const fields = this.outcome(pod, end, tracker, job);
      const result = envelope({ ...fields, ...(output.metrics() && { metrics: output.metrics() }) });
      log.info(
        {
          status: result.status,
          reason: result.reason,
          exitCode: result.exitCode,
          seconds: result.executionTime,
        },
        "kubernetes job finished",
      );
      return result;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      tracker.close();
      pod.close();
      // A stop before the start already asked for the foreground deletion; a second delete is a no-op.
      if (created) {
        await this.api
          .deleteJob(namespace, name, { propagationPolicy: "Background" })
          .catch((error: unknown) =>
            log.error({ err: error, name }, "deleting the job failed; `crucible gc` will retry"),
          );
      }
      if (configMapMade) {
        await this.api
          .deleteConfigMap(namespace, name)
          .catch((error: unknown) =>
            log.error({ err: error, name }, "deleting the code's ConfigMap failed; `crucible gc` will retry"),
          );
      }
    }
  }

  /**
   * The job's files for the last time. A job that ended while its pod stood keeps nothing it wrote unless
   * they come back, so a failure is the platform's (the agent returns the job to its queue, to run again
   * from its checkpoints); from a pod the cluster took away, whatever still comes back is a bonus.
   */
  private async collect(pod: PodRun, end: PodEnd, log: Logger): Promise<void> {
    try {
      await pod.collect();
    } catch (error) {
      if (end.kind !== "disrupted") throw error;
      log.warn({ err: error }, "the pod was taken away before its files could be collected");
    }
  }

  /** The envelope's measured fields: as the cluster recorded the run, or as it took the pod away. */
  private outcome(pod: PodRun, end: PodEnd, tracker: Tracker, job: PreparedJob): EnvelopeFields {
    const facts = {
      pod: tracker.pod,
      job: tracker.job,
      prepared: job,
      graceSeconds: this.graceSeconds,
      ...(pod.releasedAt && { releasedAt: pod.releasedAt }),
      until: pod.gaveUpAt ?? new Date().toISOString(),
    };
    if (end.kind !== "disrupted") return kubernetesOutcome({ ...facts, stop: pod.stopDelivered });
    if (end.disruption.workspaceFull)
      return {
        ...kubernetesOutcome({ ...facts, stop: undefined }),
        error: {
          type: DISK_QUOTA_ERROR,
          message: `the job filled its ${job.tier.workspaceMiB} MiB workspace (${CONTAINER_PATHS.workspace}, tier ${job.tier.name} workspaceMiB): past it the kubelet evicts the pod (${end.disruption.why})`,
        },
      };
    const grace = tracker.pod?.spec?.terminationGracePeriodSeconds ?? this.graceSeconds;
    const fields = kubernetesOutcome({ ...facts, stop: { reason: "interrupted", graceSeconds: grace } });
    return {
      ...fields,
      error: {
        type: "PodDisrupted",
        message: `the job's pod was ${end.disruption.why}; the job goes back to its queue and resumes from its last checkpoint`,
      },
      exitCode: terminatedOf(tracker.pod)?.exitCode ?? null,
    };
  }

  /**
   * A pod that never started. A bad image or configuration of the job's own choosing is an invalid job;
   * the matrix's own image missing, no node for the tier, or the pod taken away before it ran is the
   * platform's failure, not the job's: that throws, so the agent returns the job to its queue (as the
   * Docker launcher does for a missing matrix image).
   */
  private neverStarted(
    end: Extract<PodEnd, { kind: "never-started" }>,
    name: string,
    job: PreparedJob,
    envelope: (fields: EnvelopeFields) => Envelope,
    log: Logger,
  ): Envelope {
    if (end.problem) return this.pendingFailure(end.problem, job, envelope, log);
    throw new Error(
      `Kubernetes Job ${name} ${end.disruption ? `lost its pod before the job started: ${end.disruption.why}` : "ended before its pod started"}`,
    );
  }

  /** What the cluster says kept the pod from starting, judged as {@link neverStarted} says. */
  private pendingFailure(
    problem: PendingProblem,
    job: PreparedJob,
    envelope: (fields: EnvelopeFields) => Envelope,
    log: Logger,
  ): Envelope {
    log.warn({ problem }, "the job's pod did not start");
    if (problem.kind === "unschedulable") {
      throw new Error(
        `no node could take the job (tier ${job.tier.name}) within ${this.options.pendingTimeoutSeconds ?? 600} s: ${problem.message}`,
      );
    }
    if (problem.kind === "image" && job.defaultImage) {
      throw new Error(
        `the cluster cannot pull ${job.image} (the matrix's image for tier ${job.tier.name}): ${problem.message}`,
      );
    }
    return envelope({
      status: "error",
      reason: "invalid_job",
      error: {
        type: problem.kind === "image" ? "ImageUnavailable" : "InvalidContainerConfig",
        message: `the job's pod could not start (${problem.reason}): ${problem.message}`,
      },
      exitCode: null,
      executionTime: 0,
      resources: {},
    });
  }
}

/**
 * What goes into the pod before the job starts, in order: the agent's workspace (the checkpoints it
 * resumes from), its datasets (one directory, or each named set under its name) and its environment.
 * Nothing (and no wait for the agent) when there is none of it.
 */
async function restoresOf(job: PreparedJob): Promise<Restore[]> {
  const restores: Restore[] = [];
  if (job.spec.workspaceDir && (await holdsFiles(job.workspaceDir)))
    restores.push({ from: job.workspaceDir, to: CONTAINER_PATHS.workspace });
  if (job.datasetsDir) restores.push({ from: job.datasetsDir, to: CONTAINER_PATHS.datasets });
  for (const [name, dir] of Object.entries(job.datasetDirs ?? {}))
    restores.push({ from: dir, to: `${CONTAINER_PATHS.datasets}/${name}` });
  if (job.environment) restores.push({ from: job.environment.dir, to: CONTAINER_PATHS.environment });
  return restores;
}
