import { readFileSync } from "node:fs";
import * as ts from "typescript";

/**
 * A Lambda handler module of this program (infra/budget-enforcer, infra/fast-scaler), transpiled on its
 * own: each imports only the AWS SDK the Lambda runtime provides, so one file is the whole function.
 * This runs at `pulumi up`, so `typescript` is a production dependency (package.json "dependencies"),
 * not a devDependency: Pulumi's own TypeScript runtime needs it to compile infra/ anyway, and a build
 * step with a committed bundle would be a second copy of each handler to keep in step for no gain.
 * test/infra/production-install.test.ts holds every package the program loads to that.
 */
export function handlerCode(file: string): string {
  return ts.transpileModule(readFileSync(file, "utf8"), {
    fileName: "handler.ts",
    compilerOptions: {
      module: ts.ModuleKind.CommonJS,
      target: ts.ScriptTarget.ES2022,
      esModuleInterop: true,
    },
  }).outputText;
}
