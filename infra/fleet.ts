import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { dirname } from "node:path";
import {
  JOB_METRICS,
  SESSION_MANAGER_ACTIONS,
  type ImageFamily,
  type Tier,
  type TierName,
  LEDGER_PREFIX,
  pauseMarkerKey,
  JOB_UID_LEASES,
  sandboxFacts,
  toAgentEnv,
  type Senders,
  PRIORITIES,
  type Priority,
  type SchedulingPolicy,
  getTier,
  jobImageFamily,
} from "@crucible/runtime/catalog";
import type { CrucibleConfig, TierConfig } from "./config";
import type { PolicyDocument, PolicyStatement } from "./policy-document";
import { componentTags } from "./providers";

/** ECS-optimized Amazon Linux 2023: Docker ready; the GPU variant adds the NVIDIA driver and toolkit. */
export const DEFAULT_AMI_PARAMETERS = {
  cpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id",
  gpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id",
} as const;

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
/** Seconds an interrupted job gets to checkpoint: half a spot notice, leaving the rest for uploads. */
export const DEFAULT_GRACE_SECONDS = 60;
/** Boot, image pull and the agent's readiness; past it, an instance that never reported ready is dropped. */
export const LAUNCH_HOOK_TIMEOUT_SECONDS = 900;
/** Days the agent's own log (not jobs' logs, which the agent uploads to the workspace) is kept. */
export const AGENT_LOG_RETENTION_DAYS = 30;

/** The CloudWatch log group a tier's agents write to. */
export const agentLogGroupName = (environment: string, tier: string) =>
  `/crucible/${environment}/${tier}/agent`;

/** The settings that define a tier's capacity, as finance and the scaling simulation read them. */
export interface TierCapacity {
  readonly minSize: number;
  readonly maxSize: number;
  readonly warmPool: { readonly minSize: number; readonly maxPreparedCapacity: number } | null;
  readonly spot: { readonly onDemandBase: number; readonly onDemandPercentage: number } | null;
  readonly instanceTypes: readonly string[];
  readonly onDemandHourlyUsd: number;
}

export interface TierFleetArgs {
  readonly environment: CrucibleConfig["environment"];
  /** The provider's default tags, repeated on the group so they propagate to its instances. */
  readonly stackTags: Readonly<Record<string, string>>;
  readonly tier: TierName;
  /** `crucible:fleet.tiers.<tier>`. */
  readonly settings: TierConfig;
  /** Seconds between the agent's heartbeats, and the visibility it extends a running job's message to. */
  readonly heartbeatSeconds: number;
  readonly visibilityTimeoutSeconds: number;
  /**
   * Seconds an interrupted job gets to checkpoint; the termination hook waits at least this long.
   * Defaults to {@link DEFAULT_GRACE_SECONDS}.
   */
  readonly graceSeconds?: number;
  readonly subnetIds: pulumi.Input<pulumi.Input<string>[]>;
  readonly securityGroupId: pulumi.Input<string>;
  /** The tier's job queue of each priority class (`JobQueues.byTier[tier]`). */
  readonly queues: Readonly<
    Record<
      Priority,
      {
        readonly queueUrl: pulumi.Input<string>;
        readonly queueArn: pulumi.Input<string>;
        readonly queueName: pulumi.Input<string>;
      }
    >
  >;
  /** The validated scheduling policy (`schedulingPolicy(config)`), handed to the agent as `CRUCIBLE_SCHEDULING`. */
  readonly scheduling: SchedulingPolicy;
  /**
   * Submitter role unique id → project, for the projects that may submit to this tier: with the node
   * role's own unique id, the agent's `CRUCIBLE_SENDERS` (runtime/src/catalog/senders.ts).
   */
  readonly submitters: pulumi.Input<Record<string, string>>;
  readonly workspaces: {
    readonly bucketName: pulumi.Input<string>;
    readonly bucketArn: pulumi.Input<string>;
    readonly prefix: pulumi.Input<string>;
    readonly quotaGiB: pulumi.Input<number>;
    /** The buckets' KMS key, which nodes need to read and write objects; undefined with SSE-S3. */
    readonly kmsKeyArn?: pulumi.Input<string>;
  };
  /** The agent image by digest, and each job family's. */
  readonly agentImage: pulumi.Input<string>;
  readonly jobImages: Readonly<Record<string, pulumi.Input<string>>>;
  /** Repositories nodes pull from. */
  readonly repositoryArns: readonly pulumi.Input<string>[];
  /** Days the agent's log group keeps its events. Defaults to {@link AGENT_LOG_RETENTION_DAYS}. */
  readonly logRetentionDays?: number;
}

