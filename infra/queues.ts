import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { type TierName, DEFAULT_PRIORITY, PRIORITIES, type Priority } from "@crucible/runtime/catalog";
import type { CrucibleConfig } from "./config";
import type { PolicyDocument } from "./policy-document";
import { componentTags } from "./providers";

/** The longest SQS keeps a message: dead letters wait as long as AWS allows for someone to look. */
export const DLQ_RETENTION_SECONDS = 1_209_600;
/** The longest SQS long poll: an idle agent makes one request every 20 s instead of many empty ones. */
export const RECEIVE_WAIT_SECONDS = 20;

/** Arguments of {@link JobQueues}. */
export interface JobQueuesArgs {
  /** Tiers that get queues (the stack's enabled tiers). */
  readonly tiers: readonly TierName[];
  /** Visibility timeout, redrive count and retention, validated by `infra/config/`. */
  readonly settings: CrucibleConfig["fleet"]["queue"];
}

/** One priority class's job queue in a tier, and its dead-letter queue. */
export interface TierQueue {
  readonly queueUrl: pulumi.Output<string>;
  readonly queueArn: pulumi.Output<string>;
  readonly queueName: pulumi.Output<string>;
  readonly dlqUrl: pulumi.Output<string>;
  readonly dlqArn: pulumi.Output<string>;
  readonly dlqName: pulumi.Output<string>;
}

/** A tier's queues, one per priority class (runtime/src/catalog/scheduling.ts `PRIORITIES`). */
export type TierQueues = Readonly<Record<Priority, TierQueue>>;

/**
 * Where jobs wait: per tier and priority class an encrypted, long-polled queue whose messages stay
 * invisible while an agent's heartbeat runs, and that moves a job to its own dead-letter queue after
 * `maxReceiveCount` receives (a job that keeps killing its node must not circle for ever). All refuse
 * plain HTTP.
 */
export class JobQueues extends pulumi.ComponentResource {
  public readonly byTier: Partial<Record<TierName, TierQueues>>;

  constructor(name: string, args: JobQueuesArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:queues:JobQueues", name, {}, opts);
    const { tiers, settings } = args;
    this.byTier = Object.fromEntries(
      tiers.map((tier) => [
        tier,
        Object.fromEntries(
          PRIORITIES.map((p) => [p, tierQueue(queueLogicalName(name, tier, p), tier, settings, this)]),
        ) as TierQueues,
      ]),
    );
    this.registerOutputs({ byTier: this.byTier });
  }
}

/**
 * The logical name of a tier's queue of one priority. The default class keeps the name the tier's one
 * queue had before priorities (`<name>-<tier>`, its DLQ and policies named after it), so `pulumi up` on
 * an existing stack keeps that queue, and the jobs waiting in it, instead of replacing it and losing
 * them; the other classes are new queues named with their priority.
 */
export function queueLogicalName(name: string, tier: TierName, priority: Priority): string {
  return priority === DEFAULT_PRIORITY ? `${name}-${tier}` : `${name}-${tier}-${priority}`;
}

function tierQueue(
  name: string,
  tier: TierName,
  settings: JobQueuesArgs["settings"],
  parent: pulumi.Resource,
): TierQueue {
  const tags = componentTags("queues", tier);
  const dlq = new aws.sqs.Queue(
    `${name}-dlq`,
    {
      sqsManagedSseEnabled: true,
      messageRetentionSeconds: DLQ_RETENTION_SECONDS,
      receiveWaitTimeSeconds: RECEIVE_WAIT_SECONDS,
      tags,
    },
    { parent },
  );
  const queue = new aws.sqs.Queue(
    name,
    {
      sqsManagedSseEnabled: true,
      visibilityTimeoutSeconds: settings.visibilityTimeoutSeconds,
      messageRetentionSeconds: settings.messageRetentionSeconds,
      receiveWaitTimeSeconds: RECEIVE_WAIT_SECONDS,
      redrivePolicy: pulumi.jsonStringify({
        deadLetterTargetArn: dlq.arn,
        maxReceiveCount: settings.maxReceiveCount,
      }),
      tags,
    },
    { parent },
  );
  // A separate resource: the DLQ cannot name its source inline, which names the DLQ already.
  new aws.sqs.RedriveAllowPolicy(
    `${name}-dlq`,
    {
      queueUrl: dlq.url,
      redriveAllowPolicy: pulumi.jsonStringify({
        redrivePermission: "byQueue",
        sourceQueueArns: [queue.arn],
      }),
    },
    { parent },
  );
  for (const [id, q] of [
    [name, queue],
    [`${name}-dlq`, dlq],
  ] as const) {
    new aws.sqs.QueuePolicy(
      id,
      { queueUrl: q.url, policy: pulumi.jsonStringify(tlsOnly(q.arn)) },
      { parent },
    );
  }
  return {
    queueUrl: queue.url,
    queueArn: queue.arn,
    queueName: queue.name,
    dlqUrl: dlq.url,
    dlqArn: dlq.arn,
    dlqName: dlq.name,
  };
}

/** Denies every request that does not use TLS; access itself is granted by IAM (the node roles). */
export function tlsOnly(queueArn: pulumi.Input<string>): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "DenyInsecureTransport",
        Effect: "Deny",
        Principal: "*",
        Action: "sqs:*",
        Resource: queueArn,
        Condition: { Bool: { "aws:SecureTransport": "false" } },
      },
    ],
  };
}
