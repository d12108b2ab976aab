import { beforeAll, describe, expect, it } from "vitest";
import type { TierName } from "../../runtime/src/catalog";
import { ENFORCED_BUDGETS_ENV, PAUSE_MARKERS_ENV } from "../../infra/budget-enforcer/handler";
import { PAUSE_MARKER_PREFIX } from "../../runtime/src/catalog/bucket-layout";
import { Budgets, enforcerCode } from "../../infra/budgets";
import { loadConfig } from "../../infra/config";
import { MOCK_ACCOUNT_ID, runProgram } from "../../scripts/lib/mock-engine";
import { STACKS, configProblems, configWith, readStackConfig, runStack, type Plan } from "../support/harness";

const BUDGET = "aws:budgets/budget:Budget";
const DEFAULT_THRESHOLDS = [
  { type: "ACTUAL", percent: 50 },
  { type: "ACTUAL", percent: 80 },
  { type: "ACTUAL", percent: 100 },
  { type: "FORECASTED", percent: 100 },
];

const ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm";
/** The default thresholds CloudWatch can watch on the agents' spend metrics: the ACTUAL ones. */
const ACTUAL_THRESHOLDS = DEFAULT_THRESHOLDS.filter((t) => t.type === "ACTUAL");

/** Each stack file's limits and subscribers. */
const EXPECTED: Record<
  (typeof STACKS)[number],
  {
    total: number;
    tiers: Partial<Record<TierName, number>>;
    users: Record<string, number>;
    projects: Record<string, number>;
    emails: string[];
    enforce: boolean;
  }
> = {
  dev: {
    total: 400,
    tiers: { "gpu-small": 250 },
    users: { alice: 120, bob: 80 },
    projects: { ci: 25, nanogpt: 150 },
    emails: ["ml-platform-alerts@example.com"],
    enforce: true,
  },
  staging: {
    total: 3000,
    tiers: { "gpu-small": 1200, "gpu-medium": 800 },
    users: {},
    projects: {},
    emails: ["ml-platform-alerts@example.com", "finance-cloud@example.com"],
    enforce: false,
  },
  prod: {
    total: 25000,
    tiers: { "gpu-small": 9000, "gpu-medium": 6000, "gpu-large": 6000 },
    users: { alice: 4000, bob: 2500, "ravi.k": 2500 },
    projects: { "llm-pretrain": 12000, "vision-eval": 5000 },
    emails: ["ml-platform-alerts@example.com", "finance-cloud@example.com"],
    enforce: false,
  },
};

/** A stack's user and project limits, as [kind, name, limit]. */
const spendLimits = (stack: (typeof STACKS)[number]) => [
  ...Object.entries(EXPECTED[stack].users).map(([n, usd]) => ["user", n, usd] as const),
  ...Object.entries(EXPECTED[stack].projects).map(([n, usd]) => ["project", n, usd] as const),
];

