import * as path from "node:path";
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { handlerCode } from "./lambda-code";
import { SPEND_METRICS, type TierName, PAUSE_MARKER_PREFIX, pauseMarkerKey } from "@crucible/runtime/catalog";
import { ENFORCED_BUDGETS_ENV, PAUSE_MARKERS_ENV, type EnforcedBudget } from "./budget-enforcer/handler";
import type { CrucibleConfig } from "./config";
import type { PolicyDocument } from "./policy-document";
import { COST_TAGS, componentTags } from "./providers";

/**
 * Period of the user and project spend alarms. Month-to-date spend only grows within a month, so the
 * Maximum of any period is its latest figure and the period only sets how soon a crossing is seen: 5
 * minutes, at the price of an hour (every period of a minute or more is a standard-resolution alarm).
 */
export const SPEND_ALARM_PERIOD_SECONDS = 300;

/** Arguments of {@link Budgets}. */
export interface BudgetsArgs {
  /** The environment whose spend the budgets watch (its `crucible:environment` tag value). */
  readonly environment: string;
  /**
   * Limits (the account's, per tier, per user and per project), thresholds, subscribers and enforcement,
   * validated by `infra/config/`.
   */
  readonly settings: CrucibleConfig["budgets"];
  /** The encrypted topic every notification goes to (`Notifications.topicArn`). */
  readonly topicArn: pulumi.Input<string>;
  /**
   * Each tier's Auto Scaling groups (`TierFleet.asgNames`): the groups enforcement pauses. A budgeted
   * tier missing here is only notified about, never paused. Defaults to none.
   */
  readonly asgNamesByTier?: Partial<Record<TierName, pulumi.Input<string[]>>>;
  /**
   * The workspaces bucket, where a pause writes the tier's marker that stops protected nodes taking jobs
   * (runtime/src/agent/budget-pause.ts). Required where the stack enforces a tier's budget.
   */
  readonly pauseMarkers?: {
    readonly bucketName: pulumi.Input<string>;
    readonly bucketArn: pulumi.Input<string>;
    /** The bucket's KMS key; undefined with SSE-S3. */
    readonly kmsKeyArn?: pulumi.Input<string>;
  };
}

/** What an AWS budget covers: the environment, or one tier in it. */
export type AccountScope = "environment" | TierName;
/** Whose spend a user or project limit covers; CloudWatch alarms watch it, not AWS Budgets. */
export type SpendScope = `user:${string}` | `project:${string}`;

/** One budget as finance reads it in the stack outputs. */
export interface BudgetSummary {
  /** The AWS budget's name; for a user or project, the name its alarms' names start with. */
  readonly name: string;
  /** `environment`, the tier the budget is filtered to, or `user:<name>` / `project:<name>`. */
  readonly scope: AccountScope | SpendScope;
  readonly limitUsd: number;
  /** Where it notifies; a user's or project's are the ACTUAL ones only. */
  readonly thresholds: CrucibleConfig["budgets"]["thresholds"];
  readonly topicArn: pulumi.Output<string>;
  readonly emails: readonly string[];
  /** Whether reaching 100 % ACTUAL pauses the tier's groups. */
  readonly enforced: boolean;
  /** The CloudWatch alarms watching a user's or project's spend, one per threshold; none for AWS budgets. */
  readonly alarmNames: readonly string[];
}

/**
 * A monthly cost budget for the environment and one per budgeted tier, notifying the topic and the
 * emails at each threshold; with enforcement on, a Lambda on the topic pauses a tier whose budget
 * reports 100 % of ACTUAL spend. Per user and per project, CloudWatch alarms on the month-to-date spend
 * the agents publish notify the same topic at each ACTUAL threshold.
 */
export class Budgets extends pulumi.ComponentResource {
  public readonly budgets: BudgetSummary[];
  /** ARN of the enforcement function; undefined when nothing is enforced. */
  public readonly enforcerArn: pulumi.Output<string> | undefined;

