import { EventEmitter } from "node:events";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, hostname, tmpdir } from "node:os";
import { join } from "node:path";
import type { Envelope, JobOutcome, Launcher, ProgressEvent, StopReason } from "../job/contract";
import { StopRequest } from "../job/contract";
import type { ReceivedJob } from "../queue/job-queue";
import type { AdmittedJob } from "../job/job-request";
import { admitJob } from "../job/job-request";
import { CodeError } from "../job/code-source";
import { InvalidJobError } from "../job/job-spec";
import type { ResumePoint } from "../job/resume-point";
import { resumePointOf, resumeRefusal } from "../job/resume-point";
import type { ResolvedDataset } from "../store/dataset-store";
import { DatasetCacheBusyError } from "./dataset-cache";
import type { NodeDatasets } from "./job-datasets";
import type { NodeEnvironments } from "./job-environment";
import { readJobRequirements } from "../environments/requirements";
import { detect } from "../job/detect";
import { jobImageFamily } from "../catalog/image-matrix";
import { acquireJobDatasets, resolveJobDatasets } from "./job-datasets";
import type { JobAddress, JobState, RunningMarker } from "../store/job-store";
import type { JobStore } from "../store/job-store";
import { SpecError } from "../store/job-store";
import type { LedgerEntry, NodePrice } from "../cost/ledger";
import { attemptCost, ON_DEMAND } from "../cost/ledger";
import type { Logger } from "../logger";
import type { PriorityQueues } from "../queue/priority-queues";
import type { Priority, SchedulingPolicy } from "../catalog/scheduling";
import { PRIORITIES, parseSchedulingPolicy } from "../catalog/scheduling";
import type { Senders } from "../catalog/senders";
import { senderProblem } from "../catalog/senders";
import type { BudgetStanding } from "../cost/spend";
import { describeStanding, overBudget, SpendTracker } from "../cost/spend";
import { createQuotaDir, releaseQuotaDirsUnder } from "../launch/quota-volume";
import { ownerAlive, processStart } from "../launch/sandbox";
import { invalidJobEnvelope } from "../launch/outcome";
import type { TierName } from "../catalog/tiers";
import { getTier, jobsPerNode } from "../catalog/tiers";
import { every, runAttempt } from "./attempt";
import { DEFAULT_LOG_CAP_BYTES } from "../store/job-log";
import type { Pricing } from "./pricing";
import { chargedHourlyUsd, priceAttempt, spendWithin } from "./pricing";

export interface AgentOptions {
  readonly tier: TierName;
  /** The tier's queues, one per priority class (or one queue for all: {@link PriorityQueues.single}). */
  readonly queues: PriorityQueues;
  readonly store: JobStore;
  readonly launcher: Launcher;
  readonly logger: Logger;
  /**
   * Who may queue jobs ({@link SENDERS_ENV}): a message whose SQS SenderId is not an agent, or not the
   * submitter of the project and user its address names, is refused unread and left for the dead-letter queue.
   */
  readonly senders: Senders;
  /**
   * The datasets bucket and this node's cache of it, for jobs that name datasets. Without it, such jobs
   * are refused as `invalid_job`.
   */
  readonly datasets?: NodeDatasets;
  /**
   * This node's job environments: jobs whose code carries requirements get them built (or cached) and
   * mounted. Without it, requirements are only checked against the image, inside the job.
   */
  readonly environments?: NodeEnvironments;
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
  /** Seconds between shipments of a running job's log and metrics to the store. Defaults to 2. */
  readonly logFlushSeconds?: number;
  /** Log bytes a job may store over all its attempts; past it, output is dropped and counted. Defaults to 1 GiB. */
  readonly logCapBytes?: number;
  /** Seconds a cancelled or interrupted job gets to checkpoint. Defaults to 10. */
  readonly graceSeconds?: number;
  /** Long-poll wait of each receive. Defaults to 20 (the SQS maximum). */
  readonly waitSeconds?: number;
  /** Where jobs' code and workspaces are staged. Defaults to the system's temporary directory. */
  readonly scratchRoot?: string;
  /**
   * Size of each job's `/workspace`: a volume of its own (see {@link createQuotaDir}), so a job that fills
   * it gets ENOSPC while the node's disk and the other jobs' stay untouched. 0 turns the quota off, as a
   * runtime that is not root must. Defaults to the tier's `workspaceMiB` when the agent runs as root, else 0.
   */
  readonly workspaceMiB?: number;
  /** Records each attempt's outcome (e.g. as CloudWatch metrics). Defaults to none. */
  readonly recordOutcome?: (outcome: JobOutcome) => Promise<void>;
  /** Fair share, preemption and budgets. Defaults to the policy's defaults (no budgets). */
  readonly policy?: SchedulingPolicy;
  /** Seconds between looks for preemption and at running jobs' budgets. Defaults to 5. */
  readonly schedulingPollSeconds?: number;
  /** Publishes the month-to-date spend of an owner with a budget after each attempt. Defaults to none. */
  readonly recordSpend?: (standings: readonly BudgetStanding[]) => Promise<void>;
  /**
   * Asked before the first job and between jobs whether this node may take work (a GPU health check);
   * `false` stops the agent, handing back what runs. Defaults to always.
   */
  readonly ready?: () => Promise<boolean>;
  /** The node's price against on-demand, asked as each job starts (a spot node's spot price). Defaults to on-demand. */
  readonly nodePrice?: () => Promise<NodePrice>;
  /**
   * Whether the tier's budget is paused, and why ({@link pauseCheck}): asked before every receive and every
   * `schedulingPollSeconds`. While it is, the agent takes no job and stops its running ones with reason
   * `budget` (they checkpoint); its load falls to 0, which releases the node's scale-in protection so the
   * paused group can shrink. Defaults to never paused.
   */
  readonly paused?: () => Promise<string | undefined>;
}

