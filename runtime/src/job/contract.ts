import { z } from "zod";
import { datasetNameSchema } from "../catalog/datasets";
import type { ImageFamily } from "../catalog/image-matrix";
import { JOB_IMAGE_FAMILIES } from "../catalog/image-matrix";
import type { Logger } from "../logger";
import { PRIORITIES } from "../catalog/scheduling";
import type { TierLimits, TierName } from "../catalog/tiers";
import { TIER_NAMES } from "../catalog/tiers";

/**
 * The contracts every launcher, the agent and the CLI share: what a job is, what comes back for it
 * whatever happened, and how a running job is asked to stop. See docs/architecture.md, "Contracts".
 */

export const REASONS = [
  "exception",
  "timeout",
  "oom",
  "exit_code",
  "invalid_job",
  "cancelled",
  "interrupted",
  "preempted",
  "budget",
] as const;
export type Reason = (typeof REASONS)[number];

/** Reasons a running job is stopped from outside, each with a checkpoint grace period. */
export const STOP_REASONS = ["cancelled", "interrupted", "preempted", "budget"] as const;
export type StopReason = (typeof STOP_REASONS)[number];

/** Environment variable names a job may set: POSIX-style, and not the runtime's own. */
export const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
export const RESERVED_ENV =
  /^(CRUCIBLE_|NVIDIA_|CUDA_VISIBLE_DEVICES$|PATH$|HOME$|USER$|PYTHONPATH$|PYTHONHOME$|LD_)/;

export const jobIdSchema = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{2,62}$/, { error: "must be 3-63 lowercase letters, digits and dashes" });

/** Where a job lives: `<project>/<user>/<jobId>` (job-store.ts lays it out under `workspaces/`). */
export const jobAddressSchema = z.strictObject({
  project: z
    .string()
    .regex(/^[a-z0-9][a-z0-9-]{0,62}$/, { error: "must be lowercase letters, digits and dashes" }),
  user: z
    .string()
    .regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, { error: "must be lowercase letters, digits, dots and dashes" }),
  jobId: jobIdSchema,
});
export type JobAddress = z.infer<typeof jobAddressSchema>;

/** A job's own environment variables: valid names, none of the runtime's, values of bounded size. */
export const MAX_ENV_VALUE_BYTES = 32 * 1024;
export const MAX_ENV_VARIABLES = 256;
export const jobEnvSchema = z
  .record(
    z
      .string()
      .regex(ENV_NAME, { error: "must be a valid environment variable name" })
      .refine((k) => !RESERVED_ENV.test(k), { error: "is reserved for the runtime" }),
    z.string().max(MAX_ENV_VALUE_BYTES, {
      error: (issue) =>
        `must be at most ${MAX_ENV_VALUE_BYTES} characters, got ${String((issue.input as string).length)} (the value is not shown: it may be a secret)`,
    }),
  )
  .refine((env) => Object.keys(env).length <= MAX_ENV_VARIABLES, {
    error: `may set at most ${MAX_ENV_VARIABLES} variables`,
  });

/** A directory inside a job environment: relative, never leaving it. */
export const environmentPathSchema = z.string().regex(/^(?!\/)(?!.*(^|\/)\.\.(\/|$))[A-Za-z0-9._/-]+$/, {
  error: "must be a relative path inside the environment",
});

export const jobSpecSchema = z.strictObject({
  jobId: jobIdSchema,
  /** A directory holding main.py, a .py file, or a code.zip. */
  code: z.string().min(1, { error: "must be a path to a directory, a .py file or a code.zip" }),
  tier: z.enum(TIER_NAMES, { error: `must be one of ${TIER_NAMES.join(", ")}` }),
  /** Image reference; by default the matrix picks one from the tier and the code. */
  image: z.string().min(1).optional(),
  /** The matrix family to run in (the node's pinned image of it); by default picked from the tier and the code. */
  imageFamily: z
    .enum(JOB_IMAGE_FAMILIES, { error: `must be one of ${JOB_IMAGE_FAMILIES.join(", ")}` })
    .optional(),
  /** Seconds before the job is stopped; at most the tier's maximum runtime. */
  timeoutSeconds: z.number().int().positive().optional(),
  env: jobEnvSchema.default({}),
  /** Host directory mounted at /workspace: checkpoints, outputs. Defaults to a fresh temporary one. */
  workspaceDir: z.string().min(1).optional(),
  /** Host directory mounted read-only at /datasets (`crucible run --datasets DIR`). */
  datasetsDir: z.string().min(1).optional(),
  /**
   * Dataset name → host directory mounted read-only at /datasets/<name>: a platform job's datasets, from
   * the agent's node cache (agent/dataset-cache.ts). Not with `datasetsDir`, which takes all of /datasets.
   */
  datasetDirs: z.record(datasetNameSchema, z.string().min(1)).optional(),
  /**
   * The job's environment: the packages its requirements installed, built outside the sandbox
   * (environments/), mounted read-only at {@link CONTAINER_PATHS.environment}, with `pythonPath` (relative
   * directories inside it) on the job's Python path.
   */
  environment: z
    .strictObject({ dir: z.string().min(1), pythonPath: z.array(environmentPathSchema).min(1).max(8) })
    .optional(),
  /** Which of the tier's queues the job waits in. Defaults to normal. */
  priority: z.enum(PRIORITIES, { error: `must be one of ${PRIORITIES.join(", ")}` }).optional(),
  /** `false`: never stopped for higher-priority work, at the scheduling policy's price factor. */
  preemptible: z.boolean().optional(),
});
export type JobSpec = z.infer<typeof jobSpecSchema>;
export type JobSpecInput = z.input<typeof jobSpecSchema>;