describe.each(STACKS)("%s stack budgets", (stack) => {
  const expected = EXPECTED[stack];
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const topicArn = () => plan.get("aws:sns/topic:Topic", "notifications-topic").state.arn;

  it("declares one budget for the environment and one per budgeted tier, in the component", () => {
    const component = plan.get("crucible:budgets:Budgets", "budgets");
    const names = plan
      .childrenOf(component.urn)
      .filter((r) => r.type === BUDGET)
      .map((r) => r.inputs.name);
    expect(names).toEqual([
      `crucible-${stack}`,
      ...Object.keys(expected.tiers).map((t) => `crucible-${stack}-${t}`),
    ]);
    expect(plan.ofType(BUDGET)).toHaveLength(1 + Object.keys(expected.tiers).length);
  });

  it("budgets the environment's monthly cost by its cost allocation tag", () => {
    expect(plan.get(BUDGET, "budgets-environment").inputs).toMatchObject({
      name: `crucible-${stack}`,
      budgetType: "COST",
      timeUnit: "MONTHLY",
      limitAmount: expected.total.toFixed(2),
      limitUnit: "USD",
      costFilters: [{ name: "TagKeyValue", values: [`user:crucible:environment$${stack}`] }],
      tags: { "crucible:component": "budgets" },
    });
    expect(plan.get(BUDGET, "budgets-environment").inputs.filterExpression).toBeUndefined();
  });

  it("budgets each tier by its tag and the environment's together", () => {
    for (const [tier, limit] of Object.entries(expected.tiers)) {
      const budget = plan.get(BUDGET, `budgets-${tier}`).inputs;
      expect(budget).toMatchObject({
        name: `crucible-${stack}-${tier}`,
        budgetType: "COST",
        timeUnit: "MONTHLY",
        limitAmount: limit.toFixed(2),
        limitUnit: "USD",
        tags: { "crucible:component": "budgets", "crucible:tier": tier },
      });
      expect(budget.filterExpression).toEqual({
        ands: [
          { tags: { key: "crucible:environment", values: [stack], matchOptions: ["EQUALS"] } },
          { tags: { key: "crucible:tier", values: [tier], matchOptions: ["EQUALS"] } },
        ],
      });
      expect(budget.costFilters).toBeUndefined();
    }
  });

  it("notifies the topic and the emails at ACTUAL 50/80/100 % and FORECASTED 100 %", () => {
    for (const budget of plan.ofType(BUDGET)) {
      expect(budget.inputs.notifications).toEqual(
        DEFAULT_THRESHOLDS.map(({ type, percent }) => ({
          notificationType: type,
          comparisonOperator: "GREATER_THAN",
          thresholdType: "PERCENTAGE",
          threshold: percent,
          subscriberSnsTopicArns: [topicArn()],
          subscriberEmailAddresses: expected.emails,
        })),
      );
    }
  });

  it("exports every budget for finance: name, limit, thresholds, topic, subscribers, alarms", () => {
    expect(plan.outputs.budgets).toEqual([
      ...[
        { scope: "environment", name: `crucible-${stack}`, limitUsd: expected.total },
        ...Object.entries(expected.tiers).map(([tier, limitUsd]) => ({
          scope: tier,
          name: `crucible-${stack}-${tier}`,
          limitUsd,
        })),
      ].map((b) => ({
        ...b,
        thresholds: DEFAULT_THRESHOLDS,
        topicArn: topicArn(),
        emails: expected.emails,
        // The environment's budget is never enforced: it has no groups of its own to pause.
        enforced: expected.enforce && b.scope !== "environment",
        alarmNames: [],
      })),
      ...spendLimits(stack).map(([kind, owner, limitUsd]) => ({
        scope: `${kind}:${owner}`,
        name: `crucible-${stack}-${kind}-${owner}`,
        limitUsd,
        thresholds: ACTUAL_THRESHOLDS,
        topicArn: topicArn(),
        emails: expected.emails,
        enforced: false,
        alarmNames: ACTUAL_THRESHOLDS.map((t) => `crucible-${stack}-${kind}-${owner}-${t.percent}pct`),
      })),
    ]);
  });

  it("declares a spend alarm per user and project budget at each ACTUAL threshold, and no other", () => {
    const component = plan.get("crucible:budgets:Budgets", "budgets");
    const alarms = plan.childrenOf(component.urn).filter((r) => r.type === ALARM);
    expect(alarms.map((a) => a.name)).toEqual(
      spendLimits(stack).flatMap(([kind, owner]) =>
        ACTUAL_THRESHOLDS.map((t) => `budgets-${kind}-${owner}-${t.percent}`),
      ),
    );
  });

  it("alarms on the agents' month-to-date spend metric, above limit × percent, to the budgets' topic", () => {
    const metric = {
      user: { metricName: "UserMonthToDateSpendUsd", dimension: "User" },
      project: { metricName: "ProjectMonthToDateSpendUsd", dimension: "Project" },
    };
    for (const [kind, owner, limitUsd] of spendLimits(stack)) {
      for (const { percent } of ACTUAL_THRESHOLDS) {
        const thresholdUsd = (limitUsd * percent) / 100;
        expect(plan.get(ALARM, `budgets-${kind}-${owner}-${percent}`).inputs).toEqual({
          name: `crucible-${stack}-${kind}-${owner}-${percent}pct`,
          alarmDescription: `Crucible ${stack}: ${kind} ${owner} has spent more than ${percent} % (${thresholdUsd} USD) of the ${limitUsd} USD monthly budget this month.`,
          namespace: "Crucible/Jobs",
          metricName: metric[kind].metricName,
          dimensions: { [metric[kind].dimension]: owner },
          statistic: "Maximum",
          period: 300,
          evaluationPeriods: 1,
          comparisonOperator: "GreaterThanThreshold",
          threshold: thresholdUsd,
          treatMissingData: "ignore",
          alarmActions: [topicArn()],
          okActions: [topicArn()],
          tags: { "crucible:component": "budgets" },
        });
      }
    }
  });

  it("declares the enforcer only where the stack enforces, naming each budgeted tier's fleet group", () => {
    // The stack's other function, the fleet's fast path, is test/infra/fleet/fast-scale.test.ts's.
    const functions = plan.ofType("aws:lambda/function:Function").filter((f) => f.name.endsWith("-enforcer"));
    if (!expected.enforce) {
      expect(functions).toEqual([]);
      return;
    }
    const env = (functions[0]!.inputs.environment as { variables: Record<string, string> }).variables;
    expect(JSON.parse(env[ENFORCED_BUDGETS_ENV]!)).toEqual(
      Object.fromEntries(
        Object.keys(expected.tiers).map((tier) => [
          `crucible-${stack}-${tier}`,
          { tier, asgNames: [`crucible-${stack}-${tier}`] },
        ]),
      ),
    );
  });
});

