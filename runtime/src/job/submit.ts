import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { codeKind, packageCode } from "./code-source";
import type { JobQueue } from "../queue/job-queue";
import type { SubmittedSpecInput } from "./job-request";
import { admitJob } from "./job-request";
import { InvalidJobError } from "./job-spec";
import { resumePointOf, resumeRefusal } from "./resume-point";
import type { JobAddress, JobStore } from "../store/job-store";
import { jobAddressSchema } from "../store/job-store";
import { packageRefusal, readJobRequirements } from "../environments/requirements";
import { JobIndex, jobNameOf } from "../store/job-index";
import type { TierName } from "../catalog/tiers";

export interface Submission {
  readonly path: string;
  readonly address: JobAddress;
  /** What goes to `spec.json`; its tier names the queue's, and its priority is the queue's. */
  readonly spec: SubmittedSpecInput & { readonly tier: TierName };
  /** The project's quota in GiB; the submission is refused when its code would pass it. */
  readonly quotaGiB: number;
  /** The stack's allow and deny lists of packages, when the submitter knows them (agent-env.ts). */
  readonly packages?: { readonly allow?: readonly string[]; readonly deny?: readonly string[] };
}

export class SubmitError extends Error {
  override readonly name = "SubmitError";
}

/**
 * Queues a job: checks it as the agent will ({@link admitJob} against the queue), zips its code into its
 * workspace prefix, writes its spec and `queued` state, indexes it for `crucible ls` (job-index.ts), and
 * sends its address to the tier's queue. Nothing is queued when anything is wrong; a job that fails to be
 * indexed or sent is left `failed`, saying it was never queued.
 */
export async function submitJob(
  store: JobStore,
  queue: JobQueue,
  submission: Submission,
): Promise<JobAddress> {
  const address = jobAddressSchema.parse(submission.address);
  const spec = { ...submission.spec, jobId: address.jobId, priority: queue.priority };
  try {
    admitJob(spec, { address, tier: spec.tier, priority: queue.priority });
  } catch (error) {
    if (error instanceof InvalidJobError) throw new SubmitError(error.message);
    throw error;
  }
  if (await store.getState(address))
    throw new SubmitError(`job ${address.jobId} already exists in ${address.project}/${address.user}`);
  if (spec.resumeFrom) {
    const refusal = await resumeRefusal(store, resumePointOf(address, spec.resumeFrom, spec.resumeStep));
    if (refusal) throw new SubmitError(`--resume-from ${spec.resumeFrom}${atStep(spec)}: ${refusal}`);
  }
  const scratch = await mkdtemp(join(tmpdir(), "crucible-submit-"));
  try {
    const zip = join(scratch, "code.zip");
    await packageCode(submission.path, await codeKind(submission.path), zip);
    // Requirements an agent would refuse are refused here, before anything is stored or queued.
    const requirements = await readJobRequirements(zip).catch((error: unknown) => {
      throw error instanceof InvalidJobError ? new SubmitError(error.message) : error;
    });
    const refusal =
      requirements && submission.packages && packageRefusal(requirements.names, submission.packages);
    if (refusal) throw new SubmitError(`${requirements.source}: ${refusal}`);
    const { size } = await stat(zip);
    const used = await store.ownerBytes(address);
    const quota = submission.quotaGiB * 2 ** 30;
    if (used + size > quota) {
      throw new SubmitError(
        `you (${address.user}) would hold ${formatGiB(used + size)} GiB in project ${address.project}, over its ${submission.quotaGiB} GiB quota; remove old jobs' outputs or raise crucible:workspaces.quotaGiBPerProject`,
      );
    }
    await store.putCode(address, zip);
    await store.putSpec(address, spec);
    const { submittedAt } = await store.updateState(address, {
      status: "queued",
      tier: spec.tier,
      attempts: 0,
    });
    const name = jobNameOf(submission.path);
    try {
      // Indexed before the send: once an agent can start it, `crucible ls` shows it.
      await JobIndex.of(store).put(address, {
        jobId: address.jobId,
        tier: spec.tier,
        priority: queue.priority,
        submittedAt,
        ...(name && { name }),
      });
      await queue.send(address);
    } catch (error) {
      // Never queued: its state says so, rather than `queued` for ever, and `crucible ls` shows it failed.
      // Should the message have gone through after all, the agent that runs it overwrites this state.
      // Best effort: the error to report is the one that stopped the submission.
      await store
        .updateState(address, {
          status: "failed",
          note: `never queued: ${(error as Error).message}; submit it again`,
        })
        .catch(() => undefined);
      throw error;
    }
    return address;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

const atStep = (spec: SubmittedSpecInput): string =>
  spec.resumeStep === undefined ? "" : `@${spec.resumeStep}`;

function formatGiB(bytes: number): string {
  return (bytes / 2 ** 30).toFixed(2);
}
