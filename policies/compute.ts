import * as aws from "@pulumi/aws";
import { validateResourceOfType, type ResourceValidationPolicy } from "@pulumi/policy";
import { COST_TAGS, TIER_NAMES, TIERS, isGpuInstanceType, isTierName } from "@crucible/runtime/catalog";
import { configSchema, readSettings } from "./config";
import { UNKNOWN, asList, tierTag } from "./lib";

/** Nodes: IMDSv2 only, encrypted disks, no public addresses, the tier's instance types, bounded groups. */

/** Largest hop limit that still lets the agent's container (host network) reach IMDS, and nothing further. */
export const MAX_IMDS_HOP_LIMIT = 2;

export function launchTemplatesRequireImdsv2(): ResourceValidationPolicy {
  return {
    name: "launch-templates-require-imdsv2",
    description: `Launch templates require IMDSv2 tokens with a hop limit of at most ${MAX_IMDS_HOP_LIMIT}.`,
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.ec2.LaunchTemplate, (lt, args, report) => {
      const md = lt.metadataOptions;
      if (md?.httpTokens !== "required")
        report(`${args.name}: set metadataOptions.httpTokens to "required".`);
      const hops = md?.httpPutResponseHopLimit;
      if (hops !== undefined && hops > MAX_IMDS_HOP_LIMIT) {
        report(
          `${args.name}: set metadataOptions.httpPutResponseHopLimit to at most ${MAX_IMDS_HOP_LIMIT} (got ${hops}).`,
        );
      }
    }),
  };
}

/** Launch templates spell booleans as strings ("true"); other resources use booleans. */
const isTrue = (v: unknown) => v === true || v === "true";

export function ebsVolumesEncrypted(): ResourceValidationPolicy {
  return {
    name: "ebs-volumes-encrypted",
    description: "Every EBS volume a node or volume resource declares is encrypted.",
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.ec2.LaunchTemplate, (lt, args, report) => {
        const ebs = asList(lt.blockDeviceMappings).filter((m) => m.ebs !== undefined);
        if (ebs.length === 0) {
          report(
            `${args.name}: declare the root volume in blockDeviceMappings with ebs.encrypted "true" (the AMI's default volume may be unencrypted).`,
          );
        }
        for (const m of ebs) {
          if (!isTrue(m.ebs?.encrypted))
            report(`${args.name}: set ebs.encrypted to "true" on ${m.deviceName ?? "every block device"}.`);
        }
      }),
      validateResourceOfType(aws.ec2.Instance, (i, args, report) => {
        if (!isTrue(i.rootBlockDevice?.encrypted))
          report(`${args.name}: set rootBlockDevice.encrypted to true.`);
        for (const d of asList(i.ebsBlockDevices)) {
          if (!isTrue(d.encrypted)) report(`${args.name}: set encrypted to true on ${d.deviceName}.`);
        }
      }),
      validateResourceOfType(aws.ebs.Volume, (v, args, report) => {
        if (!isTrue(v.encrypted)) report(`${args.name}: set encrypted to true.`);
      }),
    ],
  };
}

export function nodesHaveNoPublicIp(): ResourceValidationPolicy {
  return {
    name: "nodes-have-no-public-ip",
    description: "Launch templates and instances never ask for a public IP address.",
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.ec2.LaunchTemplate, (lt, args, report) => {
        asList(lt.networkInterfaces).forEach((ni, i) => {
          if (isTrue(ni.associatePublicIpAddress)) {
            report(
              `${args.name}: set networkInterfaces[${i}].associatePublicIpAddress to "false" (nodes sit in private subnets).`,
            );
          }
        });
      }),
      validateResourceOfType(aws.ec2.Instance, (inst, args, report) => {
        if (isTrue(inst.associatePublicIpAddress))
          report(`${args.name}: set associatePublicIpAddress to false.`);
      }),
    ],
  };
}

/** Checks a node's instance types against the allow-list of the tier its `crucible:tier` tag names. */
function checkTierTypes(
  name: string,
  tier: string | undefined | typeof UNKNOWN,
  types: readonly (string | undefined)[],
  report: (m: string) => void,
): void {
  if (tier === UNKNOWN || types.length === 0) return;
  if (tier === undefined) {
    report(`${name}: tag it ${COST_TAGS.tier}=<tier> so its instance types can be checked against the tier.`);
    return;
  }
  if (!isTierName(tier)) {
    report(`${name}: ${COST_TAGS.tier} is "${tier}", not a tier (${TIER_NAMES.join(", ")}).`);
    return;
  }
  const allowed = TIERS[tier].allowedInstanceTypes;
  for (const type of types) {
    if (type === undefined) {
      report(
        `${name}: name explicit instance types (attribute-based selection cannot be checked against ${tier}).`,
      );
    } else if (!allowed.includes(type)) {
      report(`${name}: instance type ${type} is not allowed for ${tier}; use one of ${allowed.join(", ")}.`);
    }
  }
}

export function instanceTypesWithinTier(): ResourceValidationPolicy {
  return {
    name: "instance-types-within-tier",
    description: "Nodes use only the instance types their tier (the crucible:tier tag) allows.",
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.ec2.LaunchTemplate, (lt, args, report) =>
        checkTierTypes(args.name, tierTag(args.props), lt.instanceType ? [lt.instanceType] : [], report),
      ),
      validateResourceOfType(aws.autoscaling.Group, (asg, args, report) => {
        const overrides = asList(asg.mixedInstancesPolicy?.launchTemplate?.overrides);
        checkTierTypes(
          args.name,
          tierTag(args.props),
          overrides.map((o) => o.instanceType),
          report,
        );
      }),
    ],
  };
}

export function asgMaxWithinCap(): ResourceValidationPolicy {
  const name = "asg-max-within-cap";
  return {
    name,
    description: "Auto Scaling groups stay within the environment's cap (maxInstancesPerTier).",
    enforcementLevel: "mandatory",
    configSchema: configSchema("maxInstancesPerTier"),
    validateResource: validateResourceOfType(aws.autoscaling.Group, (asg, args, report) => {
      const { maxInstancesPerTier: cap } = readSettings(args, name, "maxInstancesPerTier");
      if (asg.maxSize > cap) {
        report(
          `${args.name}: maxSize ${asg.maxSize} exceeds the environment's cap of ${cap}; lower it to at most ${cap}.`,
        );
      }
    }),
  };
}

export function gpuAsgsUseLaunchTemplates(): ResourceValidationPolicy {
  return {
    name: "gpu-asgs-use-launch-templates",
    description: "GPU Auto Scaling groups launch from launch templates, never launch configurations.",
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.autoscaling.Group, (asg, args, report) => {
        const tier = tierTag(args.props);
        const gpu = typeof tier === "string" && isTierName(tier) && TIERS[tier].gpu !== undefined;
        if (gpu && asg.launchConfiguration) {
          report(
            `${args.name}: a ${String(tier)} group must use launchTemplate or mixedInstancesPolicy, not launchConfiguration.`,
          );
        }
      }),
      validateResourceOfType(aws.ec2.LaunchConfiguration, (lc, args, report) => {
        if (isGpuInstanceType(lc.instanceType)) {
          report(
            `${args.name}: ${lc.instanceType} is a GPU type; replace the launch configuration with an aws.ec2.LaunchTemplate.`,
          );
        }
      }),
    ],
  };
}
