import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { CloudWatchClient } from "@aws-sdk/client-cloudwatch";
import { S3Client } from "@aws-sdk/client-s3";
import { SQSClient } from "@aws-sdk/client-sqs";
import type { Command } from "commander";
import { randomBytes } from "node:crypto";
import { userInfo } from "node:os";
import { Agent } from "../../agent/agent";
import type { AgentEnv, LauncherKind } from "../../catalog/agent-env";
import { AgentEnvError, readAgentEnv } from "../../catalog/agent-env";
import { DEFAULT_QUOTA_GIB_PER_PROJECT, WORKSPACES_PREFIX } from "../../catalog/bucket-layout";
import type { Envelope } from "../../job/contract";
import { DockerLauncher } from "../../launch/docker/docker-launcher";
import type { ImageFamily, JobImageFamily } from "../../catalog/image-matrix";
import { JOB_IMAGE_FAMILIES } from "../../catalog/image-matrix";
import type { JobSpecInput } from "../../job/contract";
import { jobIdSchema } from "../../job/contract";
import { GpuHealth, HealthGate, LauncherGpuProbe, processRunner } from "../../node/gpu-health";
import { JobQueue } from "../../queue/job-queue";
import { attemptCost } from "../../cost/ledger";
import type { JobAddress } from "../../store/job-store";
import { jobAddressSchema, JobStore } from "../../store/job-store";
import type { Logger } from "../../logger";
import type { PlatformClients } from "../../local/local-platform";
import { startLocalPlatform } from "../../local/local-platform";
import type { Departure } from "../../node/node-lifecycle";
import { cloudWatchOutcomes, InstanceMetadata, NodeLifecycle } from "../../node/node-lifecycle";
import { SpotPriceLookup } from "../../node/node-price";
import { PriorityQueues } from "../../queue/priority-queues";
import type { Priority, SchedulingPolicy } from "../../catalog/scheduling";
import { DEFAULT_PRIORITY, PRIORITIES, schedulingPolicySchema } from "../../catalog/scheduling";
import { cloudWatchSpend, describeStanding, overBudget, SpendTracker } from "../../cost/spend";
import { SENDERS_ENV } from "../../catalog/senders";
import { pauseCheck } from "../../agent/budget-pause";
import { SubmitError, submitJob } from "../../job/submit";
import type { TierName } from "../../catalog/tiers";
import { getTier, isTierName, TIER_NAMES } from "../../catalog/tiers";
import { launcherFor, launcherKind, parseLauncherKind } from "./launchers";
import { jobSpecFromFlags } from "./run";
import { cliLogger, collectEnv, EXIT, positiveSeconds, printJson, UsageError } from "./shared";

/**
 * Where the platform is: the workspaces bucket, each tier's queues, the region, and (locally) the
 * endpoint. From the environment a stack's outputs set up (see the README), flags first.
 */
interface Platform {
  readonly store: JobStore;
  queues(tier: TierName): PriorityQueues;
}

/** A stack's platform as a node sees it: also the bucket's client, for the budget pause marker. */
interface StackPlatform extends Platform {
  readonly s3: S3Client;
  readonly bucket: string;
}

interface Owner {
  readonly project: string;
  readonly user: string;
}

function env(name: string): string | undefined {
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

export function platformFromEnv(logger: Logger, settings: AgentEnv = agentEnvFromProcess()): StackPlatform {
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
const regionOf = (settings: AgentEnv): string => settings.region ?? "us-east-1";

/** The stack's scheduling policy (stack output `scheduling`): the runtime's defaults when CRUCIBLE_SCHEDULING is unset. */
function schedulingOf(settings: AgentEnv): SchedulingPolicy {
  return settings.scheduling ?? schedulingPolicySchema.parse({});
}

/** The scheduling policy of the process's environment. */
function schedulingFromEnv(): SchedulingPolicy {
  return schedulingOf(agentEnvFromProcess());
}

/**
 * On a fleet node (the launch template's user data sets CRUCIBLE_ASG_NAME and the hook names), the
 * agent follows its instance's Auto Scaling lifecycle and publishes job outcomes to CloudWatch.
 */
function fleetNodeFromEnv(
  logger: Logger,
  settings: AgentEnv,
):
  | {
      lifecycle: NodeLifecycle;
      recordOutcome: ReturnType<typeof cloudWatchOutcomes>;
      recordSpend: ReturnType<typeof cloudWatchSpend>;
      price: SpotPriceLookup;
    }
  | undefined {
  // readAgentEnv refuses a group name without both hooks.
  const { asgName: name, launchHook, terminationHook } = settings;
  if (!name || !launchHook || !terminationHook) return undefined;
  const region = regionOf(settings);
  const cloudwatch = new CloudWatchClient({ region });
  const metadata = new InstanceMetadata();
  return {
    lifecycle: new NodeLifecycle({
      metadata,
      autoscaling: new AutoScalingClient({ region }),
      group: { name, launchHook, terminationHook },
      logger,
    }),
    recordOutcome: cloudWatchOutcomes(cloudwatch, logger),
    recordSpend: cloudWatchSpend(cloudwatch, logger),
    price: new SpotPriceLookup({ metadata, region, logger }),
  };
}

/** Resolves on abort, keeping the process alive until then (a pending promise alone does not). */
function aborted(signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const keepAlive = setInterval(() => undefined, 60_000);
    signal.addEventListener(
      "abort",
      () => {
        clearInterval(keepAlive);
        resolve();
      },
      { once: true },
    );
  });
}