export const envelopeSchema = z.object({
  jobId: z.string(),
  status: z.enum(["success", "error"]),
  reason: z.enum(REASONS).optional(),
  /** What main() returned, as JSON. */
  result: z.unknown().optional(),
  error: z.object({ type: z.string(), message: z.string(), traceback: z.string().optional() }).optional(),
  exitCode: z.number().int().nullable(),
  /** Seconds from container start to exit. */
  executionTime: z.number().nonnegative(),
  timestamp: z.string(),
  systemInfo: z.object({
    python: z.string().optional(),
    jobId: z.string(),
    tier: z.enum(TIER_NAMES),
    image: z.string(),
    imageDigest: z.string().optional(),
    node: z.string(),
  }),
  resources: z.object({
    peakMemoryBytes: z.number().nonnegative().optional(),
    cpuSeconds: z.number().nonnegative().optional(),
  }),
  logs: z.object({ stdout: z.string(), stderr: z.string(), truncated: z.boolean() }),
  /** The last metrics the job reported through the progress protocol. */
  metrics: z.record(z.string(), z.number()).optional(),
});
export type Envelope = z.infer<typeof envelopeSchema>;

export interface ProgressEvent {
  readonly jobId: string;
  readonly step?: number;
  readonly total?: number;
  /** Named numbers the job reported: loss, lr, tokens_per_s, epoch... */
  readonly metrics: Readonly<Record<string, number>>;
  /** Where it came from: the runner's protocol, or a recognised log line. */
  readonly source: "protocol" | "log";
}

/**
 * What a running job uses, sampled by its launcher: memory and CPU of its sandbox, and the node's GPUs
 * where measured (a GPU tier's node runs one job, so they are the job's).
 */
export interface ResourceSample {
  /** Memory the job's processes hold, page cache it could drop left out (as `docker stats` counts it). */
  readonly memoryMiB: number;
  /** CPU time used per second since the previous sample, in cores; absent on the first sample. */
  readonly cpuCores?: number;
  /** Mean utilisation of the GPUs, 0–100. */
  readonly gpuUtilPercent?: number;
  /** GPU memory in use, summed over the GPUs. */
  readonly gpuMemoryMiB?: number;
}

/** Passed as an AbortSignal's reason to stop a running job: SIGTERM, `graceSeconds`, then SIGKILL. */
export class StopRequest {
  constructor(
    readonly reason: StopReason,
    readonly graceSeconds: number,
  ) {}
}

export interface LaunchOptions {
  /** Aborting it stops the job; its reason should be a {@link StopRequest} (default: cancelled). */
  readonly signal?: AbortSignal;
  readonly onProgress?: (event: ProgressEvent) => void;
  /**
   * Each chunk of the job's output as it arrives. Returning an {@link OutputHold} says the consumer is
   * behind: the launcher stops reading the job's output until it is released, so the job blocks on its
   * full pipe instead of the runtime buffering (or dropping) what it prints.
   */
  readonly onLog?: (stream: "stdout" | "stderr", text: string) => OutputHold | undefined | void;
  /** A sample of what the job uses, every few seconds while it runs, where the launcher can measure it. */
  readonly onResources?: (sample: ResourceSample) => void;
  /**
   * Called once the job's workspace can be brought into `workspaceDir` on demand, by a launcher whose job
   * does not write that directory itself (Kubernetes: the pod's own volume). The agent's checkpoint sync
   * pulls through it before each upload, so checkpoints reach the store at the same cadence as from a
   * Docker job's bind-mounted workspace, which needs no such call and gets none.
   */
  readonly onWorkspace?: (sync: WorkspaceSync) => void;
}

/** The parts of a job's `/workspace` the agent stores: checkpoints while it runs, outputs once it ends. */
export const WORKSPACE_PARTS = ["checkpoints", "outputs"] as const;
export type WorkspacePart = (typeof WORKSPACE_PARTS)[number];

/** A running job's workspace as its launcher mirrors it into `workspaceDir` ({@link LaunchOptions.onWorkspace}). */
export interface WorkspaceSync {
  /**
   * Makes each part under `workspaceDir` what it is in the job's `/workspace` now. Resolves without
   * copying once the job's files have been collected for the last time. Never rejects: a failed pull is
   * logged, and the next one catches up.
   */
  pull(parts: readonly WorkspacePart[]): Promise<void>;
}

/** A consumer of a job's output asking the launcher to pause reading until `released` settles. */
export interface OutputHold {
  readonly released: Promise<void>;
}