const TOPIC = `arn:aws:sns:us-east-1:${MOCK_ACCOUNT_ID}:notifications-topic`;
const WORKSPACES = "workspaces-workspaces-0a1b2c3";

/** Only the Budgets component, with the stack's config and the given groups, under the mock engine. */
function budgetsOnly(
  stack: string,
  asgNamesByTier: Partial<Record<TierName, string[]>>,
  config = readStackConfig(stack),
) {
  return runProgram(stack, {
    config,
    load: () =>
      Promise.resolve({
        default: () => {
          const cfg = loadConfig();
          const budgets = new Budgets("budgets", {
            environment: cfg.environment,
            settings: cfg.budgets,
            topicArn: TOPIC,
            asgNamesByTier,
            pauseMarkers: { bucketName: WORKSPACES, bucketArn: `arn:aws:s3:::${WORKSPACES}` },
          });
          return { budgets: budgets.budgets, enforcerArn: budgets.enforcerArn };
        },
      }),
  });
}

describe("enforcement wiring (dev: enforce on, gpu-small budgeted)", () => {
  const ASGS = ["crucible-dev-gpu-small-a1b2", "crucible-dev-gpu-small-c3d4"];
  let plan: Plan;
  beforeAll(async () => {
    plan = await budgetsOnly("dev", { "gpu-small": ASGS, "cpu-small": ["crucible-dev-cpu-small"] });
  });
  const fn = () => plan.get("aws:lambda/function:Function", "budgets-enforcer");
  const logGroup = () => plan.get("aws:cloudwatch/logGroup:LogGroup", "budgets-enforcer");
  const role = () => plan.get("aws:iam/role:Role", "budgets-enforcer");

  it("subscribes the function to the topic, after SNS may invoke it from that topic only", () => {
    const permission = plan.get("aws:lambda/permission:Permission", "budgets-enforcer").inputs;
    expect(permission).toEqual({
      action: "lambda:InvokeFunction",
      function: "crucible-dev-budget-enforcer",
      principal: "sns.amazonaws.com",
      sourceArn: TOPIC,
    });
    const subscriptions = plan.ofType("aws:sns/topicSubscription:TopicSubscription");
    expect(subscriptions.map((s) => s.inputs)).toEqual([
      { topic: TOPIC, protocol: "lambda", endpoint: fn().state.arn },
    ]);
  });

  it("runs the transpiled handler on nodejs20.x, naming the tier's groups by budget", async () => {
    expect(fn().inputs).toMatchObject({
      name: "crucible-dev-budget-enforcer",
      runtime: "nodejs20.x",
      handler: "index.handler",
      role: role().state.arn,
      timeout: 60,
      loggingConfig: { logFormat: "Text", logGroup: "/aws/lambda/crucible-dev-budget-enforcer" },
    });
    const env = (fn().inputs.environment as { variables: Record<string, string> }).variables;
    // cpu-small has groups but no budget: nothing to enforce there.
    expect(JSON.parse(env[ENFORCED_BUDGETS_ENV]!)).toEqual({
      "crucible-dev-gpu-small": { tier: "gpu-small", asgNames: ASGS },
    });
    // Where a pause writes the marker that stops protected nodes taking jobs (runtime/src/agent/budget-pause.ts).
    expect(JSON.parse(env[PAUSE_MARKERS_ENV]!)).toEqual({ bucket: WORKSPACES, prefix: PAUSE_MARKER_PREFIX });
    // Assets arrive from the engine as they were declared: their fields may still be promises.
    const code = fn().inputs.code as { assets: Promise<Record<string, { text: Promise<string> }>> };
    const assets = await code.assets;
    expect(Object.keys(assets)).toEqual(["index.js"]);
    expect(await assets["index.js"]!.text).toBe(enforcerCode());
  });

  it("may resize only those groups, read sizes, and write its own log group", () => {
    expect(logGroup().inputs).toMatchObject({
      name: "/aws/lambda/crucible-dev-budget-enforcer",
      retentionInDays: 365,
    });
    expect(JSON.parse(role().inputs.assumeRolePolicy as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" },
      ],
    });
    const policy = plan.get("aws:iam/rolePolicy:RolePolicy", "budgets-enforcer").inputs;
    expect(policy.role).toBe(role().state.name);
    expect(JSON.parse(policy.policy as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        {
          Sid: "PauseEnforcedTiers",
          Effect: "Allow",
          Action: ["autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags"],
          Resource: ASGS.map(
            (n) =>
              `arn:aws:autoscaling:us-east-1:${MOCK_ACCOUNT_ID}:autoScalingGroup:*:autoScalingGroupName/${n}`,
          ),
        },
        {
          Sid: "ReadGroupSizes",
          Effect: "Allow",
          Action: "autoscaling:DescribeAutoScalingGroups",
          Resource: "*",
        },
        {
          Sid: "PauseMarkers",
          Effect: "Allow",
          Action: ["s3:PutObject", "s3:DeleteObject"],
          Resource: [`arn:aws:s3:::${WORKSPACES}/_control/paused/gpu-small`],
        },
        {
          Sid: "WriteOwnLogs",
          Effect: "Allow",
          Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
          Resource: `${logGroup().state.arn as string}:*`,
        },
      ],
    });
  });

  it("may write the marker with the workspaces' KMS key where there is one, through S3 only", async () => {
    const key = `arn:aws:kms:us-east-1:${MOCK_ACCOUNT_ID}:key/0000`;
    const kms = await runProgram("dev", {
      config: readStackConfig("dev"),
      load: () =>
        Promise.resolve({
          default: () => {
            const cfg = loadConfig();
            new Budgets("budgets", {
              environment: cfg.environment,
              settings: cfg.budgets,
              topicArn: TOPIC,
              asgNamesByTier: { "gpu-small": ASGS },
              pauseMarkers: {
                bucketName: WORKSPACES,
                bucketArn: `arn:aws:s3:::${WORKSPACES}`,
                kmsKeyArn: key,
              },
            });
            return {};
          },
        }),
    });
    const policy = JSON.parse(
      kms.get("aws:iam/rolePolicy:RolePolicy", "budgets-enforcer").inputs.policy as string,
    ) as {
      Statement: { Sid: string }[];
    };
    expect(policy.Statement.find((st) => st.Sid === "PauseMarkerKey")).toEqual({
      Sid: "PauseMarkerKey",
      Effect: "Allow",
      Action: "kms:GenerateDataKey",
      Resource: key,
      Condition: { StringEquals: { "kms:ViaService": "s3.us-east-1.amazonaws.com" } },
    });
  });

  it("refuses to enforce without somewhere to write pause markers (it would fail open)", async () => {
    await expect(
      runProgram("dev", {
        config: readStackConfig("dev"),
        load: () =>
          Promise.resolve({
            default: () => {
              const cfg = loadConfig();
              new Budgets("budgets", {
                environment: cfg.environment,
                settings: cfg.budgets,
                topicArn: TOPIC,
                asgNamesByTier: { "gpu-small": ASGS },
              });
              return {};
            },
          }),
      }),
    ).rejects.toThrow("enforcing a tier's budget needs pauseMarkers");
  });

  it("marks the enforced budget in finance's summary", () => {
    const summary = plan.outputs.budgets as { name: string; enforced: boolean }[];
    // A user's or project's limit only notifies: no tier's groups are paused for one person's spend.
    expect(summary.map((b) => [b.name, b.enforced])).toEqual([
      ["crucible-dev", false],
      ["crucible-dev-gpu-small", true],
      ["crucible-dev-user-alice", false],
      ["crucible-dev-user-bob", false],
      ["crucible-dev-project-ci", false],
      ["crucible-dev-project-nanogpt", false],
    ]);
    expect(plan.outputs.enforcerArn).toBe(fn().state.arn);
  });
});