/**
 * One tier's nodes: a launch template (IMDSv2, encrypted gp3 root, no public address, least-privilege
 * role, user data that starts the agent by digest), an Auto Scaling group (spot with diversified types,
 * or on-demand with a warm pool), scaling on jobs per instance, scale-from-zero, scheduled pre-warm, and
 * lifecycle hooks so instances serve only once ready and leave only after their jobs checkpoint.
 */
export class TierFleet extends pulumi.ComponentResource {
  readonly asgNames: pulumi.Output<string[]>;
  readonly launchTemplateId: pulumi.Output<string>;
  readonly roleArn: pulumi.Output<string>;
  /** The node role's unique id: the SenderId of the messages its agents re-send. */
  readonly roleUniqueId: pulumi.Output<string>;
  readonly agentConfigParameter: pulumi.Output<string>;
  readonly agentLogGroupName: pulumi.Output<string>;
  readonly capacity: TierCapacity;

  constructor(name: string, args: TierFleetArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:fleet:TierFleet", name, {}, opts);
    const { tier, settings, environment } = args;
    const tags = componentTags("fleet", tier);
    const groupName = `crucible-${environment}-${tier}`;
    const identity = aws.getCallerIdentityOutput({}, { parent: this });
    const region = aws.getRegionOutput({}, { parent: this });
    const partition = aws.getPartitionOutput({}, { parent: this });
    const groupArn = pulumi.interpolate`arn:${partition.partition}:autoscaling:${region.name}:${identity.accountId}:autoScalingGroup:*:autoScalingGroupName/${groupName}`;
    const parameterName = `/crucible/${environment}/${tier}/agent-config`;
    const catalog = getTier(tier);
    const grace = args.graceSeconds ?? DEFAULT_GRACE_SECONDS;
    const queueUrls = pulumi.output(
      Object.fromEntries(PRIORITIES.map((p) => [p, args.queues[p].queueUrl])) as Record<
        Priority,
        pulumi.Input<string>
      >,
    );

    const agentConfig = new aws.ssm.Parameter(
      `${name}-agent-config`,
      {
        name: parameterName,
        type: "String",
        value: pulumi.jsonStringify({
          tier,
          queues: queueUrls,
          bucket: args.workspaces.bucketName,
          images: args.jobImages,
          sandbox: sandboxFacts(tier),
        }),
        tags,
      },
      { parent: this },
    );

    // The agent's stdout and stderr, shipped by the Docker engine's awslogs driver: a node that failed
    // its launch hook is gone by the time anyone looks, and its log must not go with it.
    const agentLog = new aws.cloudwatch.LogGroup(
      `${name}-agent`,
      {
        name: agentLogGroupName(environment, tier),
        retentionInDays: args.logRetentionDays ?? AGENT_LOG_RETENTION_DAYS,
        tags,
      },
      { parent: this },
    );

    const role = new aws.iam.Role(
      `${name}-node`,
      {
        assumeRolePolicy: JSON.stringify({
          Version: "2012-10-17",
          Statement: [
            { Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" },
          ],
        }),
        tags,
      },
      { parent: this },
    );
    new aws.iam.RolePolicy(
      `${name}-node`,
      {
        role: role.id,
        policy: pulumi.jsonStringify(
          nodePolicy({
            tier,
            queueArns: PRIORITIES.map((p) => args.queues[p].queueArn),
            bucketArn: args.workspaces.bucketArn,
            prefix: args.workspaces.prefix,
            kmsKeyArn: args.workspaces.kmsKeyArn,
            regionName: region.name,
            repositoryArns: args.repositoryArns,
            groupArn,
            logGroupArn: agentLog.arn,
            spot: settings.spot.enabled,
          }),
        ),
      },
      { parent: this },
    );
    const profile = new aws.iam.InstanceProfile(`${name}-node`, { role: role.name, tags }, { parent: this });
    // Re-sent messages (deferral, preemption) come from this tier's nodes; jobs from its submitters.
    const agentSenders = pulumi
      .all([role.uniqueId, pulumi.output(args.submitters)])
      .apply(([self, submitters]): Senders => ({ agents: [self], submitters }));

    const ami = aws.ssm.getParameterOutput(
      {
        name:
          settings.amiParameter ?? (catalog.gpu ? DEFAULT_AMI_PARAMETERS.gpu : DEFAULT_AMI_PARAMETERS.cpu),
      },
      { parent: this },
    );
    const template = new aws.ec2.LaunchTemplate(
      `${name}-node`,
      {
        imageId: ami.value,
        instanceType: settings.instanceTypes[0],
        iamInstanceProfile: { arn: profile.arn },
        metadataOptions: {
          httpEndpoint: "enabled",
          httpTokens: "required",
          // The agent runs in a container: one hop more than the host.
          httpPutResponseHopLimit: 2,
          instanceMetadataTags: "enabled",
        },
        blockDeviceMappings: [
          {
            deviceName: "/dev/xvda",
            ebs: {
              volumeSize: settings.rootVolumeGiB,
              volumeType: "gp3",
              encrypted: "true",
              deleteOnTermination: "true",
            },
          },
        ],
        networkInterfaces: [
          { deviceIndex: 0, associatePublicIpAddress: "false", securityGroups: [args.securityGroupId] },
        ],
        monitoring: { enabled: true },
        userData: pulumi
          .all([
            args.agentImage,
            queueUrls,
            args.workspaces.bucketName,
            args.workspaces.prefix,
            args.workspaces.quotaGiB,
            pulumi.output(args.jobImages),
            region.name,
            pulumi.all([agentLog.name, agentSenders]),
          ])
          .apply(([agentImage, urls, bucket, prefix, quota, images, regionName, [logGroup, senders]]) =>
            Buffer.from(
              userData({
                tier,
                gpu: catalog.gpu !== undefined,
                agentImage,
                jobImages: tierJobImages(catalog, images),
                regionName,
                logGroup,
                groupName,
                // The agent's environment (runtime/src/catalog/agent-env.ts), in the order nodes have always had it.
                env: toAgentEnv({
                  tier,
                  // The shape the CLI's CRUCIBLE_QUEUES has, with this tier's queues only.
                  queues: { [tier]: urls },
                  scheduling: args.scheduling,
                  bucket,
                  workspacesPrefix: prefix,
                  quotaGiB: quota,
                  // Checked by toAgentEnv: only the matrix's families, each an image reference.
                  images,
                  heartbeatSeconds: args.heartbeatSeconds,
                  visibilityTimeoutSeconds: args.visibilityTimeoutSeconds,
                  asgName: groupName,
                  launchHook: `${groupName}-launch`,
                  terminationHook: `${groupName}-terminate`,
                  graceSeconds: grace,
                  senders,
                  region: regionName,
                }),
              }),
            ).toString("base64"),
          ),
        tagSpecifications: ["instance", "volume"].map((resourceType) => ({
          resourceType,
          tags: { ...tags, Name: groupName },
        })),
        updateDefaultVersion: true,
        tags,
      },
      { parent: this },
    );

    const spot = settings.spot.enabled;
    const group = new aws.autoscaling.Group(
      `${name}-nodes`,
      {
        name: groupName,
        vpcZoneIdentifiers: args.subnetIds,
        minSize: settings.minSize,
        maxSize: settings.maxSize,
        desiredCapacity: settings.desired,
        ...(spot
          ? {
              capacityRebalance: true,
              mixedInstancesPolicy: {
                instancesDistribution: {
                  onDemandBaseCapacity: settings.spot.onDemandBase,
                  onDemandPercentageAboveBaseCapacity: settings.spot.onDemandPercentage,
                  spotAllocationStrategy: "price-capacity-optimized",
                },
                launchTemplate: {
                  launchTemplateSpecification: { launchTemplateId: template.id, version: "$Latest" },
                  overrides: settings.instanceTypes.map((instanceType) => ({ instanceType })),
                },
              },
            }
          : { launchTemplate: { id: template.id, version: "$Latest" } }),
        // Warm pools hold stopped on-demand instances only (config rejects one on a spot group).
        ...(!spot &&
          settings.warmPool && {
            warmPool: {
              poolState: "Stopped",
              minSize: settings.warmPool.minSize,
              maxGroupPreparedCapacity: settings.warmPool.maxPreparedCapacity,
              instanceReusePolicy: { reuseOnScaleIn: true },
            },
          }),
        // The scaling metric math reads GroupInServiceInstances: group metrics must be on.
        metricsGranularity: "1Minute",
        enabledMetrics: [
          "GroupInServiceInstances",
          "GroupDesiredCapacity",
          "GroupPendingInstances",
          "WarmPoolWarmedCapacity",
        ],
        initialLifecycleHooks: [
          {
            // The agent completes it once it can take jobs; warm instances are not stopped half-booted.
            name: `${groupName}-launch`,
            lifecycleTransition: "autoscaling:EC2_INSTANCE_LAUNCHING",
            defaultResult: "ABANDON",
            heartbeatTimeout: LAUNCH_HOOK_TIMEOUT_SECONDS,
          },
          {
            // Scale-in and rebalancing wait for running jobs to checkpoint and hand back.
            name: `${groupName}-terminate`,
            lifecycleTransition: "autoscaling:EC2_INSTANCE_TERMINATING",
            defaultResult: "CONTINUE",
            heartbeatTimeout: Math.max(grace + 60, 180),
          },
        ],
        tags: Object.entries({ ...args.stackTags, ...tags, Name: groupName }).map(([key, value]) => ({
          key,
          value,
          propagateAtLaunch: true,
        })),
      },
      // Scaling owns the desired capacity once the group exists.
      { parent: this, ignoreChanges: ["desiredCapacity"] },
    );

    // Every priority queue's waiting and running jobs count towards the group's load.
    const queueCounts = PRIORITIES.flatMap((p) => [
      { id: METRIC_IDS.waiting(p), metricName: "ApproximateNumberOfMessagesVisible", queue: args.queues[p] },
      {
        id: METRIC_IDS.running(p),
        metricName: "ApproximateNumberOfMessagesNotVisible",
        queue: args.queues[p],
      },
    ]);
    new aws.autoscaling.Policy(
      `${name}-jobs-per-instance`,
      {
        autoscalingGroupName: group.name,
        policyType: "TargetTrackingScaling",
        targetTrackingConfiguration: {
          targetValue: settings.targetJobsPerInstance,
          customizedMetricSpecification: {
            metrics: [
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
                    dimensions: [{ name: "AutoScalingGroupName", value: group.name }],
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
            ],
          },
        },
      },
      { parent: this },
    );
    const fromZero = new aws.autoscaling.Policy(
      `${name}-from-zero`,
      {
        autoscalingGroupName: group.name,
        policyType: "StepScaling",
        adjustmentType: "ExactCapacity",
        stepAdjustments: [{ metricIntervalLowerBound: "0", scalingAdjustment: 1 }],
      },
      { parent: this },
    );
    const maximum = (
      id: string,
      namespace: string,
      metricName: string,
      dimensions: Record<string, pulumi.Input<string>>,
    ) => ({ id, metric: { namespace, metricName, dimensions, stat: "Maximum", period: 60 } });
    new aws.cloudwatch.MetricAlarm(
      `${name}-from-zero`,
      {
        alarmDescription: `jobs wait in ${tier}'s queues and no instance is in service: start one`,
        comparisonOperator: "GreaterThanOrEqualToThreshold",
        threshold: 1,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
        alarmActions: [fromZero.arn],
        metricQueries: [
          ...PRIORITIES.map((p) =>
            maximum(METRIC_IDS.waiting(p), "AWS/SQS", "ApproximateNumberOfMessagesVisible", {
              QueueName: args.queues[p].queueName,
            }),
          ),
          maximum(METRIC_IDS.inService, "AWS/AutoScaling", "GroupInServiceInstances", {
            AutoScalingGroupName: group.name,
          }),
          maximum(METRIC_IDS.desired, "AWS/AutoScaling", "GroupDesiredCapacity", {
            AutoScalingGroupName: group.name,
          }),
          {
            id: "e1",
            expression: WAITING_WITH_NO_INSTANCE,
            label: "waiting with no instance",
            returnData: true,
          },
        ],
        tags,
      },
      { parent: this },
    );
    for (const schedule of settings.prewarmSchedule) {
      new aws.autoscaling.Schedule(
        `${name}-${schedule.name}`,
        {
          scheduledActionName: `${groupName}-${schedule.name}`,
          autoscalingGroupName: group.name,
          recurrence: schedule.recurrence,
          minSize: schedule.minSize,
          // The provider sends an unset size as 0, which would shrink the group to nothing (or fail on
          // min > max); -1 leaves the maximum and the desired capacity to the group and its scaling.
          maxSize: -1,
          desiredCapacity: -1,
          ...(schedule.timeZone && { timeZone: schedule.timeZone }),
        },
        { parent: this },
      );
    }

    this.asgNames = pulumi.output([group.name]);
    this.launchTemplateId = template.id;
    this.roleArn = role.arn;
    this.roleUniqueId = role.uniqueId;
    this.agentConfigParameter = agentConfig.name;
    this.agentLogGroupName = agentLog.name;
    this.capacity = {
      minSize: settings.minSize,
      maxSize: settings.maxSize,
      warmPool: (!spot && settings.warmPool) || null,
      spot: spot
        ? { onDemandBase: settings.spot.onDemandBase, onDemandPercentage: settings.spot.onDemandPercentage }
        : null,
      instanceTypes: settings.instanceTypes,
      onDemandHourlyUsd: catalog.onDemandHourlyUsd,
    };
    this.registerOutputs({
      asgNames: this.asgNames,
      launchTemplateId: this.launchTemplateId,
      agentLogGroupName: this.agentLogGroupName,
      capacity: this.capacity,
    });
  }
}

/**
 * What a node may do: its tier's priority queues, its workspace prefix and the ledger (and the buckets' key,
 * through S3 only), pulls, its own group's hooks, its job metrics and its agent's log; on a spot group, spot
 * prices for the ledger.
 */
export function nodePolicy(
  scope: AgentDataScope & {
    readonly repositoryArns: readonly pulumi.Input<string>[];
    readonly groupArn: pulumi.Input<string>;
    /** The tier's agent log group. */
    readonly logGroupArn: pulumi.Input<string>;
    /** The group runs spot instances, whose agents charge jobs the spot price. */
    readonly spot: boolean;
  },
): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      ...agentDataStatements(scope),
      // The one wildcard resource: ECR issues registry tokens account-wide, and the token only reads.
      { Sid: "RegistryToken", Effect: "Allow", Action: "ecr:GetAuthorizationToken", Resource: "*" },
      {
        Sid: "PullImages",
        Effect: "Allow",
        Action: ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
        Resource: [...scope.repositoryArns],
      },
      {
        Sid: "OwnGroupLifecycle",
        Effect: "Allow",
        Action: [
          "autoscaling:SetInstanceProtection",
          "autoscaling:CompleteLifecycleAction",
          // A GPU node that fails its health check has the group replace it.
          "autoscaling:SetInstanceHealth",
        ],
        Resource: scope.groupArn,
      },
      JOB_METRICS_STATEMENT,
      {
        // The Docker engine's awslogs driver writes the agent's output; the group itself is declared here.
        Sid: "AgentLog",
        Effect: "Allow",
        Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
        Resource: pulumi.interpolate`${scope.logGroupArn}:*`,
      },
      SESSION_MANAGER_STATEMENT,
      ...(scope.spot ? [SPOT_PRICES_STATEMENT] : []),
    ],
  };
}

