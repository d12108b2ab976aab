import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { JOB_METRICS, TIER_NAMES, type TierName, PRIORITIES, type Priority } from "@crucible/runtime/catalog";
import type { PolicyDocument } from "./policy-document";
import { componentTags } from "./providers";

/** EC2 events that warn a node is about to go: recorded, counted and plotted. */
export const NODE_EVENTS = {
  interruption: {
    detailType: "EC2 Spot Instance Interruption Warning",
    metric: "SpotInterruptionWarnings",
  },
  rebalance: {
    detailType: "EC2 Instance Rebalance Recommendation",
    metric: "RebalanceRecommendations",
  },
} as const;
/** Namespace of the counts the event log's metric filters publish. */
export const FLEET_METRICS_NAMESPACE = "Crucible/Fleet";

/** One priority's queues, by name (CloudWatch's SQS metrics are keyed by queue name). */
export interface OperationsQueue {
  readonly queueName: pulumi.Input<string>;
  readonly dlqName: pulumi.Input<string>;
}

/** A tier's queues, one per priority class. */
export type OperationsTierQueues = Readonly<Record<Priority, OperationsQueue>>;

/** Arguments of {@link Operations}. */
export interface OperationsArgs {
  /** The stack's name: the dashboard and the event log are named after it. */
  readonly stack: string;
  /** The stack's region, which every dashboard widget names. */
  readonly region: string;
  /** Each enabled tier's queues, per priority (`JobQueues.byTier`). */
  readonly queues: Partial<Record<TierName, OperationsTierQueues>>;
  /** Each tier's Auto Scaling group names, for the instance widgets. Defaults to none (no instance widgets). */
  readonly asgNamesByTier?: Partial<Record<TierName, pulumi.Input<pulumi.Input<string>[]>>>;
  /** Topic every alarm notifies, on alarm and on recovery. */
  readonly alarmTopicArn: pulumi.Input<string>;
  /** Age of the oldest waiting job, in seconds, above which a tier's alarm fires. */
  readonly oldestJobAgeSeconds: number;
  /** Days the node event log keeps spot interruptions and rebalance recommendations. Defaults to 90. */
  readonly eventRetentionDays?: number;
}

/**
 * What operators look at: a dashboard per stack (queue depth, oldest job, instances, spot
 * interruptions, job outcomes), alarms on dead letters and on jobs waiting too long for every priority
 * queue, and a log of every spot interruption warning and rebalance recommendation in the region.
 */
export class Operations extends pulumi.ComponentResource {
  public readonly dashboardName: pulumi.Output<string>;
  public readonly eventLogGroupName: pulumi.Output<string>;

  constructor(name: string, args: OperationsArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:operations:Operations", name, {}, opts);
    const { stack, region, queues, asgNamesByTier, alarmTopicArn, oldestJobAgeSeconds, eventRetentionDays } =
      {
        asgNamesByTier: {},
        eventRetentionDays: 90,
        ...args,
      };
    const tiers = TIER_NAMES.filter((t) => queues[t]);
    // An alarm per priority queue, not one on their maximum: the alarm then names the class that waits
    // (low waiting long while high is served is the weights at work, high waiting long is lack of
    // capacity), and CloudWatch bills a metric-math alarm per metric it reads, so it would cost the same.
    for (const tier of tiers) {
      for (const priority of PRIORITIES) {
        queueAlarms(
          `${name}-${tier}-${priority}`,
          { tier, priority },
          queues[tier]![priority],
          alarmTopicArn,
          oldestJobAgeSeconds,
          this,
        );
      }
    }
    const eventLog = nodeEventLog(`${name}-node-events`, stack, eventRetentionDays, this);

    const dashboard = new aws.cloudwatch.Dashboard(
      `${name}-dashboard`,
      {
        dashboardName: `crucible-${stack}`,
        dashboardBody: pulumi
          .all([pulumi.output(queues), pulumi.output(asgNamesByTier)])
          .apply(([resolvedQueues, asgs]) =>
            JSON.stringify(
              dashboardBody({
                region,
                oldestJobAgeSeconds,
                tiers: tiers.map((tier) => ({
                  tier,
                  queues: resolvedQueues[tier]!,
                  asgNames: asgs[tier] ?? [],
                })),
              }),
            ),
          ),
      },
      { parent: this },
    );

    this.dashboardName = dashboard.dashboardName;
    this.eventLogGroupName = eventLog.name;
    this.registerOutputs({ dashboardName: this.dashboardName, eventLogGroupName: this.eventLogGroupName });
  }
}