/** Runs one job to completion in a sandbox. Docker today, Kubernetes later: the agent and CLI see only this. */
export interface Launcher {
  /** Never rejects for anything the job did: every outcome is an envelope. */
  run(spec: JobSpecInput, options?: LaunchOptions): Promise<Envelope>;
  /** Removes sandboxes left behind by a crashed runtime; returns how many. */
  gc(): Promise<number>;
}

/** What every launcher is configured with, whatever it runs jobs on. */
export interface LauncherOptions {
  readonly logger?: Logger;
  /** Name of this node in envelopes. Defaults to the host name (a pod's name on Kubernetes). */
  readonly node?: string;
  /** Seconds between SIGTERM and SIGKILL at the deadline, and for stops that give none. Defaults to 10. */
  readonly graceSeconds?: number;
  /** Stack overrides of tier limits; capped at each tier's ceilings. Defaults to none. */
  readonly tierOverrides?: Partial<Record<TierName, Partial<TierLimits>>>;
  /** Bytes of each output stream kept in the envelope. Defaults to 64 KiB. */
  readonly tailBytes?: number;
  /** Images to run per family instead of the local matrix tags. Defaults to none. */
  readonly images?: Partial<Record<ImageFamily, string>>;
}

/**
 * The in-container contract between the launcher and the job runner (images/runner):
 * the launcher mounts the job's code.zip read-only at {@link CONTAINER_PATHS.code}, an empty writable
 * directory at {@link CONTAINER_PATHS.output}, and the workspace at /workspace; the runner writes its
 * part of the envelope to `<output>/runner.json` (atomically) before it exits.
 */
export const CONTAINER_PATHS = {
  code: "/crucible/input/code.zip",
  output: "/crucible/output",
  runnerResult: "/crucible/output/runner.json",
  workspace: "/workspace",
  checkpoints: "/workspace/checkpoints",
  datasets: "/datasets",
  /** The job's environment (`environment`), read-only. */
  environment: "/opt/crucible/env",
  tmp: "/tmp",
} as const;

/**
 * The S3 object tag the agent puts on every checkpoint it uploads under
 * `workspaces/<project>/<user>/jobs/<id>/checkpoints/`: the bucket's shorter checkpoint lifecycle rule
 * selects by it, because S3 prefix filters cannot wildcard the project, user and job levels.
 */
export const CHECKPOINT_OBJECT_TAG = { key: "crucible:kind", value: "checkpoint" } as const;

/**
 * The CloudWatch metrics the agent publishes for every job it finishes or hands back, with the one
 * dimension `Tier`: a count of 1 under the outcome's name, the attempt's run time, and its cost at the
 * tier's on-demand price (an upper bound on spot). The stack's dashboard plots them per tier.
 */
export const JOB_METRICS = {
  namespace: "Crucible/Jobs",
  dimension: "Tier",
  /** The envelope's status is `success`. */
  succeeded: "JobsSucceeded",
  /** The envelope's status is `error` (any reason): the job is finished and will not run again. */
  failed: "JobsFailed",
  /** Stopped for a spot interruption or scale-in with no envelope: the message returns to the queue. */
  interrupted: "JobsInterrupted",
  /** Seconds the attempt ran (unit Seconds). */
  seconds: "JobSeconds",
  /** The attempt's run time at the tier's on-demand hourly price, in USD (unit None). */
  costUsd: "JobCostUsd",
} as const;

/**
 * Month-to-date spend per user and per project (USD, unit None, statistic Maximum), published by the agent
 * from the ledger after every attempt it records. The stack declares an alarm per configured user and
 * project budget on them. Same namespace as {@link JOB_METRICS}: nodes may write there and nowhere else.
 */
export const SPEND_METRICS = {
  namespace: JOB_METRICS.namespace,
  user: { metricName: "UserMonthToDateSpendUsd", dimension: "User" },
  project: { metricName: "ProjectMonthToDateSpendUsd", dimension: "Project" },
} as const;

/** One finished or handed-back attempt, as the agent reports it. */
export interface JobOutcome {
  readonly outcome: "succeeded" | "failed" | "interrupted";
  readonly tier: string;
  readonly seconds: number;
  /** What the attempt was charged per hour, as its ledger entry (spot price, no-preempt factor); 0 if it never ran. */
  readonly chargedHourlyUsd: number;
}

/** A line a job prints (through `crucible.progress(...)`) to report progress; JSON follows the prefix. */
export const PROGRESS_PREFIX = "##crucible:progress ";

/** What the runner writes to `runner.json`. The launcher's own measurements always win over it. */
export const runnerResultSchema = z.object({
  status: z.enum(["success", "error"]),
  reason: z.enum(["exception", "invalid_job"]).optional(),
  result: z.unknown().optional(),
  error: z.object({ type: z.string(), message: z.string(), traceback: z.string().optional() }).optional(),
  python: z.string().optional(),
  resources: z
    .object({
      peakMemoryBytes: z.number().nonnegative().optional(),
      cpuSeconds: z.number().nonnegative().optional(),
    })
    .optional(),
});
export type RunnerResult = z.infer<typeof runnerResultSchema>;
