import { beforeAll, describe, expect, it } from "vitest";
import { JOBS_PER_INSTANCE, WAITING_WITH_NO_INSTANCE } from "../../../infra/fleet/scaling-metrics";
import { PRIORITIES, T, declaredFleet } from "../../support/fleet-plan";
import { STACKS, runStack, type Plan } from "../../support/harness";

/**
 * The scaling metric math (infra/fleet/scaling-metrics.ts) and the policies, alarm and schedules that use
 * it.
 */

/**
 * The scaling math, written out: every queue count filled with 0 (SQS stops publishing an idle queue's
 * metrics, and a sum with a missing term has no value), summed over the three priorities.
 */
const JOBS =
  "FILL(waiting_high, 0) + FILL(running_high, 0) + FILL(waiting_normal, 0) + FILL(running_normal, 0) + FILL(waiting_low, 0) + FILL(running_low, 0)";
const JOBS_PER_INSTANCE_EXPRESSION = `IF(in_service > 0, (${JOBS}) / in_service, ${JOBS})`;
const WAITING_WITH_NO_INSTANCE_EXPRESSION =
  "IF(in_service == 0 AND desired == 0 AND (FILL(waiting_high, 0) + FILL(waiting_normal, 0) + FILL(waiting_low, 0)) > 0, 1, 0)";

describe.each(STACKS)("%s stack fleet", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const { want, tiers, groupName, queue } = declaredFleet(stack, () => plan);

  describe("scaling", () => {
    it("tracks the tier's target of jobs per in-service instance, over its three queues and its group", () => {
      for (const [tier, t] of Object.entries(want.tiers)) {
        const policy = plan.get(T.policy, `fleet-${tier}-jobs-per-instance`);
        const queueMetric = (id: string, p: (typeof PRIORITIES)[number], metricName: string) => ({
          id,
          returnData: false,
          metricStat: {
            metric: {
              namespace: "AWS/SQS",
              metricName,
              dimensions: [{ name: "QueueName", value: queue(tier, p).state.name }],
            },
            stat: "Sum",
          },
        });
        expect(policy.inputs).toEqual({
          autoscalingGroupName: groupName(tier),
          policyType: "TargetTrackingScaling",
          targetTrackingConfiguration: {
            targetValue: t.targetJobsPerInstance,
            customizedMetricSpecification: {
              metrics: [
                queueMetric("waiting_high", "high", "ApproximateNumberOfMessagesVisible"),
                queueMetric("running_high", "high", "ApproximateNumberOfMessagesNotVisible"),
                queueMetric("waiting_normal", "normal", "ApproximateNumberOfMessagesVisible"),
                queueMetric("running_normal", "normal", "ApproximateNumberOfMessagesNotVisible"),
                queueMetric("waiting_low", "low", "ApproximateNumberOfMessagesVisible"),
                queueMetric("running_low", "low", "ApproximateNumberOfMessagesNotVisible"),
                {
                  id: "in_service",
                  returnData: false,
                  metricStat: {
                    metric: {
                      namespace: "AWS/AutoScaling",
                      metricName: "GroupInServiceInstances",
                      dimensions: [{ name: "AutoScalingGroupName", value: groupName(tier) }],
                    },
                    stat: "Average",
                  },
                },
                {
                  id: "e1",
                  expression: JOBS_PER_INSTANCE_EXPRESSION,
                  label: "jobs per in-service instance",
                  returnData: true,
                },
              ],
            },
          },
        });
      }
    });

    it("starts a group from zero: a one-instance step when jobs wait in any queue and none is in service", () => {
      for (const tier of tiers) {
        const step = plan.get(T.policy, `fleet-${tier}-from-zero`);
        expect(step.inputs).toEqual({
          autoscalingGroupName: groupName(tier),
          policyType: "StepScaling",
          adjustmentType: "ExactCapacity",
          stepAdjustments: [{ metricIntervalLowerBound: "0", scalingAdjustment: 1 }],
        });
        const alarm = plan.get(T.alarm, `fleet-${tier}-from-zero`).inputs;
        expect(alarm).toMatchObject({
          comparisonOperator: "GreaterThanOrEqualToThreshold",
          threshold: 1,
          evaluationPeriods: 1,
          treatMissingData: "notBreaching",
          alarmActions: [step.state.arn],
        });
        const maximum = (id: string, namespace: string, metricName: string, dimensions: object) => ({
          id,
          metric: { namespace, metricName, dimensions, stat: "Maximum", period: 60 },
        });
        expect(alarm.metricQueries).toEqual([
          ...PRIORITIES.map((p) =>
            maximum(`waiting_${p}`, "AWS/SQS", "ApproximateNumberOfMessagesVisible", {
              QueueName: queue(tier, p).state.name,
            }),
          ),
          maximum("in_service", "AWS/AutoScaling", "GroupInServiceInstances", {
            AutoScalingGroupName: groupName(tier),
          }),
          maximum("desired", "AWS/AutoScaling", "GroupDesiredCapacity", {
            AutoScalingGroupName: groupName(tier),
          }),
          {
            id: "e1",
            expression: WAITING_WITH_NO_INSTANCE_EXPRESSION,
            label: "waiting with no instance",
            returnData: true,
          },
        ]);
      }
    });

    it("raises only the minimum on the configured schedules, leaving max and desired to the group", () => {
      const declared = plan.ofType(T.schedule).map((s) => s.inputs);
      expect(declared).toHaveLength(Object.values(want.tiers).flatMap((t) => t.schedules).length);
      for (const [tier, t] of Object.entries(want.tiers)) {
        expect(declared.filter((s) => s.autoscalingGroupName === groupName(tier))).toEqual(
          t.schedules.map((s) => ({
            scheduledActionName: `${groupName(tier)}-${s.name}`,
            autoscalingGroupName: groupName(tier),
            recurrence: s.recurrence,
            minSize: s.minSize,
            maxSize: -1,
            desiredCapacity: -1,
            timeZone: s.timeZone,
          })),
        );
      }
    });
  });
});

describe("the scaling expressions", () => {
  it("are the expressions the policies declare", () => {
    expect(JOBS_PER_INSTANCE).toBe(JOBS_PER_INSTANCE_EXPRESSION);
    expect(WAITING_WITH_NO_INSTANCE).toBe(WAITING_WITH_NO_INSTANCE_EXPRESSION);
  });

  it("use only ids CloudWatch metric math accepts, each declared as a metric", () => {
    const declared = new Set([
      ...PRIORITIES.flatMap((p) => [`waiting_${p}`, `running_${p}`]),
      "in_service",
      "desired",
    ]);
    for (const expression of [JOBS_PER_INSTANCE, WAITING_WITH_NO_INSTANCE]) {
      // Functions and operators are upper case; every lower-case word is a metric id.
      const ids = expression.match(/\b[a-z][A-Za-z0-9_]*\b/g) ?? [];
      expect(ids.length).toBeGreaterThan(0);
      for (const id of ids) expect(declared.has(id), id).toBe(true);
    }
  });
});
