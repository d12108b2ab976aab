/**
 * Every `crucible:*` stack setting, validated in one place before any resource is declared.
 * Components receive the parsed {@link CrucibleConfig}; nothing else reads Pulumi config.
 *
 * - schema.ts: each section's keys, types and ranges
 * - rules.ts: the checks between settings, and the full {@link crucibleConfigSchema}
 * - environments.ts: the defaults of each environment, merged under a stack's own settings
 * - errors.ts: zod's issues as one readable line per problem ({@link ConfigError})
 * - load.ts: reading, merging and validating a stack's settings ({@link loadConfig})
 * - derived.ts: what components read off a validated config beyond its own keys
 */

export {
  ENVIRONMENTS,
  DEFAULT_SUBMITTER_PRIORITIES,
  DEFAULT_DEVICE_PLUGIN_IMAGE,
  WARM_POOL_STATES,
  type WarmPoolState,
  type Environment,
  type TierConfig,
  type AccessProject,
  type CrucibleSettings,
  type CrucibleConfig,
  type EnvironmentsSettings,
  PACKAGE_INDEX_CHOICES,
  normalisePackageName,
} from "./schema";
export { crucibleConfigSchema } from "./rules";
export { ENVIRONMENT_DEFAULTS, deepMerge, defaultRootVolumeGiB } from "./environments";
export { ConfigError } from "./errors";
export { parseCrucibleConfig, loadConfig } from "./load";
export { schedulingPolicy, submitterProjects, nodeDiskGiB, NODE_SYSTEM_GIB, type NodeDisk } from "./derived";
