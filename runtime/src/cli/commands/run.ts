import type * as CliProgress from "cli-progress";
import type { MultiBar } from "cli-progress";
import type { Command } from "commander";
import { randomBytes } from "node:crypto";
import { CodeError, codeKind } from "../../job/code-source";
import type { Envelope, JobSpecInput, ProgressEvent } from "../../job/contract";
import { PROGRESS_PREFIX, StopRequest } from "../../job/contract";
import { detect } from "../../job/detect";
import { DockerLauncher } from "../../launch/docker/docker-launcher";
import { checkJobSpec, InvalidJobError } from "../../job/job-spec";
import type { StreamName } from "../../launch/output";
import { isTierName, TIER_NAMES } from "../../catalog/tiers";
import { cliLogger, collectEnv, EXIT, positiveSeconds, printJson, UsageError } from "./shared";

export interface RunFlags {
  readonly tier?: string;
  readonly image?: string;
  readonly timeout?: number;
  readonly env: Record<string, string>;
  readonly workspace?: string;
  readonly datasets?: string;
  readonly grace: number;
  readonly json?: boolean;
}

/** `crucible run PATH`: runs a job in a local sandbox and reports its envelope. */
export function registerRun(program: Command): void {
  program
    .command("run")
    .description("run job code in a sandboxed container on the local Docker engine")
    .argument("<path>", "a directory holding main.py, a .py file or a code.zip")
    .option("--tier <tier>", `resource tier (${TIER_NAMES.join(", ")}); default: detected from the code`)
    .option("--image <image>", "image to run in; default: the matrix's image for the tier and the code")
    .option(
      "--timeout <seconds>",
      "stop the job after this many seconds (at most the tier's limit)",
      positiveSeconds,
    )
    .option("--env <K=V>", "set an environment variable for the job (repeatable)", collectEnv, {})
    .option("--workspace <dir>", "host directory mounted at /workspace (kept after the run)")
    .option("--datasets <dir>", "host directory mounted read-only at /datasets")
    .option(
      "--grace <seconds>",
      "seconds a stopped job gets to checkpoint before SIGKILL",
      positiveSeconds,
      10,
    )
    .option("--json", "print only the result envelope, as JSON")
    .action((path: string, flags: RunFlags) => runJob(path, flags));
}

/** The job spec a command's flags describe: the tier detected from the code when none is given. */
export async function jobSpecFromFlags(
  path: string,
  flags: Pick<RunFlags, "tier" | "image" | "timeout" | "env" | "workspace" | "datasets" | "json">,
  jobIdPrefix = "run",
): Promise<JobSpecInput> {
  if (flags.tier !== undefined && !isTierName(flags.tier)) {
    throw new UsageError(`--tier must be one of ${TIER_NAMES.join(", ")}, got "${flags.tier}"`);
  }
  await codeKind(path).catch(asUsage);
  let tier = flags.tier;
  if (!tier) {
    const found = await detect(path).catch(asUsage);
    tier = found.tier;
    if (!flags.json) process.stderr.write(`tier ${tier} (detected: ${found.reasons.join("; ")})\n`);
  }
  const spec: JobSpecInput = {
    jobId: `${jobIdPrefix}-${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`,
    code: path,
    tier,
    env: flags.env,
    ...(flags.image && { image: flags.image }),
    ...(flags.timeout && { timeoutSeconds: flags.timeout }),
    ...(flags.workspace && { workspaceDir: flags.workspace }),
    ...(flags.datasets && { datasetsDir: flags.datasets }),
  };
  try {
    checkJobSpec(spec);
  } catch (error) {
    asUsage(error);
  }
  return spec;
}

