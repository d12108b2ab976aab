import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/global-setup.ts"],
    testTimeout: 60_000,
    hookTimeout: 600_000,
    // Docker-backed suites share one engine with two cores: keep files from starving each other.
    maxWorkers: 2,
    reporters: ["default"],
  },
});
