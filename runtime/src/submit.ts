import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { JobSpecInput } from "./contract";
import { codeKind, packageCode } from "./code-source";
import type { JobQueue } from "./job-queue";
import type { JobAddress, JobStore, StoredSpec } from "./job-store";
import { jobAddressSchema } from "./job-store";
import { checkJobSpec } from "./job-spec";

export interface Submission {
  readonly path: string;
  readonly address: JobAddress;
  readonly spec: StoredSpec;
  /** The project's quota in GiB; the submission is refused when its code would pass it. */
  readonly quotaGiB: number;
}

export class SubmitError extends Error {
  override readonly name = "SubmitError";
}

/**
 * Queues a job: checks it, zips its code into its workspace prefix, writes its spec and `queued` state,
 * and sends its address to the tier's queue. Nothing is queued when anything is wrong.
 */
export async function submitJob(
  store: JobStore,
  queue: JobQueue,
  submission: Submission,
): Promise<JobAddress> {
  const address = jobAddressSchema.parse(submission.address);
  const spec: JobSpecInput = { ...submission.spec, jobId: address.jobId, code: submission.path };
  checkJobSpec(spec);
  if (await store.getState(address))
    throw new SubmitError(`job ${address.jobId} already exists in ${address.project}/${address.user}`);
  const scratch = await mkdtemp(join(tmpdir(), "crucible-submit-"));
  try {
    const zip = join(scratch, "code.zip");
    await packageCode(submission.path, await codeKind(submission.path), zip);
    const { size } = await stat(zip);
    const used = await store.projectBytes(address.project);
    const quota = submission.quotaGiB * 2 ** 30;
    if (used + size > quota) {
      throw new SubmitError(
        `project ${address.project} would hold ${formatGiB(used + size)} GiB, over its ${submission.quotaGiB} GiB quota; remove old jobs' outputs or raise crucible:workspaces.quotaGiBPerProject`,
      );
    }
    await store.putCode(address, zip);
    await store.putSpec(address, { ...submission.spec, jobId: address.jobId });
    await store.updateState(address, { status: "queued", tier: submission.spec.tier, attempts: 0 });
    await queue.send(address);
    return address;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** Starts a job from another's latest checkpoints (`--resume-from`). */
export async function seedCheckpoints(store: JobStore, from: JobAddress, to: JobAddress): Promise<number> {
  const scratch = await mkdtemp(join(tmpdir(), "crucible-resume-"));
  try {
    const count = await store.downloadCheckpoints(from, scratch);
    if (count === 0) throw new SubmitError(`job ${from.jobId} has no checkpoints to resume from`);
    await store.uploadDir(to, "checkpoints", scratch, new Map());
    return count;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

function formatGiB(bytes: number): string {
  return (bytes / 2 ** 30).toFixed(2);
}
