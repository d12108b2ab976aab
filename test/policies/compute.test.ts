import { describe, expect, it } from "vitest";
import {
  asgMaxWithinCap,
  ebsVolumesEncrypted,
  gpuAsgsUseLaunchTemplates,
  instanceTypesWithinTier,
  launchTemplatesRequireImdsv2,
  nodesHaveNoPublicIp,
} from "../../policies/compute";
import { messages, validateResource, type TestResource } from "./run-policy";

const LT = "aws:ec2/launchTemplate:LaunchTemplate";
const ASG = "aws:autoscaling/group:Group";

const launchTemplate = (props: Record<string, unknown> = {}): TestResource => ({
  type: LT,
  name: "fleet-gpu-small",
  props: {
    instanceType: "g4dn.xlarge",
    metadataOptions: { httpTokens: "required", httpPutResponseHopLimit: 2, httpEndpoint: "enabled" },
    blockDeviceMappings: [{ deviceName: "/dev/xvda", ebs: { encrypted: "true", volumeSize: 200 } }],
    networkInterfaces: [{ associatePublicIpAddress: "false" }],
    tags: { "crucible:tier": "gpu-small", "crucible:component": "fleet" },
    ...props,
  },
});
const tierTags = (tier: string) => [
  { key: "crucible:tier", value: tier, propagateAtLaunch: true },
  { key: "crucible:component", value: "fleet", propagateAtLaunch: true },
];
const asg = (props: Record<string, unknown> = {}): TestResource => ({
  type: ASG,
  name: "fleet-gpu-small",
  props: {
    maxSize: 4,
    minSize: 0,
    mixedInstancesPolicy: {
      launchTemplate: {
        launchTemplateSpecification: { launchTemplateId: "lt-1", version: "$Latest" },
        overrides: [{ instanceType: "g4dn.xlarge" }, { instanceType: "g5.xlarge" }],
      },
    },
    tags: tierTags("gpu-small"),
    ...props,
  },
});

describe("launch-templates-require-imdsv2", () => {
  const policy = launchTemplatesRequireImdsv2();

  it("passes tokens required with a hop limit of 2", async () => {
    expect((await validateResource(policy, launchTemplate())).violations).toEqual([]);
  });

  it("fails optional tokens and a hop limit of 3", async () => {
    const o = await validateResource(
      policy,
      launchTemplate({ metadataOptions: { httpTokens: "optional", httpPutResponseHopLimit: 3 } }),
    );
    expect(messages(o)).toEqual([
      'fleet-gpu-small: set metadataOptions.httpTokens to "required".',
      "fleet-gpu-small: set metadataOptions.httpPutResponseHopLimit to at most 2 (got 3).",
    ]);
  });

  it("fails a template without metadata options", async () => {
    const o = await validateResource(policy, launchTemplate({ metadataOptions: undefined }));
    expect(messages(o)).toEqual(['fleet-gpu-small: set metadataOptions.httpTokens to "required".']);
  });
});

describe("ebs-volumes-encrypted", () => {
  const policy = ebsVolumesEncrypted();

  it("passes an encrypted root volume", async () => {
    expect((await validateResource(policy, launchTemplate())).violations).toEqual([]);
  });

  it("fails an unencrypted mapping", async () => {
    const o = await validateResource(
      policy,
      launchTemplate({ blockDeviceMappings: [{ deviceName: "/dev/xvda", ebs: { volumeSize: 200 } }] }),
    );
    expect(messages(o)).toEqual(['fleet-gpu-small: set ebs.encrypted to "true" on /dev/xvda.']);
  });

  it("fails a template that leaves the volume to the AMI", async () => {
    const o = await validateResource(policy, launchTemplate({ blockDeviceMappings: undefined }));
    expect(messages(o)[0]).toMatch(/^fleet-gpu-small: declare the root volume in blockDeviceMappings/);
  });

  it("checks standalone volumes", async () => {
    const vol = (encrypted?: boolean): TestResource => ({
      type: "aws:ebs/volume:Volume",
      name: "scratch",
      props: { availabilityZone: "us-east-1a", size: 10, encrypted },
    });
    expect((await validateResource(policy, vol(true))).violations).toEqual([]);
    expect(messages(await validateResource(policy, vol()))).toEqual(["scratch: set encrypted to true."]);
  });
});

