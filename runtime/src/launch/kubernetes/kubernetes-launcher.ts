import type { V1Job, V1Pod } from "@kubernetes/client-node" with { "resolution-mode": "import" };
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { readFile, stat } from "node:fs/promises";
import { hostname } from "node:os";
import { Writable } from "node:stream";
import type { Envelope, JobSpecInput, Launcher, LauncherOptions, LaunchOptions } from "../../job/contract";
import { disposeJob, InvalidJobError, prepareJob } from "../../job/job-spec";
import type { PreparedJob } from "../../job/job-spec";
import type { KubernetesApi, Stream, WatchEvent } from "./kubernetes-api";
import {
  CONFIGMAP_MAX_BYTES,
  codeConfigMap,
  JOB_CONTAINER,
  jobManifest,
  ownerReference,
  OWNER_LABELS,
  TERMINATION_MESSAGE_MAX_BYTES,
} from "./kubernetes-job";
import type { NodeLabel } from "../../catalog/kubernetes-names";
import { KUBERNETES, KUBERNETES_LABEL_VALUE } from "../../catalog/kubernetes-names";
import type { Logger } from "../../logger";
import { createLogger } from "../../logger";
import type { EnvelopeFields, RunnerRead, Stop } from "../outcome";
import {
  drain,
  invalidJobEnvelope,
  judge,
  parseRunnerResult,
  runReporting,
  secondsBetween,
  stopFrom,
} from "../outcome";
import type { JobOutput } from "../output";
import { ROOTLESS_FALLBACK_USER } from "../sandbox";
import { DEFAULT_PRIORITY } from "../../catalog/scheduling";

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
}

/** How long after the container ended the Job may take to show its condition (the controller's lag). */
const SETTLE_TIMEOUT_MS = 15_000;
/** How long after a stop's grace period the pod may take to go before the envelope is written anyway. */
const STOP_MARGIN_MS = 30_000;
const DRAIN_TIMEOUT_MS = 5_000;
/** Watch reconnects after an error back off up to this. */
const MAX_BACKOFF_MS = 30_000;

/** Waiting reasons that will not change by waiting. */
const HOPELESS_WAITING = ["InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError"];
/** Waiting reasons that may clear (a registry hiccup), given up only after the pending timeout. */
const IMAGE_WAITING = ["ErrImagePull", "ImagePullBackOff"];

/** Why a pod has not started: its image, its configuration, or no node for it. */
export interface PendingProblem {
  readonly kind: "image" | "config" | "unschedulable";
  readonly reason: string;
  readonly message: string;
  /** True when waiting cannot help. */
  readonly hopeless: boolean;
}

/** What the pod's job container ended with, as the kubelet recorded it. */
export interface Terminated {
  readonly exitCode: number;
  readonly reason?: string;
  readonly message?: string;
  readonly startedAt?: string;
  readonly finishedAt?: string;
}

function containerStatus(pod: V1Pod | undefined) {
  return pod?.status?.containerStatuses?.find((c) => c.name === JOB_CONTAINER);
}

/** The job container's end, from a pod as the API serves it (timestamps as RFC 3339 text). */
export function terminatedOf(pod: V1Pod | undefined): Terminated | undefined {
  const state = containerStatus(pod)?.state?.terminated;
  if (!state) return undefined;
  // Over the wire these are strings; the client's typed methods would make them Dates.
  const text = (value: unknown): string | undefined =>
    value instanceof Date ? value.toISOString() : typeof value === "string" ? value : undefined;
  return {
    exitCode: state.exitCode,
    ...(state.reason && { reason: state.reason }),
    ...(state.message !== undefined && { message: state.message }),
    ...(text(state.startedAt) && { startedAt: text(state.startedAt) }),
    ...(text(state.finishedAt) && { finishedAt: text(state.finishedAt) }),
  };
}

