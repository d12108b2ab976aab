import { existsSync, readFileSync } from "node:fs";
import { builtinModules } from "node:module";
import * as path from "node:path";
import * as ts from "typescript";
import { describe, expect, it } from "vitest";
import { enforcerCode } from "../../infra/budgets";
import { ROOT } from "../../scripts/lib/mock-engine";

/**
 * `pulumi up` must work from a production-only install (`npm ci --omit=dev`, even with
 * `--omit=optional`): Pulumi's nodejs runtime compiles and type-checks `infra/` with the project's
 * `typescript` and `ts-node` (without them it falls back to its vendored TypeScript 3.8, which cannot
 * parse this program), and `infra/lambda-code.ts` transpiles the Lambda handlers with `typescript` at
 * `pulumi up`. So every package the program's import graph names, and the compiler that runs it, must
 * be a production dependency: in the lockfile without a dev, optional or peer flag, and declared in the
 * `dependencies` of the package that imports it.
 */

interface LockEntry {
  readonly dev?: boolean;
  readonly devOptional?: boolean;
  readonly optional?: boolean;
  readonly peer?: boolean;
  readonly link?: boolean;
  readonly resolved?: string;
  readonly dependencies?: Record<string, string>;
}

const LOCK = JSON.parse(readFileSync(path.join(ROOT, "package-lock.json"), "utf8")) as {
  packages: Record<string, LockEntry>;
};
const BUILTINS = new Set(builtinModules);

/** `@scope/name/sub` → `@scope/name`; `name/sub` → `name`. */
function packageName(specifier: string): string {
  const parts = specifier.split("/");
  return specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0]!;
}

function isBuiltin(specifier: string): boolean {
  return specifier.startsWith("node:") || BUILTINS.has(specifier.split("/")[0]!);
}

/** The directory of the package.json that owns `file` (the root, or a workspace such as runtime/). */
function owningPackage(file: string): string {
  for (let dir = path.dirname(file); dir.startsWith(ROOT); dir = path.dirname(dir))
    if (existsSync(path.join(dir, "package.json"))) return dir;
  return ROOT;
}

function declaredDependencies(packageDir: string): Record<string, string> {
  const json = JSON.parse(readFileSync(path.join(packageDir, "package.json"), "utf8")) as {
    dependencies?: Record<string, string>;
  };
  return json.dependencies ?? {};
}

/** The lockfile entry Node's resolution finds for `name` from `file`: the nearest node_modules up. */
function lockEntryFor(name: string, file: string): { key: string; entry: LockEntry } | undefined {
  for (let dir = path.dirname(file); dir.startsWith(ROOT); dir = path.dirname(dir)) {
    const key = path
      .relative(ROOT, path.join(dir, "node_modules", name))
      .split(path.sep)
      .join("/");
    const entry = LOCK.packages[key];
    if (entry) return { key, entry: entry.link && entry.resolved ? LOCK.packages[entry.resolved]! : entry };
  }
  return undefined;
}

function compilerOptions(): ts.CompilerOptions {
  const configPath = path.join(ROOT, "tsconfig.json");
  const read: { config?: unknown } = ts.readConfigFile(configPath, (p) => ts.sys.readFile(p));
  return ts.parseJsonConfigFileContent(read.config, ts.sys, ROOT).options;
}

/** Every package the program imports (type-only imports too: ts-node type-checks them), by importer. */
function programImports(entry: string): Map<string, Set<string>> {
  const options = compilerOptions();
  const imports = new Map<string, Set<string>>();
  const seen = new Set<string>();
  const todo = [entry];
  while (todo.length > 0) {
    const file = todo.pop()!;
    if (seen.has(file)) continue;
    seen.add(file);
    for (const { fileName: specifier } of ts.preProcessFile(readFileSync(file, "utf8"), true, true)
      .importedFiles) {
      if (isBuiltin(specifier)) continue;
      const resolved = ts.resolveModuleName(specifier, file, options, ts.sys).resolvedModule;
      const target = resolved && ts.sys.realpath ? ts.sys.realpath(resolved.resolvedFileName) : undefined;
      if (!specifier.startsWith(".")) {
        const name = packageName(specifier);
        if (!imports.has(name)) imports.set(name, new Set());
        imports.get(name)!.add(path.relative(ROOT, file));
      }
      // Follow the program's own sources (a workspace package included), never into node_modules.
      if (target && !target.includes(`${path.sep}node_modules${path.sep}`) && /\.tsx?$/.test(target))
        todo.push(target);
    }
  }
  return imports;
}

