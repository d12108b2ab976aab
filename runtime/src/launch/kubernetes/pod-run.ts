import type { V1Pod } from "@kubernetes/client-node" with { "resolution-mode": "import" };
import { Writable } from "node:stream";
import type { LaunchOptions, WorkspacePart } from "../../job/contract";
import { WORKSPACE_PARTS } from "../../job/contract";
import type { Logger } from "../../logger";
import type { Stop } from "../outcome";
import type { JobOutput } from "../output";
import type { KubernetesApi, Stream } from "./kubernetes-api";
import type { Tracker } from "./job-tracker";
import { JOB_CONTAINER } from "./pod-layout";
import { PodFiles, WorkspaceMirror } from "./pod-files";

/** How often a running job's state is looked at again without a change from the watches. */
const IDLE_RECHECK_MS = 60_000;
import type { Disruption, PendingProblem } from "./pod-status";
import {
  disruptionOf,
  jobEndOf,
  keeperOf,
  pendingProblem,
  runnerFromMessage,
  startedOf,
  terminatedOf,
} from "./pod-status";
import type { MirrorLimits } from "./workspace-archive";

/**
 * One job's pod from its creation to its end, as the launcher follows it: the files the job starts with
 * put in place through the keeper before its runner may go on, the job's own timeout from then, stops
 * delivered to the job's container alone (SIGTERM, the grace, then SIGKILL) so the keeper stays to collect
 * what it wrote, and the cluster taking the pod away told apart from the job ending.
 */

/** A directory of the agent's and where the keeper puts its contents in the pod. */
export interface Restore {
  readonly from: string;
  readonly to: string;
}

/** How a pod's run ended, for the launcher's envelope. */
export type PodEnd =
  /** The job container ended (by itself, or from a stop), or a stop gave up waiting for it. */
  | { readonly kind: "ended" }
  /** Stopped before the job container started: nothing ran. */
  | { readonly kind: "stopped-before-start"; readonly stop: Stop }
  /** The pod could not start: what the cluster says stands in its way, or that it took the pod away. */
  | {
      readonly kind: "never-started";
      readonly problem: PendingProblem | undefined;
      readonly disruption?: Disruption;
    }
  /** The cluster took the pod away while the job ran, once its container ended or the pod's grace was over. */
  | { readonly kind: "disrupted"; readonly disruption: Disruption };

export interface PodRunInput {
  readonly api: KubernetesApi;
  readonly namespace: string;
  readonly tracker: Tracker;
  readonly output: JobOutput;
  readonly log: Logger;
  /** The job's own time limit, from the moment its files are in place. */
  readonly timeoutSeconds: number;
  /** The launcher's grace for a timeout (a stop names its own). */
  readonly graceSeconds: number;
  /** How long the pod may wait for a node or its image. */
  readonly pendingTimeoutSeconds: number;
  /** After a stop's grace, and after the pod's own when the cluster deletes it, how long its end may take. */
  readonly stopMarginMs: number;
  /** What goes into the pod before the job starts, in order. */
  readonly restores: readonly Restore[];
  /** The agent's copy of the job's workspace, kept by pulls; undefined when the caller wants none back. */
  readonly workspace?: { readonly dir: string; readonly limits: MirrorLimits };
  readonly onWorkspace?: LaunchOptions["onWorkspace"];
}

export class PodRun {
  /** The stop asked for, and when. */
  private stop: Stop | undefined;
  private stopAt = 0;
  /** The stop that reached the job's container (SIGTERM or SIGKILL sent while it ran), if any. */
  private delivered: Stop | undefined;
  private termSent = false;
  private killSent = false;
  private files: PodFiles | undefined;
  private mirror: WorkspaceMirror | undefined;
  /** Settles once the restores are done (true) or have failed (false). */
  private restoring: Promise<boolean> | undefined;
  private restoreFailure: Error | undefined;
  private restored = false;
  private timer: NodeJS.Timeout | undefined;
  private disruptedAt = 0;
  private logs: Stream | undefined;
  private released = false;
  /** When the job went on, its files in place; undefined when there were none (its container's start). */
  releasedAt: string | undefined;
  /** When the launcher stopped waiting for the container's end, if it never came. */
  gaveUpAt: string | undefined;

  constructor(private readonly input: PodRunInput) {}

