// How the bill is read: the tags finance attributes costs by, and the month AWS bills by.

/** Tag keys finance activates as cost allocation tags: the program sets them, the policy pack requires them. */
export const COST_TAGS = {
  environment: "crucible:environment",
  owner: "crucible:owner",
  costCenter: "crucible:cost-center",
  component: "crucible:component",
  tier: "crucible:tier",
} as const;

/** Hours in the average month AWS bills by (8760 / 12). */
export const HOURS_PER_MONTH = 730;