/** What operators tune through the CRUCIBLE_* agent variables, on a node and on the local platform. */
export type AgentTuning = Partial<
  Pick<
    AgentOptions,
    | "concurrency"
    | "heartbeatSeconds"
    | "visibilitySeconds"
    | "checkpointSeconds"
    | "graceSeconds"
    | "workspaceMiB"
    | "logCapBytes"
  >
>;

export interface AgentEvents {
  /** How many messages the agent holds, each time that changes (the node's scale-in protection follows). */
  load: [running: number];
  started: [address: JobAddress];
  progress: [address: JobAddress, event: ProgressEvent];
  finished: [address: JobAddress, envelope: Envelope];
  /** Stopped with the node (spot interruption, scale-in) or preempted: checkpoints saved, back on the queue. */
  handedBack: [address: JobAddress, reason: StopReason];
  /** Over its owner's fair share: put back on its queue to be offered again later. */
  deferred: [address: JobAddress];
  /** This agent stops lower-priority work for a high-priority job that waited too long. */
  preempting: [victim: JobAddress, forJob: JobAddress];
  /** The node failed its health check and takes no more work. */
  unhealthy: [];
  /** The tier's budget is paused (with the reason), or resumed (undefined): no job is taken meanwhile. */
  paused: [reason: string | undefined];
  poison: [problem: string, messageId: string];
  /** A message whose sender may not queue the job it names: nothing of that job is read or written. */
  refused: [problem: string, messageId: string];
  /** Running the job failed for a reason outside it (the store, the engine); its message returns. */
  failed: [address: JobAddress, error: unknown];
}

const FINAL_STATUS = { success: "succeeded", error: "failed" } as const;

/** Each job's scratch directory under the scratch root: `crucible-agent-<jobId>-XXXXXX`. */
export const AGENT_SCRATCH_PREFIX = "crucible-agent-";
/** In each scratch directory: the agent that made it, `<pid> <start>`, so a successor can reclaim it. */
const SCRATCH_OWNER_FILE = ".crucible-owner";

/** A job in a slot, once its spec is read: what preemption chooses by. */
interface RunningJob {
  readonly address: JobAddress;
  readonly priority: Priority;
  readonly preemptible: boolean;
  readonly startedAt: number;
}

/** A job the agent may run, with what its spec names resolved. */
interface Admitted {
  readonly job: AdmittedJob;
  /** The submitter's earlier job (and maybe step) whose checkpoints it starts from, when it names one. */
  readonly resumeFrom?: ResumePoint | undefined;
  /** The datasets it names, resolved and known to fit the node's cache. */
  readonly datasets: readonly ResolvedDataset[];
}

/** A job past the budget and fair-share gates, with its code staged in `scratch`. */
interface ClaimedJob extends Admitted {
  readonly message: ReceivedJob & { address: JobAddress };
  readonly pricing: Pricing;
  /** Its place in the fair share, refreshed with each heartbeat. */
  readonly marker: RunningMarker;
  readonly slot: Slot;
  readonly scratch: string;
  readonly codeZip: string;
  readonly log: Logger;
}

interface Slot {
  readonly stop: AbortController;
  job?: RunningJob;
}

/**
 * The process on every node: takes jobs from its tier's queues (higher priority classes first, by weighted
 * polling), runs them through the launcher, keeps their messages invisible while they run, syncs
 * checkpoints, and finishes each job exactly once. A job that fails on its own merits is finished, not
 * retried; a job stopped with the node or preempted is put back with its checkpoints to be resumed. Fair
 * share defers a job whose owner already runs their share; budgets stop an owner's spend at its limit;
 * every attempt's cost goes to the ledger.
 */