function ownerOf(flags: { project?: string; user?: string }): Owner {
  const user = (flags.user ?? env("CRUCIBLE_USER") ?? userInfo().username)
    .toLowerCase()
    .replace(/[^a-z0-9._-]/g, "-");
  return { project: flags.project ?? env("CRUCIBLE_PROJECT") ?? "default", user };
}

function address(owner: Owner, jobId: string): JobAddress {
  const parsed = jobAddressSchema.safeParse({ ...owner, jobId });
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new UsageError(
      `${issue?.path.join(".")} ${issue?.message}, got "${String((owner as never)[issue?.path[0] as never] ?? jobId)}"`,
    );
  }
  return parsed.data;
}

const newJobId = (): string => `job-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;

function ownerOptions(command: Command): Command {
  return command
    .option("--project <project>", "project the job belongs to (default: $CRUCIBLE_PROJECT or default)")
    .option("--user <user>", "user the job belongs to (default: $CRUCIBLE_USER or your login)");
}

interface SubmitFlags {
  readonly tier?: string;
  readonly imageFamily?: string;
  readonly timeout?: number;
  readonly env: Record<string, string>;
  readonly project?: string;
  readonly user?: string;
  readonly resumeFrom?: string;
  readonly priority?: string;
  /** False with `--no-preempt`. */
  readonly preempt?: boolean;
  readonly json?: boolean;
}

function submitOptions(command: Command): Command {
  return ownerOptions(command)
    .argument("<path>", "a directory holding main.py, a .py file or a code.zip")
    .option("--tier <tier>", `resource tier (${TIER_NAMES.join(", ")}); default: detected from the code`)
    .option(
      "--image-family <family>",
      `image family to run in (${JOB_IMAGE_FAMILIES.join(", ")}): the node's pinned image of it; default: picked from the tier and the code`,
    )
    .option("--timeout <seconds>", "stop the job after this many seconds", positiveSeconds)
    .option("--env <K=V>", "set an environment variable for the job (repeatable)", collectEnv, {})
    .option("--resume-from <job>", "start from the latest checkpoints of another of your jobs (its id)")
    .option("--priority <class>", `priority class: ${PRIORITIES.join(", ")} (default: ${DEFAULT_PRIORITY})`)
    .option(
      "--no-preempt",
      "never stop this job for higher-priority work (costs more: see `crucible estimate`)",
    )
    .option("--json", "print JSON");
}

async function submitFrom(platform: Platform, path: string, flags: SubmitFlags): Promise<JobAddress> {
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
  if (flags.resumeFrom !== undefined && !jobIdSchema.safeParse(flags.resumeFrom).success)
    throw new UsageError(
      `--resume-from must be the id of one of your own jobs, got "${flags.resumeFrom}" (jobs of other users cannot be resumed from)`,
    );
  const spec = await jobSpecFromFlags(path, { ...flags, json: true });
  const target = address(ownerOf(flags), newJobId());
  try {
    return await submitAs(platform, path, target, spec, flags, priority as Priority);
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
  flags: SubmitFlags,
  priority: Priority,
): Promise<JobAddress> {
  const { tier } = spec;
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
      ...(flags.resumeFrom && { resumeFrom: flags.resumeFrom }),
      ...(flags.preempt === false && { preemptible: false }),
    },
    quotaGiB: agentEnvFromProcess().quotaGiB ?? DEFAULT_QUOTA_GIB_PER_PROJECT,
  });
}

