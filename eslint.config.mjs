// @ts-check
import eslint from "@eslint/js";
import tseslint from "typescript-eslint";

/** Why an import is refused, by rule: each message says which dependency rule it breaks. */
const RULES = {
  runtimePulumi:
    "runtime may not import Pulumi: the runtime runs on nodes and laptops without it (see docs/architecture.md, dependency rules)",
  runtimeInfra:
    "runtime may not import infra: the program depends on the runtime, never the reverse (see docs/architecture.md, dependency rules)",
  policiesInfra:
    "policies may not import infra: the pack judges the program, so it shares only the runtime's catalog (see docs/architecture.md, dependency rules)",
  policiesRuntime:
    "policies may import only the runtime's catalog (@crucible/runtime/catalog) from the runtime: see docs/architecture.md, dependency rules",
  consolePage:
    "the console's page (runtime/src/console/ui/) runs in a browser: it may import only its own modules, preact, echarts and the API's contract (runtime/src/console/api-contract.ts): see docs/architecture.md, dependency rules",
  infraRuntime:
    "infra may import only the runtime's catalog (@crucible/runtime/catalog) and job contract (runtime/src/job/contract) from the runtime: see docs/architecture.md, dependency rules",
};

export default tseslint.config(
  { ignores: ["**/node_modules/**", "**/dist/**", "coverage/**"] },
  eslint.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: {
        projectService: { allowDefaultProject: ["*.mjs"] },
        tsconfigRootDir: import.meta.dirname,
      },
    },
    rules: {
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      "@typescript-eslint/consistent-type-imports": "error",
      "@typescript-eslint/no-floating-promises": "error",
    },
  },
  { files: ["**/*.mjs"], ...tseslint.configs.disableTypeChecked },
  // Dependency direction (docs/architecture.md, dependency rules): the runtime knows nothing of Pulumi or the
  // program; the program and the policy pack see the runtime only through its catalog (and the program the
  // job contract), so a runtime module can move or change without breaking either.
  {
    files: ["runtime/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            { group: ["@pulumi/*"], message: RULES.runtimePulumi },
            { group: ["**/infra", "**/infra/**"], message: RULES.runtimeInfra },
          ],
        },
      ],
    },
  },
  // The console's page runs in a browser: a runtime module imported there would bundle Node code into it.
  // Its only way out of ui/ is the API's contract, which the server implements.
  ...[
    { files: ["runtime/src/console/ui/*.{ts,tsx}"], up: "\\.\\./" },
    { files: ["runtime/src/console/ui/*/*.{ts,tsx}"], up: "\\.\\./\\.\\./" },
  ].map(({ files, up }) => ({
    files,
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            { regex: `^${up}(?!api-contract\\.js$)`, message: RULES.consolePage },
            { regex: "^(?!\\.|preact(/|$)|echarts/)", message: RULES.consolePage },
          ],
        },
      ],
    },
  })),
  {
    files: ["policies/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            { group: ["**/infra", "**/infra/**"], message: RULES.policiesInfra },
            { group: ["**/runtime/src/**", "!**/runtime/src/catalog"], message: RULES.policiesRuntime },
            { regex: "^@crucible/runtime(?!/catalog$)", message: RULES.policiesRuntime },
          ],
        },
      ],
    },
  },
  {
    files: ["infra/**/*.ts"],
    rules: {
      "no-restricted-imports": [
        "error",
        {
          patterns: [
            {
              // gitignore semantics: a file under an excluded folder cannot be let back in, so job/ is let
              // back in first; its other modules still match the first pattern and stay refused.
              group: [
                "**/runtime/src/**",
                "!**/runtime/src/catalog",
                "!**/runtime/src/job",
                "!**/runtime/src/job/contract",
              ],
              message: RULES.infraRuntime,
            },
            // The package's other entry points (its root is the whole runtime, Docker and AWS SDK included).
            { regex: "^@crucible/runtime(?!/catalog$)", message: RULES.infraRuntime },
          ],
        },
      ],
    },
  },
);