export class Agent extends EventEmitter<AgentEvents> {
  private readonly active = new Map<string, Slot & { promise: Promise<void> }>();
  private stopping: { reason: StopReason; graceSeconds: number } | undefined;
  /** Aborted on stop: ends the polling between queue classes, where no receive is in flight. */
  private readonly pollingStop = new AbortController();
  /** Settles once the receive loop has ended, its last long poll included. */
  private polling: Promise<void> = Promise.resolve();
  /** Slots held for a high-priority job while the job it preempts stops. */
  private reserved = 0;
  private slotsChanged = signal();
  /** When this agent, full of lower-priority work, first saw high-priority jobs waiting. */
  private highWaitingSince: number | undefined;
  private preemptionBusy = false;
  /** Fair-share claims one at a time, so two of a user's jobs taken together do not both count each other. */
  private claims: Promise<unknown> = Promise.resolve();
  private readonly spend: SpendTracker;
  /** Why the tier's budget is paused, while it is. */
  private pausedFor: string | undefined;
  private readonly settings: Required<
    Omit<AgentOptions, "recordOutcome" | "recordSpend" | "ready" | "paused" | "datasets" | "environments">
  > &
    Pick<AgentOptions, "recordOutcome" | "recordSpend" | "ready" | "paused" | "datasets" | "environments">;

  constructor(options: AgentOptions) {
    super();
    const tier = getTier(options.tier);
    this.settings = {
      node: hostname(),
      concurrency: jobsPerNode(tier, cpus().length),
      heartbeatSeconds: 30,
      visibilitySeconds: 120,
      checkpointSeconds: 30,
      cancelPollSeconds: 2,
      logFlushSeconds: 2,
      logCapBytes: DEFAULT_LOG_CAP_BYTES,
      graceSeconds: 10,
      waitSeconds: 20,
      scratchRoot: tmpdir(),
      workspaceMiB: process.getuid?.() === 0 ? tier.workspaceMiB : 0,
      policy: parseSchedulingPolicy(undefined),
      schedulingPollSeconds: 5,
      nodePrice: () => Promise.resolve(ON_DEMAND),
      ...options,
    };
    if (this.settings.visibilitySeconds <= this.settings.heartbeatSeconds) {
      throw new Error(
        `the visibility timeout (${this.settings.visibilitySeconds} s) must be longer than the heartbeat (${this.settings.heartbeatSeconds} s), or running jobs' messages reappear`,
      );
    }
    this.spend = new SpendTracker(options.store, this.settings.policy.budgets);
  }

  /** Runs until {@link stop}; resolves once every job it took is finished or handed back. */
  async run(): Promise<void> {
    const { logger, tier, queues, schedulingPollSeconds } = this.settings;
    logger.info(
      { tier, concurrency: this.settings.concurrency, queueUrls: queues.queueUrls },
      "agent started",
    );
    const preemption = every(
      schedulingPollSeconds,
      () => this.considerPreemption(),
      logger,
      "preemption check",
    );
    const pause = every(schedulingPollSeconds, () => this.checkPause(), logger, "budget pause check");
    try {
      await this.reclaimScratch();
      this.polling = this.receiveUntilStopped();
      await this.polling;
      await Promise.all([...this.active.values()].map((a) => a.promise));
    } finally {
      clearInterval(preemption);
      clearInterval(pause);
    }
    logger.info({ tier, reason: this.stopping?.reason }, "agent stopped");
  }

  private async receiveUntilStopped(): Promise<void> {
    const { logger, concurrency, waitSeconds, queues, ready } = this.settings;
    while (!this.stopping) {
      const free = concurrency - this.active.size - this.reserved;
      if (free <= 0) {
        queues.full();
        await this.slotsChanged.wait();
        continue;
      }
      if (ready && !(await ready())) {
        logger.error("the node failed its health check; it takes no more work");
        this.emit("unhealthy");
        this.stop("interrupted");
        break;
      }
      if (await this.checkPause()) {
        await this.slotsChanged.wait(this.settings.schedulingPollSeconds * 1000);
        continue;
      }
      let received: ReceivedJob[];
      try {
        // The first of these after start is the agent's readiness (`npm run bench:start` times it).
        logger.debug({ free, waitSeconds }, "receiving jobs");
        received = await queues.receive(free, waitSeconds, this.pollingStop.signal);
      } catch (error) {
        if (this.stopping) break;
        logger.error({ err: error }, "receiving from the queue failed; retrying");
        await new Promise((resolve) => setTimeout(resolve, 1000));
        continue;
      }
      if (this.stopping) {
        // Taken while stopping: straight back, so another agent gets them without waiting out a timeout.
        await Promise.all(received.map((m) => m.queue.release(m.receiptHandle).catch(() => undefined)));
        break;
      }
      for (const message of received) this.take(message);
    }
    // The polls still in flight are waited out, and what they bring goes straight back.
    await queues.drain();
  }

  /** Stops taking jobs and stops the running ones with `reason`, giving each `graceSeconds` to checkpoint. */
  stop(reason: StopReason = "interrupted", graceSeconds = this.settings.graceSeconds): void {
    if (this.stopping) return;
    // The long poll in flight is left to end: an abandoned receive still counts as a delivery towards the
    // dead-letter queue's maxReceiveCount, while what it returns is released at once.
    this.stopping = { reason, graceSeconds };
    this.pollingStop.abort();
    this.settings.logger.info({ reason, running: this.active.size }, "agent stopping");
    for (const { stop } of this.active.values()) stop.abort(new StopRequest(reason, graceSeconds));
    this.slotsChanged.fire();
  }

