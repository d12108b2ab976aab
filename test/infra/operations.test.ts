import { beforeAll, describe, expect, it } from "vitest";
import { dashboardBody } from "../../infra/operations";
import { JOB_METRICS } from "../../runtime/src/contract";
import { runStack, type Plan } from "../harness";

const ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm";
const QUEUE = "aws:sqs/queue:Queue";

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
  properties: { title: string; region: string; stat: string; metrics: unknown[][]; annotations?: unknown };
}

describe.each(Object.entries(EXPECTED))("%s stack operations", (stack, want) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const queueName = (tier: string, dlq = false) =>
    plan.get(QUEUE, `queues-${tier}${dlq ? "-dlq" : ""}`).state.name as string;
  const topicArn = () => plan.outputs.notificationTopicArn as string;

  it("declares exactly two alarms per enabled tier", () => {
    const component = plan.get("crucible:operations:Operations", "operations");
    expect(
      plan
        .childrenOf(component.urn)
        .filter((r) => r.type === ALARM)
        .map((a) => a.name)
        .sort(),
    ).toEqual(
      want.tiers.flatMap((t) => [`operations-${t}-dead-letters`, `operations-${t}-oldest-job`]).sort(),
    );
  });

  it("alarms on any message in a tier's dead-letter queue, to the notifications topic", () => {
    expect(topicArn()).toMatch(/^arn:aws:sns:/);
    for (const tier of want.tiers) {
      expect(plan.get(ALARM, `operations-${tier}-dead-letters`).inputs).toMatchObject({
        namespace: "AWS/SQS",
        metricName: "ApproximateNumberOfMessagesVisible",
        dimensions: { QueueName: queueName(tier, true) },
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

  it(`alarms when a tier's oldest job has waited more than ${want.oldestJobAgeSeconds} s`, () => {
    for (const tier of want.tiers) {
      expect(plan.get(ALARM, `operations-${tier}-oldest-job`).inputs).toMatchObject({
        namespace: "AWS/SQS",
        metricName: "ApproximateAgeOfOldestMessage",
        dimensions: { QueueName: queueName(tier) },
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
      want.tiers.map((t) => ["AWS/SQS", metric, "QueueName", queueName(t, dlq), { label: t }]);

    it("plots each tier's waiting and running jobs, oldest job (with the alarm line) and dead letters", () => {
      expect(widget("Jobs waiting (visible messages)").metrics).toEqual(
        sqsLines("ApproximateNumberOfMessagesVisible"),
      );
      expect(widget("Jobs running (in-flight messages)").metrics).toEqual(
        sqsLines("ApproximateNumberOfMessagesNotVisible"),
      );
      const oldest = widget("Oldest waiting job (seconds)");
      expect(oldest.metrics).toEqual(sqsLines("ApproximateAgeOfOldestMessage"));
      expect(oldest.annotations).toEqual({
        horizontal: [{ label: "alarm", value: want.oldestJobAgeSeconds }],
      });
      expect(widget("Dead letters").metrics).toEqual(sqsLines("ApproximateNumberOfMessagesVisible", true));
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
  it("plots each group's in-service and warm instances once its names are known", () => {
    const { widgets } = dashboardBody({
      region: "us-west-2",
      oldestJobAgeSeconds: 600,
      tiers: [
        {
          tier: "gpu-small",
          queueName: "q-gpu",
          dlqName: "d-gpu",
          asgNames: ["gpu-small-od", "gpu-small-spot"],
        },
        { tier: "cpu-small", queueName: "q-cpu", dlqName: "d-cpu", asgNames: [] },
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
      tiers: [{ tier: "cpu-small", queueName: "q", dlqName: "d", asgNames: [] }],
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
