import { z } from "zod";
import { datasetRefSchema } from "../catalog/datasets";
import type { Envelope, JobSpecInput } from "./contract";
import { jobEnvSchema, jobIdSchema } from "./contract";
import type { JobImageFamily } from "../catalog/image-matrix";
import { imageFamilyRefusal, JOB_IMAGE_FAMILIES } from "../catalog/image-matrix";
import type { JobAddress } from "../store/job-store";
import { InvalidJobError, jobTimeout, parseStrict } from "./job-spec";
import type { Priority } from "../catalog/scheduling";
import { PRIORITIES } from "../catalog/scheduling";
import type { TierName } from "../catalog/tiers";
import { getTier, TIER_NAMES } from "../catalog/tiers";

/** Datasets one job may name: each is a mount, and a node caches a few at most. */
export const MAX_JOB_DATASETS = 16;

/**
 * `spec.json`: what a submitter chooses for a platform job, and nothing else. It sits in the submitter's
 * own prefix, where they can rewrite it after submitting, so the agent reads it as hostile input: this
 * strict schema, then {@link admitJob} against the queue the message came from. Host paths, free image
 * names and anything unknown are refused by name; the tier and priority are the queue's, and a spec that
 * states others is refused rather than obeyed.
 */
export const submittedSpecSchema = z.strictObject({
  jobId: jobIdSchema,
  /** The tier the submitter queued for; informative, and it must be the queue's. */
  tier: z.enum(TIER_NAMES, { error: `must be one of ${TIER_NAMES.join(", ")}` }).optional(),
  /** The priority class the submitter queued in; informative, and it must be the queue's. */
  priority: z.enum(PRIORITIES, { error: `must be one of ${PRIORITIES.join(", ")}` }).optional(),
  env: jobEnvSchema.default({}),
  /** Seconds before the job is stopped; at most the tier's maximum runtime. */
  timeoutSeconds: z.number().int().positive().optional(),
  /** Which of the node's pinned images to run in; by default picked from the tier and the code. */
  imageFamily: z
    .enum(JOB_IMAGE_FAMILIES, { error: `must be one of ${JOB_IMAGE_FAMILIES.join(", ")}` })
    .optional(),
  /** One of the submitter's own earlier jobs (a job id, never a path) whose checkpoints this job starts from. */
  resumeFrom: jobIdSchema.optional(),
  /** With `resumeFrom`: only the checkpoint files of this step (as `crucible checkpoints` lists them). */
  resumeStep: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
  /** `false`: never stopped for higher-priority work, at the scheduling policy's price factor. */
  preemptible: z.boolean().optional(),
  /**
   * Datasets the job reads, each `NAME@VERSION` of the submitter's own or the platform's pre-cached sets,
   * mounted read-only at /datasets/NAME. Resolved by the agent against the submitter's own prefix.
   */
  datasets: z
    .array(datasetRefSchema)
    .max(MAX_JOB_DATASETS, { error: `at most ${MAX_JOB_DATASETS} datasets per job` })
    .optional(),
});
export type SubmittedSpec = z.output<typeof submittedSpecSchema>;
export type SubmittedSpecInput = z.input<typeof submittedSpecSchema>;

/** Largest `spec.json` the agent reads: the environment's bound with room for the other fields. */
export const MAX_SPEC_BYTES = 1024 * 1024;

/** Where a message came from, which decides what its job may be. */
export interface Arrival {
  readonly address: JobAddress;
  readonly tier: TierName;
  readonly priority: Priority;
}

/** A job the agent may run: its spec, and the tier and priority of the queue it arrived on. */
export interface AdmittedJob {
  readonly spec: SubmittedSpec;
  readonly tier: TierName;
  readonly priority: Priority;
  readonly timeoutSeconds: number;
}

/**
 * Checks a stored spec against the queue it arrived on. Throws {@link InvalidJobError} naming the field
 * for anything a submitter may not choose: unknown fields (host paths, images), another job's id, a tier
 * or priority other than the queue's, a timeout past the tier's limit, an image family the tier's nodes
 * do not run, a resume from the job itself, or a resume step without the job to resume from.
 */