/** Where an agent's data lives: its tier's queues (one per priority class), the buckets and their key. */
export interface AgentDataScope {
  /** The agent's tier: it reads that tier's budget pause marker only. */
  readonly tier: string;
  readonly queueArns: readonly pulumi.Input<string>[];
  readonly bucketArn: pulumi.Input<string>;
  readonly prefix: pulumi.Input<string>;
  /** The buckets' KMS key; undefined where they use S3-managed keys. */
  readonly kmsKeyArn?: pulumi.Input<string>;
  /** The stack's region: the key is usable only through this region's S3. */
  readonly regionName: pulumi.Input<string>;
}

/**
 * What an agent needs wherever it runs (a node, a Kubernetes pod): its tier's queues, its workspace prefix,
 * the ledger's month partitions (and the buckets' key, through S3 only) and the datasets.
 */
export function agentDataStatements(scope: AgentDataScope): PolicyStatement[] {
  return [
    {
      Sid: "TierQueue",
      Effect: "Allow",
      Action: [
        "sqs:ReceiveMessage",
        // Fair-share deferral and preemption re-send a job's message to its own queue (job-queue.ts `requeue`).
        "sqs:SendMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
      ],
      Resource: [...scope.queueArns],
    },
    {
      Sid: "Workspaces",
      Effect: "Allow",
      Action: ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"],
      Resource: pulumi.interpolate`${scope.bucketArn}/${scope.prefix}*`,
    },
    {
      // Fair share's running-job markers (<prefix><project>/_running/...) are the only objects agents delete.
      Sid: "RunningMarkers",
      Effect: "Allow",
      Action: "s3:DeleteObject",
      Resource: pulumi.interpolate`${scope.bucketArn}/${scope.prefix}*/_running/*`,
    },
    {
      Sid: "ListWorkspaces",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringLike: { "s3:prefix": [pulumi.interpolate`${scope.prefix}*`] } },
    },
    {
      // Finance's copy of each attempt's cost entry; agents read the month's partition for budgets.
      Sid: "Ledger",
      Effect: "Allow",
      Action: ["s3:PutObject", "s3:GetObject"],
      Resource: pulumi.interpolate`${scope.bucketArn}/${LEDGER_PREFIX}*`,
    },
    {
      Sid: "ListLedger",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringLike: { "s3:prefix": [`${LEDGER_PREFIX}*`] } },
    },
    {
      // The tier's budget pause marker (budget-pause.ts), checked before each receive: the agent lists
      // its one key (absent: not paused), then reads it. A read it may not make counts as a pause.
      Sid: "BudgetPause",
      Effect: "Allow",
      Action: "s3:GetObject",
      Resource: pulumi.interpolate`${scope.bucketArn}/${pauseMarkerKey(scope.tier)}`,
    },
    {
      Sid: "ListBudgetPause",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringEquals: { "s3:prefix": pauseMarkerKey(scope.tier) } },
    },
    // SSE-KMS objects: reading needs Decrypt, writing GenerateDataKey. The key policy leaves its use
    // to IAM, so without this a node could neither fetch a job's code nor upload its result.
    ...(scope.kmsKeyArn === undefined
      ? []
      : [
          {
            Sid: "WorkspacesKey",
            Effect: "Allow" as const,
            Action: ["kms:Decrypt", "kms:GenerateDataKey"],
            Resource: scope.kmsKeyArn,
            Condition: {
              StringEquals: { "kms:ViaService": pulumi.interpolate`s3.${scope.regionName}.amazonaws.com` },
            },
          },
        ]),
  ];
}