/** A dead letter means a job failed `maxReceiveCount` times; an old job means the tier is not keeping up. */
function queueAlarms(
  name: string,
  { tier, priority }: { readonly tier: TierName; readonly priority: Priority },
  queue: OperationsQueue,
  topicArn: pulumi.Input<string>,
  oldestJobAgeSeconds: number,
  parent: pulumi.Resource,
): void {
  const common = {
    namespace: "AWS/SQS",
    statistic: "Maximum",
    comparisonOperator: "GreaterThanThreshold",
    evaluationPeriods: 1,
    // SQS stops reporting an idle queue's metrics: no data is nothing waiting.
    treatMissingData: "notBreaching",
    alarmActions: [topicArn],
    okActions: [topicArn],
    tags: componentTags("operations", tier),
  };
  new aws.cloudwatch.MetricAlarm(
    `${name}-dead-letters`,
    {
      ...common,
      alarmDescription: `Crucible ${tier} ${priority}: jobs reached the dead-letter queue after failing every attempt; inspect them there.`,
      metricName: "ApproximateNumberOfMessagesVisible",
      dimensions: { QueueName: queue.dlqName },
      period: 300,
      threshold: 0,
    },
    { parent },
  );
  new aws.cloudwatch.MetricAlarm(
    `${name}-oldest-job`,
    {
      ...common,
      alarmDescription: `Crucible ${tier} ${priority}: a job has waited more than ${oldestJobAgeSeconds} s for a node; check the group's capacity and scaling.`,
      metricName: "ApproximateAgeOfOldestMessage",
      dimensions: { QueueName: queue.queueName },
      period: 60,
      threshold: oldestJobAgeSeconds,
    },
    { parent },
  );
}

/**
 * An EventBridge rule recording node events in a log group, and metric filters counting them (EC2
 * publishes no metric for interruptions). The events carry instance ids only, so they are the
 * region's, not just this stack's.
 */
function nodeEventLog(name: string, stack: string, retentionDays: number, parent: pulumi.Resource) {
  const tags = componentTags("operations");
  const events = Object.values(NODE_EVENTS);
  const group = new aws.cloudwatch.LogGroup(
    name,
    { name: `/aws/events/crucible-${stack}-node-events`, retentionInDays: retentionDays, tags },
    { parent },
  );
  new aws.cloudwatch.LogResourcePolicy(
    name,
    {
      policyName: `crucible-${stack}-node-events`,
      policyDocument: pulumi.jsonStringify(eventsMayWrite(group.arn)),
    },
    { parent },
  );
  const rule = new aws.cloudwatch.EventRule(
    name,
    {
      description:
        "Spot interruption warnings and rebalance recommendations, recorded for Crucible operators",
      eventPattern: JSON.stringify({ source: ["aws.ec2"], "detail-type": events.map((e) => e.detailType) }),
      tags,
    },
    { parent },
  );
  new aws.cloudwatch.EventTarget(name, { rule: rule.name, arn: group.arn }, { parent });
  for (const event of events) {
    new aws.cloudwatch.LogMetricFilter(
      `${name}-${event.metric}`,
      {
        logGroupName: group.name,
        // The detail type is a quoted phrase in the recorded event: a term match needs no JSON selector.
        pattern: JSON.stringify(event.detailType),
        metricTransformation: {
          namespace: FLEET_METRICS_NAMESPACE,
          name: event.metric,
          value: "1",
          unit: "Count",
        },
      },
      { parent },
    );
  }
  return group;
}

/** EventBridge delivers to CloudWatch Logs under the log group's resource policy, not a role. */
function eventsMayWrite(logGroupArn: pulumi.Input<string>): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "EventBridgeRecordsNodeEvents",
        Effect: "Allow",
        Principal: { Service: ["events.amazonaws.com", "delivery.logs.amazonaws.com"] },
        Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
        Resource: pulumi.interpolate`${logGroupArn}:*`,
      },
    ],
  };
}

