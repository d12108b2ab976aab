import { EventEmitter } from "node:events";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { cpus, hostname, tmpdir } from "node:os";
import { join } from "node:path";
import type { Envelope, JobOutcome, Launcher, ProgressEvent, StopReason } from "./contract";
import { StopRequest } from "./contract";
import type { ReceivedJob } from "./job-queue";
import type { JobQueue } from "./job-queue";
import type { JobAddress, JobState } from "./job-store";
import type { JobStore } from "./job-store";
import type { Logger } from "./logger";
import type { TierName } from "./tiers";
import { getTier } from "./tiers";

export interface AgentOptions {
  readonly tier: TierName;
  readonly queue: JobQueue;
  readonly store: JobStore;
  readonly launcher: Launcher;
  readonly logger: Logger;
  /** This node's name in job states and envelopes. Defaults to the host name. */
  readonly node?: string;
  /** Jobs run at once. Defaults to the tier's GPU count, or as many as the node's CPUs fit. */
  readonly concurrency?: number;
  /** Seconds between visibility extensions of a running job's message. Defaults to 30. */
  readonly heartbeatSeconds?: number;
  /** What each extension sets the visibility timeout to. Defaults to 120. */
  readonly visibilitySeconds?: number;
  /** Seconds between uploads of new checkpoints while a job runs. Defaults to 30. */
  readonly checkpointSeconds?: number;
  /** Seconds between looks for a cancel request. Defaults to 2. */
  readonly cancelPollSeconds?: number;
  /** Seconds a cancelled or interrupted job gets to checkpoint. Defaults to 10. */
  readonly graceSeconds?: number;
  /** Long-poll wait of each receive. Defaults to 20 (the SQS maximum). */
  readonly waitSeconds?: number;
  /** Where jobs' code and workspaces are staged. Defaults to the system's temporary directory. */
  readonly scratchRoot?: string;
  /** Records each attempt's outcome (e.g. as CloudWatch metrics). Defaults to none. */
  readonly recordOutcome?: (outcome: JobOutcome) => Promise<void>;
}

export interface AgentEvents {
  /** How many messages the agent holds, each time that changes (the node's scale-in protection follows). */
  load: [running: number];
  started: [address: JobAddress];
  progress: [address: JobAddress, event: ProgressEvent];
  finished: [address: JobAddress, envelope: Envelope];
  /** Stopped with the node (spot interruption, scale-in): checkpoints saved, message back on the queue. */
  handedBack: [address: JobAddress, reason: StopReason];
  poison: [problem: string, messageId: string];
  /** Running the job failed for a reason outside it (the store, the engine); its message returns. */
  failed: [address: JobAddress, error: unknown];
}

const FINAL_STATUS = { success: "succeeded", error: "failed" } as const;

/**
 * The process on every node: takes jobs from its tier's queue, runs them through the launcher, keeps
 * their messages invisible while they run, syncs checkpoints, and finishes each job exactly once. A job
 * that fails on its own merits is finished, not retried; a job stopped with the node is handed back with
 * its checkpoints for another node to resume.
 */
export class Agent extends EventEmitter<AgentEvents> {
  private readonly active = new Map<string, { promise: Promise<void>; stop: AbortController }>();
  private stopping: { reason: StopReason; graceSeconds: number } | undefined;
  /** Settles once the receive loop has ended, its last long poll included. */
  private polling: Promise<void> = Promise.resolve();
  private readonly settings: Required<Omit<AgentOptions, "recordOutcome">> &
    Pick<AgentOptions, "recordOutcome">;

  constructor(options: AgentOptions) {
    super();
    const tier = getTier(options.tier);
    this.settings = {
      node: hostname(),
      concurrency: tier.gpu ? tier.gpu.count : Math.max(1, Math.floor(cpus().length / tier.vcpus)),
      heartbeatSeconds: 30,
      visibilitySeconds: 120,
      checkpointSeconds: 30,
      cancelPollSeconds: 2,
      graceSeconds: 10,
      waitSeconds: 20,
      scratchRoot: tmpdir(),
      ...options,
    };
    if (this.settings.visibilitySeconds <= this.settings.heartbeatSeconds) {
      throw new Error(
        `the visibility timeout (${this.settings.visibilitySeconds} s) must be longer than the heartbeat (${this.settings.heartbeatSeconds} s), or running jobs' messages reappear`,
      );
    }
  }