/** Whether the job container has started (it runs or ran). */
export function startedOf(pod: V1Pod | undefined): boolean {
  const state = containerStatus(pod)?.state;
  return state?.running !== undefined || state?.terminated !== undefined;
}

/** Why the pod is not running yet, when the cluster says. */
export function pendingProblem(pod: V1Pod | undefined): PendingProblem | undefined {
  const waiting = containerStatus(pod)?.state?.waiting;
  if (
    waiting?.reason &&
    (HOPELESS_WAITING.includes(waiting.reason) || IMAGE_WAITING.includes(waiting.reason))
  ) {
    return {
      kind: waiting.reason === "CreateContainerConfigError" ? "config" : "image",
      reason: waiting.reason,
      message: waiting.message ?? waiting.reason,
      hopeless: HOPELESS_WAITING.includes(waiting.reason),
    };
  }
  const scheduled = pod?.status?.conditions?.find((c) => c.type === "PodScheduled");
  if (scheduled?.status === "False" && scheduled.reason === "Unschedulable") {
    return {
      kind: "unschedulable",
      reason: "Unschedulable",
      message: scheduled.message ?? "",
      hopeless: false,
    };
  }
  return undefined;
}

/** The Job's end as its controller states it: finished at all, and whether by its deadline. */
export function jobEndOf(job: V1Job | undefined): { finished: boolean; deadlineExceeded: boolean } {
  const conditions = (job?.status?.conditions ?? []).filter((c) => c.status === "True");
  const failed = conditions.find((c) => c.type === "Failed" || c.type === "FailureTarget");
  return {
    finished: failed !== undefined || conditions.some((c) => c.type === "Complete"),
    deadlineExceeded: failed?.reason === "DeadlineExceeded",
  };
}

/**
 * The runner's result as the termination message carries it. The kubelet keeps 4 KiB; the container's
 * wrapper fits the record into that, so a message cut there comes from an image without the wrapper.
 */
export function runnerFromMessage(message: string | undefined): RunnerRead {
  if (!message) return { problem: "the container left no termination message" };
  const read = parseRunnerResult(message);
  if (read.result || Buffer.byteLength(message) < TERMINATION_MESSAGE_MAX_BYTES) return read;
  return {
    problem: `runner.json was cut at the ${TERMINATION_MESSAGE_MAX_BYTES} bytes Kubernetes keeps of a termination message`,
  };
}

/**
 * The measured part of an envelope from what the cluster recorded: the stop that reached the job (or the
 * Job's deadline), the kubelet's OOM verdict, the exit code, the runner's result, the container's times.
 */
export function kubernetesOutcome(facts: {
  readonly pod: V1Pod | undefined;
  readonly job: V1Job | undefined;
  readonly stop: Stop | undefined;
  readonly prepared: Pick<PreparedJob, "tier" | "timeoutSeconds" | "image">;
  readonly graceSeconds: number;
}): EnvelopeFields {
  const { pod, prepared } = facts;
  const ended = terminatedOf(pod);
  const stop =
    facts.stop ??
    (jobEndOf(facts.job).deadlineExceeded
      ? { reason: "timeout" as const, graceSeconds: facts.graceSeconds }
      : undefined);
  const runner = runnerFromMessage(ended?.message);
  const imageId = containerStatus(pod)?.imageID ?? "";
  const digest = /sha256:[0-9a-f]{64}$/.exec(imageId)?.[0];
  if (!ended && !stop) {
    return {
      status: "error",
      reason: "exit_code",
      error: { type: "NoExit", message: "the job's pod ended without its container reporting an exit" },
      exitCode: null,
      executionTime: 0,
      resources: {},
    };
  }
  const judged = judge({
    stop,
    oom: ended?.reason === "OOMKilled",
    exitCode: ended?.exitCode ?? 0,
    runner,
    job: prepared,
  });
  const neverRan = !startedOf(pod) && stop?.reason === "timeout";
  return {
    ...judged,
    ...(neverRan && {
      error: {
        type: "Timeout",
        message: `the job did not start within its ${prepared.timeoutSeconds} s limit (tier ${prepared.tier.name}); on Kubernetes the limit counts from the Job's creation, waiting for a node and the image included`,
      },
    }),
    exitCode: ended?.exitCode ?? null,
    executionTime: secondsBetween(ended?.startedAt, ended?.finishedAt),
    resources: runner.result?.resources ?? {},
    ...(runner.result?.python && { python: runner.result.python }),
    ...(digest && { imageDigest: digest }),
  };
}

