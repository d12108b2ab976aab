import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { readFileSync } from "node:fs";
import { setTimeout as delay } from "node:timers/promises";
import { AGENT_ENV_NAMES } from "../../catalog/agent-env";
import type { TierName } from "../../catalog/tiers";
import { isTierName, TIER_NAMES } from "../../catalog/tiers";
import type { Envelope } from "../../job/contract";
import { DockerLauncher } from "../../launch/docker/docker-launcher";
import type { LocalConnection, LocalStatus } from "../../local/local-control";
import {
  isAlive,
  jobFailure,
  localDir,
  localPaths,
  platformStatus,
  readPidFile,
  runningPlatform,
  startInBackground,
  stopPlatform,
} from "../../local/local-control";
import type { LocalDaemon, LocalDaemonOptions } from "../../local/local-daemon";
import { PlatformBusyError, serveLocal } from "../../local/local-daemon";
import type { Logger } from "../../logger";
import { createLogger } from "../../logger";
import type { JobAddress, JobStore } from "../../store/job-store";
import { jobSpecFromFlags } from "./run";
import { cliLogger, EXIT, positiveSeconds, printJson, UsageError } from "./shared";

import { agentEnvFromProcess, agentTuning, localPlatform, ownerOf, schedulingOf } from "./platform-access";
import type { SubmitFlags } from "./submit";
import { submitFrom, submitOptions, summarize } from "./submit";
import { consoleHint } from "./console";

/**
 * What `crucible local up` serves by default: the CPU tiers. `local run` runs a job on the tier detected
 * from its code, cpu-small for plain Python and cpu-large for the ML templates (`npm start`'s nanoGPT),
 * and both run on any machine with Docker; a GPU tier needs a GPU, so it is asked for with `--tiers`.
 */
export const DEFAULT_LOCAL_TIERS: readonly TierName[] = ["cpu-small", "cpu-large"];

/** `crucible local status`'s exit code when no local platform runs (0 when one does). */
export const LOCAL_DOWN_EXIT = 3;

const DEFAULT_UP_TIMEOUT_SECONDS = 120;
/** Enough for agents to give their jobs the grace to checkpoint and to upload the checkpoints. */
const DEFAULT_DOWN_TIMEOUT_SECONDS = 120;
/** How often `local run` looks for its job's envelope. */
const RESULT_POLL_MS = 1000;
/** How long `local run` waits, after Ctrl-C, for its job to end as cancelled. */
const CANCEL_WAIT_MS = 30_000;

interface DirFlags {
  readonly dataDir?: string;
}

const DATA_DIR_HELP =
  "the local platform's data directory (default: $CRUCIBLE_LOCAL_DIR, else ~/.crucible/local)";

/** A commander parser for `--tiers t1,t2`. */
function parseTiers(value: string): TierName[] {
  const names = value.split(",").map((name) => name.trim());
  const unknown = names.filter((name) => !isTierName(name));
  if (names.length === 0 || unknown.length > 0)
    throw new InvalidArgumentError(
      `must be tiers among ${TIER_NAMES.join(", ")}, comma-separated, got "${value}"`,
    );
  return [...new Set(names as TierName[])];
}

/** The platform's settings from this process's environment: the CRUCIBLE_* agent variables, as `crucible agent` takes them. */
function daemonOptions(dataDir: string, tiers: readonly TierName[], logger: Logger): LocalDaemonOptions {
  const settings = agentEnvFromProcess();
  const { images, packageIndex, packageAllow, packageDeny } = settings;
  if (packageIndex?.startsWith("codeartifact://"))
    throw new UsageError(
      `${AGENT_ENV_NAMES.packageIndex} is ${packageIndex}: the local platform reaches a package index by URL (http:// or https://), not through AWS`,
    );
  return {
    dataDir,
    tiers,
    logger,
    launcher: new DockerLauncher({ logger, ...(images && { images }) }),
    policy: schedulingOf(settings),
    agent: agentTuning(settings),
    ...(images && { images }),
    packages: {
      ...(packageIndex && { index: packageIndex }),
      ...(packageAllow && { allow: packageAllow }),
      ...(packageDeny && { deny: packageDeny }),
    },
  };
}

/**
 * `local`: the whole platform on this machine. `up` starts it in the background (`serve`, detached),
 * `status` and `down` find it through its data directory, and the job commands reach it from any
 * terminal (platform-access.ts); `run` uses the one that runs, or one of its own for the job.
 */
