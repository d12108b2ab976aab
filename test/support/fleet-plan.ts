import { UPSTREAM_REGION, type Plan } from "../../scripts/lib/mock-engine";
import { readStackConfig, type STACKS } from "./harness";

/**
 * What the fleet tests (test/infra/fleet/) share: the resource types they look up, what each stack file
 * asks of its fleet, and {@link declaredFleet}, the accessors for one stack's declared fleet.
 */

export const T = {
  fleet: "crucible:fleet:TierFleet",
  template: "aws:ec2/launchTemplate:LaunchTemplate",
  group: "aws:autoscaling/group:Group",
  policy: "aws:autoscaling/policy:Policy",
  schedule: "aws:autoscaling/schedule:Schedule",
  alarm: "aws:cloudwatch/metricAlarm:MetricAlarm",
  logGroup: "aws:cloudwatch/logGroup:LogGroup",
  role: "aws:iam/role:Role",
  rolePolicy: "aws:iam/rolePolicy:RolePolicy",
  attachment: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
  profile: "aws:iam/instanceProfile:InstanceProfile",
  parameter: "aws:ssm/parameter:Parameter",
  queue: "aws:sqs/queue:Queue",
  bucket: "aws:s3/bucket:Bucket",
  key: "aws:kms/key:Key",
  sg: "aws:ec2/securityGroup:SecurityGroup",
} as const;

export const GPU_TIERS = new Set(["gpu-small", "gpu-medium", "gpu-large"]);
const SHARED_CPU_NODES = ["m6i.xlarge", "m6a.xlarge", "m5.xlarge", "m7i.xlarge", "c6i.xlarge"];

interface Schedule {
  name: string;
  recurrence: string;
  minSize: number;
  timeZone: string;
}

interface TierWant {
  instanceTypes: string[];
  minSize: number;
  maxSize: number;
  desired: number;
  /** null: an on-demand group. */
  spot: { onDemandBase: number; onDemandPercentage: number } | null;
  warmPool?: { minSize: number; maxPreparedCapacity: number };
  schedules: Schedule[];
  targetJobsPerInstance: number;
  rootVolumeGiB: number;
}

/**
 * What each stack file asks of its fleet, written out from `Pulumi.<stack>.yaml` over the environment
 * defaults it leaves alone (CPU tiers: the shared node types, 4 jobs per instance, a 50 GiB root, 80 for
 * cpu-large's two 10 GiB workspaces; GPU tiers: 1 job per instance, 200 GiB, 210 for gpu-large's 100 GiB
 * workspace; every tier: min 0, desired 0, spot with no on-demand share).
 */
const cpu = (over: Partial<TierWant>): TierWant => ({
  instanceTypes: SHARED_CPU_NODES,
  minSize: 0,
  maxSize: 2,
  desired: 0,
  spot: { onDemandBase: 0, onDemandPercentage: 0 },
  schedules: [],
  targetJobsPerInstance: 4,
  rootVolumeGiB: 50,
  ...over,
});
const gpu = (over: Partial<TierWant> & { instanceTypes: string[] }): TierWant => ({
  ...cpu({ targetJobsPerInstance: 1, rootVolumeGiB: 200 }),
  ...over,
});
const la = (name: string, recurrence: string, minSize: number): Schedule => ({
  name,
  recurrence,
  minSize,
  timeZone: "America/Los_Angeles",
});

export const EXPECTED: Record<
  (typeof STACKS)[number],
  {
    region: string;
    /** Region of the registry the nodes pull from. */
    registryRegion: string;
    kms: boolean;
    tiers: Record<string, TierWant>;
  }