/** The latest state of one Job and its pod, from two watches that reconnect until closed. */
class Tracker extends EventEmitter<{ change: [] }> {
  pod: V1Pod | undefined;
  job: V1Job | undefined;
  podGone = false;
  jobGone = false;
  private closed = false;
  private readonly streams = new Set<Stream>();

  constructor(
    private readonly api: KubernetesApi,
    private readonly namespace: string,
    private readonly name: string,
    private readonly watchTimeoutSeconds: number,
    private readonly log: Logger,
  ) {
    super();
  }

  start(): void {
    void this.follow("pods", `job-name=${this.name}`, undefined, (event: WatchEvent<V1Pod>) => {
      this.pod = event.object;
      this.podGone = event.type === "DELETED";
    });
    void this.follow("jobs", undefined, `metadata.name=${this.name}`, (event: WatchEvent<V1Job>) => {
      this.job = event.object;
      this.jobGone = event.type === "DELETED";
    });
  }

  /** Bumped on every change, so a waiter knows whether it missed one. */
  version = 0;

  /** Resolves once the state is newer than `seen`, or after `ms` (for the caller's own deadlines). */
  next(seen: number, ms: number): Promise<void> {
    if (this.version !== seen) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off("change", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.on("change", done);
    });
  }

  changed(): void {
    this.version++;
    this.emit("change");
  }

  close(): void {
    this.closed = true;
    for (const stream of this.streams) stream.abort();
  }

  /** One watch, renewed when the server ends it, from the last version seen (from now after a 410). */
  private async follow<T extends { metadata?: { resourceVersion?: string } }>(
    kind: "pods" | "jobs",
    labelSelector: string | undefined,
    fieldSelector: string | undefined,
    apply: (event: WatchEvent<T>) => void,
  ): Promise<void> {
    let resourceVersion: string | undefined;
    let backoff = 0;
    while (!this.closed) {
      const began = Date.now();
      let events = 0;
      try {
        const query = {
          ...(labelSelector && { labelSelector }),
          ...(fieldSelector && { fieldSelector }),
          ...(resourceVersion && { resourceVersion }),
          timeoutSeconds: this.watchTimeoutSeconds,
        };
        const onEvent = (event: WatchEvent<T>): void => {
          events++;
          if (event.type === "ERROR") {
            // 410 Gone: the version is too old; start over with the current state.
            resourceVersion = undefined;
            return;
          }
          resourceVersion = event.object.metadata?.resourceVersion ?? resourceVersion;
          if (event.type === "BOOKMARK") return;
          apply(event);
          this.changed();
        };
        const stream =
          kind === "pods"
            ? await this.api.watchPods(this.namespace, query, onEvent as (e: WatchEvent<V1Pod>) => void)
            : await this.api.watchJobs(this.namespace, query, onEvent as (e: WatchEvent<V1Job>) => void);
        this.streams.add(stream);
        await stream.done.finally(() => this.streams.delete(stream));
        // A watch the server ended at once, with nothing in it, is a failing one: back off as after an error.
        backoff =
          events === 0 && Date.now() - began < 1000 ? Math.min(MAX_BACKOFF_MS, backoff * 2 || 500) : 0;
      } catch (error) {
        if (this.closed) return;
        backoff = Math.min(MAX_BACKOFF_MS, backoff * 2 || 500);
        this.log.warn({ err: error, kind, backoffMs: backoff }, "watch failed; reconnecting");
      }
      if (backoff > 0 && !this.closed) await new Promise((resolve) => setTimeout(resolve, backoff));
    }
  }
}

