import { vi } from "vitest";
import { ConfigError, parseCrucibleConfig } from "../../infra/config";
import { readStackConfig, runProgram, type Plan } from "../../scripts/lib/mock-engine";

export { STACKS, readStackConfig, type Plan, type DeclaredResource } from "../../scripts/lib/mock-engine";

/**
 * The real program for `stack` under the mock engine, with `Pulumi.<stack>.yaml` or with `config`
 * replacing it. Each run re-evaluates the program's modules so stacks do not share state.
 */
export function runStack(stack: string, config?: Record<string, string>): Promise<Plan> {
  return runProgram(stack, {
    config: config ?? readStackConfig(stack),
    load: async () => {
      vi.resetModules();
      return import("../../infra/index.js");
    },
  });
}

/** A stack's config file with some `crucible:*` keys replaced (objects given as values, not JSON). */
export function configWith(stack: string, overrides: Record<string, unknown>): Record<string, string> {
  const config = readStackConfig(stack);
  for (const [key, value] of Object.entries(overrides)) {
    if (value === undefined) delete config[key];
    else config[key] = typeof value === "string" ? value : JSON.stringify(value);
  }
  return config;
}

/**
 * What config validation reports for a stack's file with some keys replaced (as {@link configWith}
 * takes them): one line per problem, empty when the result is valid. No program runs, so it is cheap.
 */
export function configProblems(stack: string, overrides: Record<string, unknown>): string[] {
  const config = configWith(stack, overrides);
  const settings = Object.fromEntries(
    Object.entries(config)
      .filter(([k]) => k.startsWith("crucible:"))
      .map(([k, v]) => [k.slice("crucible:".length), v]),
  );
  try {
    parseCrucibleConfig(settings, { stack, region: config["aws:region"] ?? "us-east-1" });
  } catch (err) {
    if (err instanceof ConfigError) return [...err.problems];
    throw err;
  }
  return [];
}
