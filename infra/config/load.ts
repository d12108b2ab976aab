import * as pulumi from "@pulumi/pulumi";
import { ENVIRONMENT_DEFAULTS, deepMerge } from "./environments";
import { ConfigError, formatIssue } from "./errors";
import { crucibleConfigSchema } from "./rules";
import { ENVIRONMENTS, type CrucibleConfig, type Environment } from "./schema";

/**
 * Reading a stack's configuration: its `crucible:*` values from the Pulumi engine (or any caller's
 * settings, for scripts and tests), decoded, merged over its environment's defaults and validated.
 */

/** Reads a raw `crucible:*` value: structured values arrive from Pulumi as JSON text. */
function decodeValue(raw: unknown): unknown {
  if (typeof raw !== "string") return raw;
  const trimmed = raw.trim();
  if (!/^[[{]/.test(trimmed)) return raw;
  try {
    return JSON.parse(trimmed);
  } catch {
    return raw;
  }
}

/**
 * Validates a stack's `crucible:*` settings (keys without the namespace) over the defaults of its
 * environment. The environment is `environment` when given, else the stack's name.
 */
export function parseCrucibleConfig(
  settings: Readonly<Record<string, unknown>>,
  context: { readonly stack: string; readonly region: string },
): CrucibleConfig {
  const decoded = Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, decodeValue(v)]));
  const environment = decoded.environment ?? context.stack;
  const defaults = (ENVIRONMENTS as readonly unknown[]).includes(environment)
    ? ENVIRONMENT_DEFAULTS[environment as Environment]
    : {};
  const result = crucibleConfigSchema.safeParse(deepMerge(defaults, { ...decoded, environment }), {
    reportInput: true,
  });
  if (!result.success)
    throw new ConfigError(result.error.issues.flatMap((issue) => formatIssue(issue, crucibleConfigSchema)));
  return { ...result.data, stack: context.stack, region: context.region };
}

/** The stack's configuration, read once from the Pulumi engine and validated. */
export function loadConfig(): CrucibleConfig {
  const prefix = "crucible:";
  const settings = Object.fromEntries(
    Object.entries(pulumi.runtime.allConfig())
      .filter(([k]) => k.startsWith(prefix))
      .map(([k, v]) => [k.slice(prefix.length), v]),
  );
  const region = new pulumi.Config("aws").get("region");
  if (!region) throw new ConfigError(["aws:region is required (the AWS region to deploy to), got nothing"]);
  return parseCrucibleConfig(settings, { stack: pulumi.getStack(), region });
}