  /** Runs until {@link stop}; resolves once every job it took is finished or handed back. */
  async run(): Promise<void> {
    const { logger, tier } = this.settings;
    logger.info(
      { tier, concurrency: this.settings.concurrency, queueUrl: this.settings.queue.queueUrl },
      "agent started",
    );
    this.polling = this.receiveUntilStopped();
    await this.polling;
    await Promise.all([...this.active.values()].map((a) => a.promise));
    logger.info({ tier, reason: this.stopping?.reason }, "agent stopped");
  }

  private async receiveUntilStopped(): Promise<void> {
    const { logger, concurrency, waitSeconds } = this.settings;
    while (!this.stopping) {
      if (this.active.size >= concurrency) {
        await Promise.race([...this.active.values()].map((a) => a.promise));
        continue;
      }
      let received: ReceivedJob[];
      try {
        received = await this.settings.queue.receive(concurrency - this.active.size, waitSeconds);
      } catch (error) {
        if (this.stopping) break;
        logger.error({ err: error }, "receiving from the queue failed; retrying");
        await new Promise((resolve) => setTimeout(resolve, 1000));
        continue;
      }
      if (this.stopping) {
        // Taken while stopping: straight back, so another agent gets them without waiting out a timeout.
        await Promise.all(
          received.map((m) => this.settings.queue.release(m.receiptHandle).catch(() => undefined)),
        );
        break;
      }
      for (const message of received) this.take(message);
    }
  }

  /** Stops taking jobs and stops the running ones with `reason`, giving each `graceSeconds` to checkpoint. */
  stop(reason: StopReason = "interrupted", graceSeconds = this.settings.graceSeconds): void {
    if (this.stopping) return;
    // The long poll in flight is left to end: an abandoned receive still counts as a delivery towards the
    // dead-letter queue's maxReceiveCount, while what it returns is released at once.
    this.stopping = { reason, graceSeconds };
    this.settings.logger.info({ reason, running: this.active.size }, "agent stopping");
    for (const { stop } of this.active.values()) stop.abort(new StopRequest(reason, graceSeconds));
  }

  private take(message: ReceivedJob): void {
    const stop = new AbortController();
    const promise = this.handle(message, stop).finally(() => {
      this.active.delete(message.messageId);
      this.emit("load", this.active.size);
    });
    this.active.set(message.messageId, { promise, stop });
    this.emit("load", this.active.size);
  }

  private async handle(message: ReceivedJob, stop: AbortController): Promise<void> {
    const { queue, logger } = this.settings;
    if (!message.address) {
      // Never deleted: after the queue's maxReceiveCount, SQS moves it to the dead-letter queue.
      logger.error(
        { messageId: message.messageId, receiveCount: message.receiveCount, problem: message.problem },
        "poison message",
      );
      this.emit("poison", message.problem ?? "unreadable", message.messageId);
      await queue.release(message.receiptHandle).catch(() => undefined);
      return;
    }
    const address = message.address;
    const log = logger.child({ jobId: address.jobId });
    try {
      await this.runJob(address, message, stop, log);
    } catch (error) {
      log.error({ err: error }, "handling the job failed; its message returns to the queue");
      this.emit("failed", address, error);
      await queue.release(message.receiptHandle).catch(() => undefined);
    }
  }

