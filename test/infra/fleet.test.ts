import { createHash } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { JOBS_PER_INSTANCE, WAITING_WITH_NO_INSTANCE } from "../../infra/fleet";
import { MOCK_ACCOUNT_ID, UPSTREAM_REGION } from "../../scripts/lib/mock-engine";
import {
  STACKS,
  configWith,
  readStackConfig,
  runStack,
  type DeclaredResource,
  type Plan,
} from "../support/harness";

const T = {
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

const GPU_TIERS = new Set(["gpu-small", "gpu-medium", "gpu-large"]);
const SHARED_CPU_NODES = ["m6i.xlarge", "m6a.xlarge", "m5.xlarge", "m7i.xlarge", "c6i.xlarge"];
const AMI_PARAMETER = {
  cpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id",
  gpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id",
};

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
 * defaults it leaves alone (CPU tiers: the shared node types, 4 jobs per instance, a 50 GiB root; GPU
 * tiers: 1 job per instance, 200 GiB; every tier: min 0, desired 0, spot with no on-demand share).
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

const EXPECTED: Record<
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
      "cpu-large": cpu({ maxSize: 2 }),
      "gpu-small": gpu({ instanceTypes: ["g4dn.xlarge", "g5.xlarge", "g6.xlarge"], maxSize: 1 }),
    },
  },
  staging: {
    region: "us-east-1",
    registryRegion: "us-east-1",
    kms: true,
    tiers: {
      "cpu-small": cpu({ maxSize: 4 }),
      "cpu-large": cpu({ maxSize: 4 }),
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
      "cpu-large": cpu({ maxSize: 20, spot: { onDemandBase: 1, onDemandPercentage: 10 } }),
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
      "gpu-large": gpu({ instanceTypes: ["g5.2xlarge", "g6.2xlarge"], maxSize: 8 }),
    },
  },
};

const PRIORITIES = ["high", "normal", "low"] as const;

/** The runtime's scheduling defaults (runtime/src/catalog/scheduling.ts), written out. */
const DEFAULT_POLICY = {
  weights: { high: 6, normal: 3, low: 1 },
  fairShare: { perUser: 8, perProject: 32, deferSeconds: 15 },
  preemption: { enabled: true, afterSeconds: 600, noPreemptPriceFactor: 1.5 },
};
/** The policy each stack hands its agents: `crucible:scheduling` over the defaults, and its user and project budgets. */
const POLICY: Record<(typeof STACKS)[number], unknown> = {
  dev: {
    ...DEFAULT_POLICY,
    preemption: { ...DEFAULT_POLICY.preemption, afterSeconds: 120 },
    budgets: { users: { alice: 120, bob: 80 }, projects: { ci: 25, nanogpt: 150 } },
  },
  staging: { ...DEFAULT_POLICY, budgets: { users: {}, projects: {} } },
  prod: {
    ...DEFAULT_POLICY,
    fairShare: { perUser: 16, perProject: 64, deferSeconds: 15 },
    preemption: { ...DEFAULT_POLICY.preemption, afterSeconds: 900 },
    budgets: {
      users: { alice: 4000, bob: 2500, "ravi.k": 2500 },
      projects: { "llm-pretrain": 12000, "vision-eval": 5000 },
    },
  },
};

/**
 * The scaling math, written out: every queue count filled with 0 (SQS stops publishing an idle queue's
 * metrics, and a sum with a missing term has no value), summed over the three priorities.
 */
const JOBS =
  "FILL(waiting_high, 0) + FILL(running_high, 0) + FILL(waiting_normal, 0) + FILL(running_normal, 0) + FILL(waiting_low, 0) + FILL(running_low, 0)";
const JOBS_PER_INSTANCE_EXPRESSION = `IF(in_service > 0, (${JOBS}) / in_service, ${JOBS})`;
const WAITING_WITH_NO_INSTANCE_EXPRESSION =
  "IF(in_service == 0 AND desired == 0 AND (FILL(waiting_high, 0) + FILL(waiting_normal, 0) + FILL(waiting_low, 0)) > 0, 1, 0)";

/** The environment defaults no stack file overrides. */
const HEARTBEAT_SECONDS = 30;
const VISIBILITY_TIMEOUT_SECONDS = 120;
const GRACE_SECONDS = 60;

interface Statement {
  Sid?: string;
  Effect: string;
  Action: string | string[];
  Resource: string | string[];
  Condition?: Record<string, Record<string, unknown>>;
}

const list = <X>(x: X | X[] | undefined): X[] => (x === undefined ? [] : Array.isArray(x) ? x : [x]);

