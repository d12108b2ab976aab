// Where the platform is and who the caller is: the stack's environment (or the local platform's), the
// owner a job is addressed to, and the flags that name them. Shared by every command that reaches jobs.
import { DatasetStore } from "../../store/dataset-store";
import { S3Client } from "@aws-sdk/client-s3";
import { SQSClient } from "@aws-sdk/client-sqs";
import type { Command } from "commander";
import { userInfo } from "node:os";
import type { AgentTuning } from "../../agent/agent";
import type { AgentEnv } from "../../catalog/agent-env";
import { AgentEnvError, readAgentEnv } from "../../catalog/agent-env";
import { WORKSPACES_PREFIX } from "../../catalog/bucket-layout";
import { JobQueue } from "../../queue/job-queue";
import type { JobAddress } from "../../store/job-store";
import { jobAddressSchema, JobStore } from "../../store/job-store";
import type { Logger } from "../../logger";
import type { LocalConnection } from "../../local/local-control";
import { identityOf, localDir, runningPlatform } from "../../local/local-control";
import { PriorityQueues } from "../../queue/priority-queues";
import type { Priority, SchedulingPolicy } from "../../catalog/scheduling";
import { PRIORITIES, schedulingPolicySchema } from "../../catalog/scheduling";
import type { TierName } from "../../catalog/tiers";
import { UsageError } from "./shared";

/**
 * Where the platform is: the workspaces bucket, each tier's queues, the region, and (locally) the
 * endpoint. From the environment a stack's outputs set up (see the README), flags first.
 */
export interface Platform {
  readonly store: JobStore;
  /** The datasets bucket (CRUCIBLE_DATASETS_BUCKET, storage.datasetsBucketName) through the same credentials, where set. */
  readonly datasets?: DatasetStore;
  queues(tier: TierName): PriorityQueues;
}

/** A stack's platform as a node sees it: also the bucket's client, for the budget pause marker. */
export interface StackPlatform extends Platform {
  readonly s3: S3Client;
  readonly bucket: string;
}

export interface Owner {
  readonly project: string;
  readonly user: string;
}

export function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value === "" ? undefined : value;
}

/**
 * The agent's environment (agent-env.ts) as the CLI reads it: a malformed variable is a usage error
 * naming it, its value and what is allowed.
 */
export function agentEnvFromProcess(
  env: Readonly<Record<string, string | undefined>> = process.env,
): AgentEnv {
  try {
    return readAgentEnv(env);
  } catch (error) {
    if (error instanceof AgentEnvError) throw new UsageError(error.message);
    throw error;
  }
}

/**
 * The platform the command reaches: the local platform when asked for (`--local`, CRUCIBLE_LOCAL=1) or
 * when no stack is configured (no CRUCIBLE_BUCKET) and one runs; else the stack the environment names.
 */
export function platformFromEnv(logger: Logger, settings: AgentEnv = agentEnvFromProcess()): StackPlatform {
  const local = localWanted(settings);
  if (local) return localPlatform(local.dir, local.connection, logger, schedulingOf(settings).weights);
  const { bucket } = settings;
  if (!bucket)
    throw new UsageError(
      "CRUCIBLE_BUCKET is not set: name the workspaces bucket (stack output storage.bucketName)",
    );
  const region = regionOf(settings);
  const { endpoint } = settings;
  const s3 = new S3Client({ region, ...(endpoint && { endpoint, forcePathStyle: true }) });
  const sqs = new SQSClient({ region, ...(endpoint && { endpoint }) });
  const queues = settings.queues ?? {};
  const { weights } = schedulingOf(settings);
  return {
    s3,
    bucket,
    ...(settings.datasetsBucket && {
      datasets: new DatasetStore({ s3, bucket: settings.datasetsBucket, logger }),
    }),
    store: new JobStore(s3, bucket, logger, settings.workspacesPrefix ?? WORKSPACES_PREFIX),
    queues: (tier) => {
      const urls = queues[tier];
      if (!urls)
        throw new UsageError(
          `CRUCIBLE_QUEUES has no queues for tier ${tier} (stack output queues.${tier}, see the README)`,
        );
      if (typeof urls === "string") return PriorityQueues.single(new JobQueue(sqs, urls, logger));
      const byPriority = Object.fromEntries(
        PRIORITIES.map((p) => [p, new JobQueue(sqs, urls[p], logger, p)]),
      ) as Record<Priority, JobQueue>;
      return new PriorityQueues(byPriority, weights);
    },
  };
}

/** The clients' region: AWS_REGION, else us-east-1. */
export const regionOf = (settings: AgentEnv): string => settings.region ?? "us-east-1";

/** The stack's scheduling policy (stack output `scheduling`): the runtime's defaults when CRUCIBLE_SCHEDULING is unset. */
export function schedulingOf(settings: AgentEnv): SchedulingPolicy {
  return settings.scheduling ?? schedulingPolicySchema.parse({});
}

/** The scheduling policy of the process's environment. */
export function schedulingFromEnv(): SchedulingPolicy {
  return schedulingOf(agentEnvFromProcess());
}

