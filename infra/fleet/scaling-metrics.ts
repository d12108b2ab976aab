import type * as aws from "@pulumi/aws";
import type * as pulumi from "@pulumi/pulumi";
import { PRIORITIES, type Priority } from "@crucible/runtime/catalog";

/**
 * The metric math a tier's scaling reads: the ids of the queue and group metrics, the expressions over
 * them, and the metric queries that declare those ids for the target-tracking policy and the from-zero
 * alarm. Kept together because an expression may name only ids its queries declare.
 */

/**
 * Metric-math ids (a lowercase letter, then letters, digits and underscores) of a priority queue's
 * visible (waiting) and in-flight (running) messages, the group's in-service instances and its desired
 * capacity.
 */
export const METRIC_IDS = {
  waiting: (p: Priority) => `waiting_${p}`,
  running: (p: Priority) => `running_${p}`,
  inService: "in_service",
  desired: "desired",
} as const;
/**
 * The sum of some queue counts. SQS stops publishing a queue's metrics after six idle hours, and a sum
 * with one series missing has no value, so each is filled with 0: a job in the normal queue must still
 * count while nobody has touched the high one all night.
 */
const sumOf = (ids: readonly string[]) => ids.map((id) => `FILL(${id}, 0)`).join(" + ");
const JOBS = sumOf(PRIORITIES.flatMap((p) => [METRIC_IDS.waiting(p), METRIC_IDS.running(p)]));
const WAITING = sumOf(PRIORITIES.map(METRIC_IDS.waiting));
/**
 * Jobs waiting plus running over the tier's priority queues per in-service instance, guarded so an empty
 * group never divides by zero.
 */
export const JOBS_PER_INSTANCE = `IF(in_service > 0, (${JOBS}) / in_service, ${JOBS})`;
/**
 * 1 while jobs wait in any priority queue, no instance is in service and none is wanted: the alarm that
 * brings a group up from zero. The desired capacity must be zero too, or its ExactCapacity 1 would cancel
 * instances that are still booting after a burst.
 */
export const WAITING_WITH_NO_INSTANCE = `IF(in_service == 0 AND desired == 0 AND (${WAITING}) > 0, 1, 0)`;

/** The tier's queue of each priority class, by the name its CloudWatch metrics carry. */
type QueueNames = Readonly<Record<Priority, { readonly queueName: pulumi.Input<string> }>>;

/**
 * The target-tracking policy's metrics: every priority queue's waiting and running jobs and the group's
 * in-service instances, returning only {@link JOBS_PER_INSTANCE}.
 */
export function jobsPerInstanceMetrics(
  queues: QueueNames,
  groupName: pulumi.Input<string>,
): aws.types.input.autoscaling.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetric[] {
  const queueCounts = PRIORITIES.flatMap((p) => [
    { id: METRIC_IDS.waiting(p), metricName: "ApproximateNumberOfMessagesVisible", queue: queues[p] },
    {
      id: METRIC_IDS.running(p),
      metricName: "ApproximateNumberOfMessagesNotVisible",
      queue: queues[p],
    },
  ]);
  return [
    ...queueCounts.map(({ id, metricName, queue }) => ({
      id,
      returnData: false,
      metricStat: {
        metric: {
          namespace: "AWS/SQS",
          metricName,
          dimensions: [{ name: "QueueName", value: queue.queueName }],
        },
        stat: "Sum",
      },
    })),
    {
      id: METRIC_IDS.inService,
      returnData: false,
      metricStat: {
        metric: {
          namespace: "AWS/AutoScaling",
          metricName: "GroupInServiceInstances",
          dimensions: [{ name: "AutoScalingGroupName", value: groupName }],
        },
        stat: "Average",
      },
    },
    {
      id: "e1",
      expression: JOBS_PER_INSTANCE,
      label: "jobs per in-service instance",
      returnData: true,
    },
  ];
}

/**
 * The from-zero alarm's queries: each priority queue's waiting jobs and the group's in-service and desired
 * capacity, each its maximum over a minute, returning only {@link WAITING_WITH_NO_INSTANCE}.
 */
export function waitingWithNoInstanceQueries(
  queues: QueueNames,
  groupName: pulumi.Input<string>,
): aws.types.input.cloudwatch.MetricAlarmMetricQuery[] {
  const maximum = (
    id: string,
    namespace: string,
    metricName: string,
    dimensions: Record<string, pulumi.Input<string>>,
  ) => ({ id, metric: { namespace, metricName, dimensions, stat: "Maximum", period: 60 } });
  return [
    ...PRIORITIES.map((p) =>
      maximum(METRIC_IDS.waiting(p), "AWS/SQS", "ApproximateNumberOfMessagesVisible", {
        QueueName: queues[p].queueName,
      }),
    ),
    maximum(METRIC_IDS.inService, "AWS/AutoScaling", "GroupInServiceInstances", {
      AutoScalingGroupName: groupName,
    }),
    maximum(METRIC_IDS.desired, "AWS/AutoScaling", "GroupDesiredCapacity", {
      AutoScalingGroupName: groupName,
    }),
    {
      id: "e1",
      expression: WAITING_WITH_NO_INSTANCE,
      label: "waiting with no instance",
      returnData: true,
    },
  ];
}
