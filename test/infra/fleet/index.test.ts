import { createHash } from "node:crypto";
import { beforeAll, describe, expect, it } from "vitest";
import { GPU_TIERS, T, declaredFleet } from "../../support/fleet-plan";
import { STACKS, configWith, readStackConfig, runStack, type Plan } from "../../support/harness";

/**
 * The tier fleet component (infra/fleet/index.ts): one per enabled tier, its launch template, Auto Scaling
 * group, agent config and outputs. Its user data, node role and scaling metrics have their own files here.
 */

const AMI_PARAMETER = {
  cpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id",
  gpu: "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id",
};

/** What the mock engine answers for an SSM parameter: an AMI id derived from the parameter's name. */
const mockAmi = (parameter: string) =>
  `ami-${createHash("sha256").update(parameter).digest("hex").slice(0, 17)}`;

/** An SSM parameter's value: the AWS SDK marks it secret, so the engine may hand it over wrapped. */
function parameterValue(value: unknown): string {
  if (typeof value === "string") return value;
  return (value as { value: string }).value;
}

describe.each(STACKS)("%s stack fleet", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const {
    want,
    tiers,
    environment,
    defaultTags,
    groupName,
    queueField,
    group,
    template,
    imageRefs,
    workspacesBucket,
  } = declaredFleet(stack, () => plan);

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