export function admitJob(raw: unknown, arrival: Arrival): AdmittedJob {
  const spec = parseStrict(submittedSpecSchema, raw, "spec.json");
  const { address, tier, priority } = arrival;
  if (spec.jobId !== address.jobId)
    throw new InvalidJobError(
      "jobId",
      `jobId must be the job's own id ${address.jobId}, got "${spec.jobId}"`,
    );
  if (spec.tier !== undefined && spec.tier !== tier)
    throw new InvalidJobError(
      "tier",
      `tier must be ${tier}, the tier of the queue the job was sent to, got "${spec.tier}"; submit to that tier's queue instead`,
    );
  if (spec.priority !== undefined && spec.priority !== priority)
    throw new InvalidJobError(
      "priority",
      `priority must be ${priority}, the class of the queue the job was sent to, got "${spec.priority}"`,
    );
  const timeoutSeconds = jobTimeout(getTier(tier), spec.timeoutSeconds);
  const refusal = spec.imageFamily && imageFamilyRefusal(getTier(tier), spec.imageFamily);
  if (refusal) throw new InvalidJobError("imageFamily", refusal);
  if (spec.resumeFrom === address.jobId)
    throw new InvalidJobError("resumeFrom", `resumeFrom must name an earlier job, not the job itself`);
  const names = (spec.datasets ?? []).map((d) => d.name);
  const twice = names.find((name, i) => names.indexOf(name) !== i);
  if (twice)
    throw new InvalidJobError(
      "datasets",
      `datasets names ${twice} twice; a job mounts one version of a dataset at /datasets/${twice}`,
    );
  if (spec.resumeStep !== undefined && spec.resumeFrom === undefined)
    throw new InvalidJobError(
      "resumeStep",
      `resumeStep ${spec.resumeStep} needs resumeFrom, the earlier job whose checkpoint of that step to start from`,
    );
  return { spec, tier, priority, timeoutSeconds };
}

/**
 * The launcher's input for an admitted job, built field by field from what the submitter may choose: the
 * code and workspace are the agent's own staging paths, the tier is the queue's, and nothing of the
 * stored spec is spread in.
 */
export function launchInput(
  job: AdmittedJob,
  staged: {
    readonly jobId: string;
    readonly codeZip: string;
    readonly workspaceDir: string;
    /** Each dataset's directory in the node cache, by name. */
    readonly datasetDirs?: Readonly<Record<string, string>>;
    /** The environment its requirements were built into, and the family it was built for. */
    readonly environment?: {
      readonly dir: string;
      readonly pythonPath: readonly string[];
      readonly family: JobImageFamily;
    };
  },
): JobSpecInput {
  const { env, imageFamily } = job.spec;
  return {
    jobId: staged.jobId,
    code: staged.codeZip,
    workspaceDir: staged.workspaceDir,
    tier: job.tier,
    env,
    timeoutSeconds: job.timeoutSeconds,
    ...(imageFamily && { imageFamily: imageFamily satisfies JobImageFamily }),
    ...(staged.datasetDirs && { datasetDirs: { ...staged.datasetDirs } }),
    // Built for one image: the job runs in that one, whatever detection would pick.
    ...(staged.environment && {
      imageFamily: staged.environment.family,
      environment: { dir: staged.environment.dir, pythonPath: [...staged.environment.pythonPath] },
    }),
  };
}

/** Values shorter than this are not redacted: they would blank out common words and numbers. */
const MIN_SECRET_LENGTH = 6;
const REDACTED = "[redacted]";

/**
 * A function that blanks every value of the job's own environment (its `--env` secrets) out of a text,
 * longest first, so one secret containing another is blanked whole.
 */
export function secretRedactor(env: Readonly<Record<string, string>>): (text: string) => string {
  const secrets = [...new Set(Object.values(env))]
    .filter((value) => value.length >= MIN_SECRET_LENGTH)
    .sort((a, b) => b.length - a.length);
  if (secrets.length === 0) return (text) => text;
  return (text) => secrets.reduce((out, secret) => out.split(secret).join(REDACTED), text);
}

/**
 * The envelope with every value of the job's own environment (its `--env` secrets) blanked out of what
 * is stored and shown — its output tails and its error — however the job or the runtime printed them.
 */
export function redactSecrets(envelope: Envelope, env: Readonly<Record<string, string>>): Envelope {
  const clean = secretRedactor(env);
  const { logs, error } = envelope;
  return {
    ...envelope,
    logs: { ...logs, stdout: clean(logs.stdout), stderr: clean(logs.stderr) },
    ...(error && {
      error: {
        ...error,
        message: clean(error.message),
        ...(error.traceback !== undefined && { traceback: clean(error.traceback) }),
      },
    }),
  };
}
