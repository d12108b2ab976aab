import * as aws from "@pulumi/aws";
import { COST_TAGS } from "@crucible/runtime/catalog";
import type { CrucibleConfig } from "./config";

/** Tag keys finance activates as cost allocation tags (defined in the runtime's catalog, which the policy pack shares). */
export { COST_TAGS };

/** Tags that identify a component's resources (and its tier's, where it has one) on the bill. */
export function componentTags(component: string, tier?: string): Record<string, string> {
  return { [COST_TAGS.component]: component, ...(tier ? { [COST_TAGS.tier]: tier } : {}) };
}

/**
 * The AWS provider every resource uses: the stack's region, and default tags so every taggable
 * resource carries the environment, owner and cost center without each component repeating them.
 */
export function awsProvider(config: CrucibleConfig): aws.Provider {
  return new aws.Provider("aws", {
    region: config.region as aws.Region,
    defaultTags: { tags: stackTags(config) },
  });
}

/**
 * The provider's default tags. Resources whose tags the provider cannot default (an Auto Scaling group's
 * tags are blocks that propagate to instances) repeat them from here.
 */
export function stackTags(config: Pick<CrucibleConfig, "environment" | "owner" | "costCenter">) {
  return {
    [COST_TAGS.environment]: config.environment,
    [COST_TAGS.owner]: config.owner,
    [COST_TAGS.costCenter]: config.costCenter,
  };
}
