import { vi } from "vitest";
import { readStackConfig, runProgram, type Plan } from "../scripts/lib/mock-engine";

export { STACKS, readStackConfig, type Plan, type DeclaredResource } from "../scripts/lib/mock-engine";

/**
 * The real program for `stack` under the mock engine, with `Pulumi.<stack>.yaml` or with `config`
 * replacing it. Each run re-evaluates the program's modules so stacks do not share state.
 */
export function runStack(stack: string, config?: Record<string, string>): Promise<Plan> {
  return runProgram(stack, {
    config: config ?? readStackConfig(stack),
    load: async () => {
      vi.resetModules();
      return import("../infra/index");
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