describe("a production-only install deploys", () => {
  const imports = programImports(path.join(ROOT, "infra", "index.ts"));

  it("follows the program from infra/index.ts through the budget enforcer and the runtime it shares", () => {
    // A sanity check on the walk itself: it saw the packages infra/lambda-code.ts and the catalog load.
    expect([...imports.keys()]).toEqual(
      expect.arrayContaining(["@pulumi/aws", "@pulumi/pulumi", "typescript"]),
    );
    expect([...imports.get("typescript")!]).toContain(path.join("infra", "lambda-code.ts"));
  });

  it("imports only production dependencies, declared by the package that imports them", () => {
    const problems: string[] = [];
    for (const [name, importers] of imports)
      for (const importer of importers) {
        const file = path.join(ROOT, importer);
        const found = lockEntryFor(name, file);
        const { dev, devOptional, optional, peer } = found?.entry ?? {};
        if (!found) problems.push(`${importer} imports ${name}, which the lockfile does not install`);
        else if (dev || devOptional || optional || peer)
          problems.push(
            `${importer} imports ${name}, which npm ci --omit=dev --omit=optional leaves out (${found.key} is ` +
              `${[dev && "dev", devOptional && "devOptional", optional && "optional", peer && "peer"].filter(Boolean).join(", ")})`,
          );
        const owner = owningPackage(file);
        const workspace = found?.key && LOCK.packages[found.key]?.link;
        if (!workspace && !(name in declaredDependencies(owner)) && !(name in declaredDependencies(ROOT)))
          problems.push(
            `${importer} imports ${name}: add it to "dependencies" of ${path.relative(ROOT, path.join(owner, "package.json"))}`,
          );
      }
    expect(problems).toEqual([]);
  });

  it("installs what Pulumi's TypeScript runtime needs to compile and type-check infra/", () => {
    // Pulumi loads `typescript` and `ts-node` from the project (falling back to vendored 3.8.3 / 7.0.1,
    // which cannot parse this program), and ts-node type-checks with tsconfig.json's "types".
    const types = (compilerOptions().types ?? []).map((t) => `@types/${t}`);
    const root = declaredDependencies(ROOT);
    for (const name of ["typescript", "ts-node", ...types]) {
      expect(root, `${name} must be in package.json "dependencies"`).toHaveProperty([name]);
      const { dev, devOptional, optional, peer } = lockEntryFor(name, path.join(ROOT, "package.json"))!.entry;
      expect({ name, dev, devOptional, optional, peer }).toEqual({
        name,
        dev: undefined,
        devOptional: undefined,
        optional: undefined,
        peer: undefined,
      });
    }
  });

  it("builds the enforcer's Lambda code with that compiler: the handler as CommonJS, loading only the AWS SDK", () => {
    const code = enforcerCode();
    // The artifact test/infra/budget-enforcer/handler.test.ts evaluates and test/infra/budgets.test.ts
    // finds in the function's archive.
    expect(code).toContain("exports.handler = handler;");
    expect(code).not.toMatch(/^\s*import\s/m);
    const required = [...code.matchAll(/require\("([^"]+)"\)/g)].map((m) => m[1]);
    expect(new Set(required)).toEqual(new Set(["@aws-sdk/client-auto-scaling", "@aws-sdk/client-s3"]));
  });
});
