import type { JobAddress } from "./contract";
import { jobIdSchema } from "./contract";
import type { JobStore } from "../store/job-store";
import { stepOf } from "../store/job-files";

/**
 * Where a job starts from: the checkpoints of one of its submitter's earlier jobs, all of them (the job's
 * latest state) or only those of one step (`--resume-from JOB@STEP`), told apart by the step in their
 * names as `crucible checkpoints` shows it (job-files.ts {@link stepOf}).
 */
export interface ResumePoint {
  /** Within the submitter's own prefix by construction: built from a job id, never a path. */
  readonly from: JobAddress;
  readonly step?: number;
}

/** The resume point of a job of `owner` that names `jobId` (and maybe a step) to start from. */
export function resumePointOf(owner: JobAddress, jobId: string, step: number | undefined): ResumePoint {
  return { from: { ...owner, jobId }, ...(step !== undefined && { step }) };
}

/** `JOB` or `JOB@STEP`, as `--resume-from` takes it; throws a RangeError naming the flag and the form. */
export function parseResumeFlag(text: string): { readonly jobId: string; readonly step?: number } {
  const at = text.lastIndexOf("@");
  const jobId = at < 0 ? text : text.slice(0, at);
  const stepText = at < 0 ? undefined : text.slice(at + 1);
  if (!jobIdSchema.safeParse(jobId).success)
    throw new RangeError(
      `--resume-from must be the id of one of your own jobs, optionally with @STEP, got "${text}" (jobs of other users cannot be resumed from)`,
    );
  if (stepText === undefined) return { jobId };
  if (!/^\d{1,15}$/.test(stepText))
    throw new RangeError(
      `--resume-from ${text}: the step after "@" must be a whole number such as ${jobId}@1200, got "${stepText}"`,
    );
  return { jobId, step: Number(stepText) };
}

/** Which of the earlier job's checkpoint files a resume restores. */
export function restoresFile(point: ResumePoint): (name: string) => boolean {
  const { step } = point;
  return step === undefined ? () => true : (name) => stepOf(name) === step;
}

/**
 * Why a job cannot start from `point`, or undefined when it can: the earlier job has no checkpoints, or
 * none of the step asked for (the message lists the steps it has). Asked at submit and again by the agent,
 * as the checkpoints may have expired or been removed in between.
 */
export async function resumeRefusal(store: JobStore, point: ResumePoint): Promise<string | undefined> {
  const { from, step } = point;
  const names = await store.checkpointNames(from);
  if (names.length === 0) return `job ${from.jobId} has no checkpoints in ${from.project}/${from.user}`;
  if (step === undefined || names.some(restoresFile(point))) return undefined;
  const steps = [...new Set(names.map(stepOf).filter((s) => s !== undefined))].sort((a, b) => a - b);
  return steps.length === 0
    ? `job ${from.jobId} has no checkpoint at step ${step}: none of its checkpoint files names a step; resume from ${from.jobId} (its latest files) instead`
    : `job ${from.jobId} has no checkpoint at step ${step}; it has steps ${listSteps(steps)}`;
}

/** At most the first and last few steps: a long run may have kept thousands. */
function listSteps(steps: readonly number[]): string {
  return steps.length <= 12
    ? steps.join(", ")
    : `${steps.slice(0, 5).join(", ")}, … ${steps.slice(-5).join(", ")} (${steps.length} in all)`;
}