> = {
  dev: {
    region: "us-east-1",
    registryRegion: "us-east-1",
    kms: false,
    tiers: {
      "cpu-small": cpu({ maxSize: 2 }),
      "cpu-large": cpu({ maxSize: 2, rootVolumeGiB: 80 }),
      "gpu-small": gpu({ instanceTypes: ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"], maxSize: 1 }),
    },
  },
  staging: {
    region: "us-east-1",
    registryRegion: "us-east-1",
    kms: true,
    tiers: {
      "cpu-small": cpu({ maxSize: 4 }),
      "cpu-large": cpu({ maxSize: 4, rootVolumeGiB: 80 }),
      "gpu-small": gpu({
        instanceTypes: ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"],
        maxSize: 4,
        spot: { onDemandBase: 0, onDemandPercentage: 20 },
      }),
      "gpu-medium": gpu({ instanceTypes: ["g4dn.2xlarge", "g5.2xlarge", "g6.2xlarge"], maxSize: 2 }),
    },
  },
  prod: {
    region: "us-west-2",
    // Prod runs the images its upstream (staging) pushed, from the upstream's registry and region.
    registryRegion: UPSTREAM_REGION,
    kms: true,
    tiers: {
      "cpu-small": cpu({
        minSize: 1,
        desired: 1,
        maxSize: 20,
        schedules: [la("working-hours", "0 8 * * 1-5", 4), la("after-hours", "0 19 * * 1-5", 1)],
      }),
      "cpu-large": cpu({ maxSize: 20, spot: { onDemandBase: 1, onDemandPercentage: 10 }, rootVolumeGiB: 80 }),
      "gpu-small": gpu({
        instanceTypes: ["g4dn.xlarge"],
        minSize: 1,
        desired: 1,
        maxSize: 24,
        spot: null,
        warmPool: { minSize: 2, maxPreparedCapacity: 6 },
      }),
      "gpu-medium": gpu({
        instanceTypes: ["g4dn.2xlarge", "g5.2xlarge", "g6.2xlarge"],
        maxSize: 12,
        schedules: [la("working-hours", "0 8 * * 1-5", 2), la("after-hours", "0 20 * * 1-5", 0)],
      }),
      "gpu-large": gpu({ instanceTypes: ["g5.2xlarge", "g6.2xlarge"], maxSize: 8, rootVolumeGiB: 210 }),
    },
  },
};

export const PRIORITIES = ["high", "normal", "low"] as const;

/**
 * One stack's fleet as its tests read it: what the stack file asks (`want`), its tiers and names, and
 * accessors into `plan()`, the stack's plan once the test file's `beforeAll` has run it.
 */
export function declaredFleet(stack: (typeof STACKS)[number], plan: () => Plan) {
  const want = EXPECTED[stack];
  const tiers = Object.keys(want.tiers);
  const config = readStackConfig(stack);
  const environment = config["crucible:environment"]!;
  const defaultTags = {
    "crucible:environment": environment,
    "crucible:owner": config["crucible:owner"]!,
    "crucible:cost-center": config["crucible:costCenter"]!,
  };

  const groupName = (tier: string) => `crucible-${environment}-${tier}`;
  /** A tier's queue of one priority: `normal` kept the tier's one queue's name from before priorities. */
  const queue = (tier: string, p: (typeof PRIORITIES)[number]) =>
    plan().get(T.queue, p === "normal" ? `queues-${tier}` : `queues-${tier}-${p}`);
  const queueField = (tier: string, field: "url" | "arn" | "name") =>
    Object.fromEntries(PRIORITIES.map((p) => [p, queue(tier, p).state[field] as string]));
  const group = (tier: string) => plan().get(T.group, `fleet-${tier}-nodes`);
  const template = (tier: string) => plan().get(T.template, `fleet-${tier}-node`);
  const logGroup = (tier: string) => plan().get(T.logGroup, `fleet-${tier}-agent`);
  const imageRefs = () => plan().outputs.imageRefs as Record<string, string>;
  const workspacesBucket = () => plan().get(T.bucket, "workspaces-workspaces");
  return {
    want,
    tiers,
    environment,
    defaultTags,
    groupName,
    queue,
    queueField,
    group,
    template,
    logGroup,
    imageRefs,
    workspacesBucket,
  };
}
