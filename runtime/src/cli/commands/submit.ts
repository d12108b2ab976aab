import type { Command } from "commander";
import { randomBytes } from "node:crypto";
import { DEFAULT_QUOTA_GIB_PER_PROJECT } from "../../catalog/bucket-layout";
import type { Envelope } from "../../job/contract";
import type { ImageFamily, JobImageFamily } from "../../catalog/image-matrix";
import { JOB_IMAGE_FAMILIES } from "../../catalog/image-matrix";
import type { JobSpecInput } from "../../job/contract";
import { parseResumeFlag } from "../../job/resume-point";
import type { DatasetRef } from "../../catalog/datasets";
import { datasetRefSchema, formatDatasetRef } from "../../catalog/datasets";
import { checkFitsCache, DatasetTooLargeError } from "../../agent/dataset-cache";
import { DatasetNotFoundError } from "../../store/dataset-store";
import { attemptCost } from "../../cost/ledger";
import type { JobAddress } from "../../store/job-store";
import type { JobStore } from "../../store/job-store";
import type { Priority } from "../../catalog/scheduling";
import { DEFAULT_PRIORITY, PRIORITIES } from "../../catalog/scheduling";
import { describeStanding, overBudget, SpendTracker } from "../../cost/spend";
import { SubmitError, submitJob } from "../../job/submit";
import type { TierName } from "../../catalog/tiers";
import { getTier, TIER_NAMES } from "../../catalog/tiers";
import { jobSpecFromFlags } from "./run";
import { cliLogger, collectEnv, EXIT, positiveSeconds, printJson, UsageError } from "./shared";

import type { Platform } from "./platform-access";
import {
  address,
  agentEnvFromProcess,
  ownerOf,
  ownerOptions,
  platformFromEnv,
  schedulingFromEnv,
} from "./platform-access";

const newJobId = (): string => `job-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;

export interface SubmitFlags {
  readonly tier?: string;
  readonly imageFamily?: string;
  readonly timeout?: number;
  readonly env: Record<string, string>;
  readonly project?: string;
  readonly user?: string;
  readonly resumeFrom?: string;
  /** `NAME@VERSION` of each dataset to mount (`--dataset`, repeatable). */
  readonly dataset: readonly string[];
  readonly priority?: string;
  /** False with `--no-preempt`. */
  readonly preempt?: boolean;
  readonly json?: boolean;
}

export function submitOptions(command: Command): Command {
  return ownerOptions(command)
    .argument("<path>", "a directory holding main.py, a .py file or a code.zip")
    .option("--tier <tier>", `resource tier (${TIER_NAMES.join(", ")}); default: detected from the code`)
    .option(
      "--image-family <family>",
      `image family to run in (${JOB_IMAGE_FAMILIES.join(", ")}): the node's pinned image of it; default: picked from the tier and the code`,
    )
    .option("--timeout <seconds>", "stop the job after this many seconds", positiveSeconds)
    .option("--env <K=V>", "set an environment variable for the job (repeatable)", collectEnv, {})
    .option(
      "--dataset <name@version>",
      "mount one of your datasets or a pre-cached one read-only at /datasets/NAME (repeatable; see `crucible datasets ls`)",
      (value: string, previous: string[]) => [...previous, value],
      [],
    )
    .option(
      "--resume-from <job[@step]>",
      "start from the checkpoints of another of your jobs: its latest, or those of one step (JOB@1200)",
    )
    .option("--priority <class>", `priority class: ${PRIORITIES.join(", ")} (default: ${DEFAULT_PRIORITY})`)
    .option(
      "--no-preempt",
      "never stop this job for higher-priority work (costs more: see `crucible estimate`)",
    )
    .option("--json", "print JSON");
}

export async function submitFrom(platform: Platform, path: string, flags: SubmitFlags): Promise<JobAddress> {
  const priority = flags.priority ?? DEFAULT_PRIORITY;
  if (!(PRIORITIES as readonly string[]).includes(priority))
    throw new UsageError(`--priority must be one of ${PRIORITIES.join(", ")}, got "${priority}"`);
  if (
    flags.imageFamily !== undefined &&
    !(JOB_IMAGE_FAMILIES as readonly string[]).includes(flags.imageFamily)
  )
    throw new UsageError(
      `--image-family must be one of ${JOB_IMAGE_FAMILIES.join(", ")}, got "${flags.imageFamily}" (a platform job runs only the node's pinned images)`,
    );
  const resume = flags.resumeFrom === undefined ? undefined : resumeFlag(flags.resumeFrom);
  const datasets = flags.dataset.map(datasetFlag);
  const spec = await jobSpecFromFlags(path, { ...flags, json: true });
  const target = address(ownerOf(flags), newJobId());
  try {
    await checkDatasets(platform, target, spec.tier, datasets);
    return await submitAs(platform, path, target, spec, { ...flags, resume }, priority as Priority);
  } catch (error) {
    if ((error as { name?: string }).name !== "AccessDenied") throw error;
    throw new SubmitError(
      `refused: your credentials may not submit as ${target.project}/${target.user} (${(error as Error).message}); ` +
        `assume project ${target.project}'s submitter role (stack output access.submitterRoleArns.${target.project}) ` +
        `with the role session name and the crucible-user session tag set to your user name, and submit as that user`,
    );
  }
}

