import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { CloudWatchClient } from "@aws-sdk/client-cloudwatch";
import { SQSClient } from "@aws-sdk/client-sqs";
import type { Command } from "commander";
import Dockerode from "dockerode";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Agent } from "../../agent/agent";
import { DATASET_CACHE_DIR, openNodeDatasets } from "../../agent/job-datasets";
import { ENVIRONMENT_CACHE_DIR, NodeEnvironments, stackPackageIndex } from "../../agent/job-environment";
import { DockerEngine } from "../../launch/docker/container-engine";
import type { AgentEnv, LauncherKind } from "../../catalog/agent-env";
import { GpuHealth, HealthGate, LauncherGpuProbe, nvidiaSmiUsage, processRunner } from "../../node/gpu";
import { JobQueue } from "../../queue/job-queue";
import type { Logger } from "../../logger";
import type { Departure } from "../../node/node-lifecycle";
import { cloudWatchOutcomes, InstanceMetadata, NodeLifecycle } from "../../node/node-lifecycle";
import { SpotPriceLookup } from "../../node/node-price";
import { PriorityQueues } from "../../queue/priority-queues";
import { cloudWatchSpend } from "../../cost/spend";
import { SENDERS_ENV } from "../../catalog/senders";
import { pauseCheck } from "../../agent/budget-pause";
import { getTier, isTierName, TIER_NAMES } from "../../catalog/tiers";
import { launcherFor, launcherKind, parseLauncherKind } from "./launchers";
import { cliLogger, positiveSeconds, UsageError } from "./shared";

import { agentEnvFromProcess, agentTuning, platformFromEnv, regionOf, schedulingOf } from "./platform-access";

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

/** `agent`: a node's agent, taking its tier's jobs from the stack's queues. */
export function registerAgent(program: Command): void {
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
        const { images } = settings;
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
        const kind = launcherKind(flags.launcher, settings);
        const launcher = await launcherFor(kind, {
          logger,
          env: settings,
          ...(images && { images }),
          ...(getTier(tier).gpu && { gpuUsage: nvidiaSmiUsage(processRunner(logger)) }),
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
        // In the warm state the GPU is checked before the launch hook completes (the images are pulled by
        // then), so a warm-pool node that cannot serve is abandoned there rather than put in service.
        const early = await node?.lifecycle.join(signals.signal, health && (() => health.ready()));
        if (signals.signal.aborted) return;
        if (early) {
          // Restarted on a node already on its way out: take nothing, wait to be stopped.
          logger.warn({ departure: early }, "node is leaving; not taking jobs");
          await node?.lifecycle.leave(signals.signal);
          await aborted(signals.signal);
          return;
        }
        // Jobs get datasets and environments from this node's caches: the Docker engine here bind-mounts
        // them, the Kubernetes launcher copies them into the job's pod. Only a Docker engine builds
        // environments (stored beside the datasets), and copies the pre-cached sets out of the node's images;
        // a Kubernetes agent fetches those as the fleet's nodes published them, like any other set.
        const docker = new Dockerode();
        const datasets = settings.datasetsBucket
          ? await openNodeDatasets({
              s3: platform.s3,
              bucket: settings.datasetsBucket,
              tier,
              root: join(tmpdir(), DATASET_CACHE_DIR),
              logger,
              ...(kind === "docker" ? { docker } : { precached: false }),
              ...(images && { images }),
            })
          : undefined;
        const { packageIndex, packageAllow, packageDeny } = settings;
        const environments =
          settings.datasetsBucket && kind === "docker"
            ? await NodeEnvironments.open({
                s3: platform.s3,
                bucket: settings.datasetsBucket,
                tier,
                docker,
                engine: new DockerEngine(docker, logger),
                root: join(tmpdir(), ENVIRONMENT_CACHE_DIR),
                logger,
                ...(images && { images }),
                ...(packageIndex && { index: stackPackageIndex(packageIndex, regionOf(settings)) }),
                ...(packageAllow && { allow: packageAllow }),
                ...(packageDeny && { deny: packageDeny }),
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
          ...(datasets && { datasets }),
          ...(environments && { environments }),
          paused: pauseCheck(platform.s3, platform.bucket, tier),
          policy: schedulingOf(settings),
          ...agentTuning(settings),
          ...(flags.concurrency && { concurrency: flags.concurrency }),
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
}
