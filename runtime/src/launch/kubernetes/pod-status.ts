import type { V1Job, V1Pod } from "@kubernetes/client-node" with { "resolution-mode": "import" };
import type { PreparedJob } from "../../job/job-spec";
import type { EnvelopeFields, RunnerRead, Stop } from "../outcome";
import { judge, parseRunnerResult, secondsBetween } from "../outcome";
import { TERMINATION_MESSAGE_MAX_BYTES, WORKSPACE_VOLUME } from "./kubernetes-job";
import { JOB_CONTAINER, KEEPER_CONTAINER } from "./pod-layout";

/**
 * What a job's pod and Job say, read as the launcher needs it: whether the job runs, has ended or cannot
 * start, whether the cluster took the pod away, and the envelope's measured fields from what it recorded.
 */

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

function containerStatus(pod: V1Pod | undefined, name: string = JOB_CONTAINER) {
  return pod?.status?.containerStatuses?.find((c) => c.name === name);
}

/** A timestamp as RFC 3339 text: over the wire it is one; the client's typed methods would make it a Date. */
function text(value: unknown): string | undefined {
  return value instanceof Date ? value.toISOString() : typeof value === "string" ? value : undefined;
}

/** The job container's end, from a pod as the API serves it (timestamps as RFC 3339 text). */
export function terminatedOf(pod: V1Pod | undefined): Terminated | undefined {
  const state = containerStatus(pod)?.state?.terminated;
  if (!state) return undefined;
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

/** When the job container started, while it runs or once it ran. */
export function startedAtOf(pod: V1Pod | undefined): string | undefined {
  const state = containerStatus(pod)?.state;
  return text(state?.running?.startedAt) ?? text(state?.terminated?.startedAt);
}

/** The keeper's state: not yet running, running (its files reachable), or ended. */
export function keeperOf(pod: V1Pod | undefined): "waiting" | "running" | "ended" {
  const state = containerStatus(pod, KEEPER_CONTAINER)?.state;
  return state?.terminated ? "ended" : state?.running ? "running" : "waiting";
}

/** The pod taken away by the cluster, not by the job: why, and whether it filled its workspace. */
export interface Disruption {
  readonly why: string;
  /** Evicted for writing more than the workspace volume's size limit: the job's failure, not the node's. */
  readonly workspaceFull: boolean;
}

/**
 * Whether the cluster is taking (or took) the job's pod away: deleted (a drain, a node lost past its
 * toleration, a preemption by the scheduler, by hand), evicted, or failed by its node, as the pod's
 * deletion, its `DisruptionTarget` condition or its phase says. The launcher deletes a Job only once it
 * has what it needs, so a deletion it sees while it waits is the cluster's.
 */
export function disruptionOf(
  pod: V1Pod | undefined,
  gone: { readonly pod: boolean; readonly job: boolean },
): Disruption | undefined {
  const status = pod?.status;
  if (status?.reason === "Evicted") {
    const message = status.message ?? "";
    return {
      why: `evicted by its node: ${message.trim() || "no reason given"}`,
      workspaceFull: message.includes(`volume "${WORKSPACE_VOLUME}"`),
    };
  }
  const target = status?.conditions?.find((c) => c.type === "DisruptionTarget" && c.status === "True");
  if (target)
    return {
      why: `taken away (${target.reason ?? "DisruptionTarget"}): ${target.message ?? ""}`.trim(),
      workspaceFull: false,
    };
  if (status?.phase === "Failed" && status.reason)
    return {
      why: `failed by its node (${status.reason}): ${status.message ?? ""}`.trim(),
      workspaceFull: false,
    };
  if (pod?.metadata?.deletionTimestamp) return { why: "deleted", workspaceFull: false };
  if (gone.pod) return { why: "deleted", workspaceFull: false };
  if (gone.job) return { why: "deleted with its Job", workspaceFull: false };
  return undefined;
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
  /** When the job's files were in place and its runner went on (the wait before it is not its time). */
  readonly releasedAt?: string;
  /** When the launcher stopped waiting for a container that never reported its end. */
  readonly until?: string;
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
  const started = [startedAtOf(pod), facts.releasedAt]
    .filter((t): t is string => t !== undefined)
    .sort((a, b) => Date.parse(a) - Date.parse(b))
    .at(-1);
  const neverRan = !startedOf(pod) && stop?.reason === "timeout";
  return {
    ...judged,
    ...(neverRan && {
      error: {
        type: "Timeout",
        message: `the job did not start before its Job's deadline (tier ${prepared.tier.name}, a ${prepared.timeoutSeconds} s limit): its pod waited for a node, its image or its files until the cluster gave it up`,
      },
    }),
    exitCode: ended?.exitCode ?? null,
    executionTime: secondsBetween(started, ended?.finishedAt ?? facts.until),
    resources: runner.result?.resources ?? {},
    ...(runner.result?.python && { python: runner.result.python }),
    ...(digest && { imageDigest: digest }),
  };
}
