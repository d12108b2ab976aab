import * as aws from "@pulumi/aws";
import type { PolicyResource, ResourceValidationPolicy, StackValidationPolicy } from "@pulumi/policy";
import { COST_TAGS, TIERS, isGpuInstanceType, isTierName } from "@crucible/runtime/catalog";
import { UNKNOWN, asList, known, ofTypes, providerDefaultTags, tagMap, tierTag, typeOf } from "./lib";

/** Cost: finance can attribute every dollar, and a stack that can run GPUs has a budget that tells someone. */

/** Tags every taggable resource carries (the tier tag only where a resource belongs to one). */
export const REQUIRED_COST_TAGS = [
  COST_TAGS.environment,
  COST_TAGS.owner,
  COST_TAGS.costCenter,
  COST_TAGS.component,
] as const;

const taggable = new Map<string, boolean>();

/**
 * Whether resources of an `aws:` type take tags, read from the resource class @pulumi/aws generated
 * for it (it copies `args.tags` into its inputs), so the list follows the provider version.
 */
export function isTaggable(type: string): boolean {
  const cached = taggable.get(type);
  if (cached !== undefined) return cached;
  const [pkg, mod, cls] = type.split(":");
  const module = (mod ?? "").split("/")[0] ?? "";
  let result = false;
  if (pkg === "aws" && module !== "index" && cls) {
    const ns = (aws as unknown as Record<string, Record<string, unknown> | undefined>)[module];
    const ctor = ns?.[cls];
    result =
      typeof ctor === "function" &&
      (ctor as { __pulumiType?: unknown }).__pulumiType === type &&
      /resourceInputs\["tags"\] = args/.test(Function.prototype.toString.call(ctor));
  }
  taggable.set(type, result);
  return result;
}

/** Auto Scaling groups do not receive the provider's default tags; they must carry their own, propagated. */
const ASG_TYPE = typeOf(aws.autoscaling.Group);

export function costAllocationTags(): ResourceValidationPolicy {
  return {
    name: "cost-allocation-tags",
    description: `Every taggable AWS resource carries the cost allocation tags (${REQUIRED_COST_TAGS.join(", ")}).`,
    enforcementLevel: "mandatory",
    validateResource: (args, report) => {
      if (!isTaggable(args.type)) args.notApplicable(`${args.type} takes no tags`);
      const own = tagMap(args.props.tags);
      if (args.type === ASG_TYPE) {
        const missing = REQUIRED_COST_TAGS.filter((k) => own[k] === undefined);
        const unpropagated = asList(args.props.tags as { key?: string; propagateAtLaunch?: boolean }[])
          .filter(
            (t) =>
              (REQUIRED_COST_TAGS as readonly (string | undefined)[]).includes(t.key) &&
              t.propagateAtLaunch !== true,
          )
          .map((t) => t.key);
        if (missing.length > 0) {
          report(
            `${args.name}: add tags ${missing.join(", ")} with propagateAtLaunch: true (groups do not get the provider's default tags).`,
          );
        }
        if (unpropagated.length > 0)
          report(`${args.name}: set propagateAtLaunch: true on tags ${unpropagated.join(", ")}.`);
        return;
      }
      // Older CLIs send no provider: then only the tag each component sets itself can be checked.
      const required = args.provider ? REQUIRED_COST_TAGS : [COST_TAGS.component];
      const tags = { ...providerDefaultTags(args.provider), ...own };
      const missing = required.filter((k) => !tags[k]);
      if (missing.length > 0) {
        report(
          `${args.name} (${args.type}) lacks cost allocation tags ${missing.join(", ")}: create it with the stack's provider ` +
            `(whose defaultTags carry environment, owner and cost center) and tags from componentTags("<component>", tier?).`,
        );
      }
    },
  };
}

/** GPU tiers a stack runs, from its nodes' tier tags and instance types. */
function gpuTiersIn(resources: readonly PolicyResource[]): string[] {
  const found = new Set<string>();
  for (const r of resources) {
    const tier = tierTag(r.props);
    if (typeof tier === "string" && isTierName(tier) && TIERS[tier].gpu) found.add(tier);
    const types = known(() => [
      r.props.instanceType as unknown,
      ...asList(
        (
          r.props.mixedInstancesPolicy as
            { launchTemplate?: { overrides?: { instanceType?: unknown }[] } } | undefined
        )?.launchTemplate?.overrides,
      ).map((o) => o.instanceType),
    ]);
    if (types !== UNKNOWN && types.some((t) => typeof t === "string" && isGpuInstanceType(t))) {
      found.add(typeof tier === "string" ? tier : `GPU instances of ${r.name}`);
    }
  }
  return [...found];
}

interface BudgetNotification {
  subscriberEmailAddresses?: string[];
  subscriberSnsTopicArns?: string[];
}

export function gpuStacksHaveBudgets(): StackValidationPolicy {
  return {
    name: "gpu-stacks-have-budgets",
    description:
      "A stack that runs GPU tiers declares a budget with at least one notification that has a subscriber.",
    enforcementLevel: "mandatory",
    validateStack: (args, report) => {
      const gpu = gpuTiersIn(args.resources);
      if (gpu.length === 0) args.notApplicable("the stack runs no GPU tier");
      const notified = ofTypes(args.resources, [aws.budgets.Budget]).some((b) => {
        const ok = known(() =>
          asList(b.props.notifications as BudgetNotification[]).some(
            (n) => asList(n.subscriberEmailAddresses).length + asList(n.subscriberSnsTopicArns).length > 0,
          ),
        );
        return ok === UNKNOWN || ok;
      });
      if (!notified) {
        report(
          `the stack runs GPU tiers (${gpu.join(", ")}) but declares no aws.budgets.Budget with a notification that has a subscriber: ` +
            `add a budget with notifications sent to the notifications topic or an email address.`,
        );
      }
    },
  };
}