async function submitAs(
  platform: Platform,
  path: string,
  target: JobAddress,
  spec: JobSpecInput,
  flags: SubmitFlags & { readonly resume: ReturnType<typeof parseResumeFlag> | undefined },
  priority: Priority,
): Promise<JobAddress> {
  const { tier } = spec;
  const { quotaGiB, packageAllow, packageDeny } = agentEnvFromProcess();
  await refuseOverBudget(platform.store, target, tier, spec.timeoutSeconds, flags.preempt === false);
  return submitJob(platform.store, platform.queues(tier).get(priority), {
    path,
    address: target,
    spec: {
      jobId: target.jobId,
      tier,
      env: spec.env ?? {},
      ...(spec.timeoutSeconds !== undefined && { timeoutSeconds: spec.timeoutSeconds }),
      ...(flags.imageFamily && { imageFamily: flags.imageFamily as ImageFamily & JobImageFamily }),
      ...(flags.resume && { resumeFrom: flags.resume.jobId }),
      ...(flags.resume?.step !== undefined && { resumeStep: flags.resume.step }),
      ...(flags.preempt === false && { preemptible: false }),
      ...(flags.dataset.length > 0 && { datasets: [...flags.dataset] }),
    },
    quotaGiB: quotaGiB ?? DEFAULT_QUOTA_GIB_PER_PROJECT,
    packages: { ...(packageAllow && { allow: packageAllow }), ...(packageDeny && { deny: packageDeny }) },
  });
}

/**
 * Refuses a job that could take its owner past a monthly budget: at most its timeout (else the tier's
 * longest run) at the tier's price, with the no-preempt factor when it opts out.
 */
async function refuseOverBudget(
  store: JobStore,
  target: JobAddress,
  tier: TierName,
  timeoutSeconds: number | undefined,
  noPreempt: boolean,
): Promise<void> {
  const policy = schedulingFromEnv();
  const { onDemandHourlyUsd, maxRuntimeSeconds } = getTier(tier);
  const seconds = timeoutSeconds ?? maxRuntimeSeconds;
  const factor = noPreempt ? policy.preemption.noPreemptPriceFactor : 1;
  const worst = attemptCost(seconds, onDemandHourlyUsd, factor);
  const over = overBudget(await new SpendTracker(store, policy.budgets).standings(target), worst);
  if (over)
    throw new SubmitError(
      `refused: ${describeStanding(over)}, and this job may cost up to $${worst.toFixed(4)} ` +
        `(${tier} at $${onDemandHourlyUsd}/h${factor > 1 ? ` × ${factor} for --no-preempt` : ""} for up to ${seconds} s); ` +
        "set a shorter --timeout, or ask for a larger budget (crucible:budgets.users / .projects)",
    );
}

export function summarize(envelope: Envelope, json: boolean | undefined): void {
  if (json) printJson(envelope);
  else if (envelope.status === "success")
    process.stdout.write(`${JSON.stringify(envelope.result ?? null, null, 2)}\n`);
  else
    process.stderr.write(
      `job ${envelope.jobId} failed (${envelope.reason}): ${envelope.error?.message ?? ""}\n`,
    );
  process.exitCode = envelope.status === "success" ? EXIT.ok : EXIT.failed;
}

/** `submit`: queue a job on the stack. */
export function registerSubmit(program: Command): void {
  submitOptions(program.command("submit").description("queue a job on the platform")).action(
    async (path: string, flags: SubmitFlags) => {
      const queued = await submitFrom(platformFromEnv(cliLogger()), path, flags);
      if (flags.json) printJson(queued);
      else process.stdout.write(`${queued.jobId}\n`);
    },
  );
}

function resumeFlag(text: string): ReturnType<typeof parseResumeFlag> {
  try {
    return parseResumeFlag(text);
  } catch (error) {
    throw new UsageError((error as Error).message);
  }
}

function datasetFlag(text: string): DatasetRef {
  const parsed = datasetRefSchema.safeParse(text);
  if (!parsed.success) throw new UsageError(`--dataset ${parsed.error.issues[0]?.message ?? "is not valid"}`);
  return parsed.data;
}

/**
 * Refuses, before anything is written, a dataset the agent would refuse: one the submitter does not have
 * (their own or a pre-cached set), or one larger than the dataset cache of the tier's nodes.
 */
async function checkDatasets(
  platform: Platform,
  owner: JobAddress,
  tier: TierName,
  refs: readonly DatasetRef[],
): Promise<void> {
  if (refs.length === 0) return;
  if (!platform.datasets)
    throw new SubmitError(
      `--dataset: this platform has no datasets bucket; set CRUCIBLE_DATASETS_BUCKET (stack output storage.datasetsBucketName)`,
    );
  for (const ref of refs) {
    try {
      const { manifest } = await platform.datasets.resolve(owner, ref);
      checkFitsCache(manifest, getTier(tier).datasetCacheGiB * 2 ** 30, `a ${tier} node`);
    } catch (error) {
      if (!(error instanceof DatasetNotFoundError || error instanceof DatasetTooLargeError)) throw error;
      throw new SubmitError(`--dataset ${formatDatasetRef(ref)}: ${error.message}`);
    }
  }
}
