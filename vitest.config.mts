import { defineConfig } from "vitest/config";

/** Runs alone, after everything else: 200 jobs through killed agents load both cores for minutes. */
const SOAK = "test/runtime/agent/agent-process.test.ts";

export default defineConfig({
  test: {
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 60_000,
    hookTimeout: 600_000,
    // Docker-backed suites share one engine with two cores: keep files from starving each other.
    maxWorkers: 2,
    reporters: ["default"],
    projects: [
      {
        extends: true,
        test: { name: "suite", include: ["test/**/*.test.ts"], exclude: [SOAK], sequence: { groupOrder: 0 } },
      },
      { extends: true, test: { name: "soak", include: [SOAK], sequence: { groupOrder: 1 } } },
    ],
  },
});
