import type { EnforcementLevel, PolicyPackConfig } from "@pulumi/policy";
import { parseCrucibleConfig, type CrucibleConfig } from "../../infra/config";
import type { PackConfig, PackSetting } from "../../policies/config";
import { cruciblePolicies } from "../../policies/pack";
import { readStackConfig } from "./mock-engine";

/**
 * The `--policy-pack-config` file for a stack, from the stack's own validated `crucible:*` config,
 * so the pack checks against exactly the caps and retention the program was given.
 */

/** The policy that catches a dev config passed to another stack; it never relaxes. */
const GUARD = "policy-config-matches-stack";

/** The pack's settings as the stack's config states them. */
export function packSettings(config: CrucibleConfig): PackConfig {
  return {
    environment: config.environment,
    maxInstancesPerTier: config.fleet.maxInstancesPerTier,
    workspaceRetentionDays: config.workspaces.retentionDays,
  };
}

/**
 * Every policy's entry: its enforcement level and the settings its schema requires. Advisory is
 * only written for dev stacks; the guard stays mandatory so a relaxed file cannot pass elsewhere.
 */
export function policyPackConfig(
  config: CrucibleConfig,
  options: { readonly advisory?: boolean } = {},
): PolicyPackConfig {
  if (options.advisory && config.environment !== "dev") {
    throw new Error(
      `advisory enforcement is only allowed for dev stacks; stack ${config.stack} is environment "${config.environment}" (drop --advisory)`,
    );
  }
  const settings = packSettings(config);
  return Object.fromEntries(
    cruciblePolicies().map((p) => {
      const level: EnforcementLevel = options.advisory && p.name !== GUARD ? "advisory" : "mandatory";
      const required = (p.configSchema?.required ?? []) as PackSetting[];
      return [
        p.name,
        { enforcementLevel: level, ...Object.fromEntries(required.map((k) => [k, settings[k]])) },
      ];
    }),
  );
}

/** A stack's validated config, read from `Pulumi.<stack>.yaml` the way the program reads it. */
export function stackConfig(
  stack: string,
  config: Record<string, string> = readStackConfig(stack),
): CrucibleConfig {
  const prefix = "crucible:";
  const settings = Object.fromEntries(
    Object.entries(config)
      .filter(([k]) => k.startsWith(prefix))
      .map(([k, v]) => [k.slice(prefix.length), v]),
  );
  const region = config["aws:region"];
  if (!region) throw new Error(`Pulumi.${stack}.yaml: aws:region is required (the AWS region to deploy to)`);
  return parseCrucibleConfig(settings, { stack, region });
}
