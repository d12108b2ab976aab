import { beforeAll, describe, expect, it } from "vitest";
import { dashboardBody } from "../../infra/operations";
import { JOB_METRICS } from "../../runtime/src/job/contract";
import { runStack, type Plan } from "../support/harness";

const ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm";
const QUEUE = "aws:sqs/queue:Queue";
const PRIORITIES = ["high", "normal", "low"] as const;

const EXPECTED = {
  dev: { region: "us-east-1", tiers: ["cpu-small", "cpu-large", "gpu-small"], oldestJobAgeSeconds: 900 },
  staging: {
    region: "us-east-1",
    tiers: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium"],
    oldestJobAgeSeconds: 900,
  },
  prod: {
    region: "us-west-2",
    tiers: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium", "gpu-large"],
    oldestJobAgeSeconds: 600,
  },
};

interface Widget {
  x: number;
  y: number;
  properties: {
    title: string;
    region: string;
    stat: string;
    metrics: unknown[][];
    stacked?: boolean;
    annotations?: unknown;
  };
}

describe.each(Object.entries(EXPECTED))("%s stack operations", (stack, want) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  /** A tier's queue (or DLQ) of one priority: `normal` kept the tier's one queue's name. */
  const queueName = (tier: string, p: string, dlq = false) =>
    plan.get(QUEUE, `queues-${tier}${p === "normal" ? "" : `-${p}`}${dlq ? "-dlq" : ""}`).state
      .name as string;
  const each = () => want.tiers.flatMap((t) => PRIORITIES.map((p) => [t, p] as const));
  const topicArn = () => plan.outputs.notificationTopicArn as string;

  it("declares exactly two alarms per priority queue of each enabled tier", () => {
    const component = plan.get("crucible:operations:Operations", "operations");
    expect(
      plan
        .childrenOf(component.urn)
        .filter((r) => r.type === ALARM)
        .map((a) => a.name)
        .sort(),
    ).toEqual(
      each()
        .flatMap(([t, p]) => [`operations-${t}-${p}-dead-letters`, `operations-${t}-${p}-oldest-job`])
        .sort(),
    );
  });

  it("alarms on any message in each dead-letter queue, to the notifications topic", () => {
    expect(topicArn()).toMatch(/^arn:aws:sns:/);
    for (const [tier, p] of each()) {
      expect(plan.get(ALARM, `operations-${tier}-${p}-dead-letters`).inputs).toMatchObject({
        alarmDescription: `Crucible ${tier} ${p}: jobs reached the dead-letter queue after failing every attempt; inspect them there.`,
        namespace: "AWS/SQS",
        metricName: "ApproximateNumberOfMessagesVisible",
        dimensions: { QueueName: queueName(tier, p, true) },
        statistic: "Maximum",
        comparisonOperator: "GreaterThanThreshold",
        threshold: 0,
        treatMissingData: "notBreaching",
        alarmActions: [topicArn()],
        okActions: [topicArn()],
        tags: { "crucible:component": "operations", "crucible:tier": tier },
      });
    }
  });

  it(`alarms when the oldest job of any priority has waited more than ${want.oldestJobAgeSeconds} s`, () => {
    for (const [tier, p] of each()) {
      expect(plan.get(ALARM, `operations-${tier}-${p}-oldest-job`).inputs).toMatchObject({
        alarmDescription: `Crucible ${tier} ${p}: a job has waited more than ${want.oldestJobAgeSeconds} s for a node; check the group's capacity and scaling.`,
        namespace: "AWS/SQS",
        metricName: "ApproximateAgeOfOldestMessage",
        dimensions: { QueueName: queueName(tier, p) },
        statistic: "Maximum",
        period: 60,
        comparisonOperator: "GreaterThanThreshold",
        threshold: want.oldestJobAgeSeconds,
        alarmActions: [topicArn()],
        okActions: [topicArn()],
      });
    }
  });

  it("records spot interruption warnings and rebalance recommendations in a log group", () => {
    const rule = plan.get("aws:cloudwatch/eventRule:EventRule", "operations-node-events");
    expect(JSON.parse(rule.inputs.eventPattern as string)).toEqual({
      source: ["aws.ec2"],
      "detail-type": ["EC2 Spot Instance Interruption Warning", "EC2 Instance Rebalance Recommendation"],
    });
    const group = plan.get("aws:cloudwatch/logGroup:LogGroup", "operations-node-events");
    expect(group.inputs).toMatchObject({
      name: `/aws/events/crucible-${stack}-node-events`,
      retentionInDays: 90,
    });
    const targets = plan.ofType("aws:cloudwatch/eventTarget:EventTarget");
    expect(targets.map((t) => t.inputs)).toEqual([{ rule: rule.state.name, arn: group.state.arn }]);
  });

  it("lets EventBridge (and only it) write to that log group", () => {
    const group = plan.get("aws:cloudwatch/logGroup:LogGroup", "operations-node-events");
    const policy = plan.get("aws:cloudwatch/logResourcePolicy:LogResourcePolicy", "operations-node-events");
    expect(JSON.parse(policy.inputs.policyDocument as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        {
          Sid: "EventBridgeRecordsNodeEvents",
          Effect: "Allow",
          Principal: { Service: ["events.amazonaws.com", "delivery.logs.amazonaws.com"] },
          Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
          Resource: `${group.state.arn as string}:*`,
        },
      ],
    });
  });

  it("counts each kind of node event with a metric filter", () => {
    const filters = plan.ofType("aws:cloudwatch/logMetricFilter:LogMetricFilter");
    expect(filters.map((f) => [f.inputs.pattern, f.inputs.metricTransformation])).toEqual([
      [
        '"EC2 Spot Instance Interruption Warning"',
        { namespace: "Crucible/Fleet", name: "SpotInterruptionWarnings", value: "1", unit: "Count" },
      ],
      [
        '"EC2 Instance Rebalance Recommendation"',
        { namespace: "Crucible/Fleet", name: "RebalanceRecommendations", value: "1", unit: "Count" },
      ],
    ]);
  });

  describe("dashboard", () => {
    const widgets = () => {
      const dashboard = plan.get("aws:cloudwatch/dashboard:Dashboard", "operations-dashboard");
      expect(dashboard.inputs.dashboardName).toBe(`crucible-${stack}`);
      return (JSON.parse(dashboard.inputs.dashboardBody as string) as { widgets: Widget[] }).widgets;
    };
    const widget = (title: string) => {
      const found = widgets().find((w) => w.properties.title === title);
      if (!found) throw new Error(`no widget titled ${title}`);
      return found.properties;
    };
    const sqsLines = (metric: string, dlq = false) =>
      each().map(([t, p]) => ["AWS/SQS", metric, "QueueName", queueName(t, p, dlq), { label: `${t} ${p}` }]);

    it("plots each tier's waiting, running and dead jobs stacked per priority, and each queue's oldest job", () => {
      expect(widget("Jobs waiting (visible messages)")).toMatchObject({
        metrics: sqsLines("ApproximateNumberOfMessagesVisible"),
        stacked: true,
      });
      expect(widget("Jobs running (in-flight messages)")).toMatchObject({
        metrics: sqsLines("ApproximateNumberOfMessagesNotVisible"),
        stacked: true,
      });
      expect(widget("Dead letters")).toMatchObject({
        metrics: sqsLines("ApproximateNumberOfMessagesVisible", true),
        stacked: true,
      });
      // Ages do not add up: a line each, with the alarm's threshold drawn.
      const oldest = widget("Oldest waiting job (seconds)");
      expect(oldest.metrics).toEqual(sqsLines("ApproximateAgeOfOldestMessage"));
      expect(oldest.stacked).toBeUndefined();
      expect(oldest.annotations).toEqual({
        horizontal: [{ label: "alarm", value: want.oldestJobAgeSeconds }],
      });
    });

    it("plots job outcomes from the agent's metrics, per tier", () => {
      expect(widget("Job outcomes").metrics).toEqual(
        want.tiers.flatMap((t) =>
          (["succeeded", "failed", "interrupted"] as const).map((o) => [
            JOB_METRICS.namespace,
            JOB_METRICS[o],
            "Tier",
            t,
            { label: `${t} ${o}` },
          ]),
        ),
      );
      expect(widget("Job outcomes").stat).toBe("Sum");
      expect(widget("Job cost at on-demand price (USD)")).toMatchObject({
        metrics: want.tiers.map((t) => ["Crucible/Jobs", "JobCostUsd", "Tier", t, { label: t }]),
        stat: "Sum",
      });
    });

    it("plots spot interruptions and rebalance recommendations", () => {
      expect(widget("Spot interruption warnings and rebalance recommendations (region)").metrics).toEqual([
        ["Crucible/Fleet", "SpotInterruptionWarnings", { label: "EC2 Spot Instance Interruption Warning" }],
        ["Crucible/Fleet", "RebalanceRecommendations", { label: "EC2 Instance Rebalance Recommendation" }],
      ]);
    });

    it("plots instances of exactly the Auto Scaling groups the stack declares", () => {
      const groups = plan
        .ofType("aws:autoscaling/group:Group")
        .map((g) => g.state.name as string)
        .sort();
      const plotted = (title: string) =>
        widgets()
          .filter((w) => w.properties.title === title)
          .flatMap((w) => w.properties.metrics.map((m) => m[3] as string))
          .sort();
      expect(plotted("In-service instances")).toEqual(groups);
      expect(plotted("Warm pool instances")).toEqual(groups);
    });

    it(`names the stack's region in every widget and tiles them two a row`, () => {
      const all = widgets();
      all.forEach((w, i) => {
        expect(w.properties.region).toBe(want.region);
        expect([w.x, w.y]).toEqual([(i % 2) * 12, Math.floor(i / 2) * 6]);
      });
    });
  });
});