/**
 * Session Manager shells, so operators reach nodes without SSH or open ports. In place of
 * AmazonSSMManagedInstanceCore, which also lets a node read every SSM parameter in the account.
 */
const SESSION_MANAGER_STATEMENT: PolicyStatement = {
  Sid: "SessionManager",
  Effect: "Allow",
  Action: SESSION_MANAGER_ACTIONS,
  Resource: "*",
};

/** A read-only action with no resource-level permissions: IAM authorises it only on "*". */
const SPOT_PRICES_STATEMENT: PolicyStatement = {
  Sid: "SpotPrices",
  Effect: "Allow",
  Action: "ec2:DescribeSpotPriceHistory",
  Resource: "*",
};

/** The agent's job outcome metrics, in their own namespace only. */
export const JOB_METRICS_STATEMENT: PolicyStatement = {
  Sid: "JobMetrics",
  Effect: "Allow",
  Action: "cloudwatch:PutMetricData",
  Resource: "*",
  Condition: { StringEquals: { "cloudwatch:namespace": JOB_METRICS.namespace } },
};

/**
 * The job images a tier's agent can choose (runtime/src/catalog/image-matrix.ts `jobImageFamily`), of those the
 * stack has. The launcher runs only images already on the engine, so the node pulls them at boot.
 */
