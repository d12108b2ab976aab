import { ESLint } from "eslint";
import tseslint from "typescript-eslint";
import { describe, expect, it } from "vitest";

/**
 * The dependency rules of eslint.config.mjs, on imports in each direction: a wrong one fails `npm run lint`
 * with the message of the rule it breaks, a right one passes. The code is linted as if it were the file
 * named, so each part's rules apply. Type-aware rules are off: the files are not on disk, so no
 * TypeScript project holds them, and the dependency rules read only the import's text.
 */
const eslint = new ESLint({
  cwd: process.cwd(),
  overrideConfig: [{ files: ["**/*.ts"], ...tseslint.configs.disableTypeChecked }],
});

async function restrictedImports(filePath: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(`${code}\nexport const used = [x];\n`, { filePath });
  expect(result!.messages.filter((m) => m.fatal)).toEqual([]);
  return result!.messages.filter((m) => m.ruleId === "no-restricted-imports").map((m) => m.message);
}

describe("dependency direction", () => {
  it.each([
    ["runtime/src/bad.ts", 'import * as x from "@pulumi/pulumi";', "runtime may not import Pulumi"],
    [
      "runtime/src/bad.ts",
      'import { TierFleet as x } from "../../infra/fleet";',
      "runtime may not import infra",
    ],
    [
      "policies/bad.ts",
      'import { COST_TAGS as x } from "../infra/providers";',
      "policies may not import infra",
    ],
    [
      "policies/bad.ts",
      'import { JobStore as x } from "../runtime/src/store/job-store";',
      "policies may import only the runtime's catalog (@crucible/runtime/catalog)",
    ],
    [
      "policies/bad.ts",
      'import { main as x } from "@crucible/runtime";',
      "policies may import only the runtime's catalog (@crucible/runtime/catalog)",
    ],
    [
      "infra/bad.ts",
      'import { JobStore as x } from "../runtime/src/store/job-store";',
      "infra may import only the runtime's catalog (@crucible/runtime/catalog) and job contract",
    ],
    [
      "infra/bad.ts",
      'import { prepareJob as x } from "../runtime/src/job/job-spec";',
      "infra may import only the runtime's catalog (@crucible/runtime/catalog) and job contract",
    ],
    [
      "infra/kubernetes/bad.ts",
      'import { KUBERNETES as x } from "../../runtime/src/catalog/kubernetes-names";',
      "infra may import only the runtime's catalog (@crucible/runtime/catalog) and job contract",
    ],
    [
      "runtime/src/console/ui/pages/bad.ts",
      'import { JobStore as x } from "../../../store/job-store";',
      "the console's page (runtime/src/console/ui/) runs in a browser",
    ],
    [
      "runtime/src/console/ui/bad.ts",
      'import { ConsoleApi as x } from "../api.js";',
      "the console's page (runtime/src/console/ui/) runs in a browser",
    ],
    [
      "runtime/src/console/ui/bad.ts",
      'import { readFile as x } from "node:fs/promises";',
      "the console's page (runtime/src/console/ui/) runs in a browser",
    ],
  ])("refuses %s: %s", async (filePath, code, message) => {
    const messages = await restrictedImports(filePath, code);
    expect(messages).toHaveLength(1);
    expect(messages[0]).toContain(message);
    expect(messages[0]).toContain("see docs/architecture.md, dependency rules");
  });

  it.each([
    ["infra/good.ts", 'import { TIERS as x } from "@crucible/runtime/catalog";'],
    ["infra/good.ts", 'import { TIERS as x } from "../runtime/src/catalog";'],
    ["infra/good.ts", 'import { envelopeSchema as x } from "../runtime/src/job/contract";'],
    ["policies/good.ts", 'import { COST_TAGS as x } from "@crucible/runtime/catalog";'],
    ["runtime/src/good.ts", 'import { TIERS as x } from "./catalog";'],
    ["runtime/src/good.ts", 'import * as x from "@aws-sdk/client-s3";'],
    ["runtime/src/console/ui/good.ts", 'import { CSRF_HEADER as x } from "../api-contract.js";'],
    ["runtime/src/console/ui/pages/good.ts", 'import type { JobRow as x } from "../../api-contract.js";'],
    ["runtime/src/console/ui/pages/good.ts", 'import { getJson as x } from "../api.js";'],
    ["runtime/src/console/ui/good.ts", 'import { useState as x } from "preact/hooks";'],
    ["runtime/src/console/ui/good.ts", 'import { init as x } from "echarts/core";'],
  ])("allows %s: %s", async (filePath, code) => {
    expect(await restrictedImports(filePath, code)).toEqual([]);
  });
});