/** The variable that sends job commands to the local platform even where a stack is configured. */
export const LOCAL_ENV = "CRUCIBLE_LOCAL";

/** The flags of the command being run that name its caller and platform, as {@link ownerOptions} adds them. */
interface CallerFlags {
  readonly project?: string;
  readonly user?: string;
  readonly local?: boolean;
}

/**
 * Set as the command's action starts: the local platform's identity is made for the caller its flags
 * name, while the commands hand {@link platformFromEnv} no flags.
 */
let caller: CallerFlags = {};

function localWanted(settings: AgentEnv): { dir: string; connection: LocalConnection } | undefined {
  const fromEnv = env(LOCAL_ENV);
  if (fromEnv !== undefined && fromEnv !== "1" && fromEnv !== "0")
    throw new UsageError(`${LOCAL_ENV} must be 1 (use the local platform) or 0, got "${fromEnv}"`);
  const asked = caller.local === true || fromEnv === "1";
  if (!asked && settings.bucket) return undefined;
  const dir = localDir();
  const connection = runningPlatform(dir);
  if (connection) return { dir, connection };
  if (asked) throw new UsageError(`no local platform runs in ${dir}: start one with \`crucible local up\``);
  return undefined;
}

/**
 * The local platform that serves `dir`, reached as a submitter would reach a stack: with the credentials
 * of `owner`'s identity on it (by default the caller's, {@link ownerOf}), asked for on the first request.
 */
export function localPlatform(
  dir: string,
  connection: LocalConnection,
  logger: Logger,
  weights: SchedulingPolicy["weights"],
  owner: () => Owner = () => ownerOf(caller),
): StackPlatform {
  let identity: ReturnType<typeof identityOf> | undefined;
  const credentials = (): ReturnType<typeof identityOf> => (identity ??= identityOf(dir, owner()));
  const { endpoint, region, bucket, datasetsBucket } = connection;
  const s3 = new S3Client({ endpoint, region, credentials, forcePathStyle: true });
  const sqs = new SQSClient({ endpoint, region, credentials });
  return {
    s3,
    bucket,
    ...(datasetsBucket && { datasets: new DatasetStore({ s3, bucket: datasetsBucket, logger }) }),
    store: new JobStore(s3, bucket, logger),
    queues: (tier) => {
      const urls = connection.queues[tier];
      if (!urls)
        throw new UsageError(
          `the local platform in ${dir} serves ${connection.tiers.join(", ")}, not ${tier}: ` +
            `\`crucible local down\`, then \`crucible local up --tiers ${[...connection.tiers, tier].join(",")}\``,
        );
      const byPriority = Object.fromEntries(
        PRIORITIES.map((p) => [p, new JobQueue(sqs, urls[p], logger, p)]),
      ) as Record<Priority, JobQueue>;
      return new PriorityQueues(byPriority, weights);
    },
  };
}

export function ownerOf(flags: { project?: string; user?: string }): Owner {
  const user = (flags.user ?? env("CRUCIBLE_USER") ?? userInfo().username)
    .toLowerCase()
    .replace(/[^a-z0-9._-]/g, "-");
  return { project: flags.project ?? env("CRUCIBLE_PROJECT") ?? "default", user };
}

export function address(owner: Owner, jobId: string): JobAddress {
  const parsed = jobAddressSchema.safeParse({ ...owner, jobId });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new UsageError(
      `${issue?.path.join(".")} ${issue?.message}, got "${String((owner as never)[issue?.path[0] as never] ?? jobId)}"`,
    );
  }
  return parsed.data;
}

export function ownerOptions(command: Command): Command {
  return command
    .option("--project <project>", "project the job belongs to (default: $CRUCIBLE_PROJECT or default)")
    .option("--user <user>", "user the job belongs to (default: $CRUCIBLE_USER or your login)")
    .option(
      "--local",
      `use the local platform (\`crucible local up\`) even where a stack is configured (or ${LOCAL_ENV}=1)`,
    )
    .hook("preAction", (_command, action) => {
      caller = action.opts<CallerFlags>();
    });
}

/** How an agent is tuned, from the CRUCIBLE_* agent variables: `crucible agent` and `crucible local` alike. */
export function agentTuning(settings: AgentEnv): AgentTuning {
  const { concurrency, heartbeatSeconds, checkpointSeconds, graceSeconds, workspaceMiB, logCapMiB } =
    settings;
  return {
    ...(concurrency && { concurrency }),
    ...(heartbeatSeconds && { heartbeatSeconds }),
    ...(settings.visibilityTimeoutSeconds && { visibilitySeconds: settings.visibilityTimeoutSeconds }),
    ...(checkpointSeconds && { checkpointSeconds }),
    ...(graceSeconds && { graceSeconds }),
    ...(workspaceMiB !== undefined && { workspaceMiB }),
    ...(logCapMiB !== undefined && { logCapBytes: logCapMiB * 2 ** 20 }),
  };
}