export function registerLocal(program: Command): void {
  const local = program
    .command("local")
    .description("the whole platform on this machine: embedded SQS/S3, agents, the local Docker engine");

  local
    .command("up")
    .description(
      "start the local platform in the background, with its state in the data directory, and return once it is ready",
    )
    .option(
      "--tiers <tiers>",
      `tiers to serve, comma-separated (default: ${DEFAULT_LOCAL_TIERS.join(",")})`,
      parseTiers,
    )
    .option("--data-dir <dir>", DATA_DIR_HELP)
    .option(
      "--timeout <seconds>",
      `how long to wait for it to be ready (default: ${DEFAULT_UP_TIMEOUT_SECONDS})`,
      positiveSeconds,
    )
    .action(async (flags: DirFlags & { tiers?: TierName[]; timeout?: number }) => {
      const dir = localDir(flags.dataDir);
      const tiers = flags.tiers ?? DEFAULT_LOCAL_TIERS;
      const running = runningPlatform(dir);
      if (running) {
        process.stdout.write(
          `a local platform already runs in ${dir} (pid ${running.pid}, tiers ${running.tiers.join(", ")})\n`,
        );
        if (tiers.some((tier) => !running.tiers.includes(tier)))
          process.stdout.write(
            `it does not serve ${tiers.filter((t) => !running.tiers.includes(t)).join(", ")}: \`crucible local down\`, then \`crucible local up --tiers ${tiers.join(",")}\`\n`,
          );
        return;
      }
      const owner = readPidFile(localPaths(dir));
      if (owner && isAlive(owner))
        throw new Error(
          `a local platform (pid ${owner.pid}) is starting or stopping in ${dir}; see \`crucible local status\` in a moment`,
        );
      const timeoutMs = (flags.timeout ?? DEFAULT_UP_TIMEOUT_SECONDS) * 1000;
      const connection = await startInBackground(dir, serveCommand(dir, tiers), timeoutMs).catch(
        (error: Error) => {
          throw new Error(withLastLogLine(error.message, localPaths(dir).log));
        },
      );
      process.stdout.write(describeUp(dir, connection));
    });

  local
    .command("status")
    .description(
      `whether the local platform runs, and its tiers' jobs (exit 0 when it runs, ${LOCAL_DOWN_EXIT} when not)`,
    )
    .option("--data-dir <dir>", DATA_DIR_HELP)
    .option("--json", "print JSON")
    .action(async (flags: DirFlags & { json?: boolean }) => {
      const dir = localDir(flags.dataDir);
      const connection = runningPlatform(dir);
      if (!connection) {
        const owner = readPidFile(localPaths(dir));
        const starting = owner && isAlive(owner);
        if (flags.json) printJson({ running: false, dataDir: dir, ...(starting && { pid: owner.pid }) });
        else
          process.stdout.write(
            starting
              ? `the local platform (pid ${owner.pid}) is starting or stopping in ${dir}\n`
              : `no local platform runs in ${dir}\n`,
          );
        process.exitCode = LOCAL_DOWN_EXIT;
        return;
      }
      const status = await platformStatus(dir);
      if (flags.json) printJson({ running: true, ...status });
      else process.stdout.write(describeStatus(status));
    });

  local
    .command("down")
    .description(
      "stop the local platform: running jobs go back to their queues with their checkpoints; the data stays",
    )
    .option("--data-dir <dir>", DATA_DIR_HELP)
    .option(
      "--timeout <seconds>",
      `how long to wait for it to stop (default: ${DEFAULT_DOWN_TIMEOUT_SECONDS})`,
      positiveSeconds,
    )
    .action(async (flags: DirFlags & { timeout?: number }) => {
      const dir = localDir(flags.dataDir);
      const stopped = await stopPlatform(dir, (flags.timeout ?? DEFAULT_DOWN_TIMEOUT_SECONDS) * 1000);
      process.stdout.write(
        stopped
          ? `local platform (pid ${stopped.pid}) stopped; its data stays in ${dir}\n`
          : `no local platform runs in ${dir}; nothing to stop\n`,
      );
    });

  local
    .command("serve")
    .description(
      "run the local platform in the foreground until SIGTERM or Ctrl-C (what `up` runs in the background)",
    )
    .option(
      "--tiers <tiers>",
      `tiers to serve, comma-separated (default: ${DEFAULT_LOCAL_TIERS.join(",")})`,
      parseTiers,
    )
    .option("--data-dir <dir>", DATA_DIR_HELP)
    .action(async (flags: DirFlags & { tiers?: TierName[] }) => {
      // Its output is the platform's log: info by default.
      const logger = createLogger();
      const stopAsked = new AbortController();
      // Every signal, not just the first: a second one must not kill a platform handing jobs back.
      const onSignal = (signal: NodeJS.Signals): void => {
        logger.info({ signal }, "signal received; stopping");
        stopAsked.abort();
      };
      process.on("SIGTERM", onSignal);
      process.on("SIGINT", onSignal);
      const dir = localDir(flags.dataDir);
      const daemon = await serveLocal(daemonOptions(dir, flags.tiers ?? DEFAULT_LOCAL_TIERS, logger)).catch(
        (error: unknown) => {
          throw error instanceof PlatformBusyError ? new UsageError(error.message) : error;
        },
      );
      // Its servers keep the process alive until then.
      if (!stopAsked.signal.aborted)
        await new Promise((resolve) => stopAsked.signal.addEventListener("abort", resolve, { once: true }));
      await daemon.stop();
      process.off("SIGTERM", onSignal);
      process.off("SIGINT", onSignal);
    });

  submitOptions(
    local
      .command("run")
      .description(
        "submit a job to the local platform (the running one, else one started for this job), wait for it, and print its result",
      ),
  )
    .option("--data-dir <dir>", DATA_DIR_HELP)
    .action((path: string, flags: SubmitFlags & DirFlags) => runLocally(path, flags));
}