describe("nodes-have-no-public-ip", () => {
  const policy = nodesHaveNoPublicIp();

  it("passes a private template", async () => {
    expect((await validateResource(policy, launchTemplate())).violations).toEqual([]);
  });

  it("fails a template that asks for a public address", async () => {
    const o = await validateResource(
      policy,
      launchTemplate({ networkInterfaces: [{ associatePublicIpAddress: "true" }] }),
    );
    expect(messages(o)).toEqual([
      'fleet-gpu-small: set networkInterfaces[0].associatePublicIpAddress to "false" (nodes sit in private subnets).',
    ]);
  });
});

describe("instance-types-within-tier", () => {
  const policy = instanceTypesWithinTier();

  it("passes a group whose overrides are in the tier's allow-list", async () => {
    expect((await validateResource(policy, asg())).violations).toEqual([]);
    expect((await validateResource(policy, launchTemplate())).violations).toEqual([]);
  });

  it("fails a type outside the tier's allow-list, naming the allowed ones", async () => {
    const o = await validateResource(policy, launchTemplate({ instanceType: "g5.2xlarge" }));
    expect(messages(o)).toEqual([
      "fleet-gpu-small: instance type g5.2xlarge is not allowed for gpu-small; use one of g4dn.xlarge, g4dn.2xlarge, g5.xlarge, g6.xlarge.",
    ]);
  });

  it("fails a node without a tier tag, and a tag naming no tier", async () => {
    expect(messages(await validateResource(policy, launchTemplate({ tags: {} })))).toEqual([
      "fleet-gpu-small: tag it crucible:tier=<tier> so its instance types can be checked against the tier.",
    ]);
    expect(messages(await validateResource(policy, asg({ tags: tierTags("gpu-huge") })))).toEqual([
      'fleet-gpu-small: crucible:tier is "gpu-huge", not a tier (cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large).',
    ]);
  });

  it("reads the tier from the tags a template gives its instances", async () => {
    const o = await validateResource(
      policy,
      launchTemplate({
        tags: {},
        tagSpecifications: [{ resourceType: "instance", tags: { "crucible:tier": "cpu-small" } }],
        instanceType: "m6i.xlarge",
      }),
    );
    expect(o.violations).toEqual([]);
  });
});

describe("asg-max-within-cap", () => {
  const policy = asgMaxWithinCap();

  it("passes a group within the cap", async () => {
    expect((await validateResource(policy, asg(), { maxInstancesPerTier: 4 })).violations).toEqual([]);
  });

  it("fails a group above the cap", async () => {
    const o = await validateResource(policy, asg({ maxSize: 5 }), { maxInstancesPerTier: 4 });
    expect(messages(o)).toEqual([
      "fleet-gpu-small: maxSize 5 exceeds the environment's cap of 4; lower it to at most 4.",
    ]);
  });

  it("refuses to run without the cap in its config", async () => {
    await expect(validateResource(policy, asg(), { maxInstancesPerTier: 0 })).rejects.toThrow(
      "policy asg-max-within-cap: config maxInstancesPerTier must be a whole number of at least 1, got 0",
    );
  });
});

describe("gpu-asgs-use-launch-templates", () => {
  const policy = gpuAsgsUseLaunchTemplates();

  it("passes a GPU group on a launch template", async () => {
    expect((await validateResource(policy, asg())).violations).toEqual([]);
  });

  it("fails a GPU group on a launch configuration, and a GPU launch configuration", async () => {
    const o = await validateResource(
      policy,
      asg({ mixedInstancesPolicy: undefined, launchConfiguration: "lc-gpu" }),
    );
    expect(messages(o)).toEqual([
      "fleet-gpu-small: a gpu-small group must use launchTemplate or mixedInstancesPolicy, not launchConfiguration.",
    ]);
    const lc = await validateResource(policy, {
      type: "aws:ec2/launchConfiguration:LaunchConfiguration",
      name: "lc-gpu",
      props: { imageId: "ami-1", instanceType: "g4dn.xlarge" },
    });
    expect(messages(lc)).toEqual([
      "lc-gpu: g4dn.xlarge is a GPU type; replace the launch configuration with an aws.ec2.LaunchTemplate.",
    ]);
  });
});