async function runJob(path: string, flags: RunFlags): Promise<void> {
  const spec = await jobSpecFromFlags(path, flags);

  const display = flags.json ? undefined : new LiveDisplay(Boolean(process.stderr.isTTY));
  const controller = new AbortController();
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: stopping the job (up to ${flags.grace} s for it to checkpoint)...\n`);
    controller.abort(new StopRequest("cancelled", flags.grace));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  let envelope: Envelope;
  try {
    envelope = await new DockerLauncher({ logger: cliLogger(), graceSeconds: flags.grace }).run(spec, {
      signal: controller.signal,
      ...(display && { onLog: display.log, onProgress: display.progress }),
    });
  } finally {
    display?.stop();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  if (flags.json) printJson(envelope);
  else summarize(envelope);
  process.exitCode = envelope.status === "success" ? EXIT.ok : interrupted ? EXIT.interrupted : EXIT.failed;
}

function asUsage(error: unknown): never {
  if (error instanceof CodeError || error instanceof InvalidJobError) throw new UsageError(error.message);
  throw error;
}

function summarize(envelope: Envelope): void {
  const where = `${envelope.systemInfo.tier}, ${envelope.systemInfo.image}`;
  if (envelope.status === "success") {
    process.stderr.write(
      `job ${envelope.jobId} succeeded in ${envelope.executionTime.toFixed(2)} s (${where})\n`,
    );
    process.stdout.write(`${JSON.stringify(envelope.result ?? null, null, 2)}\n`);
    return;
  }
  const error = envelope.error;
  process.stderr.write(
    `job ${envelope.jobId} failed (${envelope.reason}) after ${envelope.executionTime.toFixed(2)} s (${where})` +
      `${error ? `\n${error.type}: ${error.message}` : ""}${error?.traceback ? `\n${error.traceback}` : ""}\n`,
  );
}

/**
 * Live output of a run: the job's lines as they come and, on a terminal, a progress bar under them once
 * the job reports a total. Elsewhere the output passes through untouched.
 */
class LiveDisplay {
  private bars: MultiBar | undefined;
  private bar: ReturnType<MultiBar["create"]> | undefined;
  private readonly partial: Record<StreamName, string> = { stdout: "", stderr: "" };

  /** cli-progress, loaded only for a display on a terminal: `--json` and piped runs draw no bar. */
  private progressBars: typeof CliProgress | undefined;

  constructor(private readonly tty: boolean) {
    if (tty) void import("cli-progress").then((module) => (this.progressBars = module));
  }

  readonly log = (stream: StreamName, text: string): void => {
    if (!this.tty) {
      (stream === "stdout" ? process.stdout : process.stderr).write(text);
      return;
    }
    // On a terminal the bar shows progress reports, and above a bar only whole lines can be printed:
    // hold the rest of a line until its newline comes.
    const lines = (this.partial[stream] + text).split("\n");
    this.partial[stream] = lines.pop()!;
    for (const line of lines) if (!line.startsWith(PROGRESS_PREFIX)) this.print(stream, `${line}\n`);
  };

  private print(stream: StreamName, line: string): void {
    if (this.bars) this.bars.log(line);
    else (stream === "stdout" ? process.stdout : process.stderr).write(line);
  }

  readonly progress = (event: ProgressEvent): void => {
    if (!this.tty || event.step === undefined) return;
    const metrics = Object.entries(event.metrics)
      .map(([k, v]) => `${k} ${Number.isInteger(v) ? v : v.toPrecision(4)}`)
      .join("  ");
    if (!this.bar && event.total !== undefined && event.total > 0) {
      // Until the module is loaded (it is started with a display on a terminal) the bar waits for the next report.
      if (!this.progressBars) return;
      const { MultiBar, Presets } = this.progressBars;
      this.bars = new MultiBar(
        {
          format: " {bar} {value}/{total} | {metrics}",
          hideCursor: true,
          clearOnComplete: false,
          gracefulExit: false,
          stream: process.stderr,
        },
        Presets.shades_classic,
      );
      this.bar = this.bars.create(event.total, 0, { metrics: "" });
    }
    if (event.total !== undefined) this.bar?.setTotal(event.total);
    this.bar?.update(event.step, { metrics });
  };

  stop(): void {
    for (const stream of ["stdout", "stderr"] as const) {
      if (this.partial[stream]) this.print(stream, `${this.partial[stream]}\n`);
    }
    if (!this.bars) return;
    // stop() draws the bar but not the lines still waiting above it.
    this.bars.update();
    this.bars.stop();
  }
}
