import { Command, CommanderError } from "commander";
import { registerDatasets } from "./commands/datasets";
import { registerDetect } from "./commands/detect";
import { registerEstimate } from "./commands/estimate";
import { registerGc } from "./commands/gc";
import { registerPlatform } from "./commands/platform";
import { registerRun } from "./commands/run";
import { EXIT, UsageError } from "./commands/shared";
import { registerTemplates } from "./commands/templates";
import { registerTiers } from "./commands/tiers";
import { registerUsage } from "./commands/usage";

/**
 * The `crucible` command line. Each command lives in `commands/<name>.ts` and registers itself here with
 * one line; they share the program's settings (exit codes, error output) by being created through it.
 */
export function buildCli(): Command {
  const program = new Command("crucible")
    .description("run ML jobs in sandboxed containers, locally or on the Crucible platform")
    .version("0.1.0")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
  registerRun(program);
  registerTiers(program);
  registerDetect(program);
  registerGc(program);
  registerTemplates(program);
  registerEstimate(program);
  registerDatasets(program);
  registerPlatform(program);
  registerUsage(program);
  return program;
}

/** Runs the CLI and sets the exit code: 0 success, 1 failure, 2 bad usage (130 for an interrupted run). */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  try {
    await buildCli().parseAsync([...argv]);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander has printed its message already; help and version are not failures.
      process.exitCode = error.exitCode === 0 ? EXIT.ok : EXIT.usage;
      return;
    }
    process.stderr.write(`crucible: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = error instanceof UsageError ? EXIT.usage : EXIT.failed;
  }
}
