import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import type { TierName } from "../runtime/src/catalog";
import { JOB_METRICS } from "../runtime/src/contract";
import { getTier } from "../runtime/src/catalog";
import { sandboxFacts } from "../runtime/src/sandbox";
import type { CrucibleConfig, TierConfig } from "./config";
import type { PolicyDocument } from "./policy-document";
import { componentTags } from "./providers";

/** ECS-optimized Amazon Linux 2023: Docker ready; the GPU variant adds the NVIDIA driver and toolkit. */
export const DEFAULT_AMI_PARAMETERS = {
  cpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id",
  gpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id",
} as const;

/** Jobs waiting plus running per in-service instance, guarded so an empty group never divides by zero. */
export const JOBS_PER_INSTANCE = "IF(m3 > 0, (m1 + m2) / m3, m1 + m2)";
/** 1 while jobs wait and no instance is in service: the alarm that brings a group up from zero. */
export const WAITING_WITH_NO_INSTANCE = "IF(m3 == 0 AND m1 > 0, 1, 0)";
/** Boot, image pull and the agent's readiness; past it, an instance that never reported ready is dropped. */
export const LAUNCH_HOOK_TIMEOUT_SECONDS = 900;

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
  /** Seconds an interrupted job gets to checkpoint; the termination hook waits at least this long. */
  readonly graceSeconds?: number;
  readonly subnetIds: pulumi.Input<pulumi.Input<string>[]>;
  readonly securityGroupId: pulumi.Input<string>;
  readonly queue: {
    readonly url: pulumi.Input<string>;
    readonly arn: pulumi.Input<string>;
    readonly name: pulumi.Input<string>;
  };
  readonly workspaces: {
    readonly bucketName: pulumi.Input<string>;
    readonly bucketArn: pulumi.Input<string>;
    readonly prefix: pulumi.Input<string>;
    readonly datasetsBucketArn: pulumi.Input<string>;
    readonly quotaGiB: pulumi.Input<number>;
  };
  /** The agent image by digest, and each job family's. */
  readonly agentImage: pulumi.Input<string>;
  readonly jobImages: Readonly<Record<string, pulumi.Input<string>>>;
  /** Repositories nodes pull from. */
  readonly repositoryArns: readonly pulumi.Input<string>[];
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
  readonly agentConfigParameter: pulumi.Output<string>;
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

    const agentConfig = new aws.ssm.Parameter(
      `${name}-agent-config`,
      {
        name: parameterName,
        type: "String",
        value: pulumi.jsonStringify({
          tier,
          queueUrl: args.queue.url,
          bucket: args.workspaces.bucketName,
          images: args.jobImages,
          sandbox: sandboxFacts(tier),
        }),
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
            queueArn: args.queue.arn,
            bucketArn: args.workspaces.bucketArn,
            prefix: args.workspaces.prefix,
            datasetsBucketArn: args.workspaces.datasetsBucketArn,
            repositoryArns: args.repositoryArns,
            groupArn,
            parameterArn: agentConfig.arn,
          }),
        ),
      },
      { parent: this },
    );
    new aws.iam.RolePolicyAttachment(
      `${name}-ssm-core`,
      {
        role: role.name,
        policyArn: pulumi.interpolate`arn:${partition.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore`,
      },
      { parent: this },
    );
    const profile = new aws.iam.InstanceProfile(`${name}-node`, { role: role.name, tags }, { parent: this });

    const catalog = getTier(tier);
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
            args.queue.url,
            args.workspaces.bucketName,
            args.workspaces.prefix,
            args.workspaces.quotaGiB,
            pulumi.output(args.jobImages),
            region.name,
          ])
          .apply(([agentImage, queueUrl, bucket, prefix, quota, images, regionName]) =>
            Buffer.from(
              userData({
                tier,
                gpu: catalog.gpu !== undefined,
                agentImage,
                regionName,
                groupName,
                env: {
                  CRUCIBLE_TIER: tier,
                  CRUCIBLE_QUEUE_URL: queueUrl,
                  CRUCIBLE_BUCKET: bucket,
                  CRUCIBLE_WORKSPACES_PREFIX: prefix,
                  CRUCIBLE_QUOTA_GIB: String(quota),
                  CRUCIBLE_IMAGES: JSON.stringify(images),
                  CRUCIBLE_HEARTBEAT_SECONDS: String(args.heartbeatSeconds),
                  CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS: String(args.visibilityTimeoutSeconds),
                  CRUCIBLE_ASG_NAME: groupName,
                  CRUCIBLE_LAUNCH_HOOK: `${groupName}-launch`,
                  CRUCIBLE_TERMINATION_HOOK: `${groupName}-terminate`,
                  AWS_REGION: regionName,
                },
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
    const grace = args.graceSeconds ?? 120;
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
        ...(settings.warmPool && {
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

    const queueMetric = (
      id: string,
      metricName: string,
    ): aws.types.input.autoscaling.PolicyTargetTrackingConfigurationCustomizedMetricSpecificationMetric => ({
      id,
      returnData: false,
      metricStat: {
        metric: {
          namespace: "AWS/SQS",
          metricName,
          dimensions: [{ name: "QueueName", value: args.queue.name }],
        },
        stat: "Sum",
      },
    });
    const inService = {
      id: "m3",
      returnData: false,
      metricStat: {
        metric: {
          namespace: "AWS/AutoScaling",
          metricName: "GroupInServiceInstances",
          dimensions: [{ name: "AutoScalingGroupName", value: group.name }],
        },
        stat: "Average",
      },
    };
    new aws.autoscaling.Policy(
      `${name}-jobs-per-instance`,
      {
        autoscalingGroupName: group.name,
        policyType: "TargetTrackingScaling",
        targetTrackingConfiguration: {
          targetValue: settings.targetJobsPerInstance,
          customizedMetricSpecification: {
            metrics: [
              queueMetric("m1", "ApproximateNumberOfMessagesVisible"),
              queueMetric("m2", "ApproximateNumberOfMessagesNotVisible"),
              inService,
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
    new aws.cloudwatch.MetricAlarm(
      `${name}-from-zero`,
      {
        alarmDescription: `jobs wait in ${tier}'s queue and no instance is in service: start one`,
        comparisonOperator: "GreaterThanOrEqualToThreshold",
        threshold: 1,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
        alarmActions: [fromZero.arn],
        metricQueries: [
          {
            id: "m1",
            metric: {
              namespace: "AWS/SQS",
              metricName: "ApproximateNumberOfMessagesVisible",
              dimensions: { QueueName: args.queue.name },
              stat: "Maximum",
              period: 60,
            },
          },
          {
            id: "m3",
            metric: {
              namespace: "AWS/AutoScaling",
              metricName: "GroupInServiceInstances",
              dimensions: { AutoScalingGroupName: group.name },
              stat: "Maximum",
              period: 60,
            },
          },
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
          ...(schedule.timeZone && { timeZone: schedule.timeZone }),
        },
        { parent: this },
      );
    }

    this.asgNames = pulumi.output([group.name]);
    this.launchTemplateId = template.id;
    this.roleArn = role.arn;
    this.agentConfigParameter = agentConfig.name;
    this.capacity = {
      minSize: settings.minSize,
      maxSize: settings.maxSize,
      warmPool: settings.warmPool ?? null,
      spot: spot
        ? { onDemandBase: settings.spot.onDemandBase, onDemandPercentage: settings.spot.onDemandPercentage }
        : null,
      instanceTypes: settings.instanceTypes,
      onDemandHourlyUsd: catalog.onDemandHourlyUsd,
    };
    this.registerOutputs({
      asgNames: this.asgNames,
      launchTemplateId: this.launchTemplateId,
      capacity: this.capacity,
    });
  }
}

/** What a node may do: its tier's queue, its workspace prefix, pulls, its own group's hooks, metrics. */
export function nodePolicy(scope: {
  readonly queueArn: pulumi.Input<string>;
  readonly bucketArn: pulumi.Input<string>;
  readonly prefix: pulumi.Input<string>;
  readonly datasetsBucketArn: pulumi.Input<string>;
  readonly repositoryArns: readonly pulumi.Input<string>[];
  readonly groupArn: pulumi.Input<string>;
  readonly parameterArn: pulumi.Input<string>;
}): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "TierQueue",
        Effect: "Allow",
        Action: [
          "sqs:ReceiveMessage",
          "sqs:DeleteMessage",
          "sqs:ChangeMessageVisibility",
          "sqs:GetQueueAttributes",
        ],
        Resource: scope.queueArn,
      },
      {
        Sid: "Workspaces",
        Effect: "Allow",
        Action: ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"],
        Resource: pulumi.interpolate`${scope.bucketArn}/${scope.prefix}*`,
      },
      {
        Sid: "ListWorkspaces",
        Effect: "Allow",
        Action: "s3:ListBucket",
        Resource: scope.bucketArn,
        Condition: { StringLike: { "s3:prefix": [pulumi.interpolate`${scope.prefix}*`] } },
      },
      {
        Sid: "ReadDatasets",
        Effect: "Allow",
        Action: ["s3:GetObject", "s3:ListBucket"],
        Resource: [scope.datasetsBucketArn, pulumi.interpolate`${scope.datasetsBucketArn}/*`],
      },
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
          "autoscaling:RecordLifecycleActionHeartbeat",
        ],
        Resource: scope.groupArn,
      },
      {
        Sid: "JobMetrics",
        Effect: "Allow",
        Action: "cloudwatch:PutMetricData",
        Resource: "*",
        Condition: { StringEquals: { "cloudwatch:namespace": JOB_METRICS.namespace } },
      },
      { Sid: "AgentConfig", Effect: "Allow", Action: "ssm:GetParameter", Resource: scope.parameterArn },
    ],
  };
}

/** The node's boot script: the GPU check, the agent's directories, an ECR login and the agent by digest. */
export function userData(input: {
  readonly tier: string;
  readonly gpu: boolean;
  readonly agentImage: string;
  readonly regionName: string;
  readonly groupName: string;
  readonly env: Readonly<Record<string, string>>;
}): string {
  const registry = input.agentImage.split("/")[0]!;
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
    "install -d -o 1000 -g 1000 /var/lib/crucible /var/lib/crucible/tmp",
    `aws ecr get-login-password --region ${input.regionName} | docker login --username AWS --password-stdin ${registry}`,
    `docker pull ${input.agentImage}`,
    "docker run -d --name crucible-agent --restart=always --network host \\",
    '  --group-add "$(stat -c %g /var/run/docker.sock)" \\',
    "  -v /var/run/docker.sock:/var/run/docker.sock -v /var/lib/crucible:/var/lib/crucible \\",
    "  -e TMPDIR=/var/lib/crucible/tmp \\",
    envFlags,
    `  ${input.agentImage} agent --tier ${input.tier}`,
    "",
  ].join("\n");
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'"'"'`)}'`;
}