  /**
   * Removes what agents that died mid-job left in the scratch root: their jobs' workspace volumes (still
   * mounted, holding disk and a loop device each) and files. Only directories whose owner is gone: agents
   * sharing a scratch root (several on one machine) keep theirs.
   */
  private async reclaimScratch(): Promise<void> {
    const { scratchRoot, logger } = this.settings;
    let reclaimed = 0;
    for (const name of await readdir(scratchRoot).catch(() => [])) {
      if (!name.startsWith(AGENT_SCRATCH_PREFIX)) continue;
      const dir = join(scratchRoot, name);
      // No owner yet: being made, or not an agent's to judge.
      const owner = await readFile(join(dir, SCRATCH_OWNER_FILE), "utf8").catch(() => undefined);
      if (owner === undefined) continue;
      const [pid, start] = owner.trim().split(" ");
      if (ownerAlive(Number(pid), start || undefined)) continue;
      try {
        await releaseQuotaDirsUnder(dir);
        await rm(dir, { recursive: true, force: true });
        reclaimed += 1;
      } catch (error) {
        // Another agent of this machine may be reclaiming it at the same moment (a local platform starts
        // one per tier): what is left is that one's, or the next start's. Never a reason to take no jobs.
        logger.warn({ err: error, dir }, "could not remove a dead agent's job workspace; leaving it");
      }
    }
    if (reclaimed > 0) logger.warn({ reclaimed }, "removed job workspaces that dead agents left behind");
  }

  /**
   * Looks at the tier's budget pause: while it is on, every running job is stopped with reason `budget`.
   * Resolves true while paused. The check itself fails closed ({@link pausedTier}).
   */
  private async checkPause(): Promise<boolean> {
    const { paused, logger, graceSeconds } = this.settings;
    if (!paused || this.stopping) return false;
    const reason = await paused();
    if (reason !== this.pausedFor) {
      if (reason)
        logger.warn({ reason, running: this.active.size }, "the tier's budget is paused; taking no jobs");
      else logger.info("the tier's budget pause is lifted; taking jobs again");
      this.pausedFor = reason;
      this.emit("paused", reason);
    }
    if (!reason) return false;
    for (const slot of this.active.values())
      if (!slot.stop.signal.aborted) slot.stop.abort(new StopRequest("budget", graceSeconds));
    return true;
  }

  private take(message: ReceivedJob): void {
    const slot: Slot = { stop: new AbortController() };
    const promise = this.handle(message, slot).finally(() => {
      this.active.delete(message.messageId);
      this.emit("load", this.active.size);
      this.slotsChanged.fire();
    });
    this.active.set(message.messageId, Object.assign(slot, { promise }));
    this.emit("load", this.active.size);
  }

  /**
   * Preemption: when every slot runs lower-priority work and high-priority jobs have been waiting for the
   * policy's time (as this agent saw the queue), it takes one of them and stops its lowest-priority, most
   * recently started preemptible job for it. Taking the job first means that of several full agents only
   * the one that got it preempts anything.
   */
  private async considerPreemption(): Promise<void> {
    const { policy, concurrency, queues, logger, graceSeconds, visibilitySeconds } = this.settings;
    const high = queues.get("high");
    const jobs = [...this.active.values()].map((slot) => slot.job);
    const victims = jobs
      .filter((j): j is RunningJob => j !== undefined && j.priority !== "high" && j.preemptible)
      .sort(
        (a, b) =>
          PRIORITIES.indexOf(b.priority) - PRIORITIES.indexOf(a.priority) || b.startedAt - a.startedAt,
      );
    const candidate =
      policy.preemption.enabled &&
      !this.stopping &&
      !this.preemptionBusy &&
      high !== queues.get("normal") &&
      this.active.size >= concurrency &&
      jobs.every((j) => j !== undefined && j.priority !== "high") &&
      victims.length > 0;
    if (!candidate) {
      if (!this.preemptionBusy) this.highWaitingSince = undefined;
      return;
    }
    this.preemptionBusy = true;
    try {
      if ((await high.waiting()) === 0) {
        this.highWaitingSince = undefined;
        return;
      }
      this.highWaitingSince ??= Date.now();
      if (Date.now() - this.highWaitingSince < policy.preemption.afterSeconds * 1000) return;
      this.highWaitingSince = undefined;
      const [claimed] = await high.receive(1, 0);
      if (!claimed) return;
      const victim = victims[0]!;
      const slot = [...this.active.values()].find((s) => s.job === victim);
      if (!claimed.address || !slot) {
        this.take(claimed);
        return;
      }
      logger.info(
        { victim: victim.address.jobId, victimPriority: victim.priority, forJob: claimed.address.jobId },
        "preempting lower-priority work for a high-priority job that waited too long",
      );
      this.emit("preempting", victim.address, claimed.address);
      this.reserved += 1;
      try {
        await claimed.queue.extend(claimed.receiptHandle, visibilitySeconds);
        slot.stop.abort(new StopRequest("preempted", graceSeconds));
        await slot.promise;
      } finally {
        this.reserved -= 1;
      }
      if (this.stopping) await claimed.queue.release(claimed.receiptHandle);
      else this.take(claimed);
    } finally {
      this.preemptionBusy = false;
    }
  }