  /** Asks the job to stop: at most one stop counts, whichever comes first. */
  requestStop(stop: Stop): void {
    if (this.stop) return;
    this.stop = stop;
    this.stopAt = Date.now();
    this.input.tracker.changed();
  }

  /** The stop that reached the running job; undefined when none did (it had ended by itself first). */
  get stopDelivered(): Stop | undefined {
    return this.delivered;
  }

  /** Follows the pod until the job has ended, could not start, or was taken away. */
  async untilEnd(): Promise<PodEnd> {
    const { tracker, pendingTimeoutSeconds, stopMarginMs } = this.input;
    const pendingUntil = Date.now() + pendingTimeoutSeconds * 1000;
    for (;;) {
      const seen = tracker.version;
      const { pod } = tracker;
      const now = Date.now();
      if (this.restoreFailure !== undefined) throw this.restoreFailure;
      this.reachFiles(pod);
      // Nothing to put in place: the job went on as its container started (the kubelet's time for it).
      if (!this.released && this.input.restores.length === 0 && startedOf(pod)) this.release(undefined);
      if (startedOf(pod) && !this.logs) this.logs = await this.followLogs(pod);
      const jobEnd = jobEndOf(tracker.job);
      // The Job's own deadline is a backstop the launcher's timeout comes well before (kubernetes-job.ts):
      // its deletion of the pod is the timeout's, not a disruption.
      const disruption = jobEnd.deadlineExceeded
        ? undefined
        : disruptionOf(pod, { pod: tracker.podGone, job: tracker.jobGone });
      const ended = terminatedOf(pod);
      if (ended) {
        // Ended as the cluster took the pod away, and not by a stop of ours or with its result: a job
        // stopped with its node, which resumes elsewhere.
        const succeeded = runnerFromMessage(ended.message).result?.status === "success";
        if (disruption && !this.delivered && !succeeded) return { kind: "disrupted", disruption };
        return { kind: "ended" };
      }
      if (jobEnd.deadlineExceeded && (tracker.podGone || !startedOf(pod))) return { kind: "ended" };
      // Not started yet, the pending timeout is what to wake for; running, only changes (and a slow look).
      let wake = startedOf(pod) ? now + IDLE_RECHECK_MS : pendingUntil;
      if (disruption && startedOf(pod)) {
        // The kubelet stops the job as it stops the pod: wait for its end (it may checkpoint first), at
        // most the pod's grace, while the keeper, which ignores SIGTERM, keeps its files.
        this.disruptedAt ||= now;
        const grace =
          pod?.metadata?.deletionGracePeriodSeconds ?? pod?.spec?.terminationGracePeriodSeconds ?? 0;
        const until = this.disruptedAt + grace * 1000 + stopMarginMs;
        if (tracker.podGone || disruption.workspaceFull || now >= until)
          return { kind: "disrupted", disruption };
        wake = until;
      } else if (disruption) {
        return { kind: "never-started", problem: pendingProblem(pod), disruption };
      }

      if (this.stop && !this.disruptedAt) {
        if (!startedOf(pod)) return { kind: "stopped-before-start", stop: this.stop };
        const killAt = this.stopAt + this.stop.graceSeconds * 1000;
        if (!this.termSent && this.stop.graceSeconds > 0) {
          this.termSent = true;
          void this.signal(pod, "TERM");
        }
        if (!this.killSent && now >= killAt) {
          this.killSent = true;
          void this.signal(pod, "KILL");
        }
        if (now >= killAt + stopMarginMs) {
          // It ran, and SIGKILL went out: the stop counts even if its end was never reported.
          this.delivered ??= this.stop;
          this.gaveUpAt = new Date(now).toISOString();
          return { kind: "ended" };
        }
        wake = now < killAt ? killAt : killAt + stopMarginMs;
      } else if (!startedOf(pod)) {
        const problem = pendingProblem(pod);
        if (jobEnd.finished || tracker.jobGone) return { kind: "never-started", problem };
        if (problem && (problem.hopeless || now >= pendingUntil)) return { kind: "never-started", problem };
      } else if (keeperOf(pod) === "ended") {
        throw new Error(
          `the keeper of pod ${pod?.metadata?.name ?? ""} ended while the job ran: its files cannot be collected`,
        );
      }
      await tracker.next(seen, Math.max(wake - Date.now(), 1));
    }
  }