describe("enforcement off", () => {
  it("declares no function even where groups are known", async () => {
    const plan = await budgetsOnly("staging", { "gpu-small": ["g1"], "gpu-medium": ["g2"] });
    expect(plan.ofType("aws:lambda/function:Function")).toEqual([]);
    expect(plan.ofType("aws:iam/role:Role")).toEqual([]);
  });

  it("custom thresholds reach every budget exactly", async () => {
    const thresholds = [
      { type: "ACTUAL", percent: 90 },
      { type: "FORECASTED", percent: 120 },
    ];
    const config = configWith("prod", {
      "crucible:budgets": { monthlyLimitUsd: 100, thresholds, emails: [] },
    });
    const plan = await budgetsOnly("prod", {}, config);
    const [budget] = plan.ofType(BUDGET);
    expect(plan.ofType(BUDGET)).toHaveLength(1);
    expect(budget!.inputs.notifications).toEqual(
      thresholds.map(({ type, percent }) => ({
        notificationType: type,
        comparisonOperator: "GREATER_THAN",
        thresholdType: "PERCENTAGE",
        threshold: percent,
        subscriberSnsTopicArns: [TOPIC],
      })),
    );
  });
});

describe("user and project budgets from config", () => {
  it("watch only the ACTUAL thresholds, at limit × percent to the cent", async () => {
    const config = configWith("prod", {
      "crucible:budgets": {
        monthlyLimitUsd: 1000,
        thresholds: [
          { type: "ACTUAL", percent: 90 },
          { type: "FORECASTED", percent: 120 },
          { type: "ACTUAL", percent: 110 },
        ],
        users: { "jo.smith": 333.33 },
        projects: { eval: 12.5 },
      },
    });
    const plan = await budgetsOnly("prod", {}, config);
    expect(plan.ofType(ALARM).map((a) => [a.inputs.name, a.inputs.threshold])).toEqual([
      ["crucible-prod-user-jo.smith-90pct", 300],
      ["crucible-prod-user-jo.smith-110pct", 366.66],
      ["crucible-prod-project-eval-90pct", 11.25],
      ["crucible-prod-project-eval-110pct", 13.75],
    ]);
  });

  it("declare no alarm when none is configured", async () => {
    const plan = await budgetsOnly("staging", {});
    expect(plan.ofType(ALARM)).toEqual([]);
  });
});

