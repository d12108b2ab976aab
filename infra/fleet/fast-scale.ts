import * as path from "node:path";
import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { handlerCode } from "../lambda-code";
import {
  PRIORITIES,
  type Priority,
  type TierName,
  getInstanceType,
  getTier,
  jobsPerNode,
} from "@crucible/runtime/catalog";
import { FAST_SCALE_ENV, type FastScaleSettings, type ScaledGroup } from "../fast-scaler/handler";
import type { TierConfig } from "../config";
import type { PolicyDocument } from "../policy-document";
import { componentTags } from "../providers";

/** Seconds the function waits before its second look when the first found nothing to raise. */
export const DEFAULT_SETTLE_SECONDS = 2;
/**
 * Seconds an event may wait for the function (which runs one at a time) before it is dropped: each look
 * reads the queues afresh, so a look after an old event sees what that event would have shown and more.
 */
export const MAX_EVENT_AGE_SECONDS = 60;
/** Days the function's log group keeps its events. */
export const FAST_SCALE_LOG_RETENTION_DAYS = 30;
/** What `crucible submit` writes just before it sends the job's message (runtime/src/store/job-store.ts). */
export const SPEC_OBJECT_SUFFIX = "/spec.json";

export const fastScaleFunctionName = (environment: string) => `crucible-${environment}-fast-scale`;

/**
 * Jobs the fast path counts one node of a tier's group to take: the most any of the group's instance types
 * runs at once (`jobsPerNode`, as the agent counts its slots), or the jobs per instance target tracking aims
 * for, whichever is more. Either way it asks for no more nodes than the queue holds jobs for on the largest
 * type, and never for more than target tracking would keep, so the two paths never pull against each other.
 */
export function fastScaleJobsPerNode(
  tier: TierName,
  settings: Pick<TierConfig, "instanceTypes" | "targetJobsPerInstance">,
): number {
  const catalog = getTier(tier);
  const slots = Math.max(
    ...settings.instanceTypes.map((t) => jobsPerNode(catalog, getInstanceType(t).vcpus)),
  );
  return Math.max(slots, settings.targetJobsPerInstance);
}

/** The scaler's code ({@link handlerCode}). */
export function fastScalerCode(): string {
  return handlerCode(path.join(__dirname, "..", "fast-scaler", "handler.ts"));
}

/** One enabled tier, as {@link FastScale} raises it. */
export interface FastScaleTier {
  /** The tier's Auto Scaling groups (`TierFleet.asgNames`); the fast path sizes exactly one per tier. */
  readonly asgNames: pulumi.Input<string[]>;
  /** The tier's queue of each priority (`JobQueues.byTier[tier]`). */
  readonly queues: Readonly<
    Record<Priority, { readonly queueUrl: pulumi.Input<string>; readonly queueArn: pulumi.Input<string> }>
  >;
  /** Jobs one node takes ({@link fastScaleJobsPerNode}). */
  readonly jobsPerNode: number;
}

/** Arguments of {@link FastScale}. */
export interface FastScaleArgs {
  readonly environment: string;
  readonly tiers: Readonly<Partial<Record<TierName, FastScaleTier>>>;
  /** The workspaces bucket, whose `spec.json` objects wake the function. */
  readonly bucket: { readonly name: pulumi.Input<string>; readonly arn: pulumi.Input<string> };
  /** Where job files live in the bucket (`Workspaces.workspacesPrefix`). */
  readonly prefix: string;
  /** Seconds before the second look. Defaults to {@link DEFAULT_SETTLE_SECONDS}. */
  readonly settleSeconds?: number;
  /** Days the function's log group keeps its events. Defaults to {@link FAST_SCALE_LOG_RETENTION_DAYS}. */
  readonly logRetentionDays?: number;
}

/**
 * The fast scale-out path: a Lambda woken by each new job's `spec.json` in the workspaces bucket that raises
 * each tier's group to the nodes its queues need (never lowering it, never past its maximum) within seconds,
 * where target tracking, which stays the authoritative path and the only one that scales in, takes minutes.
 * It may read its queues' depth and the groups' sizes and set only this stack's groups' desired capacity;
 * it runs one invocation at a time, and reads nothing a researcher wrote (infra/fast-scaler/handler.ts).
 */
export class FastScale extends pulumi.ComponentResource {
  public readonly functionArn: pulumi.Output<string>;
  public readonly roleArn: pulumi.Output<string>;