  constructor(name: string, args: BudgetsArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:budgets:Budgets", name, {}, opts);
    const { environment, settings, topicArn, asgNamesByTier } = { asgNamesByTier: {}, ...args };
    const topic = pulumi.output(topicArn);

    const scopes: { scope: AccountScope; limitUsd: number }[] = [
      { scope: "environment", limitUsd: settings.monthlyLimitUsd },
      ...Object.entries(settings.tiers).flatMap(([tier, limitUsd]) =>
        limitUsd === undefined ? [] : [{ scope: tier as TierName, limitUsd }],
      ),
    ];
    const budgetedTiers = scopes.flatMap(({ scope }) => (scope === "environment" ? [] : [scope]));
    const hasGroups = (tier: TierName) => asgNamesByTier[tier] !== undefined;
    const enforcedTiers = settings.enforce ? budgetedTiers.filter(hasGroups) : [];
    for (const tier of budgetedTiers.filter((t) => settings.enforce && !hasGroups(t))) {
      void pulumi.log.warn(
        `budgets.enforce is on but tier ${tier} has no Auto Scaling groups to pause; its budget only notifies`,
        this,
      );
    }

    this.budgets = scopes.map(({ scope, limitUsd }) => {
      const budgetName = budgetNameFor(environment, scope);
      new aws.budgets.Budget(
        `${name}-${scope}`,
        {
          name: budgetName,
          budgetType: "COST",
          timeUnit: "MONTHLY",
          limitAmount: limitUsd.toFixed(2),
          limitUnit: "USD",
          ...spendFilter(environment, scope),
          notifications: settings.thresholds.map(({ type, percent }) => ({
            notificationType: type,
            comparisonOperator: "GREATER_THAN",
            thresholdType: "PERCENTAGE",
            threshold: percent,
            subscriberSnsTopicArns: [topic],
            ...(settings.emails.length ? { subscriberEmailAddresses: [...settings.emails] } : {}),
          })),
          tags: componentTags("budgets", scope === "environment" ? undefined : scope),
        },
        { parent: this },
      );
      return {
        name: budgetName,
        scope,
        limitUsd,
        thresholds: settings.thresholds,
        topicArn: topic,
        emails: settings.emails,
        enforced: (enforcedTiers as string[]).includes(scope),
        alarmNames: [],
      };
    });
    this.budgets.push(...spendLimitAlarms(name, { environment, settings, topic }, this));

    this.enforcerArn = enforcedTiers.length
      ? budgetEnforcer(
          name,
          {
            environment,
            topic,
            tiers: enforcedTiers.map((tier) => ({ tier, asgNames: pulumi.output(asgNamesByTier[tier]!) })),
            pauseMarkers: requirePauseMarkers(args.pauseMarkers),
          },
          this,
        )
      : undefined;
    this.registerOutputs({ budgets: this.budgets, enforcerArn: this.enforcerArn });
  }
}

/** Budget names are what the enforcer maps a notification back to a tier by. */
export function budgetNameFor(environment: string, scope: AccountScope): string {
  return scope === "environment" ? `crucible-${environment}` : `crucible-${environment}-${scope}`;
}

/**
 * The environment's spend by its cost allocation tag; a tier's by its tag AND the environment's, so a
 * tier budget in an account shared by two environments counts only its own environment's nodes
 * (`costFilters` can only OR values of one tag, hence the filter expression there).
 */
function spendFilter(
  environment: string,
  scope: BudgetSummary["scope"],
): Pick<aws.budgets.BudgetArgs, "costFilters" | "filterExpression"> {
  if (scope === "environment") {
    return {
      costFilters: [{ name: "TagKeyValue", values: [`user:${COST_TAGS.environment}$${environment}`] }],
    };
  }
  const tag = (key: string, value: string) => ({ tags: { key, values: [value], matchOptions: ["EQUALS"] } });
  return {
    filterExpression: {
      ands: [tag(COST_TAGS.environment, environment), tag(COST_TAGS.tier, scope)],
    },
  };
}

/**
 * Per configured user and project, an alarm at each ACTUAL threshold on the month-to-date spend the
 * agents publish (`SPEND_METRICS`), to the budgets' topic on alarm and on recovery. FORECASTED
 * thresholds are left out: CloudWatch has no forecast of a metric that agents publish only after each
 * attempt, and AWS Budgets cannot see users or projects, which are not cost allocation tags.
 */