export function tierJobImages(tier: Pick<Tier, "gpu">, images: Readonly<Record<string, string>>): string[] {
  const families = new Set<ImageFamily>([
    jobImageFamily(tier, { torch: false }),
    jobImageFamily(tier, { torch: true }),
  ]);
  return [...families].flatMap((f) => (images[f] === undefined ? [] : [images[f]]));
}

/** The node's directory for the agent's scratch (its TMPDIR is `tmp` under it): bind-mounted at the same path. */
export const AGENT_SCRATCH_DIR = "/var/lib/crucible";
/** The directory of the runtime's per-job uid leases (runtime/src/launch/sandbox.ts `JOB_UID_LEASES`), on the host's tmpfs. */
export const JOB_UID_LEASE_DIR = dirname(JOB_UID_LEASES);
/**
 * Loop device nodes made on the host before the agent starts: one per job workspace volume at once, with
 * room to spare (more than any tier runs jobs on one node).
 */
export const LOOP_DEVICES = 64;

/** `<account>.dkr.ecr.<region>.amazonaws.com/...` → the registry's host and region. */
function ecrRegistry(image: string, fallbackRegion: string): { host: string; region: string } {
  const host = image.split("/")[0]!;
  const region = /^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$/.exec(host)?.[1];
  return { host, region: region ?? fallbackRegion };
}

