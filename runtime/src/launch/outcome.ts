import { constants as osConstants } from "node:os";
import type {
  Envelope,
  JobSpecInput,
  LaunchOptions,
  Reason,
  RunnerResult,
  StopReason,
} from "../job/contract";
import { CONTAINER_PATHS, envelopeSchema, runnerResultSchema, StopRequest } from "../job/contract";
import type { InvalidJobError, PreparedJob } from "../job/job-spec";
import type { Logger } from "../logger";
import { JobOutput } from "./output";
import { isTierName, TIER_NAMES } from "../catalog/tiers";

/**
 * What every launcher shares once its engine has measured a run: the stop that reached the job, the
 * outcome judged from the measurements and the runner's result, and the envelope assembled from them.
 */

/** A stop that reached a running job: from outside (a {@link StopRequest}) or at its deadline. */
export interface Stop {
  readonly reason: StopReason | "timeout";
  readonly graceSeconds: number;
}

/** What an abort asks for: its {@link StopRequest}, or a cancellation with the launcher's default grace. */
export function stopFrom(reason: unknown, defaultGraceSeconds: number): Stop {
  if (reason instanceof StopRequest)
    return { reason: reason.reason, graceSeconds: Math.max(0, reason.graceSeconds) };
  return { reason: "cancelled", graceSeconds: defaultGraceSeconds };
}

/** The runner's part of the envelope, or why there is none. */
export interface RunnerRead {
  readonly result?: RunnerResult;
  readonly problem?: string;
}

/** Parses runner.json's text against the runner contract, never trusting it. */
export function parseRunnerResult(text: string): RunnerRead {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { problem: "runner.json is not valid JSON" };
  }
  const parsed = runnerResultSchema.safeParse(value);
  if (!parsed.success)
    return { problem: `runner.json does not match the runner contract: ${parsed.error.issues[0]?.message}` };
  return { result: parsed.data };
}

export interface Judged {
  readonly status: Envelope["status"];
  readonly reason?: Reason;
  readonly result?: unknown;
  readonly error?: Envelope["error"];
}

/**
 * The outcome, trusting the engine's measurements over anything the job wrote: a stop that reached it,
 * then an OOM kill, then the runner's error, then the exit code; only a clean exit with a runner result
 * of success is a success. A runner record of `error` without a reason is no verdict (the job ended
 * without saying why, e.g. `sys.exit(3)`): it carries only the supervisor's measurements, and the exit
 * code decides. A failed job whose workspace volume is full (`diskFull`, measured after it ended) says so.
 */
export function judge(facts: {
  readonly stop: Stop | undefined;
  readonly oom: boolean;
  readonly exitCode: number;
  readonly runner: RunnerRead;
  readonly job: Pick<PreparedJob, "tier" | "timeoutSeconds" | "image">;
  readonly diskFull?: { readonly quotaMiB: number };
}): Judged {
  const judged = judgeMeasured(facts);
  const { diskFull, job } = facts;
  if (!diskFull || judged.status !== "error" || judged.reason === "oom") return judged;
  if (facts.stop && judged.reason !== "timeout") return judged;
  const message = `the job filled its ${diskFull.quotaMiB} MiB disk quota (${CONTAINER_PATHS.workspace}, tier ${job.tier.name} workspaceMiB): writes past it fail with ENOSPC`;
  return {
    ...judged,
    error: {
      ...judged.error,
      type: DISK_QUOTA_ERROR,
      message: judged.error?.message ? `${message}; ${judged.error.message}` : message,
    },
  };
}

/** The error type of a failed job whose workspace was full when it ended. */
export const DISK_QUOTA_ERROR = "DiskQuotaExceeded";

function judgeMeasured(facts: Parameters<typeof judge>[0]): Judged {
  const { stop, oom, exitCode, runner, job } = facts;
  const { tier } = job;
  if (stop?.reason === "timeout") {
    return {
      status: "error",
      reason: "timeout",
      error: {
        type: "Timeout",
        message: `the job ran past its ${job.timeoutSeconds} s limit (tier ${tier.name}); it got SIGTERM and ${stop.graceSeconds} s before SIGKILL`,
      },
    };
  }
  if (stop) {
    return {
      status: "error",
      reason: stop.reason,
      error: {
        type: "Stopped",
        message: `the job was stopped (${stop.reason}); it got SIGTERM and ${stop.graceSeconds} s to checkpoint before SIGKILL`,
      },
    };
  }
  if (oom) {
    return {
      status: "error",
      reason: "oom",
      error: {
        type: "OutOfMemory",
        message: `the job used more than its ${tier.memoryMiB} MiB memory limit (tier ${tier.name}) and was killed`,
      },
    };
  }
  if (runner.result?.status === "error" && runner.result.reason !== undefined) {
    return {
      status: "error",
      reason: runner.result.reason,
      error: runner.result.error ?? {
        type: "Error",
        message: "the job failed and its runner gave no details",
      },
    };
  }
  if (exitCode !== 0) {
    const signal = exitCode > 128 ? signalName(exitCode - 128) : undefined;
    return {
      status: "error",
      reason: "exit_code",
      error: {
        type: "ExitCode",
        message: `the job exited with code ${exitCode}${signal ? ` (killed by ${signal})` : ""}${runner.problem ? `; ${runner.problem}` : ""}`,
      },
    };
  }
  if (runner.result?.status !== "success") {
    return {
      status: "error",
      reason: "invalid_job",
      error: {
        type: "NoRunnerResult",
        message: `${job.image} exited without a usable ${CONTAINER_PATHS.runnerResult} (${runner.problem ?? "it holds no verdict"}); is it a Crucible job image?`,
      },
    };
  }
  return { status: "success", result: runner.result.result };
}