  private async runJob(
    address: JobAddress,
    message: ReceivedJob,
    stop: AbortController,
    log: Logger,
  ): Promise<void> {
    const { queue, store } = this.settings;
    if (await store.getEnvelope(address)) {
      log.info("already finished; dropping the duplicate message");
      await queue.delete(message.receiptHandle);
      return;
    }
    if (await store.cancelRequested(address)) {
      await this.finish(
        address,
        message,
        cancelledBeforeStart(
          address,
          (await store.getState(address))?.tier ?? this.settings.tier,
          this.settings.node,
        ),
        log,
      );
      return;
    }
    const spec = await store.getSpec(address);
    const scratch = await mkdtemp(join(this.settings.scratchRoot, `crucible-agent-${address.jobId}-`));
    try {
      const codeZip = join(scratch, "code.zip");
      if (!spec || !(await store.getCode(address, codeZip))) {
        const problem = `poison: the job's ${spec ? "code.zip" : "spec.json"} is missing from ${store.jobPrefix(address)}`;
        log.error({ receiveCount: message.receiveCount }, problem);
        await store.updateState(address, { status: "failed", note: problem, tier: this.settings.tier });
        this.emit("poison", problem, message.messageId);
        await queue.release(message.receiptHandle);
        return;
      }
      const workspace = join(scratch, "workspace");
      const checkpoints = join(workspace, "checkpoints");
      await mkdir(checkpoints, { recursive: true });
      const restored = await store.downloadCheckpoints(address, checkpoints);
      const previous = await store.getState(address);
      await store.updateState(address, {
        status: "running",
        tier: spec.tier,
        attempts: (previous?.attempts ?? 0) + 1,
        node: this.settings.node,
        startedAt: new Date().toISOString(),
        resumedFromCheckpoint: restored > 0,
      });
      log.info({ attempt: (previous?.attempts ?? 0) + 1, restoredCheckpoints: restored }, "job started");
      this.emit("started", address);

      const uploaded = new Map<string, string>();
      const timers = [
        every(
          this.settings.heartbeatSeconds,
          () => queue.extend(message.receiptHandle, this.settings.visibilitySeconds),
          log,
          "heartbeat",
        ),
        every(
          this.settings.checkpointSeconds,
          () => store.uploadDir(address, "checkpoints", checkpoints, uploaded),
          log,
          "checkpoint upload",
        ),
        every(
          this.settings.cancelPollSeconds,
          async () => {
            if (await store.cancelRequested(address))
              stop.abort(new StopRequest("cancelled", this.settings.graceSeconds));
          },
          log,
          "cancel poll",
        ),
      ];
      let envelope: Envelope;
      try {
        await queue.extend(message.receiptHandle, this.settings.visibilitySeconds);
        envelope = await this.settings.launcher.run(
          { ...spec, jobId: address.jobId, code: codeZip, workspaceDir: workspace },
          { signal: stop.signal, onProgress: (event) => this.emit("progress", address, event) },
        );
      } finally {
        for (const timer of timers) clearInterval(timer);
      }
      await store.uploadDir(address, "checkpoints", checkpoints, uploaded);
      const reason = envelope.reason;
      if (this.stopping && (reason === "interrupted" || reason === "preempted")) {
        await store.updateState(address, {
          status: "queued",
          note: `handed back: ${reason} on ${this.settings.node}`,
        });
        // Released only once this agent's last long poll is over: released sooner, that poll could take
        // the message again, and every receive counts towards the dead-letter queue's maxReceiveCount.
        await this.polling;
        await queue.release(message.receiptHandle);
        await this.settings.recordOutcome?.({
          outcome: "interrupted",
          tier: this.settings.tier,
          seconds: envelope.executionTime,
        });
        log.info({ reason, checkpoints: uploaded.size }, "job handed back with its checkpoints");
        this.emit("handedBack", address, reason);
        return;
      }
      await store.uploadDir(address, "outputs", join(workspace, "outputs"), new Map());
      await this.finish(address, message, envelope, log);
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  private async finish(
    address: JobAddress,
    message: ReceivedJob,
    envelope: Envelope,
    log: Logger,
  ): Promise<void> {
    const { store, queue } = this.settings;
    await store.putLogs(address, envelope.logs);
    if (!(await store.putEnvelope(address, envelope))) {
      log.warn("another agent finished this job first; keeping its envelope");
    }
    const status: JobState["status"] =
      envelope.reason === "cancelled" ? "cancelled" : FINAL_STATUS[envelope.status];
    await store.updateState(address, { status, finishedAt: new Date().toISOString() });
    await queue.delete(message.receiptHandle);
    await this.settings.recordOutcome?.({
      outcome: envelope.status === "success" ? "succeeded" : "failed",
      tier: this.settings.tier,
      seconds: envelope.executionTime,
    });
    log.info({ status, reason: envelope.reason }, "job finished");
    this.emit("finished", address, envelope);
  }
}

/** Runs `action` every `seconds`, logging (not throwing) its failures. */
function every(seconds: number, action: () => Promise<unknown>, log: Logger, what: string): NodeJS.Timeout {
  return setInterval(() => {
    action().catch((error: unknown) => log.warn({ err: error }, `${what} failed`));
  }, seconds * 1000);
}

function cancelledBeforeStart(address: JobAddress, tier: string, node: string): Envelope {
  return {
    jobId: address.jobId,
    status: "error",
    reason: "cancelled",
    error: { type: "Cancelled", message: "the job was cancelled before it started" },
    exitCode: null,
    executionTime: 0,
    timestamp: new Date().toISOString(),
    systemInfo: { jobId: address.jobId, tier: tier as Envelope["systemInfo"]["tier"], image: "", node },
    resources: {},
    logs: { stdout: "", stderr: "", truncated: false },
  };
}
