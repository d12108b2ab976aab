import { mkdir } from "node:fs/promises";
import type { ResumePoint } from "../job/resume-point";
import { restoresFile } from "../job/resume-point";
import { join } from "node:path";
import type { Envelope, Launcher, ProgressEvent, WorkspaceSync } from "../job/contract";
import { StopRequest } from "../job/contract";
import { InvalidJobError } from "../job/job-spec";
import { invalidJobEnvelope } from "../launch/outcome";
import type { EnvironmentLease } from "../environments/environment-cache";
import type { JobImageFamily } from "../catalog/image-matrix";
import type { AdmittedJob } from "../job/job-request";
import { launchInput, redactSecrets, secretRedactor } from "../job/job-request";
import type { ReceivedJob } from "../queue/job-queue";
import type { JobAddress, JobStore, RunningMarker } from "../store/job-store";
import type { BudgetStanding } from "../cost/spend";
import { costOf } from "../cost/ledger";
import type { Logger } from "../logger";
import type { Pricing } from "./pricing";
import { chargedHourlyUsd } from "./pricing";
import { JobTelemetry } from "./job-telemetry";

/** How often an attempt's background work runs, in seconds: the agent's settings. */
export interface AttemptTiming {
  readonly heartbeatSeconds: number;
  readonly visibilitySeconds: number;
  readonly checkpointSeconds: number;
  readonly cancelPollSeconds: number;
  readonly schedulingPollSeconds: number;
  readonly graceSeconds: number;
  /** Seconds between shipments of the job's log and metrics to the store. */
  readonly logFlushSeconds: number;
}

export interface AttemptInput {
  readonly store: JobStore;
  readonly launcher: Launcher;
  readonly node: string;
  readonly timing: AttemptTiming;
  readonly message: ReceivedJob & { address: JobAddress };
  readonly job: AdmittedJob;
  /** The submitter's earlier job (and maybe step) whose checkpoints it starts from, when it names one. */
  readonly resumeFrom?: ResumePoint;
  readonly pricing: Pricing;
  /** Its place in the fair share, refreshed with each heartbeat. */
  readonly marker: RunningMarker;
  /** Aborted to stop the job (cancel, budget, preemption, the node going away). */
  readonly stop: AbortController;
  /** The job's `/workspace`, already made (and sized). */
  readonly workspace: string;
  /** Its datasets' directories in the node cache, by name: mounted read-only at /datasets/NAME. */
  readonly datasetDirs: Readonly<Record<string, string>>;
  readonly codeZip: string;
  /**
   * The job's environment (its requirements, built or cached), got once the attempt runs, so a build is
   * charged, shown in the job's log as it goes, and stopped with the job. Undefined when the job needs
   * none. Throws {@link InvalidJobError} for requirements that cannot be built.
   */
  readonly environment?: (build: {
    readonly signal: AbortSignal;
    readonly onOutput: (text: string) => void;
  }) => Promise<(EnvironmentLease & { readonly family: JobImageFamily }) | undefined>;
  /** Log bytes the job may store over all its attempts. */
  readonly logCapBytes: number;
  readonly log: Logger;
  /**
   * The budget the job's owner has run past with `attemptCostUsd` spent by this attempt so far, or
   * undefined; asked every scheduling poll when the owner has a budget at all.
   */
  readonly overBudget?: (attemptCostUsd: number) => Promise<BudgetStanding | undefined>;
  /** Called once the job's state says running, before it is launched. */
  readonly onStarted: (attempt: number, startedAt: Date) => void;
  readonly onProgress: (event: ProgressEvent) => void;
}

/** How an attempt ended: its envelope (secrets redacted), already stored under the attempt's number. */
export interface AttemptResult {
  readonly attempt: number;
  readonly startedAt: Date;
  readonly envelope: Envelope;
  /** Checkpoint files uploaded by this attempt. */
  readonly checkpoints: number;
}

/**
 * One attempt at a claimed job, from restoring its checkpoints to the envelope it ends with: marks the
 * job running, keeps its message hidden and its fair-share place fresh, syncs its checkpoints, watches for
 * cancel requests and its owner's budget, and stores what the attempt leaves. What happens next (finish,
 * hand back, requeue) is the agent's to decide.
 */