/**
 * The node's boot script: the GPU check, the agent's directories and loop devices, an ECR login per
 * registry, the tier's job images and the agent (root, privileged), all by digest, the agent logging to its
 * CloudWatch group.
 */
export function userData(input: {
  readonly tier: string;
  readonly gpu: boolean;
  readonly agentImage: string;
  /** Job images to pull before the agent starts, by digest. */
  readonly jobImages: readonly string[];
  readonly regionName: string;
  /** The CloudWatch log group the agent's output goes to. */
  readonly logGroup: string;
  readonly groupName: string;
  readonly env: Readonly<Record<string, string>>;
}): string {
  const images = [input.agentImage, ...input.jobImages];
  // An ECR token is valid only in the registry's own region: a promoted stack pulls from its upstream's.
  const registries = new Map(images.map((i) => ecrRegistry(i, input.regionName)).map((r) => [r.host, r]));
  const envFlags = Object.entries(input.env)
    .map(([k, v]) => `  -e ${k}=${shellQuote(v)} \\`)
    .join("\n");
  return [
    "#!/bin/bash",
    "# Crucible node: starts the agent for this tier; jobs run in sandboxes it creates on this Docker engine.",
    "set -euo pipefail",
    `exec > >(logger -t crucible-node) 2>&1`,
    ...(input.gpu
      ? [
          "# A GPU node that cannot see its GPU must not take GPU jobs: the launch hook then abandons it.",
          'if ! nvidia-smi >/dev/null 2>&1; then echo "nvidia-smi failed: no usable GPU; not starting the agent"; exit 1; fi',
        ]
      : []),
    // Root's alone: job uids never reach their files but through the bind mounts of their own container.
    `install -d -m 0700 ${AGENT_SCRATCH_DIR} ${AGENT_SCRATCH_DIR}/tmp ${JOB_UID_LEASE_DIR}`,
    "# A privileged container sees the host's device nodes as they are when it starts, and a loop device",
    "# the kernel adds later has no node in it: make the nodes each job's workspace volume may take first.",
    `modprobe loop && for i in $(seq 0 ${LOOP_DEVICES - 1}); do [ -b /dev/loop$i ] || mknod -m 0660 /dev/loop$i b 7 $i; done`,
    ...[...registries.values()].map(
      (r) =>
        `aws ecr get-login-password --region ${r.region} | docker login --username AWS --password-stdin ${r.host}`,
    ),
    "# The launcher never pulls: a job's image must be on the engine before the agent takes a job.",
    ...[...new Set(images)].map((i) => `docker pull ${i}`),
    // The path in this user-data comment is quota-volume's old place (it is now runtime/src/launch/); it stays
    // as written because the text is part of every launch template, and changing it would replace them all.
    "# The agent runs as root, privileged: it gives each job a uid of its own (leases in /run/crucible) and",
    "# loop-mounts each job's workspace volume (runtime/src/quota-volume.ts). It already holds the Docker",
    "# socket, which is root on this host, so neither widens its reach; --privileged over SYS_ADMIN and a",
    "# device list because loop devices come and go. Its scratch root (TMPDIR: the agent's, the launcher's",
    "# and job-spec's tmpdir()) is the same path here and inside, since job containers bind-mount paths",
    "# under it; rshared carries the agent's workspace mounts out to the host, where Docker makes jobs' mounts.",
    `docker run -d --name crucible-agent --restart=always --network host --user 0:0 --privileged \\`,
    `  --log-driver awslogs --log-opt awslogs-group=${input.logGroup} --log-opt awslogs-region=${input.regionName} --log-opt awslogs-create-group=false \\`,
    "  -v /var/run/docker.sock:/var/run/docker.sock \\",
    `  -v ${AGENT_SCRATCH_DIR}:${AGENT_SCRATCH_DIR}:rshared -v ${JOB_UID_LEASE_DIR}:${JOB_UID_LEASE_DIR} \\`,
    `  -e TMPDIR=${AGENT_SCRATCH_DIR}/tmp \\`,
    // nvidia-smi for the agent's health check: the utility capability only, the GPUs stay the jobs'.
    ...(input.gpu ? ["  --gpus all -e NVIDIA_DRIVER_CAPABILITIES=utility \\"] : []),
    envFlags,
    `  ${input.agentImage} agent --tier ${input.tier}`,
    "",
  ].join("\n");
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'"'"'`)}'`;
}
