import type { Command } from "commander";
import { CodeError } from "../../job/code-source";
import { detect, formatBytes } from "../../job/detect";
import { printJson, UsageError } from "./shared";

/** `crucible detect PATH`: what the code needs, and the tier and image `run` would pick for it. */
export function registerDetect(program: Command): void {
  program
    .command("detect")
    .description("suggest a tier and image for job code, with the reasons")
    .argument("<path>", "a directory holding main.py, a .py file or a code.zip")
    .option("--json", "print the suggestion as JSON")
    .action(async (path: string, opts: { json?: boolean }) => {
      const found = await detect(path).catch((error: unknown) => {
        throw error instanceof CodeError ? new UsageError(error.message) : error;
      });
      if (opts.json) {
        printJson(found);
        return;
      }
      const lines = [
        `tier:  ${found.tier}`,
        `image: ${found.image}`,
        ...(found.needs.memoryBytes !== undefined
          ? [`memory: about ${formatBytes(found.needs.memoryBytes)} at peak`]
          : []),
        "why:",
        ...found.reasons.map((r) => `  - ${r}`),
        ...(found.warnings.length > 0 ? ["warnings:", ...found.warnings.map((w) => `  - ${w}`)] : []),
      ];
      process.stdout.write(`${lines.join("\n")}\n`);
    });
}