/** A local identity's view of the platform, as {@link submitFrom} uses a stack's. */
function platformOf(clients: PlatformClients, weights: SchedulingPolicy["weights"]): Platform {
  return {
    store: clients.store,
    queues: (tier) =>
      new PriorityQueues(
        Object.fromEntries(PRIORITIES.map((p) => [p, clients.queue(tier, p)])) as Record<Priority, JobQueue>,
        weights,
      ),
  };
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

function summarize(envelope: Envelope, json: boolean | undefined): void {
  if (json) printJson(envelope);
  else if (envelope.status === "success")
    process.stdout.write(`${JSON.stringify(envelope.result ?? null, null, 2)}\n`);
  else
    process.stderr.write(
      `job ${envelope.jobId} failed (${envelope.reason}): ${envelope.error?.message ?? ""}\n`,
    );
  process.exitCode = envelope.status === "success" ? EXIT.ok : EXIT.failed;
}

/** submit, status, result, logs, cancel and agent against a stack; `local run` on the embedded platform. */
export function registerPlatform(program: Command): void {
  submitOptions(program.command("submit").description("queue a job on the platform")).action(
    async (path: string, flags: SubmitFlags) => {
      const queued = await submitFrom(platformFromEnv(cliLogger()), path, flags);
      if (flags.json) printJson(queued);
      else process.stdout.write(`${queued.jobId}\n`);
    },
  );

  ownerOptions(program.command("status").description("a job's state").argument("<job>", "job id")).action(
    async (jobId: string, flags: Owner) => {
      const state = await platformFromEnv(cliLogger()).store.getState(address(ownerOf(flags), jobId));
      if (!state) throw new UsageError(`no job ${jobId} in ${ownerOf(flags).project}/${ownerOf(flags).user}`);
      printJson(state);
    },
  );

  ownerOptions(program.command("result").description("a finished job's envelope").argument("<job>", "job id"))
    .option("--json", "print the whole envelope")
    .action(async (jobId: string, flags: Owner & { json?: boolean }) => {
      const envelope = await platformFromEnv(cliLogger()).store.getEnvelope(address(ownerOf(flags), jobId));
      if (!envelope)
        throw new UsageError(`job ${jobId} has no result yet (see \`crucible status ${jobId}\`)`);
      summarize(envelope, flags.json);
    });

  ownerOptions(program.command("logs").description("a finished job's output").argument("<job>", "job id"))
    .option("--stderr", "the error stream instead of the output")
    .action(async (jobId: string, flags: Owner & { stderr?: boolean }) => {
      const text = await platformFromEnv(cliLogger()).store.getLog(
        address(ownerOf(flags), jobId),
        flags.stderr ? "stderr" : "stdout",
      );
      if (text === undefined) throw new UsageError(`job ${jobId} has no logs yet`);
      process.stdout.write(text);
    });

  ownerOptions(
    program.command("cancel").description("cancel a queued or running job").argument("<job>", "job id"),
  ).action(async (jobId: string, flags: Owner) => {
    const { store } = platformFromEnv(cliLogger());
    const target = address(ownerOf(flags), jobId);
    if (!(await store.getState(target)))
      throw new UsageError(`no job ${jobId} in ${target.project}/${target.user}`);
    await store.requestCancel(target);
    process.stdout.write(`cancel requested for ${jobId}; the agent stops it within seconds\n`);
  });

  program
    .command("agent")
    .description("run a node's agent: take the tier's jobs from its queues and run them")
    .option("--tier <tier>", "the tier this node serves (default: $CRUCIBLE_TIER)")
    .option(
      "--queue-url <url>",
      "one queue for every priority class (default: the tier's queues in $CRUCIBLE_QUEUES)",
    )
    .option(
      "--concurrency <n>",
      "jobs at once (default: $CRUCIBLE_CONCURRENCY, else the tier's)",
      positiveSeconds,
    )
    .option(
      "--launcher <kind>",
      "docker or kubernetes (default: $CRUCIBLE_LAUNCHER, else docker)",
      parseLauncherKind,
    )
    .action(
      async (flags: { tier?: string; queueUrl?: string; concurrency?: number; launcher?: LauncherKind }) => {
        const logger = cliLogger();
        const settings = agentEnvFromProcess();
        const tier = flags.tier ?? settings.tier;
        if (!tier || !isTierName(tier))
          throw new UsageError(`--tier must be one of ${TIER_NAMES.join(", ")}, got "${tier ?? ""}"`);
        const platform = platformFromEnv(logger, settings);
        const queues = flags.queueUrl
          ? PriorityQueues.single(
              new JobQueue(
                new SQSClient({
                  region: regionOf(settings),
                  ...(settings.endpoint && { endpoint: settings.endpoint }),
                }),
                flags.queueUrl,
                logger,
              ),
            )
          : platform.queues(tier);
        const { images, heartbeatSeconds, graceSeconds, checkpointSeconds, workspaceMiB } = settings;
        const concurrency = flags.concurrency ?? settings.concurrency;
        const visibilitySeconds = settings.visibilityTimeoutSeconds;
        const node = fleetNodeFromEnv(logger, settings);
        const { senders } = settings;
        if (!senders)
          throw new UsageError(
            `${SENDERS_ENV} is not set: the agent accepts messages only from the senders it names (stack output of the program, see the README)`,
          );

        const signals = new AbortController();
        // Every signal, not just the first: a second SIGTERM must not kill an agent handing jobs back.
        const onSignal = (signal: NodeJS.Signals): void => {
          logger.info({ signal }, "signal received; stopping");
          signals.abort();
        };
        process.on("SIGTERM", onSignal);
        process.on("SIGINT", onSignal);
        const early = await node?.lifecycle.join(signals.signal);
        if (signals.signal.aborted) return;
        if (early) {
          // Restarted on a node already on its way out: take nothing, wait to be stopped.
          logger.warn({ departure: early }, "node is leaving; not taking jobs");
          await node?.lifecycle.leave(signals.signal);
          await aborted(signals.signal);
          return;
        }
        const launcher = await launcherFor(launcherKind(flags.launcher, settings), {
          logger,
          env: settings,
          ...(images && { images }),
        });
        // A predecessor killed mid-job left its containers running; their messages return to the queue.
        const orphans = await launcher.gc();
        if (orphans > 0) logger.warn({ orphans }, "removed job containers of a dead agent");
        const tierSpec = getTier(tier);
        const health = tierSpec.gpu
          ? new HealthGate({
              health: new GpuHealth({
                tier: tierSpec,
                commands: processRunner(logger),
                probe: new LauncherGpuProbe(launcher, tier, logger),
                logger,
              }),
              logger,
              ...(node && { markUnhealthy: (reason: string) => node.lifecycle.markUnhealthy(reason) }),
            })
          : undefined;
        // Priced before the first job, so its start does not wait on EC2, and the price is in the log.
        await node?.price.current();
        const agent = new Agent({
          tier,
          queues,
          store: platform.store,
          launcher,
          logger,
          senders,
          paused: pauseCheck(platform.s3, platform.bucket, tier),
          policy: schedulingOf(settings),
          ...(concurrency && { concurrency }),
          ...(checkpointSeconds && { checkpointSeconds }),
          ...(heartbeatSeconds && { heartbeatSeconds }),
          ...(visibilitySeconds && { visibilitySeconds }),
          ...(graceSeconds && { graceSeconds }),
          ...(workspaceMiB !== undefined && { workspaceMiB }),
          ...(node && {
            recordOutcome: node.recordOutcome,
            recordSpend: node.recordSpend,
            nodePrice: () => node.price.current(),
          }),
          ...(health && { ready: () => health.ready() }),
        });
        const unwatchHealth = health?.watch(agent);
        signals.signal.addEventListener("abort", () => agent.stop("interrupted"), { once: true });
        let departure: Departure | undefined;
        const unwatch = node?.lifecycle.watch(agent, (leaving) => {
          departure = leaving;
          agent.stop("interrupted");
        });
        await agent.run();
        unwatch?.();
        unwatchHealth?.();
        if (node && (departure || health?.failed)) {
          await node.lifecycle.leave(signals.signal);
          // Exiting would let Docker restart the agent: wait for the instance to stop instead.
          await aborted(signals.signal);
        }
      },
    );

  submitOptions(
    program
      .command("local")
      .description("the whole platform on this machine: embedded SQS/S3, an agent, the local Docker engine")
      .command("run")
      .description("submit a job to the embedded platform, run it with a local agent, and print its result"),
  ).action(async (path: string, flags: SubmitFlags) => {
    const logger = cliLogger();
    const tier = (await jobSpecFromFlags(path, { ...flags, json: true })).tier;
    const policy = schedulingFromEnv();
    const platform = await startLocalPlatform({ tiers: [tier], logger, weights: policy.weights });
    const agent = new Agent({
      tier,
      queues: platform.queues(tier),
      policy,
      store: platform.store,
      senders: platform.senders,
      launcher: new DockerLauncher({ logger }),
      logger,
      concurrency: 1,
      waitSeconds: 1,
    });
    const running = agent.run();
    try {
      // Submitted as the caller's local identity, so the job is checked as a researcher's would be.
      const owner = ownerOf(flags);
      const caller = platformOf(platform.as(owner.project, owner.user), policy.weights);
      const queued = await submitFrom(caller, path, flags);
      if (!flags.json)
        process.stderr.write(`job ${queued.jobId} queued on ${tier}; waiting for the local agent...\n`);
      const envelope = await new Promise<Envelope>((resolve, reject) => {
        agent.on("finished", (done, result) => {
          if (done.jobId === queued.jobId) resolve(result);
        });
        // With one local agent a retry meets the same engine: the first failure is the answer.
        agent.on("failed", (done, error) => {
          if (done.jobId === queued.jobId) reject(error instanceof Error ? error : new Error(String(error)));
        });
      });
      summarize(envelope, flags.json);
    } finally {
      agent.stop("interrupted", 0);
      await running;
      await platform.stop();
    }
  });
}