function spendLimitAlarms(
  name: string,
  args: {
    readonly environment: string;
    readonly settings: CrucibleConfig["budgets"];
    readonly topic: pulumi.Output<string>;
  },
  parent: pulumi.Resource,
): BudgetSummary[] {
  const { environment, settings, topic } = args;
  const thresholds = settings.thresholds.filter((t) => t.type === "ACTUAL");
  const limits = [
    ...Object.entries(settings.users).map(([owner, limitUsd]) => ({
      kind: "user" as const,
      owner,
      limitUsd,
    })),
    ...Object.entries(settings.projects).map(([owner, limitUsd]) => ({
      kind: "project" as const,
      owner,
      limitUsd,
    })),
  ];
  if (limits.length > 0 && thresholds.length === 0) {
    void pulumi.log.warn(
      "budgets.users and budgets.projects are watched at ACTUAL thresholds only, and budgets.thresholds has none; no spend alarm is declared",
      parent,
    );
  }
  return limits.map(({ kind, owner, limitUsd }) => {
    const metric = SPEND_METRICS[kind];
    const prefix = `crucible-${environment}-${kind}-${owner}`;
    const alarmNames = thresholds.map(({ percent }) => {
      const alarmName = `${prefix}-${percent}pct`;
      // To the cent, as AWS Budgets states its thresholds.
      const thresholdUsd = Math.round(limitUsd * percent) / 100;
      new aws.cloudwatch.MetricAlarm(
        `${name}-${kind}-${owner}-${percent}`,
        {
          name: alarmName,
          alarmDescription: `Crucible ${environment}: ${kind} ${owner} has spent more than ${percent} % (${thresholdUsd} USD) of the ${limitUsd} USD monthly budget this month.`,
          namespace: SPEND_METRICS.namespace,
          metricName: metric.metricName,
          dimensions: { [metric.dimension]: owner },
          statistic: "Maximum",
          period: SPEND_ALARM_PERIOD_SECONDS,
          evaluationPeriods: 1,
          comparisonOperator: "GreaterThanThreshold",
          threshold: thresholdUsd,
          // Agents publish only after an attempt: an idle hour says nothing about a month's spend, so the
          // alarm keeps its state (not "notBreaching", which would report a recovery after every quiet
          // period and alarm again at the next job). It recovers when next month's first figure is lower.
          treatMissingData: "ignore",
          alarmActions: [topic],
          okActions: [topic],
          tags: componentTags("budgets"),
        },
        { parent },
      );
      return alarmName;
    });
    return {
      name: prefix,
      scope: `${kind}:${owner}` as const,
      limitUsd,
      thresholds,
      topicArn: topic,
      emails: settings.emails,
      enforced: false,
      alarmNames,
    };
  });
}

/** The budget enforcer's code ({@link handlerCode}). */
export function enforcerCode(): string {
  return handlerCode(path.join(__dirname, "budget-enforcer", "handler.ts"));
}

interface EnforcerArgs {
  readonly environment: string;
  readonly topic: pulumi.Output<string>;
  readonly tiers: readonly { readonly tier: TierName; readonly asgNames: pulumi.Output<string[]> }[];
  readonly pauseMarkers: NonNullable<BudgetsArgs["pauseMarkers"]>;
}

/** Enforcement without pause markers would fail open (protected nodes keep taking jobs): refuse it. */
function requirePauseMarkers(markers: BudgetsArgs["pauseMarkers"]): NonNullable<BudgetsArgs["pauseMarkers"]> {
  if (!markers)
    throw new Error(
      "Budgets: enforcing a tier's budget needs pauseMarkers (the workspaces bucket), or protected nodes would keep taking jobs",
    );
  return markers;
}

/**
 * The Lambda subscribed to the topic, allowed to resize only the enforced tiers' groups (and to record
 * their previous sizes as tags on them) and to write its own log group.
 */