/** The fields of an envelope a launcher measured or judged; the rest come from the job and the node. */
export type EnvelopeFields = Omit<Envelope, "jobId" | "timestamp" | "systemInfo" | "logs"> & {
  readonly python?: string;
  readonly imageDigest?: string;
};

/** An envelope of a prepared job, stamped now. */
export function buildEnvelope(
  job: Pick<PreparedJob, "spec" | "tier" | "image">,
  node: string,
  logs: Envelope["logs"],
  fields: EnvelopeFields,
): Envelope {
  const { python, imageDigest, ...rest } = fields;
  return envelopeSchema.parse({
    jobId: job.spec.jobId,
    ...rest,
    timestamp: new Date().toISOString(),
    systemInfo: {
      ...(python && { python }),
      jobId: job.spec.jobId,
      tier: job.tier.name,
      image: job.image,
      ...(imageDigest && { imageDigest }),
      node,
    },
    logs,
  });
}

/** A run's bounded output and the envelopes it can end in: the same for every launcher. */
export function runReporting(
  job: Pick<PreparedJob, "spec" | "tier" | "image">,
  node: string,
  tailBytes: number | undefined,
  options: Pick<LaunchOptions, "onLog" | "onProgress">,
): {
  readonly output: JobOutput;
  readonly envelope: (fields: EnvelopeFields) => Envelope;
  readonly stoppedBeforeStart: (stop: Stop) => Envelope;
} {
  const output = new JobOutput({
    jobId: job.spec.jobId,
    ...(tailBytes !== undefined && { tailBytes }),
    ...(options.onLog && { onLog: options.onLog }),
    ...(options.onProgress && { onProgress: options.onProgress }),
  });
  const envelope = (fields: EnvelopeFields): Envelope => buildEnvelope(job, node, output.logs(), fields);
  const stoppedBeforeStart = (stop: Stop): Envelope =>
    envelope({
      status: "error",
      reason: stop.reason,
      error: { type: "Stopped", message: `the job was stopped (${stop.reason}) before it started` },
      exitCode: null,
      executionTime: 0,
      resources: {},
    });
  return { output, envelope, stoppedBeforeStart };
}

/** The envelope of a job that cannot run as given: nothing was started. */
export function invalidJobEnvelope(
  input: Partial<Pick<JobSpecInput, "jobId" | "tier" | "image">>,
  error: InvalidJobError,
  node: string,
  logger: Logger,
): Envelope {
  const jobId = typeof input.jobId === "string" ? input.jobId : "";
  // An envelope names a tier; when the tier itself is what is wrong, the smallest stands in.
  const tier = typeof input.tier === "string" && isTierName(input.tier) ? input.tier : TIER_NAMES[0];
  logger.warn({ jobId, field: error.field }, `invalid job: ${error.message}`);
  return envelopeSchema.parse({
    jobId,
    status: "error",
    reason: "invalid_job",
    error: { type: error.name, message: error.message },
    exitCode: null,
    executionTime: 0,
    timestamp: new Date().toISOString(),
    systemInfo: { jobId, tier, image: input.image ?? "", node },
    resources: {},
    logs: { stdout: "", stderr: "", truncated: false },
  });
}

/** Waits for output streams to end after exit, but not forever: the envelope goes out without their end. */
export async function drain(ended: Promise<void>, log: Logger, timeoutMs: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), timeoutMs);
  });
  const late = await Promise.race([ended.then(() => false), timedOut]);
  clearTimeout(timer);
  if (late) log.warn(`output streams still open ${timeoutMs} ms after exit; the logs may miss their end`);
}

/** Seconds between two engine timestamps (RFC 3339, any fraction); 0 when the container never ran. */
export function secondsBetween(started: string | undefined, finished: string | undefined): number {
  const a = started === undefined ? undefined : epochSeconds(started);
  const b = finished === undefined ? undefined : epochSeconds(finished);
  // A container that never ran reports the zero time, year 1.
  if (a === undefined || b === undefined || a <= 0 || b < a) return 0;
  return Math.round((b - a) * 1e6) / 1e6;
}

function epochSeconds(timestamp: string): number | undefined {
  const match = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/.exec(timestamp);
  if (!match) return undefined;
  const whole = Date.parse(`${match[1]}${match[3]}`);
  return Number.isFinite(whole) ? whole / 1000 + Number(`0.${match[2] ?? "0"}`) : undefined;
}

function signalName(signal: number): string | undefined {
  return Object.entries(osConstants.signals).find(([, n]) => n === signal)?.[0];
}