export async function runAttempt(input: AttemptInput): Promise<AttemptResult> {
  const { store, message, job, resumeFrom, workspace, log } = input;
  const { address } = message;
  const checkpoints = join(workspace, "checkpoints");
  await mkdir(checkpoints, { recursive: true });
  let restored = await store.downloadCheckpoints(address, checkpoints);
  // Its own checkpoints first: a resumed job that was since interrupted continues from where it got to.
  if (restored === 0 && resumeFrom)
    restored = await store.downloadCheckpoints(resumeFrom.from, checkpoints, restoresFile(resumeFrom));
  const previous = await store.getState(address);
  const attempt = (previous?.attempts ?? 0) + 1;
  const startedAt = new Date();
  await store.updateState(address, {
    status: "running",
    tier: job.tier,
    attempts: attempt,
    node: input.node,
    startedAt: startedAt.toISOString(),
    resumedFromCheckpoint: restored > 0,
    chargedHourlyUsd: chargedHourlyUsd(input.pricing),
  });
  log.info({ attempt, priority: job.priority, restoredCheckpoints: restored }, "job started");
  input.onStarted(attempt, startedAt);

  const logs = store.logSeries(address);
  const telemetry = new JobTelemetry({
    logs,
    metrics: store.metricSeries(address),
    attempt,
    capBytes: input.logCapBytes,
    redact: secretRedactor(job.spec.env),
    storedBytes: await logs.storedBytes(),
    log,
    onProgress: async (progress) => {
      await store.updateState(address, { status: "running", progress });
    },
  });
  const uploaded = new Map<string, string>();
  // Where the job does not write `workspace` itself (a Kubernetes pod), its launcher says how to bring it here.
  let workspaceSync: WorkspaceSync | undefined;
  const timers = [
    ...backgroundWork(input, checkpoints, uploaded, startedAt, () => workspaceSync),
    every(input.timing.logFlushSeconds, () => telemetry.flush(), log, "log shipment"),
  ];
  let envelope: Envelope | undefined;
  let environment: Awaited<ReturnType<NonNullable<AttemptInput["environment"]>>>;
  try {
    await message.queue.extend(message.receiptHandle, input.timing.visibilitySeconds);
    try {
      environment = await input.environment?.({
        signal: input.stop.signal,
        onOutput: (text) => void telemetry.write("stderr", text),
      });
    } catch (error) {
      // Stopped mid-build: the launcher below answers a stopped job as it does any other.
      if (error instanceof InvalidJobError && !input.stop.signal.aborted)
        envelope = invalidJobEnvelope({ jobId: address.jobId, tier: job.tier }, error, input.node, log);
      else if (!input.stop.signal.aborted) throw error;
    }
    envelope ??= await input.launcher.run(
      launchInput(job, {
        jobId: address.jobId,
        codeZip: input.codeZip,
        workspaceDir: workspace,
        ...(Object.keys(input.datasetDirs).length > 0 && { datasetDirs: input.datasetDirs }),
        ...(environment && {
          environment: {
            dir: environment.dir,
            pythonPath: environment.pythonPath,
            family: environment.family,
          },
        }),
      }),
      {
        signal: input.stop.signal,
        onLog: (stream, text) => telemetry.write(stream, text),
        onProgress: (event) => {
          telemetry.progress(event);
          input.onProgress(event);
        },
        onResources: (sample) => telemetry.resources(sample),
        onWorkspace: (sync) => (workspaceSync = sync),
      },
    );
  } finally {
    environment?.release();
    for (const timer of timers) clearInterval(timer);
    await telemetry.close();
  }
  envelope = redactSecrets(envelope, job.spec.env);
  await store.uploadDir(address, "checkpoints", checkpoints, uploaded);
  await store.putAttemptEnvelope(address, attempt, envelope);
  return { attempt, startedAt, envelope, checkpoints: uploaded.size };
}

/** The timers an attempt runs beside the job: heartbeat, checkpoint sync, cancel poll, budget check. */
function backgroundWork(
  input: AttemptInput,
  checkpoints: string,
  uploaded: Map<string, string>,
  startedAt: Date,
  workspaceSync: () => WorkspaceSync | undefined,
): NodeJS.Timeout[] {
  const { store, message, timing, stop, log, pricing, overBudget } = input;
  const { address } = message;
  const timers = [
    every(
      timing.heartbeatSeconds,
      async () => {
        await message.queue.extend(message.receiptHandle, timing.visibilitySeconds);
        await store.markRunning(input.marker, input.node);
      },
      log,
      "heartbeat",
    ),
    every(
      timing.checkpointSeconds,
      async () => {
        await workspaceSync()?.pull(["checkpoints"]);
        await store.uploadDir(address, "checkpoints", checkpoints, uploaded);
      },
      log,
      "checkpoint upload",
    ),
    every(
      timing.cancelPollSeconds,
      async () => {
        if (await store.cancelRequested(address))
          stop.abort(new StopRequest("cancelled", timing.graceSeconds));
      },
      log,
      "cancel poll",
    ),
  ];
  if (overBudget)
    timers.push(
      every(
        timing.schedulingPollSeconds,
        async () => {
          const sofar = costOf(
            (Date.now() - startedAt.getTime()) / 1000,
            pricing.pricePerHourUsd,
            pricing.priceFactor,
          );
          const over = await overBudget(sofar);
          if (!over || stop.signal.aborted) return;
          log.warn({ budget: over, attemptCostUsd: sofar }, "stopping the job: its owner's budget is spent");
          stop.abort(new StopRequest("budget", timing.graceSeconds));
        },
        log,
        "budget check",
      ),
    );
  return timers;
}

/** Runs `action` every `seconds`, logging (not throwing) its failures. */
export function every(
  seconds: number,
  action: () => Promise<unknown>,
  log: Logger,
  what: string,
): NodeJS.Timeout {
  return setInterval(() => {
    action().catch((error: unknown) => log.warn({ err: error }, `${what} failed`));
  }, seconds * 1000);
}