/** The agent process this launcher runs in: its pod, and when it started (a restart keeps the pod). */
function thisAgent(node: string): { pod: string; start: string } {
  return { pod: node, start: String(Math.round(performance.timeOrigin)) };
}

/**
 * Runs jobs as Kubernetes Jobs in one namespace, in the same sandbox and with the same envelope as the
 * Docker launcher: the code in a ConfigMap the Job owns, the runner's result in the termination message,
 * the deadline as the Job's activeDeadlineSeconds, stops as a Job deletion with the grace period. The
 * Job and its ConfigMap are deleted whatever happens; the cluster's garbage collector and `gc` catch
 * what a crashed agent left.
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
      if (job.spec.datasetsDir) {
        throw new InvalidJobError(
          "datasetsDir",
          "datasetsDir names a directory on the runtime's host, which a Kubernetes pod cannot see",
        );
      }
      if (job.spec.datasetDirs) {
        throw new InvalidJobError(
          "datasetDirs",
          "datasets are mounted from the agent's node cache, which a Kubernetes pod cannot see; run jobs that name datasets on a node fleet tier",
        );
      }
      if (job.spec.environment) {
        throw new InvalidJobError(
          "environment",
          "job environments are mounted from the agent's node cache, which a Kubernetes pod cannot see; run jobs that carry requirements on a node fleet tier",
        );
      }
      const { size } = await stat(job.codeZip);
      if (size > CONFIGMAP_MAX_BYTES) {
        throw new InvalidJobError(
          "code",
          `code.zip is ${size} bytes, more than the ${CONFIGMAP_MAX_BYTES} bytes (1 MiB) a Kubernetes ConfigMap holds; keep data out of the code and read it from a dataset (crucible datasets)`,
        );
      }
      if (job.spec.workspaceDir) {
        log.warn(
          "the workspace directory is not carried into the pod: /workspace starts empty and is not copied back",
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
    const input = {
      name,
      namespace,
      jobId: spec.jobId,
      tier,
      image: job.image,
      env: spec.env,
      priority: spec.priority ?? DEFAULT_PRIORITY,
      timeoutSeconds: job.timeoutSeconds,
      graceSeconds: this.graceSeconds,
      ttlSecondsAfterFinished: this.options.ttlSecondsAfterFinished ?? 3600,
      user: ROOTLESS_FALLBACK_USER,
      owner: this.owner,
      gpuNodeLabel: this.options.gpuNodeLabel ?? KUBERNETES.defaultGpuNodeLabel,
    };
    const tracker = new Tracker(this.api, namespace, name, this.options.watchTimeoutSeconds ?? 300, log);
    let stop: Stop | undefined;
    let stopAt = 0;
    let created = false;
    let logs: Stream | undefined;
    const deleteFor = (asked: Stop): Promise<boolean> => {
      log.info({ reason: asked.reason, graceSeconds: asked.graceSeconds }, "stopping job");
      return this.api.deleteJob(namespace, name, {
        propagationPolicy: "Foreground",
        gracePeriodSeconds: asked.graceSeconds,
      });
    };
    const asked = (): Stop | undefined => stop;
    const onAbort = (): void => {
      if (stop) return;
      stop = stopFrom(options.signal?.reason, this.graceSeconds);
      stopAt = Date.now();
      if (created)
        void deleteFor(stop).catch((error: unknown) => log.error({ err: error }, "stopping the job failed"));
      tracker.changed();
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    let configMapMade = false;
    try {
      await this.api.createConfigMap(namespace, codeConfigMap(input, zip));
      configMapMade = true;
      if (stop) return stoppedBeforeStart(stop);
      tracker.start();
      const made = await this.api.createJob(namespace, jobManifest(input));
      created = true;
      log.info(
        { tier: tier.name, image: job.image, name, timeoutSeconds: job.timeoutSeconds },
        "kubernetes job created",
      );
      if (stop) {
        await deleteFor(stop);
        return stoppedBeforeStart(stop);
      }
      const uid = made.metadata?.uid;
      if (uid) {
        await this.api
          .setConfigMapOwner(namespace, name, ownerReference({ name, uid }))
          .catch((error: unknown) =>
            log.warn({ err: error }, "the code's ConfigMap got no owner; it is deleted after the job"),
          );
      }
      const pendingUntil = Date.now() + (this.options.pendingTimeoutSeconds ?? 600) * 1000;
      let endedAt = 0;
      for (;;) {
        const seen = tracker.version;
        const { pod, job: kjob } = tracker;
        const ended = terminatedOf(pod);
        if (ended && !endedAt) endedAt = Date.now();
        if ((startedOf(pod) || ended) && !logs) logs = await this.followLogs(name, pod, output, log);
        const jobEnd = jobEndOf(kjob);
        const gone = tracker.podGone || tracker.jobGone;
        // Set by the abort listener at any await: read afresh each round.
        const stopping = asked();
        const stopUntil = stopping ? stopAt + stopping.graceSeconds * 1000 + STOP_MARGIN_MS : 0;
        if (stopping) {
          if (ended || gone || Date.now() >= stopUntil) break;
        } else if (ended) {
          if (jobEnd.finished || gone || Date.now() >= endedAt + SETTLE_TIMEOUT_MS) break;
        } else if (jobEnd.finished || gone) {
          if (!startedOf(pod) && !jobEnd.deadlineExceeded) {
            const problem = pendingProblem(pod);
            if (problem) return this.pendingFailure(problem, job, envelope, log);
          }
          if (gone && !jobEnd.finished)
            throw new Error(`Kubernetes Job ${name} was deleted from outside the launcher`);
          break;
        } else if (!startedOf(pod)) {
          const problem = pendingProblem(pod);
          if (problem && (problem.hopeless || Date.now() >= pendingUntil)) {
            return this.pendingFailure(problem, job, envelope, log);
          }
        }
        const wake = stopping ? stopUntil : endedAt ? endedAt + SETTLE_TIMEOUT_MS : pendingUntil;
        await tracker.next(seen, Math.max(wake - Date.now(), 1));
      }
      if (logs)
        await drain(
          logs.done.catch(() => undefined),
          log,
          DRAIN_TIMEOUT_MS,
        );
      output.end();
      const fields = kubernetesOutcome({
        pod: tracker.pod,
        job: tracker.job,
        // A stop that came after the container had ended did not stop anything.
        stop: endedAt && endedAt <= stopAt ? undefined : stop,
        prepared: job,
        graceSeconds: this.graceSeconds,
      });
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
      logs?.abort();
      // A stop already asked for the foreground deletion; a second delete is a no-op on a Job being deleted.
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

  /** Follows the container's log into the output; a failure costs the logs, never the job. */
  private async followLogs(
    name: string,
    pod: V1Pod | undefined,
    output: JobOutput,
    log: Logger,
  ): Promise<Stream> {
    const podName = pod?.metadata?.name ?? "";
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        // The log API merges the streams; the envelope keeps them as stdout.
        output.write("stdout", chunk);
        callback();
      },
    });
    try {
      return await this.api.followLog(this.options.namespace, podName, JOB_CONTAINER, sink);
    } catch (error) {
      log.warn(
        { err: error, name, pod: podName },
        "following the job's log failed; the envelope has no logs",
      );
      return { done: Promise.resolve(), abort: () => undefined };
    }
  }

  /**
   * A pod that never started. A bad image or configuration of the job's own choosing is an invalid job;
   * the matrix's own image missing, or no node for the tier, is the platform's failure, not the job's:
   * that throws, so the agent returns the job to its queue (as the Docker launcher does for a missing
   * matrix image).
   */
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