/** This CLI again, as it was started (from source under tsx, or built), to serve `dir`. */
function serveCommand(dir: string, tiers: readonly TierName[]): { file: string; args: string[] } {
  return {
    file: process.execPath,
    args: [
      ...process.execArgv,
      process.argv[1]!,
      "local",
      "serve",
      "--data-dir",
      dir,
      "--tiers",
      tiers.join(","),
    ],
  };
}

/** The message of a failed start, with the last line the platform logged (the cause, usually). */
function withLastLogLine(message: string, log: string): string {
  let last: string | undefined;
  try {
    last = readFileSync(log, "utf8").trimEnd().split("\n").pop();
  } catch {
    return message;
  }
  if (!last) return message;
  try {
    const line = JSON.parse(last) as { msg?: string; err?: { message?: string } };
    last = [line.msg, line.err?.message].filter(Boolean).join(": ") || last;
  } catch {
    // Not one of the logger's JSON lines (a crash's stack trace): shown as it is.
  }
  return `${message}\nits last line: ${last}`;
}

function describeUp(dir: string, connection: LocalConnection): string {
  return [
    `local platform up (pid ${connection.pid}): ${connection.endpoint}, tiers ${connection.tiers.join(", ")}`,
    `data: ${dir}; log: ${localPaths(dir).log}`,
    "submit from any terminal (`crucible submit <path>`); stop it with `crucible local down`",
    "",
  ].join("\n");
}

function describeStatus(status: LocalStatus): string {
  const uptime = Math.round((Date.now() - Date.parse(status.startedAt)) / 1000);
  const width = Math.max(4, ...status.tiers.map((t) => t.tier.length));
  return [
    `local platform ${status.stopping ? "stopping" : "up"} (pid ${status.pid}) for ${describeSeconds(uptime)}, since ${status.startedAt}`,
    `endpoint: ${status.endpoint}`,
    `data: ${status.dataDir}`,
    `${"tier".padEnd(width)}  queued  running`,
    ...status.tiers.map(
      (t) => `${t.tier.padEnd(width)}  ${String(t.queued).padStart(6)}  ${String(t.running).padStart(7)}`,
    ),
    "",
  ].join("\n");
}

function describeSeconds(seconds: number): string {
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  return h > 0 ? `${h}h ${m}m` : m > 0 ? `${m}m ${s}s` : `${s}s`;
}

/**
 * `local run`: on the platform that runs in the data directory, else on one started here for this job
 * (agents for the job's tier only) and stopped afterwards, its state kept. Either way the job is
 * submitted as the caller's identity and its result read from the store, as from another terminal.
 * Ctrl-C cancels the job; SIGTERM leaves it (a platform started here hands it back as it stops).
 */