  constructor(name: string, args: FastScaleArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:fleet:FastScale", name, {}, opts);
    const { environment, bucket, prefix, settleSeconds, logRetentionDays } = {
      settleSeconds: DEFAULT_SETTLE_SECONDS,
      logRetentionDays: FAST_SCALE_LOG_RETENTION_DAYS,
      ...args,
    };
    const tags = componentTags("fleet");
    const functionName = fastScaleFunctionName(environment);
    const { accountId } = aws.getCallerIdentityOutput({}, { parent: this });
    const { partition } = aws.getPartitionOutput({}, { parent: this });
    const { region } = aws.getRegionOutput({}, { parent: this });
    const tiers = Object.entries(args.tiers) as [TierName, FastScaleTier][];
    const groups = pulumi.all(
      tiers.map(([tier, t]) =>
        pulumi
          .all([pulumi.output(t.asgNames), pulumi.all(PRIORITIES.map((p) => t.queues[p].queueUrl))])
          .apply(([asgNames, queueUrls]): ScaledGroup => {
            // With two groups a tier's jobs would be counted for each, and both raised to the whole need.
            if (asgNames.length !== 1)
              throw new Error(
                `FastScale: tier ${tier} has ${asgNames.length} groups; the fast path sizes exactly one per tier`,
              );
            return { tier, asgName: asgNames[0]!, queueUrls, jobsPerNode: t.jobsPerNode };
          }),
      ),
    );

    const logGroup = new aws.cloudwatch.LogGroup(
      name,
      { name: `/aws/lambda/${functionName}`, retentionInDays: logRetentionDays, tags },
      { parent: this },
    );
    const assumeRole: PolicyDocument = {
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" },
      ],
    };
    const role = new aws.iam.Role(
      name,
      {
        description: `Raises Crucible ${environment} groups to their queued jobs' need`,
        assumeRolePolicy: JSON.stringify(assumeRole),
        tags,
      },
      { parent: this },
    );
    const rolePolicy = new aws.iam.RolePolicy(
      name,
      {
        role: role.name,
        policy: pulumi.jsonStringify(
          fastScalePolicy({
            queueArns: tiers.flatMap(([, t]) => PRIORITIES.map((p) => t.queues[p].queueArn)),
            groupArns: pulumi
              .all([partition, region, accountId, groups])
              .apply(([p, r, a, gs]) =>
                gs.map(
                  (g) =>
                    `arn:${p}:autoscaling:${r}:${a}:autoScalingGroup:*:autoScalingGroupName/${g.asgName}`,
                ),
              ),
            logGroupArn: logGroup.arn,
          }),
        ),
      },
      { parent: this },
    );

    const fn = new aws.lambda.Function(
      name,
      {
        name: functionName,
        description: "Raises Crucible groups to their queued jobs' need as jobs are submitted",
        runtime: "nodejs20.x",
        handler: "index.handler",
        code: new pulumi.asset.AssetArchive({ "index.js": new pulumi.asset.StringAsset(fastScalerCode()) }),
        role: role.arn,
        // Two looks, a settle between them, and a few API calls each.
        timeout: 30,
        memorySize: 128,
        // One look at a time: two would read the same desired capacity and both raise it. It is also the
        // rate limit: a burst of submissions queues its events behind the running look.
        reservedConcurrentExecutions: 1,
        environment: {
          variables: {
            [FAST_SCALE_ENV]: groups.apply((gs) =>
              JSON.stringify({ groups: gs, settleSeconds } satisfies FastScaleSettings),
            ),
          },
        },
        loggingConfig: { logFormat: "Text", logGroup: logGroup.name },
        tags,
      },
      { parent: this, dependsOn: [rolePolicy] },
    );
    // S3 invokes asynchronously: a failed look is not retried (the next event or target tracking covers it),
    // and an event that waited past its use is dropped.
    new aws.lambda.FunctionEventInvokeConfig(
      name,
      { functionName: fn.name, maximumRetryAttempts: 0, maximumEventAgeInSeconds: MAX_EVENT_AGE_SECONDS },
      { parent: this },
    );
    // Only this stack's bucket, in this account, may invoke it.
    const permission = new aws.lambda.Permission(
      name,
      {
        action: "lambda:InvokeFunction",
        function: fn.name,
        principal: "s3.amazonaws.com",
        sourceArn: bucket.arn,
        sourceAccount: accountId,
      },
      { parent: this },
    );
    // S3 keeps one notification configuration per bucket: this is the workspaces bucket's, and any other
    // notification on it belongs here too.
    new aws.s3.BucketNotification(
      name,
      {
        bucket: bucket.name,
        lambdaFunctions: [
          {
            lambdaFunctionArn: fn.arn,
            events: ["s3:ObjectCreated:*"],
            filterPrefix: prefix,
            filterSuffix: SPEC_OBJECT_SUFFIX,
          },
        ],
      },
      { parent: this, dependsOn: [permission] },
    );

    this.functionArn = fn.arn;
    this.roleArn = role.arn;
    this.registerOutputs({ functionArn: this.functionArn, roleArn: this.roleArn });
  }
}

/**
 * What the function may do: read its tiers' queue depths, read group sizes (DescribeAutoScalingGroups takes
 * no resource-level permissions), set the desired capacity of this stack's groups alone, and write its log.
 * Nothing of the bucket: it never reads what woke it.
 */
export function fastScalePolicy(args: {
  readonly queueArns: readonly pulumi.Input<string>[];
  readonly groupArns: pulumi.Input<pulumi.Input<string>[]>;
  readonly logGroupArn: pulumi.Input<string>;
}): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "ReadQueueDepth",
        Effect: "Allow",
        Action: "sqs:GetQueueAttributes",
        Resource: [...args.queueArns],
      },
      {
        Sid: "ReadGroupSizes",
        Effect: "Allow",
        Action: "autoscaling:DescribeAutoScalingGroups",
        Resource: "*",
      },
      {
        Sid: "RaiseOwnGroups",
        Effect: "Allow",
        Action: "autoscaling:SetDesiredCapacity",
        Resource: args.groupArns,
      },
      {
        Sid: "WriteOwnLogs",
        Effect: "Allow",
        Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
        Resource: pulumi.interpolate`${args.logGroupArn}:*`,
      },
    ],
  };
}