  private async handle(message: ReceivedJob, slot: Slot): Promise<void> {
    const { logger } = this.settings;
    if (!message.address) {
      // Never deleted: after the queue's maxReceiveCount, SQS moves it to the dead-letter queue.
      logger.error(
        { messageId: message.messageId, receiveCount: message.receiveCount, problem: message.problem },
        "poison message",
      );
      this.emit("poison", message.problem ?? "unreadable", message.messageId);
      await message.queue.release(message.receiptHandle).catch(() => undefined);
      return;
    }
    const address = message.address;
    const refused = senderProblem(this.settings.senders, message.senderId, address);
    if (refused) {
      // Never deleted, like poison: after the queue's maxReceiveCount it waits in the dead-letter queue,
      // whose alarm tells the operators that someone tried to queue work under another name.
      logger.error({ messageId: message.messageId, claimed: address, problem: refused }, "refused message");
      this.emit("refused", refused, message.messageId);
      await message.queue.release(message.receiptHandle).catch(() => undefined);
      return;
    }
    const log = logger.child({ jobId: address.jobId });
    try {
      // Hidden for a whole visibility period from the start: reading the spec, the code and the fair
      // share can take seconds, and a message that reappears meanwhile would be run twice.
      await message.queue.extend(message.receiptHandle, this.settings.visibilitySeconds);
      await this.runJob(address, message, slot, log);
    } catch (error) {
      log.error({ err: error }, "handling the job failed; its message returns to the queue");
      this.emit("failed", address, error);
      await message.queue.release(message.receiptHandle).catch(() => undefined);
    }
  }

