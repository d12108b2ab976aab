import type { PolicyConfigSchema, StackValidationPolicy } from "@pulumi/policy";
import { known, providerDefaultTags, tagMap } from "./lib";
import { COST_TAGS } from "@crucible/runtime/catalog";

/**
 * The pack's settings. CrossGuard only configures policies one by one, so every policy that needs a
 * setting declares it in its `configSchema` and CI writes the same values under each policy's name:
 * `npm run policy-config -- <stack> > policy-config.json` renders the file from the stack's own
 * validated `crucible:*` config, then `pulumi preview --policy-pack policies --policy-pack-config
 * policy-config.json`. Enforcement is mandatory unless that file says otherwise, and the script only
 * writes `advisory` for a dev stack.
 */
export interface PackConfig {
  /** The environment of the stack under review. */
  readonly environment: (typeof ENVIRONMENTS)[number];
  /** The environment's cap on any one Auto Scaling group (`crucible:fleet.maxInstancesPerTier`). */
  readonly maxInstancesPerTier: number;
  /** Days after which job files must expire (`crucible:workspaces.retentionDays`). */
  readonly workspaceRetentionDays: number;
}
export type PackSetting = keyof PackConfig;

export const ENVIRONMENTS = ["dev", "staging", "prod"] as const;

const SETTINGS: Record<PackSetting, PolicyConfigSchema["properties"][string]> = {
  environment: {
    type: "string",
    enum: [...ENVIRONMENTS],
    description: "Environment of the stack under review (its crucible:environment).",
  },
  maxInstancesPerTier: {
    type: "integer",
    minimum: 1,
    description: "Largest maxSize any Auto Scaling group may have (crucible:fleet.maxInstancesPerTier).",
  },
  workspaceRetentionDays: {
    type: "integer",
    minimum: 1,
    description: "Days after which job files must expire (crucible:workspaces.retentionDays).",
  },
};

/** The config schema of a policy that reads the given settings; all of them are required. */
export function configSchema(...settings: PackSetting[]): PolicyConfigSchema {
  return {
    properties: Object.fromEntries(settings.map((s) => [s, SETTINGS[s]])),
    required: settings,
  };
}

/**
 * The settings a policy reads, checked again here: a pack run without its config file (or with a
 * hand-edited one) fails with the setting, the value and the fix instead of checking against nothing.
 */
export function readSettings<K extends PackSetting>(
  args: { getConfig<T extends object>(): T },
  policy: string,
  ...settings: K[]
): Pick<PackConfig, K> {
  const raw = args.getConfig<Record<string, unknown>>();
  const fix = "write the file with `npm run policy-config -- <stack>` and pass it with --policy-pack-config";
  for (const s of settings) {
    const value = raw[s];
    const ok =
      s === "environment"
        ? (ENVIRONMENTS as readonly unknown[]).includes(value)
        : typeof value === "number" && Number.isInteger(value) && value >= 1;
    if (!ok) {
      const allowed =
        s === "environment" ? `one of ${ENVIRONMENTS.join(", ")}` : "a whole number of at least 1";
      throw new Error(
        `policy ${policy}: config ${s} must be ${allowed}, got ${JSON.stringify(value) ?? "nothing"}; ${fix}`,
      );
    }
  }
  return Object.fromEntries(settings.map((s) => [s, raw[s]])) as Pick<PackConfig, K>;
}

/**
 * The config names the stack's environment, and advisory enforcement is only written for dev: this
 * policy catches a dev (relaxed) config passed to a staging or prod stack, by comparing the config
 * with the `crucible:environment` tag the stack's provider and resources carry.
 */
export function policyConfigMatchesStack(): StackValidationPolicy {
  const name = "policy-config-matches-stack";
  return {
    name,
    description: "The policy pack's config names the environment the stack's resources are tagged with.",
    enforcementLevel: "mandatory",
    configSchema: configSchema("environment"),
    validateStack: (args, report) => {
      const { environment } = readSettings(args, name, "environment");
      const seen = new Map<string, string>();
      for (const r of args.resources) {
        const tagged = known(
          () =>
            tagMap(r.props.tags)[COST_TAGS.environment] ??
            providerDefaultTags(r.provider)[COST_TAGS.environment],
        );
        const fromProvider = r.type.startsWith("pulumi:providers:aws")
          ? providerDefaultTags(r)[COST_TAGS.environment]
          : undefined;
        for (const env of [tagged, fromProvider]) {
          if (typeof env === "string" && !seen.has(env)) seen.set(env, r.urn);
        }
      }
      for (const [env, urn] of seen) {
        if (env !== environment) {
          report(
            `the policy config says environment "${environment}" but ${urn} is tagged ${COST_TAGS.environment}=${env}: ` +
              `regenerate the config for this stack with \`npm run policy-config -- <stack>\``,
            urn,
          );
        }
      }
    },
  };
}
