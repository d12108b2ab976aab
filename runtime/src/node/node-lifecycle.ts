import type { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import {
  CompleteLifecycleActionCommand,
  SetInstanceHealthCommand,
  SetInstanceProtectionCommand,
} from "@aws-sdk/client-auto-scaling";
import type { CloudWatchClient } from "@aws-sdk/client-cloudwatch";
import { PutMetricDataCommand } from "@aws-sdk/client-cloudwatch";
import type { JobOutcome } from "../job/contract";
import { JOB_METRICS } from "../job/contract";
import { costOf } from "../cost/ledger";
import type { Logger } from "../logger";

/** The variable the AWS SDKs read for a non-default instance metadata endpoint. */
export const METADATA_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
const DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254";
const TOKEN_TTL_SECONDS = 21600;

/**
 * The instance metadata service, IMDSv2 only (the launch template requires tokens). A path that does not
 * exist (404) reads as undefined: that is how a spot notice or a lifecycle state is absent.
 */
export class InstanceMetadata {
  private token: { value: string; expiresAt: number } | undefined;

  constructor(
    private readonly endpoint = process.env[METADATA_ENDPOINT_ENV] ?? DEFAULT_METADATA_ENDPOINT,
    private readonly timeoutMs = 2000,
  ) {}

  async get(path: string): Promise<string | undefined> {
    const url = new URL(`/latest/meta-data/${path}`, this.endpoint);
    const response = await fetch(url, {
      headers: { "X-aws-ec2-metadata-token": await this.sessionToken() },
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    if (response.status === 404) return undefined;
    if (response.status === 401) this.token = undefined;
    if (!response.ok) throw new Error(`instance metadata ${url.pathname} answered ${response.status}`);
    return (await response.text()).trim();
  }

  private async sessionToken(): Promise<string> {
    // Renewed a minute early so a request never carries a token that expires on the way.
    if (this.token && this.token.expiresAt > Date.now() + 60_000) return this.token.value;
    const response = await fetch(new URL("/latest/api/token", this.endpoint), {
      method: "PUT",
      headers: { "X-aws-ec2-metadata-token-ttl-seconds": String(TOKEN_TTL_SECONDS) },
      signal: AbortSignal.timeout(this.timeoutMs),
    });
    if (!response.ok) throw new Error(`instance metadata token request answered ${response.status}`);
    this.token = { value: await response.text(), expiresAt: Date.now() + TOKEN_TTL_SECONDS * 1000 };
    return this.token.value;
  }
}

/** The node's own Auto Scaling group and the hooks the fleet declares on it (`infra/fleet/`). */
export interface ScalingGroup {
  readonly name: string;
  readonly launchHook: string;
  readonly terminationHook: string;
}

/**
 * Why the node is going away, as the metadata service tells it: a spot notice (two minutes), a
 * rebalance recommendation (capacity rebalancing is replacing it), or its group terminating it.
 */
export type Departure = "spot-interruption" | "rebalance" | "scale-in";

/** What the node's agent sees of it: serve jobs, or leave. */
export interface AgentSignals {
  /** Jobs the agent holds right now, each time that changes. */
  on(event: "load", listener: (running: number) => void): unknown;
  off(event: "load", listener: (running: number) => void): unknown;
}

export interface NodeLifecycleOptions {
  readonly metadata: InstanceMetadata;
  readonly autoscaling: AutoScalingClient;
  readonly group: ScalingGroup;
  readonly logger: Logger;
  /** Seconds between looks for a spot notice or a termination. Defaults to 5 (a notice gives 120). */
  readonly pollSeconds?: number;
}

/**
 * The agent's side of its node's Auto Scaling lifecycle: it completes the launch hook once it can take
 * jobs (a warm-pool instance completes it without taking any, so it is stopped fully booted), holds
 * scale-in protection while jobs run so target tracking only removes idle nodes, watches for a spot
 * notice or a termination, and completes the termination hook once its jobs are checkpointed and back
 * on the queue.
 */
export class NodeLifecycle {
  private instanceId: string | undefined;
  private protectedNow = false;
  private protection: Promise<void> = Promise.resolve();
  private readonly pollSeconds: number;

  constructor(private readonly options: NodeLifecycleOptions) {
    this.pollSeconds = options.pollSeconds ?? 5;
  }

  /**
   * Waits until the group puts this instance in service, completing the launch hook on every transition
   * (into the warm pool and out of it). Resolves with a departure instead when the node is already
   * leaving: a restarted agent must not take jobs on an instance about to go.
   */
  async join(
    signal?: AbortSignal,
    /**
     * Readies the node before the launch hook is completed into the warm pool (images are on the engine by
     * then: the boot script pulls them before it starts the agent), so a warm node that cannot take work
     * (a GPU failing its health check) is abandoned there instead of put in service. Called once.
     */
    warmUp?: () => Promise<boolean>,
  ): Promise<Departure | undefined> {
    const { metadata, logger } = this.options;
    this.instanceId = await metadata.get("instance-id");
    if (!this.instanceId) throw new Error("instance metadata has no instance-id: not an EC2 instance?");
    let completedFor: string | undefined;
    for (;;) {
      const target = await this.targetState();
      const departure = await this.departure(target);
      if (departure) return departure;
      if (target !== completedFor && (target === "InService" || target?.startsWith("Warmed:"))) {
        completedFor = target;
        if (target !== "InService" && warmUp && !(await warmUp())) {
          await this.completeHook(this.options.group.launchHook, "ABANDON");
          logger.error(
            { instanceId: this.instanceId, target },
            "the node is not fit to serve; launch abandoned",
          );
          return "scale-in";
        }
        warmUp = undefined;
        try {
          await this.completeHook(this.options.group.launchHook);
          logger.info({ instanceId: this.instanceId, target }, "launch hook completed");
        } catch (error) {
          // An agent restarted on a node long in service finds no pending action: nothing to complete.
          // Had one been pending, its timeout abandons the instance, which is the safe way to fail.
          logger.warn({ err: error, target }, "completing the launch hook failed");
        }
      }
      if (target === "InService") return undefined;
      await pause(this.pollSeconds, signal);
      if (signal?.aborted) return undefined;
    }
  }

  /**
   * Calls `onDeparture` once when the node starts leaving, and keeps scale-in protection on exactly
   * while the agent holds jobs. Returns a function that stops watching.
   */
  watch(agent: AgentSignals, onDeparture: (departure: Departure) => void): () => void {
    const onLoad = (running: number): void => this.protect(running > 0);
    agent.on("load", onLoad);
    let departed = false;
    const timer = setInterval(() => {
      if (departed) return;
      this.targetState()
        .then((target) => this.departure(target))
        .then(
          (departure) => {
            if (!departure || departed) return;
            departed = true;
            this.options.logger.warn({ instanceId: this.instanceId, departure }, "node is leaving");
            onDeparture(departure);
          },
          (error: unknown) => this.options.logger.warn({ err: error }, "instance metadata poll failed"),
        );
    }, this.pollSeconds * 1000);
    return () => {
      clearInterval(timer);
      agent.off("load", onLoad);
    };
  }

  /**
   * Once its jobs are handed back, lets the instance go: as soon as the group is terminating it (at once
   * on scale-in; after a spot notice or rebalance, when the group's termination reaches the hook) the
   * termination hook is completed instead of waiting out its timeout. Resolves then, or on `signal`.
   */
  async leave(signal?: AbortSignal): Promise<void> {
    await this.protection;
    while (!signal?.aborted) {
      if ((await this.targetState()) === "Terminated") {
        await this.completeHook(this.options.group.terminationHook);
        this.options.logger.info({ instanceId: this.instanceId }, "termination hook completed");
        return;
      }
      await pause(this.pollSeconds, signal);
    }
  }

  /**
   * Has the group replace this instance: marked unhealthy at once, not after the group's health check
   * grace period. The group then terminates it through the termination hook, so the agent sees the
   * termination as it sees a scale-in (a `scale-in` departure to {@link watch}, then {@link leave}).
   * `reason` goes to the log only: Auto Scaling records no cause for a health change.
   */
  async markUnhealthy(reason: string): Promise<void> {
    const { metadata, autoscaling, logger } = this.options;
    const instanceId = this.instanceId ?? (await metadata.get("instance-id"));
    if (!instanceId) throw new Error("instance metadata has no instance-id: not an EC2 instance?");
    logger.warn({ instanceId, reason }, "marking the instance unhealthy");
    await autoscaling.send(
      new SetInstanceHealthCommand({
        InstanceId: instanceId,
        HealthStatus: "Unhealthy",
        ShouldRespectGracePeriod: false,
      }),
    );
    logger.warn({ instanceId }, "instance marked unhealthy; its group replaces it");
  }

  /** Why the node is leaving, given its target lifecycle state just read; undefined while it stays. */
  private async departure(target: string | undefined): Promise<Departure | undefined> {
    const { metadata } = this.options;
    if (await metadata.get("spot/instance-action")) return "spot-interruption";
    if (target === "Terminated") return "scale-in";
    if (await metadata.get("events/recommendations/rebalance")) return "rebalance";
    return undefined;
  }

  private targetState(): Promise<string | undefined> {
    return this.options.metadata.get("autoscaling/target-lifecycle-state");
  }

  private protect(wanted: boolean): void {
    // Serialised, and only on a change: a burst of job starts makes one call, not one per job.
    this.protection = this.protection.then(async () => {
      if (wanted === this.protectedNow || !this.instanceId) return;
      try {
        await this.options.autoscaling.send(
          new SetInstanceProtectionCommand({
            AutoScalingGroupName: this.options.group.name,
            InstanceIds: [this.instanceId],
            ProtectedFromScaleIn: wanted,
          }),
        );
        this.protectedNow = wanted;
        this.options.logger.debug({ protectedFromScaleIn: wanted }, "scale-in protection set");
      } catch (error) {
        this.options.logger.warn({ err: error, wanted }, "setting scale-in protection failed");
      }
    });
  }

  private async completeHook(hook: string, result: "CONTINUE" | "ABANDON" = "CONTINUE"): Promise<void> {
    await this.options.autoscaling.send(
      new CompleteLifecycleActionCommand({
        AutoScalingGroupName: this.options.group.name,
        LifecycleHookName: hook,
        InstanceId: this.instanceId,
        LifecycleActionResult: result,
      }),
    );
  }
}

/** Publishes each finished or handed-back attempt as {@link JOB_METRICS}: a count, its time and cost. */
export function cloudWatchOutcomes(
  cloudwatch: CloudWatchClient,
  logger: Logger,
): (outcome: JobOutcome) => Promise<void> {
  return async ({ outcome, tier, seconds, chargedHourlyUsd }) => {
    const dimensions = [{ Name: JOB_METRICS.dimension, Value: tier }];
    try {
      await cloudwatch.send(
        new PutMetricDataCommand({
          Namespace: JOB_METRICS.namespace,
          MetricData: [
            { MetricName: JOB_METRICS[outcome], Dimensions: dimensions, Unit: "Count", Value: 1 },
            { MetricName: JOB_METRICS.seconds, Dimensions: dimensions, Unit: "Seconds", Value: seconds },
            {
              MetricName: JOB_METRICS.costUsd,
              Dimensions: dimensions,
              Unit: "None",
              // To a millionth of a dollar, finer than the ledger: a dashboard of many short jobs adds up.
              Value: Math.round(costOf(seconds, chargedHourlyUsd) * 1e6) / 1e6,
            },
          ],
        }),
      );
    } catch (error) {
      // A lost data point must not fail the job it counts.
      logger.warn({ err: error, outcome }, "publishing the job metric failed");
    }
  };
}

function pause(seconds: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, seconds * 1000);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