  private async runJob(address: JobAddress, message: ReceivedJob, slot: Slot, log: Logger): Promise<void> {
    const { store, tier, node } = this.settings;
    if (await store.getEnvelope(address)) {
      log.info("already finished; dropping the duplicate message");
      await message.queue.delete(message.receiptHandle);
      return;
    }
    if (await store.cancelRequested(address)) {
      const stateTier = (await store.getState(address))?.tier ?? tier;
      const envelope = notRun(
        address,
        stateTier,
        node,
        "cancelled",
        "the job was cancelled before it started",
      );
      await this.finish(address, message, envelope, log);
      return;
    }
    const admitted = await this.admit(address, message, log);
    if (!admitted) return;
    const { job, resumeFrom, datasets } = admitted;
    const scratch = await mkdtemp(
      join(this.settings.scratchRoot, `${AGENT_SCRATCH_PREFIX}${address.jobId}-`),
    );
    try {
      await writeFile(join(scratch, SCRATCH_OWNER_FILE), `${process.pid} ${processStart(process.pid) ?? ""}`);
      const codeZip = join(scratch, "code.zip");
      const code = await store.getCode(address, codeZip).catch(async (error: unknown) => {
        if (!(error instanceof CodeError)) throw error;
        // Refused before its download (too large): the job cannot run as submitted.
        const invalid = new InvalidJobError("code", error.message);
        const envelope = invalidJobEnvelope({ jobId: address.jobId, tier }, invalid, node, log);
        await this.finish(address, message, envelope, log, `not run: ${invalid.message}`);
        return "refused" as const;
      });
      if (code === "refused") return;
      if (!code) {
        const problem = `poison: the job's code.zip is missing from ${store.jobPrefix(address)}`;
        log.error({ receiveCount: message.receiveCount }, problem);
        await store.updateState(address, { status: "failed", note: problem, tier });
        this.emit("poison", problem, message.messageId);
        await message.queue.release(message.receiptHandle);
        return;
      }
      const pricing = await this.pricing(job);
      const over = overBudget(await this.spend.standings(address), this.marginUsd(pricing));
      if (over) {
        const why = `not started: ${describeStanding(over)}`;
        log.warn({ budget: over }, why);
        await this.finish(address, message, notRun(address, tier, node, "budget", why), log, why);
        return;
      }
      const marker = await this.claimShare(address, message, log);
      if (!marker) return;
      try {
        await this.runClaimed({
          message: { ...message, address },
          job,
          resumeFrom,
          datasets,
          pricing,
          marker,
          slot,
          scratch,
          codeZip,
          log,
        });
      } finally {
        await store.clearRunning(marker).catch((error: unknown) => {
          log.warn({ err: error }, "clearing the running marker failed; it goes stale by itself");
        });
      }
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  /**
   * Reads `spec.json` as the hostile input it is and admits it against the queue the message came on
   * ({@link admitJob}); a spec that cannot be admitted finishes the job as `invalid_job`, naming the field,
   * before anything runs or is charged. A missing spec is poison (its message goes to the dead-letter queue).
   */
  private async admit(address: JobAddress, message: ReceivedJob, log: Logger): Promise<Admitted | undefined> {
    const { store, tier, node } = this.settings;
    const arrival = { address, tier, priority: message.queue.priority };
    try {
      const raw = await store.getSpec(address);
      if (raw === undefined) {
        const problem = `poison: the job's spec.json is missing from ${store.jobPrefix(address)}`;
        log.error({ receiveCount: message.receiveCount }, problem);
        await store.updateState(address, { status: "failed", note: problem, tier });
        this.emit("poison", problem, message.messageId);
        await message.queue.release(message.receiptHandle);
        return undefined;
      }
      const job = admitJob(raw, arrival);
      const { resumeFrom: from, resumeStep } = job.spec;
      // Within the submitter's own prefix by construction: the references are ids and names, never paths.
      const resumeFrom = from === undefined ? undefined : resumePointOf(address, from, resumeStep);
      const refusal = resumeFrom && (await resumeRefusal(store, resumeFrom));
      if (refusal) throw new InvalidJobError("resumeFrom", `resumeFrom: ${refusal}`);
      const datasets = await resolveJobDatasets(this.settings.datasets, address, job.spec.datasets ?? []);
      return { job, datasets, ...(resumeFrom && { resumeFrom }) };
    } catch (error) {
      if (!(error instanceof InvalidJobError || error instanceof SpecError)) throw error;
      const invalid = error instanceof InvalidJobError ? error : new InvalidJobError("spec", error.message);
      const envelope = invalidJobEnvelope({ jobId: address.jobId, tier }, invalid, node, log);
      await this.finish(address, message, envelope, log, `not run: ${invalid.message}`);
      return undefined;
    }
  }

  /**
   * Fair share: marks the job running, then counts its owner's running jobs in the tier that claimed
   * their place before it (itself included); over the user's or the project's share, the mark is taken
   * back and the job goes back on its queue for later. Resolves with the mark when the job may run.
   */
  private async claimShare(
    address: JobAddress,
    message: ReceivedJob,
    log: Logger,
  ): Promise<RunningMarker | undefined> {
    const claim = this.claims.then(async () => {
      const { store, tier, node, policy, visibilitySeconds } = this.settings;
      const marker: RunningMarker = { address, tier, claimedAt: Date.now() };
      await store.markRunning(marker, node);
      const counts = await store.runningAhead(marker, visibilitySeconds);
      const { perUser, perProject, deferSeconds } = policy.fairShare;
      if (counts.user <= perUser && counts.project <= perProject) return marker;
      await store.clearRunning(marker);
      // Jitter, so two agents that backed off from each other do not meet again at the same moment.
      const delaySeconds = deferSeconds + Math.floor(Math.random() * Math.min(5, deferSeconds));
      await message.queue.requeue({ ...message, address }, delaySeconds);
      log.info({ ...counts, perUser, perProject, delaySeconds }, "over its owner's fair share; deferred");
      this.emit("deferred", address);
      return undefined;
    });
    this.claims = claim.catch(() => undefined);
    return claim;
  }

  private async runClaimed(claimed: ClaimedJob): Promise<void> {
    const { scratch, message } = claimed;
    // Hidden for a heartbeat's worth before the workspace volume is made: that can take seconds.
    await message.queue.extend(message.receiptHandle, this.settings.visibilitySeconds);
    const datasets = await this.acquireDatasets(claimed);
    if (!datasets) return;
    try {
      const workspace = join(scratch, "workspace");
      const { workspaceMiB } = this.settings;
      const quota = workspaceMiB > 0 ? await createQuotaDir(workspace, workspaceMiB, undefined) : undefined;
      try {
        await this.runInWorkspace(claimed, workspace, datasets.dirs);
      } finally {
        await quota?.release();
      }
    } finally {
      await datasets.release();
    }
  }

  /**
   * The job's datasets from the node cache, kept hidden on its queue while they download (a large set can
   * take longer than the visibility timeout). A file that does not match its manifest finishes the job as
   * `invalid_job`; a cache full of sets other jobs hold sends it back to its queue for later. Undefined
   * when the job does not run here now.
   */
  private async acquireDatasets(
    claimed: ClaimedJob,
  ): Promise<{ readonly dirs: Record<string, string>; release(): Promise<void> } | undefined> {
    const { message, log } = claimed;
    const { address } = message;
    const { datasets: node, heartbeatSeconds, visibilitySeconds, tier } = this.settings;
    if (claimed.datasets.length === 0 || !node) return { dirs: {}, release: () => Promise.resolve() };
    const keepHidden = every(
      heartbeatSeconds,
      () => message.queue.extend(message.receiptHandle, visibilitySeconds),
      log,
      "extending the message while its datasets download",
    );
    try {
      return await acquireJobDatasets(node.cache, claimed.datasets);
    } catch (error) {
      if (error instanceof InvalidJobError) {
        const envelope = invalidJobEnvelope({ jobId: address.jobId, tier }, error, this.settings.node, log);
        await this.finish(address, message, envelope, log, `not run: ${error.message}`);
        return undefined;
      }
      if (!(error instanceof DatasetCacheBusyError)) throw error;
      const delaySeconds = this.settings.policy.fairShare.deferSeconds;
      await message.queue.requeue(message, delaySeconds);
      log.info({ delaySeconds, reason: error.message }, "the dataset cache is full of sets in use; deferred");
      this.emit("deferred", address);
      return undefined;
    } finally {
      clearInterval(keepHidden);
    }
  }

  /**
   * The environment of a job whose code carries requirements, for the image family it will run in (the
   * spec's, else what its code shows, as the launcher would pick): undefined when it carries none.
   */
  private async jobEnvironment(
    claimed: ClaimedJob,
    environments: NodeEnvironments,
    build: { readonly signal: AbortSignal; readonly onOutput: (text: string) => void },
  ) {
    const requirements = await readJobRequirements(claimed.codeZip);
    if (!requirements) return undefined;
    const { job } = claimed;
    const family =
      job.spec.imageFamily ??
      jobImageFamily(getTier(job.tier), { torch: (await detect(claimed.codeZip)).needs.torch });
    const lease = await environments.acquire({
      jobId: claimed.message.address.jobId,
      requirements,
      family,
      signal: build.signal,
      onOutput: build.onOutput,
    });
    // The image had it all: nothing to mount, and the job's own check confirms it.
    if (lease.pythonPath.length === 0) {
      lease.release();
      return undefined;
    }
    return { ...lease, family };
  }

  /** Runs one attempt at the job in its workspace ({@link runAttempt}), then finishes it or hands it back. */
  private async runInWorkspace(
    claimed: ClaimedJob,
    workspace: string,
    datasetDirs: Readonly<Record<string, string>>,
  ): Promise<void> {
    const { message, job, pricing, slot, log } = claimed;
    const { address } = message;
    const { store, node, launcher } = this.settings;
    const { priority } = job;
    const budgeted = (await this.spend.standings(address)).length > 0;
    const { attempt, startedAt, envelope, checkpoints } = await runAttempt({
      store,
      launcher,
      node,
      timing: this.settings,
      message,
      job,
      ...(claimed.resumeFrom && { resumeFrom: claimed.resumeFrom }),
      pricing,
      marker: claimed.marker,
      stop: slot.stop,
      workspace,
      datasetDirs,
      codeZip: claimed.codeZip,
      ...(this.settings.environments && {
        environment: (build) => this.jobEnvironment(claimed, this.settings.environments!, build),
      }),
      logCapBytes: this.settings.logCapBytes,
      log,
      ...(budgeted && {
        overBudget: async (attemptCostUsd: number) =>
          overBudget(await this.spend.standings(address), attemptCostUsd + this.marginUsd(pricing)),
      }),
      onStarted: (_attempt, started) => {
        slot.job = {
          address,
          priority,
          preemptible: job.spec.preemptible !== false,
          startedAt: started.getTime(),
        };
        this.emit("started", address);
      },
      onProgress: (event) => this.emit("progress", address, event),
    });
    const reason = envelope.reason;
    // Interrupted: stopped with this node, or (on Kubernetes) its pod was evicted or lost with its node.
    if (reason === "preempted" || reason === "interrupted") {
      await this.recordAttempt(
        address,
        priority,
        attempt,
        startedAt,
        envelope,
        pricing,
        reason === "preempted" ? "preempted" : "handed-back",
      );
      log.info({ reason, checkpoints }, "job handed back with its checkpoints");
      await this.handBack(message, priority, reason, envelope, pricing);
      return;
    }
    await store.uploadDir(address, "outputs", join(workspace, "outputs"), new Map());
    await this.recordAttempt(address, priority, attempt, startedAt, envelope, pricing, "finished");
    await this.finish(
      address,
      message,
      envelope,
      log,
      reason === "budget"
        ? `stopped: ${this.pausedFor ? `the tier's budget is paused (${this.pausedFor})` : "its owner's budget is spent"}; checkpoints kept`
        : undefined,
      pricing,
    );
  }

  /**
   * Puts a job stopped with the node or preempted back on its queue, to resume from its checkpoints: a
   * preempted one as a fresh message, a handed-back one by releasing the message it came on.
   */
  private async handBack(
    message: ReceivedJob & { address: JobAddress },
    priority: Priority,
    reason: "preempted" | "interrupted",
    envelope: Envelope,
    pricing: Pricing,
  ): Promise<void> {
    const { store, tier, node, queues } = this.settings;
    const { address } = message;
    const preempted = reason === "preempted";
    await store.updateState(address, {
      status: "queued",
      note: preempted
        ? `preempted on ${node} for higher-priority work; resumes from its checkpoints`
        : `handed back: ${reason} on ${node}`,
    });
    if (preempted) {
      // A fresh message in its own class: preemptions must not count towards the dead-letter queue.
      await queues.get(priority).requeue(message);
    } else {
      // A stopping agent releases it only once its last long poll is over: released sooner, that poll
      // could take the message again, and every receive counts towards the dead-letter queue's
      // maxReceiveCount. A job whose pod was lost goes back at once, for any agent (this one too).
      if (this.stopping) await this.polling;
      await message.queue.release(message.receiptHandle);
    }
    await this.settings.recordOutcome?.({
      outcome: "interrupted",
      tier,
      seconds: envelope.executionTime,
      chargedHourlyUsd: chargedHourlyUsd(pricing),
    });
    this.emit("handedBack", address, reason);
  }

  private async pricing(job: AdmittedJob): Promise<Pricing> {
    return priceAttempt(this.settings.tier, await this.settings.nodePrice(), job, this.settings.policy);
  }

  /** What a job may spend before the next budget check has stopped it: one check interval and the grace. */
  private marginUsd(pricing: Pricing): number {
    return spendWithin(this.settings.schedulingPollSeconds + this.settings.graceSeconds, pricing);
  }

  /** Writes the attempt's ledger entry and publishes its owner's month-to-date spend where budgeted. */
  private async recordAttempt(
    address: JobAddress,
    priority: Priority,
    attempt: number,
    startedAt: Date,
    envelope: Envelope,
    pricing: Pricing,
    outcome: LedgerEntry["outcome"],
  ): Promise<void> {
    const { store, tier, node, recordSpend, logger } = this.settings;
    const entry: LedgerEntry = {
      ...address,
      tier,
      priority,
      attempt,
      node,
      startedAt: startedAt.toISOString(),
      endedAt: new Date().toISOString(),
      seconds: envelope.executionTime,
      outcome,
      status: envelope.status,
      ...(envelope.reason && { reason: envelope.reason }),
      pricePerHourUsd: pricing.pricePerHourUsd,
      priceSource: pricing.priceSource,
      priceFactor: pricing.priceFactor,
      costUsd: attemptCost(envelope.executionTime, pricing.pricePerHourUsd, pricing.priceFactor),
    };
    await store.putLedgerEntry(entry);
    this.spend.recorded(entry);
    // The owner's own running total, beside the job: they cannot read finance's ledger.
    const state = await store.getState(address);
    if (state)
      await store.updateState(address, {
        status: state.status,
        costUsd: Math.round(((state.costUsd ?? 0) + entry.costUsd) * 1e6) / 1e6,
      });
    if (!recordSpend) return;
    const standings = await this.spend.standings(address);
    if (standings.length > 0)
      await recordSpend(standings).catch((error: unknown) =>
        logger.warn({ err: error }, "publishing month-to-date spend failed"),
      );
  }

  private async finish(
    address: JobAddress,
    message: ReceivedJob,
    envelope: Envelope,
    log: Logger,
    note?: string,
    pricing?: Pricing,
  ): Promise<void> {
    const { store } = this.settings;
    await store.putLogs(address, envelope.logs);
    if (!(await store.putEnvelope(address, envelope))) {
      log.warn("another agent finished this job first; keeping its envelope");
    }
    const status: JobState["status"] =
      envelope.reason === "cancelled" ? "cancelled" : FINAL_STATUS[envelope.status];
    await store.updateState(address, { status, finishedAt: new Date().toISOString(), ...(note && { note }) });
    await message.queue.delete(message.receiptHandle);
    await this.settings.recordOutcome?.({
      outcome: envelope.status === "success" ? "succeeded" : "failed",
      tier: this.settings.tier,
      seconds: envelope.executionTime,
      chargedHourlyUsd: pricing ? chargedHourlyUsd(pricing) : 0,
    });
    log.info({ status, reason: envelope.reason }, "job finished");
    this.emit("finished", address, envelope);
  }
}

/**
 * A promise that resolves on the next {@link fire} (or after `timeoutMs`): the receive loop sleeps on it
 * while every slot is taken, or while the tier is paused.
 */
function signal(): { wait(timeoutMs?: number): Promise<void>; fire(): void } {
  let release: () => void = () => undefined;
  let next = new Promise<void>((resolve) => (release = resolve));
  return {
    wait: (timeoutMs) => {
      if (timeoutMs === undefined) return next;
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([
        next,
        new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs))),
      ]).finally(() => clearTimeout(timer));
    },
    fire: () => {
      release();
      next = new Promise<void>((resolve) => (release = resolve));
    },
  };
}

/** The envelope of a job finished without running: cancelled or over budget before it started. */
function notRun(
  address: JobAddress,
  tier: string,
  node: string,
  reason: "cancelled" | "budget",
  message: string,
): Envelope {
  return {
    jobId: address.jobId,
    status: "error",
    reason,
    error: { type: reason === "cancelled" ? "Cancelled" : "BudgetExceeded", message },
    exitCode: null,
    executionTime: 0,
    timestamp: new Date().toISOString(),
    systemInfo: { jobId: address.jobId, tier: tier as Envelope["systemInfo"]["tier"], image: "", node },
    resources: {},
    logs: { stdout: "", stderr: "", truncated: false },
  };
}
