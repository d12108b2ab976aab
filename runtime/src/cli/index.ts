import { Command, CommanderError } from "commander";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { EXIT, UsageError } from "./commands/shared";

type Register = (program: Command) => void;

/**
 * The modules that register the commands, in the order help lists them, with the top-level commands each
 * one owns. A run loads only its command's module: the AWS SDK clients and dockerode take hundreds of
 * milliseconds to load, and `crucible tiers` needs neither.
 */
const MODULES: readonly { readonly commands: readonly string[]; readonly load: () => Promise<Register> }[] = [
  { commands: ["run"], load: async () => (await import("./commands/run.js")).registerRun },
  { commands: ["tiers"], load: async () => (await import("./commands/tiers.js")).registerTiers },
  { commands: ["detect"], load: async () => (await import("./commands/detect.js")).registerDetect },
  { commands: ["gc"], load: async () => (await import("./commands/gc.js")).registerGc },
  {
    commands: ["templates", "init"],
    load: async () => (await import("./commands/templates.js")).registerTemplates,
  },
  { commands: ["estimate"], load: async () => (await import("./commands/estimate.js")).registerEstimate },
  { commands: ["datasets"], load: async () => (await import("./commands/datasets.js")).registerDatasets },
  { commands: ["submit"], load: async () => (await import("./commands/submit.js")).registerSubmit },
  {
    commands: ["status", "result", "cancel"],
    load: async () => (await import("./commands/jobs.js")).registerJobs,
  },
  { commands: ["logs"], load: async () => (await import("./commands/logs.js")).registerLogs },
  { commands: ["metrics"], load: async () => (await import("./commands/metrics.js")).registerMetrics },
  { commands: ["ls", "jobs"], load: async () => (await import("./commands/ls.js")).registerLs },
  { commands: ["agent"], load: async () => (await import("./commands/agent.js")).registerAgent },
  { commands: ["local"], load: async () => (await import("./commands/local.js")).registerLocal },
  { commands: ["usage"], load: async () => (await import("./commands/usage.js")).registerUsage },
  { commands: ["console"], load: async () => (await import("./commands/console.js")).registerConsole },
  {
    commands: ["checkpoints", "pull", "share"],
    load: async () => (await import("./commands/outputs.js")).registerOutputs,
  },
];

/**
 * The `crucible` command line. Each command lives in `commands/<name>.ts` and registers itself through
 * {@link MODULES}; they share the program's settings (exit codes, error output) by being created through
 * it. Given the arguments, only the module of the command they name is loaded; help, and anything that
 * names no known command, loads them all.
 */
export async function buildCli(argv: readonly string[] = []): Promise<Command> {
  const program = new Command("crucible")
    .description("run ML jobs in sandboxed containers, locally or on the Crucible platform")
    // runtime/package.json's version: two folders up from src/cli (tsx) and dist/cli (built) alike.
    .version(
      (JSON.parse(readFileSync(join(__dirname, "../../package.json"), "utf8")) as { version: string })
        .version,
    )
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride();
  const named = argv[2];
  const owner = MODULES.find((m) => named !== undefined && m.commands.includes(named));
  for (const register of await Promise.all((owner ? [owner] : MODULES).map((m) => m.load())))
    register(program);
  return program;
}

/** Runs the CLI and sets the exit code: 0 success, 1 failure, 2 bad usage (130 for an interrupted run). */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  try {
    await (await buildCli(argv)).parseAsync([...argv]);
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