interface DashboardTier {
  readonly tier: TierName;
  readonly queues: Readonly<Record<Priority, { readonly queueName: string; readonly dlqName: string }>>;
  readonly asgNames: readonly string[];
}

type MetricLine = (string | Record<string, unknown>)[];

/**
 * The dashboard's widgets, two a row; instance widgets only where groups are known. Queue counts are a
 * line per tier and priority, stacked, so the top of a stack is everything waiting (or running, or dead).
 */
export function dashboardBody(input: {
  readonly region: string;
  readonly oldestJobAgeSeconds: number;
  readonly tiers: readonly DashboardTier[];
}): { widgets: Record<string, unknown>[] } {
  const { region, oldestJobAgeSeconds, tiers } = input;
  const sqs = (metric: string, queue: "queueName" | "dlqName"): MetricLine[] =>
    tiers.flatMap((t) =>
      PRIORITIES.map((p): MetricLine => [
        "AWS/SQS",
        metric,
        "QueueName",
        t.queues[p][queue],
        { label: `${t.tier} ${p}` },
      ]),
    );
  const asg = (metric: string): MetricLine[] =>
    tiers.flatMap((t) =>
      t.asgNames.map((g) => [
        "AWS/AutoScaling",
        metric,
        "AutoScalingGroupName",
        g,
        { label: `${t.tier} ${g}` },
      ]),
    );
  const panels: {
    title: string;
    metrics: MetricLine[];
    stat: string;
    stacked?: boolean;
    annotations?: unknown;
  }[] = [
    {
      title: "Jobs waiting (visible messages)",
      metrics: sqs("ApproximateNumberOfMessagesVisible", "queueName"),
      stat: "Maximum",
      stacked: true,
    },
    {
      title: "Jobs running (in-flight messages)",
      metrics: sqs("ApproximateNumberOfMessagesNotVisible", "queueName"),
      stat: "Maximum",
      stacked: true,
    },
    {
      // Ages do not add up: one line each.
      title: "Oldest waiting job (seconds)",
      metrics: sqs("ApproximateAgeOfOldestMessage", "queueName"),
      stat: "Maximum",
      annotations: { horizontal: [{ label: "alarm", value: oldestJobAgeSeconds }] },
    },
    {
      title: "Dead letters",
      metrics: sqs("ApproximateNumberOfMessagesVisible", "dlqName"),
      stat: "Maximum",
      stacked: true,
    },
    { title: "In-service instances", metrics: asg("GroupInServiceInstances"), stat: "Average" },
    { title: "Warm pool instances", metrics: asg("WarmPoolWarmedCapacity"), stat: "Average" },
    {
      title: "Spot interruption warnings and rebalance recommendations (region)",
      metrics: Object.values(NODE_EVENTS).map((e) => [
        FLEET_METRICS_NAMESPACE,
        e.metric,
        { label: e.detailType },
      ]),
      stat: "Sum",
    },
    {
      title: "Job outcomes",
      metrics: tiers.flatMap((t) =>
        (["succeeded", "failed", "interrupted"] as const).map((outcome): MetricLine => [
          JOB_METRICS.namespace,
          JOB_METRICS[outcome],
          JOB_METRICS.dimension,
          t.tier,
          { label: `${t.tier} ${outcome}` },
        ]),
      ),
      stat: "Sum",
    },
    {
      title: "Job cost at on-demand price (USD)",
      metrics: tiers.map((t) => [
        JOB_METRICS.namespace,
        JOB_METRICS.costUsd,
        JOB_METRICS.dimension,
        t.tier,
        { label: t.tier },
      ]),
      stat: "Sum",
    },
  ];
  const widgets = panels
    .filter((p) => p.metrics.length > 0)
    .map((p, i) => ({
      type: "metric",
      x: (i % 2) * 12,
      y: Math.floor(i / 2) * 6,
      width: 12,
      height: 6,
      properties: {
        title: p.title,
        region,
        view: "timeSeries",
        stat: p.stat,
        period: 60,
        metrics: p.metrics,
        ...(p.stacked ? { stacked: true } : {}),
        ...(p.annotations ? { annotations: p.annotations } : {}),
      },
    }));
  return { widgets };
}