describe("bad budgets config names the key", () => {
  it("a project budget of zero", () => {
    expect(configProblems("prod", { "crucible:budgets": { projects: { "llm-pretrain": 0 } } })).toEqual([
      "crucible:budgets.projects.llm-pretrain must be a positive amount of US dollars, got 0",
    ]);
  });

  it("a user name a job's address could not hold", () => {
    expect(configProblems("dev", { "crucible:budgets": { users: { Alice: 100 } } })).toEqual([
      'crucible:budgets.users.Alice must be a user name: lowercase letters, digits, dots and dashes, got "Alice"',
    ]);
  });

  it("a threshold below 1 %", () => {
    expect(
      configProblems("prod", { "crucible:budgets": { thresholds: [{ type: "ACTUAL", percent: 0.5 }] } }),
    ).toEqual(["crucible:budgets.thresholds[0].percent must be a percentage from 1 to 1000, got 0.5"]);
  });

  it("a threshold above 1000 %", () => {
    expect(
      configProblems("prod", {
        "crucible:budgets": {
          thresholds: [
            { type: "ACTUAL", percent: 100 },
            { type: "FORECASTED", percent: 1001 },
          ],
        },
      }),
    ).toEqual(["crucible:budgets.thresholds[1].percent must be a percentage from 1 to 1000, got 1001"]);
  });

  it("a repeated threshold, which AWS Budgets would refuse", () => {
    const twice = { type: "ACTUAL", percent: 80 };
    expect(configProblems("dev", { "crucible:budgets": { thresholds: [twice, twice] } })).toEqual([
      'crucible:budgets.thresholds must not repeat a threshold (the same type and percent), got [{"type":"ACTUAL","percent":80},{"type":"ACTUAL","percent":80}]',
    ]);
  });

  it("more thresholds than a budget may have", () => {
    const thresholds = Array.from({ length: 11 }, (_, i) => ({ type: "ACTUAL", percent: 10 * (i + 1) }));
    expect(configProblems("dev", { "crucible:budgets": { thresholds } })).toEqual([
      expect.stringMatching(
        /^crucible:budgets\.thresholds must list at most 10 thresholds \(AWS Budgets' limit per budget\), got /,
      ),
    ]);
  });

  it("a threshold of an unknown type", () => {
    expect(
      configProblems("dev", { "crucible:budgets": { thresholds: [{ type: "ACTUALS", percent: 100 }] } }),
    ).toEqual(['crucible:budgets.thresholds[0].type must be one of ACTUAL, FORECASTED, got "ACTUALS"']);
  });

  it("a budget for a tier the stack does not enable", () => {
    expect(configProblems("staging", { "crucible:budgets": { tiers: { "gpu-large": 500 } } })).toEqual([
      "crucible:budgets.tiers.gpu-large is a budget for tier gpu-large, which is not enabled in crucible:fleet.tiers, got 500",
    ]);
  });

  it("a spot discount outside 0-90 %", () => {
    expect(configProblems("dev", { "crucible:budgets": { spotDiscountPercent: 95 } })).toEqual([
      "crucible:budgets.spotDiscountPercent must be a whole number from 0 to 90, got 95",
    ]);
  });
});
