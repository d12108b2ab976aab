import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  type TierName,
  sandboxFacts,
  toAgentEnv,
  type Senders,
  PRIORITIES,
  type Priority,
  type SchedulingPolicy,
  getTier,
} from "@crucible/runtime/catalog";
import type { CrucibleConfig, TierConfig, WarmPoolState } from "../config";
import { componentTags } from "../providers";
import { NODE_ASSUME_ROLE_POLICY, nodePolicy, type EnvironmentsScope } from "./node-role";
import { jobsPerInstanceMetrics, waitingWithNoInstanceQueries } from "./scaling-metrics";
import { tierJobImages, userData } from "./user-data";

/**
 * A tier's nodes as one component ({@link TierFleet}), built from three parts kept beside it:
 * node-role.ts (the node's IAM), scaling-metrics.ts (the metric math its scaling reads) and
 * user-data.ts (the boot script that starts the agent).
 */

export { METRIC_IDS, JOBS_PER_INSTANCE, WAITING_WITH_NO_INSTANCE } from "./scaling-metrics";
export {
  nodePolicy,
  agentDataStatements,
  JOB_METRICS_STATEMENT,
  type AgentDataScope,
  type EnvironmentsScope,
} from "./node-role";
export { tierJobImages, AGENT_SCRATCH_DIR, JOB_UID_LEASE_DIR, LOOP_DEVICES, userData } from "./user-data";

/** ECS-optimized Amazon Linux 2023: Docker ready; the GPU variant adds the NVIDIA driver and toolkit. */
export const DEFAULT_AMI_PARAMETERS = {
  cpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id",
  gpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id",
} as const;
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
  readonly warmPool: {
    readonly minSize: number;
    readonly maxPreparedCapacity: number;
    readonly state: WarmPoolState;
  } | null;
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
    /** The datasets bucket, where the agent fetches jobs' datasets and publishes the pre-cached sets. */
    readonly datasetsBucketName: pulumi.Input<string>;
    readonly datasetsBucketArn: pulumi.Input<string>;
    /** The buckets' KMS key, which nodes need to read and write objects; undefined with SSE-S3. */
    readonly kmsKeyArn?: pulumi.Input<string>;
  };
  /** The agent image by digest, and each job family's. */
  readonly agentImage: pulumi.Input<string>;
  readonly jobImages: Readonly<Record<string, pulumi.Input<string>>>;
  /** Repositories nodes pull from. */
  readonly repositoryArns: readonly pulumi.Input<string>[];
  /**
   * Job environments (`crucible:environments`, infra/environments/): the index the agent builds them from
   * and the packages it allows and denies, written into its environment, and the CodeArtifact proxy its
   * role reads. Absent (`index: none`): the agent gets none of them, and the role no environment grant.
   */
  readonly environments?: AgentEnvironments;
  /** Days the agent's log group keeps its events. Defaults to {@link AGENT_LOG_RETENTION_DAYS}. */
  readonly logRetentionDays?: number;
}

/** A tier's agents' job environments: what {@link TierFleetArgs.environments} holds. */
export interface AgentEnvironments extends EnvironmentsScope {
  /** `CRUCIBLE_PACKAGE_INDEX`: an index URL or `codeartifact://<domain>/<owner>/<repository>`. */
  readonly packageIndex: pulumi.Input<string>;
  /** `CRUCIBLE_PACKAGE_ALLOW`; every package when absent. */
  readonly allow?: readonly string[];
  /** `CRUCIBLE_PACKAGE_DENY`. */
  readonly deny: readonly string[];
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
        assumeRolePolicy: NODE_ASSUME_ROLE_POLICY,
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
            datasetsBucketArn: args.workspaces.datasetsBucketArn,
            kmsKeyArn: args.workspaces.kmsKeyArn,
            regionName: region.name,
            repositoryArns: args.repositoryArns,
            groupArn,
            logGroupArn: agentLog.arn,
            spot: settings.spot.enabled,
            ...(args.environments && { environments: args.environments }),
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
        // A hibernated warm pool resumes instances with their RAM (the root volume is encrypted, as
        // hibernation requires); config checks the type hibernates and the volume holds its RAM.
        ...(!settings.spot.enabled &&
          settings.warmPool?.state === "Hibernated" && { hibernationOptions: { configured: true } }),
        userData: pulumi
          .all([
            args.agentImage,
            queueUrls,
            args.workspaces.bucketName,
            args.workspaces.prefix,
            args.workspaces.quotaGiB,
            pulumi.output(args.jobImages),
            region.name,
            pulumi.all([
              agentLog.name,
              agentSenders,
              args.workspaces.datasetsBucketName,
              args.environments?.packageIndex,
            ]),
          ])
          .apply(
            ([
              agentImage,
              urls,
              bucket,
              prefix,
              quota,
              images,
              regionName,
              [logGroup, senders, datasets, packageIndex],
            ]) =>
              Buffer.from(
                userData({
                  tier,
                  gpu: catalog.gpu !== undefined,
                  agentImage,
                  jobImages: tierJobImages(catalog, images),
                  ...(images.builder !== undefined && { builderImage: images.builder }),
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
                    datasetsBucket: datasets,
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
                    // Job environments: where their packages come from, and which they may use.
                    ...(packageIndex !== undefined && { packageIndex }),
                    ...(args.environments?.allow && { packageAllow: [...args.environments.allow] }),
                    ...(args.environments && { packageDeny: [...args.environments.deny] }),
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
        // Warm pools hold on-demand instances only (config rejects one on a spot group), stopped,
        // hibernated or running as the tier says; scale-in returns instances to the pool in that state.
        ...(!spot &&
          settings.warmPool && {
            warmPool: {
              poolState: settings.warmPool.state,
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
    new aws.autoscaling.Policy(
      `${name}-jobs-per-instance`,
      {
        autoscalingGroupName: group.name,
        policyType: "TargetTrackingScaling",
        targetTrackingConfiguration: {
          targetValue: settings.targetJobsPerInstance,
          customizedMetricSpecification: { metrics: jobsPerInstanceMetrics(args.queues, group.name) },
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
        alarmDescription: `jobs wait in ${tier}'s queues and no instance is in service: start one`,
        comparisonOperator: "GreaterThanOrEqualToThreshold",
        threshold: 1,
        evaluationPeriods: 1,
        treatMissingData: "notBreaching",
        alarmActions: [fromZero.arn],
        metricQueries: waitingWithNoInstanceQueries(args.queues, group.name),
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