describe("dashboard body", () => {
  const queuesOf = (prefix: string) => ({
    high: { queueName: `q-${prefix}-high`, dlqName: `d-${prefix}-high` },
    normal: { queueName: `q-${prefix}`, dlqName: `d-${prefix}` },
    low: { queueName: `q-${prefix}-low`, dlqName: `d-${prefix}-low` },
  });

  it("plots a line per tier and priority, highest priority first", () => {
    const { widgets } = dashboardBody({
      region: "us-east-1",
      oldestJobAgeSeconds: 900,
      tiers: [{ tier: "cpu-small", queues: queuesOf("cpu"), asgNames: [] }],
    });
    expect((widgets[0]!.properties as { metrics: unknown[] }).metrics).toEqual([
      [
        "AWS/SQS",
        "ApproximateNumberOfMessagesVisible",
        "QueueName",
        "q-cpu-high",
        { label: "cpu-small high" },
      ],
      ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "q-cpu", { label: "cpu-small normal" }],
      ["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName", "q-cpu-low", { label: "cpu-small low" }],
    ]);
  });

  it("plots each group's in-service and warm instances once its names are known", () => {
    const { widgets } = dashboardBody({
      region: "us-west-2",
      oldestJobAgeSeconds: 600,
      tiers: [
        { tier: "gpu-small", queues: queuesOf("gpu"), asgNames: ["gpu-small-od", "gpu-small-spot"] },
        { tier: "cpu-small", queues: queuesOf("cpu"), asgNames: [] },
      ],
    });
    const byTitle = (title: string) =>
      (
        widgets.find((w) => (w.properties as { title: string }).title === title)!.properties as {
          metrics: unknown[];
        }
      ).metrics;
    expect(byTitle("In-service instances")).toEqual([
      [
        "AWS/AutoScaling",
        "GroupInServiceInstances",
        "AutoScalingGroupName",
        "gpu-small-od",
        { label: "gpu-small gpu-small-od" },
      ],
      [
        "AWS/AutoScaling",
        "GroupInServiceInstances",
        "AutoScalingGroupName",
        "gpu-small-spot",
        { label: "gpu-small gpu-small-spot" },
      ],
    ]);
    expect(byTitle("Warm pool instances")).toEqual([
      [
        "AWS/AutoScaling",
        "WarmPoolWarmedCapacity",
        "AutoScalingGroupName",
        "gpu-small-od",
        { label: "gpu-small gpu-small-od" },
      ],
      [
        "AWS/AutoScaling",
        "WarmPoolWarmedCapacity",
        "AutoScalingGroupName",
        "gpu-small-spot",
        { label: "gpu-small gpu-small-spot" },
      ],
    ]);
    expect(widgets).toHaveLength(9);
  });

  it("leaves out instance widgets while no group is known", () => {
    const { widgets } = dashboardBody({
      region: "us-east-1",
      oldestJobAgeSeconds: 900,
      tiers: [{ tier: "cpu-small", queues: queuesOf("cpu"), asgNames: [] }],
    });
    expect(widgets.map((w) => (w.properties as { title: string }).title)).toEqual([
      "Jobs waiting (visible messages)",
      "Jobs running (in-flight messages)",
      "Oldest waiting job (seconds)",
      "Dead letters",
      "Spot interruption warnings and rebalance recommendations (region)",
      "Job outcomes",
      "Job cost at on-demand price (USD)",
    ]);
  });
});