function budgetEnforcer(name: string, args: EnforcerArgs, parent: pulumi.Resource): pulumi.Output<string> {
  const { environment, topic, tiers, pauseMarkers } = args;
  const tags = componentTags("budgets");
  const functionName = `crucible-${environment}-budget-enforcer`;
  const { accountId } = aws.getCallerIdentityOutput({}, { parent });
  const { partition } = aws.getPartitionOutput({}, { parent });
  const { region } = aws.getRegionOutput({}, { parent });

  const logGroup = new aws.cloudwatch.LogGroup(
    `${name}-enforcer`,
    { name: `/aws/lambda/${functionName}`, retentionInDays: 365, tags },
    { parent },
  );
  const assumeRole: PolicyDocument = {
    Version: "2012-10-17",
    Statement: [
      {
        Effect: "Allow",
        Principal: { Service: "lambda.amazonaws.com" },
        Action: "sts:AssumeRole",
      },
    ],
  };
  const role = new aws.iam.Role(
    `${name}-enforcer`,
    {
      description: `Pauses Crucible ${environment} tiers whose budget is spent`,
      assumeRolePolicy: JSON.stringify(assumeRole),
      tags,
    },
    { parent },
  );
  const allAsgNames = pulumi.all(tiers.map((t) => t.asgNames)).apply((lists) => lists.flat());
  const asgArns = pulumi
    .all([partition, region, accountId, allAsgNames])
    .apply(([p, r, a, names]) =>
      names.map((n) => `arn:${p}:autoscaling:${r}:${a}:autoScalingGroup:*:autoScalingGroupName/${n}`),
    );
  const policy: PolicyDocument = {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "PauseEnforcedTiers",
        Effect: "Allow",
        Action: ["autoscaling:UpdateAutoScalingGroup", "autoscaling:CreateOrUpdateTags"],
        Resource: asgArns,
      },
      {
        // DescribeAutoScalingGroups supports no resource-level permissions; it only reads sizes.
        Sid: "ReadGroupSizes",
        Effect: "Allow",
        Action: "autoscaling:DescribeAutoScalingGroups",
        Resource: "*",
      },
      {
        // Each enforced tier's pause marker, nothing else of the bucket: written on pause, removed on resume.
        Sid: "PauseMarkers",
        Effect: "Allow",
        Action: ["s3:PutObject", "s3:DeleteObject"],
        Resource: tiers.map(
          ({ tier }) => pulumi.interpolate`${pauseMarkers.bucketArn}/${pauseMarkerKey(tier)}`,
        ),
      },
      ...(pauseMarkers.kmsKeyArn === undefined
        ? []
        : [
            {
              // SSE-KMS: writing the marker needs a data key, through S3 only.
              Sid: "PauseMarkerKey",
              Effect: "Allow" as const,
              Action: "kms:GenerateDataKey",
              Resource: pauseMarkers.kmsKeyArn,
              Condition: {
                StringEquals: { "kms:ViaService": pulumi.interpolate`s3.${region}.amazonaws.com` },
              },
            },
          ]),
      {
        Sid: "WriteOwnLogs",
        Effect: "Allow",
        Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
        Resource: pulumi.interpolate`${logGroup.arn}:*`,
      },
    ],
  };
  const rolePolicy = new aws.iam.RolePolicy(
    `${name}-enforcer`,
    { role: role.name, policy: pulumi.jsonStringify(policy) },
    { parent },
  );

  const enforced = pulumi
    .all(tiers.map((t) => t.asgNames))
    .apply((lists) =>
      JSON.stringify(
        Object.fromEntries(
          tiers.map(({ tier }, i): [string, EnforcedBudget] => [
            budgetNameFor(environment, tier),
            { tier, asgNames: lists[i]! },
          ]),
        ),
      ),
    );
  const fn = new aws.lambda.Function(
    `${name}-enforcer`,
    {
      name: functionName,
      description: "Pauses a Crucible tier's Auto Scaling groups when its budget reports 100 % ACTUAL spend",
      runtime: "nodejs20.x",
      handler: "index.handler",
      code: new pulumi.asset.AssetArchive({ "index.js": new pulumi.asset.StringAsset(enforcerCode()) }),
      role: role.arn,
      timeout: 60,
      memorySize: 128,
      environment: {
        variables: {
          [ENFORCED_BUDGETS_ENV]: enforced,
          [PAUSE_MARKERS_ENV]: pulumi.jsonStringify({
            bucket: pauseMarkers.bucketName,
            prefix: PAUSE_MARKER_PREFIX,
          }),
        },
      },
      loggingConfig: { logFormat: "Text", logGroup: logGroup.name },
      tags,
    },
    { parent, dependsOn: [rolePolicy] },
  );
  const permission = new aws.lambda.Permission(
    `${name}-enforcer`,
    { action: "lambda:InvokeFunction", function: fn.name, principal: "sns.amazonaws.com", sourceArn: topic },
    { parent },
  );
  new aws.sns.TopicSubscription(
    `${name}-enforcer`,
    { topic, protocol: "lambda", endpoint: fn.arn },
    { parent, dependsOn: [permission] },
  );
  return fn.arn;
}
