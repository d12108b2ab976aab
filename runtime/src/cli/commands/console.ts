import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import type { ConsoleBackend } from "../../console/api";
import { DEFAULT_CONSOLE_HOST, DEFAULT_CONSOLE_PORT, startConsole } from "../../console/server";
import { localDir, runningPlatform } from "../../local/local-control";
import type { Owner } from "./platform-access";
import {
  agentEnvFromProcess,
  env,
  LOCAL_ENV,
  localPlatform,
  ownerOf,
  ownerOptions,
  platformFromEnv,
  schedulingOf,
} from "./platform-access";
import { cliLogger, UsageError } from "./shared";

/** Estimates above this many USD ask for confirmation on the new-job page, unless told otherwise. */
const DEFAULT_COST_WARNING_USD = 10;

interface ConsoleFlags extends Owner {
  readonly port?: number;
  readonly host?: string;
  readonly local?: boolean;
  readonly dataDir?: string;
  readonly costWarning?: number;
}

/** A commander parser for a TCP port, 0 meaning any free one. */
function port(value: string): number {
  const n = Number(value);
  if (!/^\d{1,5}$/.test(value.trim()) || n > 65_535)
    throw new InvalidArgumentError(`must be a port from 0 (any free port) to 65535, got "${value}"`);
  return n;
}

function usd(value: string): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n < 0)
    throw new InvalidArgumentError(`must be an amount of USD, 0 or more, got "${value}"`);
  return n;
}

/** `console`: the web console over the caller's jobs, served from this machine until Ctrl-C. */
export function registerConsole(program: Command): void {
  ownerOptions(
    program
      .command("console")
      .description(
        "serve the web console (your jobs, logs, metrics, files, usage, new jobs) on this machine until Ctrl-C",
      ),
  )
    .option("--port <port>", `port to listen on; 0 for any free one (default: ${DEFAULT_CONSOLE_PORT})`, port)
    .option(
      "--host <host>",
      `address to listen on (default: ${DEFAULT_CONSOLE_HOST}); beyond loopback, browsers log in with the URL printed at start`,
    )
    .option(
      "--data-dir <dir>",
      "the local platform's data directory, with --local (default: ~/.crucible/local)",
    )
    .option(
      "--cost-warning <usd>",
      `the new-job page asks before submitting a job estimated above this (default: ${DEFAULT_COST_WARNING_USD})`,
      usd,
    )
    .action(async (flags: ConsoleFlags) => {
      const logger = cliLogger();
      const settings = agentEnvFromProcess();
      const owner = ownerOf(flags);
      // As the job commands choose: the local platform when asked for, or when no stack is configured.
      const local = flags.local === true || env(LOCAL_ENV) === "1" || !settings.bucket;
      let backend: ConsoleBackend;
      if (local) {
        const dir = localDir(flags.dataDir);
        const connection = runningPlatform(dir);
        if (!connection)
          throw new UsageError(
            `no local platform runs in ${dir}: start one with \`crucible local up\`${settings.bucket ? "" : ", or set CRUCIBLE_BUCKET and the stack's other variables for a stack"}`,
          );
        backend = {
          platform: localPlatform(dir, connection, logger, schedulingOf(settings).weights, () => owner),
          owner,
          name: "local",
          policy: schedulingOf(settings),
          costWarningUsd: flags.costWarning ?? DEFAULT_COST_WARNING_USD,
        };
      } else {
        const platform = platformFromEnv(logger, settings);
        backend = {
          platform,
          owner,
          name: platform.bucket,
          policy: schedulingOf(settings),
          costWarningUsd: flags.costWarning ?? DEFAULT_COST_WARNING_USD,
        };
      }
      const running = await startConsole({
        backend,
        logger,
        ...(flags.host !== undefined && { host: flags.host }),
        ...(flags.port !== undefined && { port: flags.port }),
      }).catch((error: NodeJS.ErrnoException) => {
        if (error.code === "EADDRINUSE")
          throw new UsageError(
            `--port ${flags.port ?? DEFAULT_CONSOLE_PORT} is in use: choose another, or 0 for any free one`,
          );
        if (error.code === "EADDRNOTAVAIL" || error.code === "ENOTFOUND")
          throw new UsageError(`--host ${flags.host} is not an address of this machine`);
        throw error;
      });
      const who = `${owner.project}/${owner.user} on ${backend.name === "local" ? "the local platform" : `bucket ${backend.name}`}`;
      process.stdout.write(
        running.loginUrl
          ? [
              `crucible console for ${who}, listening on ${flags.host}`,
              `log in (in each browser) at: ${running.loginUrl}`,
              "that URL is the console's one secret, printed only now: whoever has it sees and runs your jobs",
              "",
            ].join("\n")
          : `crucible console for ${who}: ${running.url}\n`,
      );
      process.stdout.write("Ctrl-C stops it\n");
      await new Promise<void>((done) => {
        const stop = (): void => {
          process.off("SIGINT", stop);
          process.off("SIGTERM", stop);
          done();
        };
        process.on("SIGINT", stop);
        process.on("SIGTERM", stop);
      });
      await running.close();
    });
}

/** The command and page that show a local job in the console, as `crucible local run` ends by saying. */
export function consoleHint(
  jobId: string,
  options: { readonly dataDir?: string; readonly platformStopped: boolean },
): string {
  const dir = options.dataDir === undefined ? "" : ` --data-dir ${options.dataDir}`;
  const start = options.platformStopped ? `\`crucible local up${dir}\`, then ` : "";
  return `see it in the console: ${start}\`crucible console --local${dir}\` and open http://${DEFAULT_CONSOLE_HOST}:${DEFAULT_CONSOLE_PORT}/#/jobs/${jobId}\n`;
}