/** What the mock engine answers for an SSM parameter: an AMI id derived from the parameter's name. */
const mockAmi = (parameter: string) =>
  `ami-${createHash("sha256").update(parameter).digest("hex").slice(0, 17)}`;

/** An IAM resource pattern (`*` any run of characters) as a regular expression. */
const arnPattern = (pattern: string) =>
  new RegExp(
    `^${pattern
      .split("*")
      .map((p) => p.replace(/[.?+^$()[\]{}|\\/]/g, "\\$&"))
      .join(".*")}$`,
  );

/** An SSM parameter's value: the AWS SDK marks it secret, so the engine may hand it over wrapped. */
function parameterValue(value: unknown): string {
  if (typeof value === "string") return value;
  return (value as { value: string }).value;
}

/** The boot script, and the environment its `docker run` hands the agent (`-e KEY='value'` lines). */
function bootScript(template: DeclaredResource): {
  script: string;
  lines: string[];
  env: Record<string, string>;
} {
  const script = Buffer.from(template.inputs.userData as string, "base64").toString("utf8");
  const lines = script.split("\n");
  const env: Record<string, string> = {};
  for (const line of lines) {
    const m = /^ {2}-e ([A-Z_]+)='(.*)' \\$/.exec(line);
    if (m) env[m[1]!] = m[2]!.replace(/'"'"'/g, "'");
  }
  return { script, lines, env };
}

describe.each(STACKS)("%s stack fleet", (stack) => {
  const want = EXPECTED[stack];
  const tiers = Object.keys(want.tiers);
  const config = readStackConfig(stack);
  const environment = config["crucible:environment"]!;
  const defaultTags = {
    "crucible:environment": environment,
    "crucible:owner": config["crucible:owner"]!,
    "crucible:cost-center": config["crucible:costCenter"]!,
  };
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });

  const groupName = (tier: string) => `crucible-${environment}-${tier}`;
  /** A tier's queue of one priority: `normal` kept the tier's one queue's name from before priorities. */
  const queue = (tier: string, p: (typeof PRIORITIES)[number]) =>
    plan.get(T.queue, p === "normal" ? `queues-${tier}` : `queues-${tier}-${p}`);
  const queueField = (tier: string, field: "url" | "arn" | "name") =>
    Object.fromEntries(PRIORITIES.map((p) => [p, queue(tier, p).state[field] as string]));
  const group = (tier: string) => plan.get(T.group, `fleet-${tier}-nodes`);
  const template = (tier: string) => plan.get(T.template, `fleet-${tier}-node`);
  const logGroup = (tier: string) => plan.get(T.logGroup, `fleet-${tier}-agent`);
  const imageRefs = () => plan.outputs.imageRefs as Record<string, string>;
  const workspacesBucket = () => plan.get(T.bucket, "workspaces-workspaces");
  const statements = (tier: string): Statement[] =>
    (
      JSON.parse(plan.get(T.rolePolicy, `fleet-${tier}-node`).inputs.policy as string) as {
        Statement: Statement[];
      }
    ).Statement;
  const statement = (tier: string, sid: string): Statement => {
    const found = statements(tier).find((s) => s.Sid === sid);
    if (!found) throw new Error(`fleet-${tier}-node has no statement ${sid}`);
    return found;
  };

  it("declares one fleet per enabled tier, every resource a child of its tier's component", () => {
    expect(
      plan
        .ofType(T.fleet)
        .map((f) => f.name)
        .sort(),
    ).toEqual(tiers.map((t) => `fleet-${t}`).sort());
    const suffixes: [string, string][] = [
      [T.template, "node"],
      [T.group, "nodes"],
      [T.logGroup, "agent"],
      [T.role, "node"],
      [T.rolePolicy, "node"],
      [T.profile, "node"],
      [T.parameter, "agent-config"],
    ];
    for (const [type, suffix] of suffixes) {
      const declared = plan
        .ofType(type)
        .filter((r) => r.name.startsWith("fleet-"))
        .map((r) => r.name);
      expect(declared.sort(), type).toEqual(tiers.map((t) => `fleet-${t}-${suffix}`).sort());
    }
    for (const tier of tiers) {
      const component = plan.get(T.fleet, `fleet-${tier}`);
      const children = plan.childrenOf(component.urn);
      expect(children.every((r) => r.parent === component.urn)).toBe(true);
      expect(children.map((r) => r.name).every((n) => n.startsWith(`fleet-${tier}-`))).toBe(true);
    }
  });

  describe("launch template", () => {
    it("requires IMDSv2 with a hop limit of 2 and keeps the endpoint on", () => {
      for (const tier of tiers) {
        expect(template(tier).inputs.metadataOptions).toEqual({
          httpEndpoint: "enabled",
          httpTokens: "required",
          httpPutResponseHopLimit: 2,
          instanceMetadataTags: "enabled",
        });
      }
    });

    it("boots from an encrypted gp3 root of the tier's size", () => {
      for (const [tier, t] of Object.entries(want.tiers)) {
        expect(template(tier).inputs.blockDeviceMappings).toEqual([
          {
            deviceName: "/dev/xvda",
            ebs: {
              volumeSize: t.rootVolumeGiB,
              volumeType: "gp3",
              encrypted: "true",
              deleteOnTermination: "true",
            },
          },
        ]);
      }
    });

    it("gets no public address, sits in the node security group and has detailed monitoring", () => {
      const nodeGroup = plan.get(T.sg, "network-nodes");
      for (const tier of tiers) {
        expect(template(tier).inputs.networkInterfaces).toEqual([
          { deviceIndex: 0, associatePublicIpAddress: "false", securityGroups: [nodeGroup.id] },
        ]);
        expect(template(tier).inputs.monitoring).toEqual({ enabled: true });
      }
    });

    it("runs the ECS-optimized AMI from SSM, the GPU variant exactly on GPU tiers, and the tier's first type", () => {
      for (const [tier, t] of Object.entries(want.tiers)) {
        const parameter = GPU_TIERS.has(tier) ? AMI_PARAMETER.gpu : AMI_PARAMETER.cpu;
        expect(template(tier).inputs.imageId).toBe(mockAmi(parameter));
        expect(template(tier).inputs.instanceType).toBe(t.instanceTypes[0]);
      }
    });

    it("starts nodes with the tier's instance profile, whose role only EC2 assumes", () => {
      for (const tier of tiers) {
        const profile = plan.get(T.profile, `fleet-${tier}-node`);
        const role = plan.get(T.role, `fleet-${tier}-node`);
        expect(template(tier).inputs.iamInstanceProfile).toEqual({ arn: profile.state.arn });
        expect(profile.inputs.role).toBe(role.state.name);
        expect(JSON.parse(role.inputs.assumeRolePolicy as string)).toEqual({
          Version: "2012-10-17",
          Statement: [
            { Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" },
          ],
        });
      }
    });
  });

  describe("user data", () => {
    it("pulls the agent by digest and runs `agent --tier <tier>` as the last command", () => {
      const agent = imageRefs().agent!;
      expect(agent).toMatch(/^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com\/[^@:]+@sha256:[0-9a-f]{64}$/);
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        expect(lines[0]).toBe("#!/bin/bash");
        expect(lines).toContain("set -euo pipefail");
        expect(lines).toContain(`docker pull ${agent}`);
        expect(lines.filter((l) => l.trim() !== "").at(-1)).toBe(`  ${agent} agent --tier ${tier}`);
      }
    });

    it("hands the agent its tier's priority queues, the scheduling policy, the workspaces bucket and its group's hooks", () => {
      for (const tier of tiers) {
        const { env } = bootScript(template(tier));
        const hooks = group(tier).inputs.initialLifecycleHooks as { name: string }[];
        const queues = JSON.parse(env.CRUCIBLE_QUEUES!) as Record<string, Record<string, string>>;
        expect(queues).toEqual({ [tier]: queueField(tier, "url") });
        expect(Object.keys(queues[tier]!)).toEqual([...PRIORITIES]);
        expect(JSON.parse(env.CRUCIBLE_SCHEDULING!)).toEqual(POLICY[stack]);
        expect(JSON.parse(env.CRUCIBLE_SCHEDULING!)).toEqual(plan.outputs.scheduling);
        expect(env.CRUCIBLE_QUEUE_URL).toBeUndefined();
        expect(env).toMatchObject({
          CRUCIBLE_TIER: tier,
          CRUCIBLE_BUCKET: workspacesBucket().state.bucket,
          CRUCIBLE_WORKSPACES_PREFIX: "workspaces/",
          CRUCIBLE_HEARTBEAT_SECONDS: String(HEARTBEAT_SECONDS),
          CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS: String(VISIBILITY_TIMEOUT_SECONDS),
          CRUCIBLE_ASG_NAME: groupName(tier),
          CRUCIBLE_LAUNCH_HOOK: hooks[0]!.name,
          CRUCIBLE_TERMINATION_HOOK: hooks[1]!.name,
          CRUCIBLE_GRACE_SECONDS: String(GRACE_SECONDS),
          AWS_REGION: want.region,
        });
        // Another tier's queues never reach this tier's nodes.
        for (const other of tiers.filter((t) => t !== tier)) {
          for (const p of PRIORITIES) {
            expect(bootScript(template(tier)).script).not.toContain(queue(other, p).state.url as string);
          }
        }
        const { agent: _agent, ...jobImages } = imageRefs();
        expect(JSON.parse(env.CRUCIBLE_IMAGES!)).toEqual(jobImages);
      }
    });

    it("pre-pulls by digest exactly the job images the tier's jobs can run in (the launcher never pulls)", () => {
      const refs = imageRefs();
      for (const tier of tiers) {
        const pulls = bootScript(template(tier))
          .lines.filter((l) => l.startsWith("docker pull "))
          .map((l) => l.slice("docker pull ".length));
        const families = GPU_TIERS.has(tier) ? ["ml-cuda"] : ["cpu", "ml-cpu"];
        expect(pulls).toEqual([refs.agent, ...families.map((f) => refs[f])]);
        for (const ref of pulls) expect(ref).toMatch(/@sha256:[0-9a-f]{64}$/);
      }
    });

    it("logs in to each registry it pulls from in that registry's own region, before pulling", () => {
      const host = imageRefs().agent!.split("/")[0]!;
      // A promoted stack runs its upstream's images, from the upstream's registry and region.
      const registryRegion = want.registryRegion;
      expect(host).toBe(`${MOCK_ACCOUNT_ID}.dkr.ecr.${registryRegion}.amazonaws.com`);
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        const logins = lines.filter((l) => l.startsWith("aws ecr get-login-password"));
        expect(logins).toEqual([
          `aws ecr get-login-password --region ${registryRegion} | docker login --username AWS --password-stdin ${host}`,
        ]);
        expect(lines.indexOf(logins[0]!)).toBeLessThan(lines.findIndex((l) => l.startsWith("docker pull ")));
      }
    });

    it("ships the agent's output to the tier's log group with the awslogs driver", () => {
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        expect(lines).toContain(
          `  --log-driver awslogs --log-opt awslogs-group=/crucible/${environment}/${tier}/agent` +
            ` --log-opt awslogs-region=${want.region} --log-opt awslogs-create-group=false \\`,
        );
      }
    });

    it("checks the GPU with nvidia-smi before anything else, exactly on GPU tiers", () => {
      for (const tier of tiers) {
        const { lines, script } = bootScript(template(tier));
        const check = lines.findIndex((l) => l.includes("nvidia-smi"));
        if (!GPU_TIERS.has(tier)) {
          expect(script).not.toContain("nvidia-smi");
          continue;
        }
        expect(lines[check]).toMatch(/^if ! nvidia-smi >\/dev\/null 2>&1; then .*exit 1; fi$/);
        expect(check).toBeLessThan(lines.findIndex((l) => l.startsWith("docker run")));
      }
    });

    it("runs the agent as root, privileged, with its scratch root (rshared) and uid leases at the host's own paths", () => {
      for (const tier of tiers) {
        const { lines, env } = bootScript(template(tier));
        const run = lines.findIndex((l) => l.startsWith("docker run"));
        expect(lines.slice(run, run + 5)).toEqual([
          "docker run -d --name crucible-agent --restart=always --network host --user 0:0 --privileged \\",
          `  --log-driver awslogs --log-opt awslogs-group=/crucible/${environment}/${tier}/agent` +
            ` --log-opt awslogs-region=${want.region} --log-opt awslogs-create-group=false \\`,
          "  -v /var/run/docker.sock:/var/run/docker.sock \\",
          "  -v /var/lib/crucible:/var/lib/crucible:rshared -v /run/crucible:/run/crucible \\",
          "  -e TMPDIR=/var/lib/crucible/tmp \\",
        ]);
        // Root needs no socket group; the scratch root is TMPDIR alone (the agent's and launcher's tmpdir()).
        expect(lines.filter((l) => l.includes("--group-add") || l.includes("--user "))).toEqual([lines[run]]);
        expect(env.CRUCIBLE_SCRATCH_ROOT).toBeUndefined();
        expect(lines.filter((l) => l.startsWith("docker run"))).toHaveLength(1);
      }
    });

    it("makes the agent's directories root's alone and its loop device nodes before the agent starts", () => {
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        const setup = [
          "install -d -m 0700 /var/lib/crucible /var/lib/crucible/tmp /run/crucible",
          "modprobe loop && for i in $(seq 0 63); do [ -b /dev/loop$i ] || mknod -m 0660 /dev/loop$i b 7 $i; done",
        ];
        for (const line of setup) {
          expect(lines).toContain(line);
          expect(lines.indexOf(line)).toBeLessThan(lines.findIndex((l) => l.startsWith("docker run")));
        }
        // Never ec2-user's uid (the agent was 1000 once).
        expect(lines.some((l) => /(-o|-g|--user) 1000\b/.test(l))).toBe(false);
      }
    });

    it("gives the agent nvidia-smi for its health checks (the utility capability only), exactly on GPU tiers", () => {
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        expect(lines.includes("  --gpus all -e NVIDIA_DRIVER_CAPABILITIES=utility \\")).toBe(
          GPU_TIERS.has(tier),
        );
      }
    });
  });

  describe("Auto Scaling group", () => {
    it("sizes each group from config, across the private subnets", () => {
      const subnets = (plan.outputs.network as { privateSubnetIds: string[] }).privateSubnetIds;
      for (const [tier, t] of Object.entries(want.tiers)) {
        expect(group(tier).inputs).toMatchObject({
          name: groupName(tier),
          minSize: t.minSize,
          maxSize: t.maxSize,
          desiredCapacity: t.desired,
          vpcZoneIdentifiers: subnets,
        });
      }
    });

    it("diversifies spot groups over the tier's types, price-capacity-optimized; on-demand groups use the template", () => {
      for (const [tier, t] of Object.entries(want.tiers)) {
        const inputs = group(tier).inputs;
        const templateId = template(tier).id;
        if (t.spot) {
          expect(inputs.launchTemplate).toBeUndefined();
          expect(inputs.capacityRebalance).toBe(true);
          expect(inputs.mixedInstancesPolicy).toEqual({
            instancesDistribution: {
              onDemandBaseCapacity: t.spot.onDemandBase,
              onDemandPercentageAboveBaseCapacity: t.spot.onDemandPercentage,
              spotAllocationStrategy: "price-capacity-optimized",
            },
            launchTemplate: {
              launchTemplateSpecification: { launchTemplateId: templateId, version: "$Latest" },
              overrides: t.instanceTypes.map((instanceType) => ({ instanceType })),
            },
          });
        } else {
          expect(inputs.mixedInstancesPolicy).toBeUndefined();
          expect(inputs.capacityRebalance).toBeUndefined();
          expect(inputs.launchTemplate).toEqual({ id: templateId, version: "$Latest" });
        }
      }
    });

    it("keeps a warm pool only on the on-demand groups that configure one", () => {
      for (const [tier, t] of Object.entries(want.tiers)) {
        const warmPool = group(tier).inputs.warmPool;
        if (!t.warmPool) {
          expect(warmPool, tier).toBeUndefined();
          continue;
        }
        expect(t.spot).toBeNull();
        expect(warmPool).toEqual({
          poolState: "Stopped",
          minSize: t.warmPool.minSize,
          maxGroupPreparedCapacity: t.warmPool.maxPreparedCapacity,
          instanceReusePolicy: { reuseOnScaleIn: true },
        });
      }
    });

    it("publishes the group metric the scaling math reads, every minute", () => {
      for (const tier of tiers) {
        expect(group(tier).inputs.metricsGranularity).toBe("1Minute");
        expect(group(tier).inputs.enabledMetrics).toContain("GroupInServiceInstances");
      }
    });

    it("abandons a node that never reports ready, and waits for running jobs before terminating", () => {
      for (const tier of tiers) {
        const [launch, terminate, ...rest] = group(tier).inputs.initialLifecycleHooks as {
          name: string;
          lifecycleTransition: string;
          defaultResult: string;
          heartbeatTimeout: number;
        }[];
        expect(rest).toEqual([]);
        expect(launch).toEqual({
          name: `${groupName(tier)}-launch`,
          lifecycleTransition: "autoscaling:EC2_INSTANCE_LAUNCHING",
          defaultResult: "ABANDON",
          heartbeatTimeout: 900,
        });
        expect(terminate).toMatchObject({
          name: `${groupName(tier)}-terminate`,
          lifecycleTransition: "autoscaling:EC2_INSTANCE_TERMINATING",
          defaultResult: "CONTINUE",
        });
        // The agent's grace, a minute for uploads, and never under three minutes.
        expect(terminate!.heartbeatTimeout).toBe(180);
      }
    });

    it("carries the stack's default tags, its component and tier, all propagated to instances", () => {
      for (const tier of tiers) {
        expect(group(tier).inputs.tags).toEqual(
          Object.entries({
            ...defaultTags,
            "crucible:component": "fleet",
            "crucible:tier": tier,
            Name: groupName(tier),
          }).map(([key, value]) => ({ key, value, propagateAtLaunch: true })),
        );
      }
    });
  });

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

  describe("node role", () => {
    it("allows no wildcard action", () => {
      for (const tier of tiers) {
        for (const s of statements(tier)) {
          expect(s.Effect).toBe("Allow");
          for (const action of list(s.Action)) expect(action, `${tier} ${s.Sid}`).not.toMatch(/(^\*$|:\*$)/);
        }
      }
    });

    it('uses Resource "*" only for the registry token, job metrics in their namespace, Session Manager and spot prices', () => {
      for (const tier of tiers) {
        const starred = statements(tier).filter((s) => list(s.Resource).includes("*"));
        for (const s of starred) expect(list(s.Resource)).toEqual(["*"]);
        expect(starred.map((s) => ({ Sid: s.Sid, Condition: s.Condition }))).toEqual([
          { Sid: "RegistryToken", Condition: undefined },
          {
            Sid: "JobMetrics",
            Condition: { StringEquals: { "cloudwatch:namespace": "Crucible/Jobs" } },
          },
          { Sid: "SessionManager", Condition: undefined },
          ...(want.tiers[tier]!.spot ? [{ Sid: "SpotPrices", Condition: undefined }] : []),
        ]);
      }
    });

    it("reaches its own tier's three priority queues, and no other queue (not even their DLQs)", () => {
      for (const tier of tiers) {
        const arns = PRIORITIES.map(
          (p) => `arn:aws:sqs:${want.region}:${MOCK_ACCOUNT_ID}:${queue(tier, p).state.name as string}`,
        );
        expect(arns).toEqual(PRIORITIES.map((p) => queue(tier, p).state.arn));
        const sqs = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("sqs:")));
        expect(sqs).toEqual([
          {
            Sid: "TierQueue",
            Effect: "Allow",
            Action: [
              "sqs:ReceiveMessage",
              "sqs:SendMessage",
              "sqs:DeleteMessage",
              "sqs:ChangeMessageVisibility",
              "sqs:GetQueueAttributes",
            ],
            Resource: arns,
          },
        ]);
        const everything = JSON.stringify(statements(tier));
        const sqsArns = plan.ofType(T.queue).map((q) => q.state.arn as string);
        for (const arn of sqsArns.filter((a) => !arns.includes(a)))
          expect(everything).not.toContain(`"${arn}"`);
      }
    });

    it("reads and writes objects only under the workspaces prefix, deletes only fair share's markers, and lists only there", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      for (const tier of tiers) {
        expect(statement(tier, "Workspaces")).toEqual({
          Sid: "Workspaces",
          Effect: "Allow",
          Action: ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"],
          Resource: `${bucketArn}/workspaces/*`,
        });
        expect(statement(tier, "RunningMarkers")).toEqual({
          Sid: "RunningMarkers",
          Effect: "Allow",
          Action: "s3:DeleteObject",
          Resource: `${bucketArn}/workspaces/*/_running/*`,
        });
        expect(statement(tier, "ListWorkspaces")).toEqual({
          Sid: "ListWorkspaces",
          Effect: "Allow",
          Action: "s3:ListBucket",
          Resource: bucketArn,
          Condition: { StringLike: { "s3:prefix": ["workspaces/*"] } },
        });
      }
    });

    it("writes and reads finance's ledger entries, and lists only the ledger's partitions", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      for (const tier of tiers) {
        expect(statement(tier, "Ledger")).toEqual({
          Sid: "Ledger",
          Effect: "Allow",
          Action: ["s3:PutObject", "s3:GetObject"],
          Resource: `${bucketArn}/ledger/*`,
        });
        expect(statement(tier, "ListLedger")).toEqual({
          Sid: "ListLedger",
          Effect: "Allow",
          Action: "s3:ListBucket",
          Resource: bucketArn,
          Condition: { StringLike: { "s3:prefix": ["ledger/*"] } },
        });
      }
    });

    it("reads its own tier's budget pause marker only: the one key, listed and read", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      for (const tier of tiers) {
        expect([statement(tier, "BudgetPause"), statement(tier, "ListBudgetPause")]).toEqual([
          {
            Sid: "BudgetPause",
            Effect: "Allow",
            Action: "s3:GetObject",
            Resource: `${bucketArn}/_control/paused/${tier}`,
          },
          {
            Sid: "ListBudgetPause",
            Effect: "Allow",
            Action: "s3:ListBucket",
            Resource: bucketArn,
            Condition: { StringEquals: { "s3:prefix": `_control/paused/${tier}` } },
          },
        ]);
      }
    });

    it("holds exactly the agent's statements and the node's own, in order", () => {
      for (const tier of tiers) {
        expect(statements(tier).map((s) => s.Sid)).toEqual([
          "TierQueue",
          "Workspaces",
          "RunningMarkers",
          "ListWorkspaces",
          "Ledger",
          "ListLedger",
          "BudgetPause",
          "ListBudgetPause",
          ...(want.kms ? ["WorkspacesKey"] : []),
          "RegistryToken",
          "PullImages",
          "OwnGroupLifecycle",
          "JobMetrics",
          "AgentLog",
          "SessionManager",
          ...(want.tiers[tier]!.spot ? ["SpotPrices"] : []),
        ]);
      }
    });

    it("reaches S3 only in the workspaces bucket's prefixes (nothing reads the datasets bucket yet)", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      for (const tier of tiers) {
        const s3 = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("s3:")));
        expect(s3.flatMap((s) => list(s.Resource)).sort()).toEqual(
          [
            `${bucketArn}/workspaces/*`,
            `${bucketArn}/workspaces/*/_running/*`,
            bucketArn,
            `${bucketArn}/ledger/*`,
            bucketArn,
            `${bucketArn}/_control/paused/${tier}`,
            bucketArn,
          ].sort(),
        );
      }
    });

    it(
      want.kms
        ? "may use the buckets' KMS key, only through S3 in its region"
        : "needs no KMS key (the buckets use S3-managed keys)",
      () => {
        for (const tier of tiers) {
          const kms = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("kms:")));
          if (!want.kms) {
            expect(kms).toEqual([]);
            expect(plan.ofType(T.key).filter((k) => k.name === "workspaces-key")).toEqual([]);
            continue;
          }
          const key = plan.get(T.key, "workspaces-key");
          expect(kms).toEqual([
            {
              Sid: "WorkspacesKey",
              Effect: "Allow",
              Action: ["kms:Decrypt", "kms:GenerateDataKey"],
              Resource: key.state.arn,
              Condition: { StringEquals: { "kms:ViaService": `s3.${want.region}.amazonaws.com` } },
            },
          ]);
        }
      },
    );

    it("completes lifecycle actions, sets protection and marks itself unhealthy only in its own group", () => {
      for (const tier of tiers) {
        const lifecycle = statements(tier).filter((s) =>
          list(s.Action).some((a) => a.startsWith("autoscaling:")),
        );
        expect(lifecycle).toHaveLength(1);
        expect(lifecycle[0]!.Action).toEqual([
          "autoscaling:SetInstanceProtection",
          "autoscaling:CompleteLifecycleAction",
          "autoscaling:SetInstanceHealth",
        ]);
        const resource = lifecycle[0]!.Resource as string;
        expect(resource).toBe(
          `arn:aws:autoscaling:${want.region}:${MOCK_ACCOUNT_ID}:autoScalingGroup:*:autoScalingGroupName/${groupName(tier)}`,
        );
        for (const other of tiers) {
          expect(arnPattern(resource).test(group(other).state.arn as string)).toBe(other === tier);
        }
      }
    });

    it("looks up spot prices (read-only, on every resource as IAM requires) only where its group runs spot", () => {
      for (const tier of tiers) {
        const ec2 = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("ec2:")));
        expect(ec2).toEqual(
          want.tiers[tier]!.spot
            ? [{ Sid: "SpotPrices", Effect: "Allow", Action: "ec2:DescribeSpotPriceHistory", Resource: "*" }]
            : [],
        );
      }
    });

    it("writes only to its agent's log streams, in a log group kept 30 days", () => {
      for (const tier of tiers) {
        const group = logGroup(tier);
        expect(group.inputs).toEqual({
          name: `/crucible/${environment}/${tier}/agent`,
          retentionInDays: 30,
          tags: { "crucible:component": "fleet", "crucible:tier": tier },
        });
        const logs = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("logs:")));
        expect(logs).toEqual([
          {
            Sid: "AgentLog",
            Effect: "Allow",
            Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
            Resource: `${group.state.arn as string}:*`,
          },
        ]);
      }
    });

    it("pulls from the stack's repositories and has no managed policy", () => {
      const refs = imageRefs();
      for (const tier of tiers) {
        const repositories = list(statement(tier, "PullImages").Resource);
        expect(repositories).toHaveLength(Object.keys(refs).length);
        for (const ref of Object.values(refs)) {
          const [, region, name] = /^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com\/([^@]+)@/.exec(ref)!;
          expect(repositories).toContain(`arn:aws:ecr:${region}:${MOCK_ACCOUNT_ID}:repository/${name}`);
        }
      }
      // Not AmazonSSMManagedInstanceCore: it would let a node read every SSM parameter in the account.
      expect(plan.ofType(T.attachment)).toEqual([]);
    });

    it("opens Session Manager shells, and reads no SSM parameter", () => {
      for (const tier of tiers) {
        expect(statement(tier, "SessionManager")).toEqual({
          Sid: "SessionManager",
          Effect: "Allow",
          Action: [
            "ssm:UpdateInstanceInformation",
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel",
            "ec2messages:AcknowledgeMessage",
            "ec2messages:DeleteMessage",
            "ec2messages:FailMessage",
            "ec2messages:GetEndpoint",
            "ec2messages:GetMessages",
            "ec2messages:SendReply",
          ],
          Resource: "*",
        });
        // The agent config reaches the node as environment (user data): no SSM parameter is read.
        expect(statements(tier).filter((s) => list(s.Action).some((a) => /^ssm:Get/.test(a)))).toEqual([]);
      }
    });
  });

  it("publishes each tier's agent config: its queues, the bucket, the job images and a sandbox with no network", () => {
    const { agent: _agent, ...jobImages } = imageRefs();
    for (const tier of tiers) {
      const parameter = plan.get(T.parameter, `fleet-${tier}-agent-config`);
      expect(parameter.inputs).toMatchObject({
        name: `/crucible/${environment}/${tier}/agent-config`,
        type: "String",
      });
      const value = JSON.parse(parameterValue(parameter.inputs.value)) as Record<string, unknown>;
      expect(value).toMatchObject({
        tier,
        queues: queueField(tier, "url"),
        bucket: workspacesBucket().state.bucket,
        images: jobImages,
        sandbox: {
          networkMode: "none",
          dockerSocketMounted: false,
          privileged: false,
          readonlyRootfs: true,
          capDrop: ["ALL"],
          noNewPrivileges: true,
          gpuCount: GPU_TIERS.has(tier) ? 1 : 0,
        },
      });
    }
  });

  it("exports each tier's group, template, agent config and log group (its queues are in `queues`)", () => {
    const fleet = plan.outputs.fleet as Record<string, Record<string, unknown>>;
    expect(Object.keys(fleet)).toEqual(tiers);
    for (const tier of tiers) {
      expect(fleet[tier]).toMatchObject({
        asgNames: [groupName(tier)],
        launchTemplateId: template(tier).id,
        agentConfigParameter: `/crucible/${environment}/${tier}/agent-config`,
        agentLogGroup: `/crucible/${environment}/${tier}/agent`,
      });
    }
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

describe("fleet settings from config", () => {
  let plan: Plan;
  const devFleet = JSON.parse(readStackConfig("dev")["crucible:fleet"]!) as {
    tiers: Record<string, Record<string, unknown>>;
  };
  beforeAll(async () => {
    plan = await runStack(
      "dev",
      configWith("dev", {
        "crucible:fleet": {
          ...devFleet,
          tiers: {
            ...devFleet.tiers,
            "gpu-small": {
              ...devFleet.tiers["gpu-small"],
              amiParameter: "/crucible/ami/gpu-node",
              rootVolumeGiB: 500,
              spot: { enabled: false, onDemandBase: 0, onDemandPercentage: 100 },
              warmPool: { minSize: 1, maxPreparedCapacity: 1 },
              prewarmSchedule: [{ name: "nightly", recurrence: "0 22 * * *", minSize: 1 }],
            },
          },
        },
      }),
    );
  });

  it("boots from the configured AMI parameter and root size", () => {
    const template = plan.get(T.template, "fleet-gpu-small-node").inputs;
    expect(template.imageId).toBe(mockAmi("/crucible/ami/gpu-node"));
    expect(template.blockDeviceMappings).toMatchObject([{ ebs: { volumeSize: 500 } }]);
    // The other tiers keep the default image.
    expect(plan.get(T.template, "fleet-cpu-small-node").inputs.imageId).toBe(mockAmi(AMI_PARAMETER.cpu));
  });

  it("turns an on-demand tier with a warm pool into a plain template group with that pool", () => {
    const group = plan.get(T.group, "fleet-gpu-small-nodes").inputs;
    expect(group.mixedInstancesPolicy).toBeUndefined();
    expect(group.warmPool).toEqual({
      poolState: "Stopped",
      minSize: 1,
      maxGroupPreparedCapacity: 1,
      instanceReusePolicy: { reuseOnScaleIn: true },
    });
  });

  it("declares a schedule without a time zone when none is given", () => {
    expect(plan.ofType(T.schedule).map((s) => s.inputs)).toEqual([
      {
        scheduledActionName: "crucible-dev-gpu-small-nightly",
        autoscalingGroupName: "crucible-dev-gpu-small",
        recurrence: "0 22 * * *",
        minSize: 1,
        maxSize: -1,
        desiredCapacity: -1,
      },
    ]);
  });
});