async function runLocally(path: string, flags: SubmitFlags & DirFlags): Promise<void> {
  const logger = cliLogger();
  const { tier } = await jobSpecFromFlags(path, { ...flags, json: true });
  const dir = localDir(flags.dataDir);
  const cancel = new AbortController();
  const leave = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    // A second Ctrl-C stops waiting for the cancelled job to end.
    if (signal === "SIGINT" && !cancel.signal.aborted) cancel.abort();
    else leave.abort();
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let owned: LocalDaemon | undefined;
  try {
    let connection = runningPlatform(dir);
    if (!connection) {
      if (!flags.json)
        process.stderr.write(`no local platform runs in ${dir}; starting one for this job (${tier})...\n`);
      owned = await serveLocal(daemonOptions(dir, [tier], logger)).catch((error: unknown) => {
        throw error instanceof PlatformBusyError
          ? new UsageError(
              `${error.message}, but is not ready: wait for it (\`crucible local status\`) and run again`,
            )
          : error;
      });
      connection = owned.connection;
    }
    if (cancel.signal.aborted || leave.signal.aborted) {
      process.exitCode = EXIT.interrupted;
      return;
    }
    const owner = ownerOf(flags);
    const platform = localPlatform(
      dir,
      connection,
      logger,
      schedulingOf(agentEnvFromProcess()).weights,
      () => owner,
    );
    const queued = await submitFrom(platform, path, flags);
    if (!flags.json)
      process.stderr.write(`job ${queued.jobId} queued on ${tier}; waiting for the local platform...\n`);
    const envelope = await waitForEnvelope(
      { dir, pid: connection.pid },
      platform.store,
      queued,
      cancel.signal,
      leave.signal,
    );
    if (envelope) {
      summarize(envelope, flags.json);
      if (!flags.json)
        process.stderr.write(
          consoleHint(queued.jobId, {
            ...(flags.dataDir !== undefined && { dataDir: flags.dataDir }),
            platformStopped: owned !== undefined,
          }),
        );
      if (cancel.signal.aborted) process.exitCode = EXIT.interrupted;
      return;
    }
    process.stderr.write(
      cancel.signal.aborted && !leave.signal.aborted
        ? `cancel requested for job ${queued.jobId}; it ends as cancelled once an agent takes it\n`
        : owned
          ? `job ${queued.jobId} goes back to its queue as the local platform stops; it runs at the next \`crucible local up\`\n`
          : `job ${queued.jobId} runs on in the local platform: \`crucible status ${queued.jobId}\`, \`crucible result ${queued.jobId}\`\n`,
    );
    process.exitCode = EXIT.interrupted;
  } finally {
    await owned?.stop();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

/**
 * Looks for the job's envelope until there is one; undefined when told to leave, or once a cancelled job
 * has not ended within {@link CANCEL_WAIT_MS}. A failure to run the job outside the job itself (the
 * engine, the store) is the answer, as a retry meets the same engine: the job is cancelled, so it is
 * not retried later, and its error thrown.
 */
async function waitForEnvelope(
  platform: { readonly dir: string; readonly pid: number },
  store: JobStore,
  address: JobAddress,
  cancel: AbortSignal,
  leave: AbortSignal,
): Promise<Envelope | undefined> {
  const { dir } = platform;
  let cancelBy: number | undefined;
  for (;;) {
    const envelope = await store.getEnvelope(address);
    if (envelope) return envelope;
    // Stopped from elsewhere: by `local down`, or by the `local run` that started it as its job ended.
    if (runningPlatform(dir)?.pid !== platform.pid)
      throw new Error(
        `the local platform in ${dir} stopped before job ${address.jobId} ended; the job stays queued ` +
          "and runs at the next `crucible local up` (which keeps a platform up for several runs)",
      );
    const failure = await jobFailure(dir, address);
    if (failure) {
      await store.requestCancel(address);
      throw new Error(`the local platform could not run job ${address.jobId}: ${failure}`);
    }
    if (leave.aborted) return undefined;
    if (cancel.aborted && cancelBy === undefined) {
      await store.requestCancel(address);
      process.stderr.write(`cancelling job ${address.jobId}...\n`);
      cancelBy = Date.now() + CANCEL_WAIT_MS;
    }
    if (cancelBy !== undefined && Date.now() > cancelBy) return undefined;
    // Woken early by a signal, which the next round acts on.
    const wake = cancelBy === undefined ? AbortSignal.any([leave, cancel]) : leave;
    await delay(RESULT_POLL_MS, undefined, { signal: wake }).catch(() => undefined);
  }
}