  /**
   * The job's files for the last time: its workspace's checkpoints and outputs into the agent's copy, when
   * the caller wants them and they were in place; then the keeper is told it may go. Rejects when they
   * could not be read (the pod or its keeper gone).
   */
  async collect(parts: readonly WorkspacePart[] = WORKSPACE_PARTS): Promise<void> {
    if (!this.files || keeperOf(this.input.tracker.pod) !== "running") {
      if (this.mirror)
        throw new Error("the job's pod has no running keeper: its workspace cannot be collected");
      return;
    }
    if (this.restoring) await this.restoring;
    if (this.mirror && this.restored) {
      const { files, bytes } = await this.mirror.collect(parts);
      this.input.log.info({ pod: this.files.pod, files, bytes }, "collected the job's workspace");
    }
    await this.files.mark("collected");
  }

  /** Stops the timeout and the log stream. */
  close(): void {
    clearTimeout(this.timer);
    this.logs?.abort();
  }

  /** The log stream, to drain once the job has ended. */
  get logStream(): Stream | undefined {
    return this.logs;
  }

  /** Once the keeper runs: its files, the restores started, the agent's copy offered when they are done. */
  private reachFiles(pod: V1Pod | undefined): void {
    const name = pod?.metadata?.name;
    if (this.files || !name || keeperOf(pod) !== "running") return;
    const { api, namespace, log, restores, tracker } = this.input;
    const files = new PodFiles(api, namespace, name, log);
    this.files = files;
    if (restores.length === 0) {
      this.restored = true;
      this.offerWorkspace(files);
      return;
    }
    this.restoring = (async () => {
      for (const { from, to } of restores) await files.restore(from, to);
      await files.mark("ready");
    })().then(
      () => {
        this.restored = true;
        this.release(new Date().toISOString());
        this.offerWorkspace(files);
        tracker.changed();
        return true;
      },
      (error: unknown) => {
        // Stopped meanwhile: the job never went on, and a failure to put its files there is no news.
        if (!this.stop) this.restoreFailure = error instanceof Error ? error : new Error(String(error));
        log.warn({ err: error, pod: name }, "putting the job's files in its pod failed");
        tracker.changed();
        return false;
      },
    );
  }

  /** The job goes on now: its own time limit starts. */
  private release(at: string | undefined): void {
    this.released = true;
    this.releasedAt = at;
    const { timeoutSeconds, graceSeconds } = this.input;
    this.timer = setTimeout(
      () => this.requestStop({ reason: "timeout", graceSeconds }),
      timeoutSeconds * 1000,
    );
  }

  private offerWorkspace(files: PodFiles): void {
    const { workspace, onWorkspace, log } = this.input;
    if (!workspace) return;
    this.mirror = new WorkspaceMirror(files, workspace.dir, workspace.limits, log);
    onWorkspace?.(this.mirror);
  }

  /**
   * A signal to the job's container alone, as Docker's stop sends it: SIGTERM to its runner (which
   * forwards it to the job), or SIGKILL to every process of the job's but the runner's (a first process
   * cannot be killed from inside its namespace; the runner then ends with its job).
   */
  private async signal(pod: V1Pod | undefined, signal: "TERM" | "KILL"): Promise<void> {
    const stop = this.stop;
    const name = pod?.metadata?.name;
    if (!name || !stop || terminatedOf(this.input.tracker.pod)) return;
    const { api, namespace, log } = this.input;
    log.info({ reason: stop.reason, graceSeconds: stop.graceSeconds, signal }, "stopping job");
    // Sent while the job ran, the stop counts, whatever the job makes of it; counted before the exec
    // returns, since the job may end on it first. One that found the job ended does not (above).
    this.delivered ??= stop;
    // The job's container, whether or not its keeper is up.
    await (this.files ?? new PodFiles(api, namespace, name, log)).signalJob(signal);
  }

  /** Follows the container's log into the output; a failure costs the logs, never the job. */
  private async followLogs(pod: V1Pod | undefined): Promise<Stream> {
    const { api, namespace, output, log } = this.input;
    const podName = pod?.metadata?.name ?? "";
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        // The log API merges the streams; the envelope keeps them as stdout.
        output.write("stdout", chunk);
        callback();
      },
    });
    try {
      return await api.followLog(namespace, podName, JOB_CONTAINER, sink);
    } catch (error) {
      log.warn({ err: error, pod: podName }, "following the job's log failed; the envelope has no logs");
      return { done: Promise.resolve(), abort: () => undefined };
    }
  }
}
