import { describe, expect, it } from "vitest";
import { parseCrucibleConfig } from "../../../infra/config";
import { STACKS, configWith, readStackConfig, runStack } from "../../support/harness";
import { settingsOf } from "../../support/crucible-config";

/**
 * Reading a stack's settings (infra/config/load.ts): each stack file parses, and the program refuses bad
 * config before declaring anything.
 */

describe("stack config files", () => {
  it.each(STACKS)("%s parses and names its own environment", (stack) => {
    const config = readStackConfig(stack);
    const parsed = parseCrucibleConfig(settingsOf(config), { stack, region: config["aws:region"]! });
    expect(parsed.environment).toBe(stack);
  });
});

describe("the program fails before declaring anything on bad config", () => {
  it("rejects the stack with every problem listed", async () => {
    const config = configWith("dev", { "crucible:budgets": { monthlyLimitUsd: 0 }, "crucible:nat": "none" });
    await expect(runStack("dev", config)).rejects.toThrow(
      /crucible:budgets.monthlyLimitUsd must be a positive number, got 0\n\s+crucible:nat is not a known setting/,
    );
  });
});
