import Dockerode from "dockerode";
import { constants as fsConstants, readFileSync } from "node:fs";
import { open, rm } from "node:fs/promises";
import { constants as osConstants, hostname, tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import type { ContainerEngine } from "./container-engine";
import { DockerEngine, isNoSuchContainer } from "./container-engine";
import type {
  Envelope,
  JobSpecInput,
  Launcher,
  LaunchOptions,
  Reason,
  RunnerResult,
  StopReason,
} from "./contract";
import { CONTAINER_PATHS, envelopeSchema, runnerResultSchema, StopRequest } from "./contract";
import type { PreparedJob } from "./job-spec";
import { disposeJob, InvalidJobError, prepareJob, SCRATCH_PREFIX } from "./job-spec";
import type { Logger } from "./logger";
import { createLogger } from "./logger";
import { JobOutput } from "./output";
import type { ProcessOwner } from "./sandbox";
import { containerSpec, LABELS, sandboxUser } from "./sandbox";
import type { ImageFamily } from "./image-matrix";
import type { TierLimits, TierName } from "./tiers";
import { isTierName, TIER_NAMES } from "./tiers";

export interface DockerLauncherOptions {
  /** The engine to talk to. Defaults to the local one (DOCKER_HOST or the default socket). */
  readonly docker?: Dockerode;
  /** The container operations; defaults to Docker through `docker`. */
  readonly engine?: ContainerEngine;
  readonly logger?: Logger;
  /** Name of this node in envelopes. Defaults to the host name. */
  readonly node?: string;
  /** Seconds between SIGTERM and SIGKILL at the deadline, and for stops that give none. Defaults to 10. */
  readonly graceSeconds?: number;
  /** Stack overrides of tier limits; capped at each tier's ceilings. Defaults to none. */
  readonly tierOverrides?: Partial<Record<TierName, Partial<TierLimits>>>;
  /** Bytes of each output stream kept in the envelope. Defaults to 64 KiB. */
  readonly tailBytes?: number;
  /** Images to run per family instead of the local matrix tags. Defaults to none. */
  readonly images?: Partial<Record<ImageFamily, string>>;
}

/** Largest runner.json read back; a bigger result is reported as an error instead of read into memory. */
export const MAX_RUNNER_RESULT_BYTES = 16 * 1024 * 1024;
/** How long after exit the output streams may take to drain before the envelope is written without them. */
const DRAIN_TIMEOUT_MS = 5_000;

interface Stop {
  readonly reason: StopReason | "timeout";
  readonly graceSeconds: number;
}

/**
 * Runs jobs in sandboxed containers on a Docker engine: create, attach, start, stream, wait, with the
 * deadline and stop requests enforced by SIGTERM, a grace period and SIGKILL. Every outcome is an
 * envelope whose measured fields (exit code, OOM, timeout, duration) come from the engine, never from the
 * job; the container and the job's scratch files are removed whatever happens.
 */
export class DockerLauncher implements Launcher {
  private readonly engine: ContainerEngine;
  private readonly logger: Logger;
  private readonly node: string;
  private readonly graceSeconds: number;
  private readonly owner = thisProcess();

  constructor(private readonly options: DockerLauncherOptions = {}) {
    this.logger = options.logger ?? createLogger();
    this.engine = options.engine ?? new DockerEngine(options.docker ?? new Dockerode(), this.logger);
    this.node = options.node ?? hostname();
    this.graceSeconds = options.graceSeconds ?? 10;
    if (!Number.isFinite(this.graceSeconds) || this.graceSeconds < 0) {
      throw new Error(`graceSeconds must be a number of seconds >= 0, got ${this.graceSeconds}`);
    }
  }

  async run(input: JobSpecInput, options: LaunchOptions = {}): Promise<Envelope> {
    let job: PreparedJob;
    try {
      job = await prepareJob(input, {
        tierOverrides: this.options.tierOverrides,
        user: sandboxUser(),
        ...(this.options.images && { images: this.options.images }),
      });
    } catch (error) {
      if (error instanceof InvalidJobError) return this.invalidJobEnvelope(input, error);
      throw error;
    }
    const log = this.logger.child({ jobId: job.spec.jobId });
    for (const line of job.capped) log.warn(`tier override capped: ${line}`);
    try {
      return await this.runPrepared(job, options, log);
    } finally {
      await disposeJob(job).catch((error: unknown) =>
        log.error({ err: error }, "removing scratch files failed"),
      );
    }
  }

  async gc(): Promise<number> {
    const containers = await this.engine.listByLabel({ [LABELS.managed]: "true" });
    const orphans = containers.filter((c) => {
      const pid = Number(c.Labels[LABELS.ownerPid]);
      if (c.Labels[LABELS.ownerHost] !== this.owner.host || !Number.isInteger(pid)) return false;
      const start = c.Labels[LABELS.ownerStart];
      return !processAlive(pid) || (start !== undefined && processStart(pid) !== start);
    });
    const removed = await Promise.all(
      orphans.map(async (c) => {
        const ctx = { jobId: c.Labels[LABELS.jobId] };
        const gone = await this.engine.remove(c.Id, ctx);
        await removeScratch(c.Labels[LABELS.scratch]);
        this.logger.info({ ...ctx, containerId: c.Id.slice(0, 12) }, "removed orphaned job container");
        return gone;
      }),
    );
    return removed.filter(Boolean).length;
  }

  private async runPrepared(job: PreparedJob, options: LaunchOptions, log: Logger): Promise<Envelope> {
    const { spec, tier } = job;
    const ctx = { jobId: spec.jobId };
    const output = new JobOutput({
      jobId: spec.jobId,
      ...(this.options.tailBytes !== undefined && { tailBytes: this.options.tailBytes }),
      ...(options.onLog && { onLog: options.onLog }),
      ...(options.onProgress && { onProgress: options.onProgress }),
    });
    const envelope = (
      fields: Omit<Envelope, "jobId" | "timestamp" | "systemInfo" | "logs"> & {
        python?: string;
        imageDigest?: string;
      },
    ): Envelope => {
      const { python, imageDigest, ...rest } = fields;
      return envelopeSchema.parse({
        jobId: spec.jobId,
        ...rest,
        timestamp: new Date().toISOString(),
        systemInfo: {
          ...(python && { python }),
          jobId: spec.jobId,
          tier: tier.name,
          image: job.image,
          ...(imageDigest && { imageDigest }),
          node: this.node,
        },
        logs: output.logs(),
      });
    };
    const stoppedBeforeStart = (): Envelope => {
      const stop = this.stopFrom(options.signal?.reason);
      return envelope({
        status: "error",
        reason: stop.reason,
        error: { type: "Stopped", message: `the job was stopped (${stop.reason}) before it started` },
        exitCode: null,
        executionTime: 0,
        resources: {},
      });
    };
    if (options.signal?.aborted) return stoppedBeforeStart();

    let id: string | undefined;
    const stopper = new Stopper(this.engine, ctx, log);
    const onAbort = (): void => stopper.request(this.stopFrom(options.signal?.reason));
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      try {
        id = await this.engine.create(
          containerSpec({
            jobId: spec.jobId,
            tier,
            image: job.image,
            env: spec.env,
            user: sandboxUser(),
            hostPaths: {
              codeZip: job.codeZip,
              output: job.outputDir,
              workspace: job.workspaceDir,
              ...(job.datasetsDir && { datasets: job.datasetsDir }),
            },
            owner: this.owner,
            scratchDir: job.scratchDir,
            graceSeconds: this.graceSeconds,
          }),
          ctx,
        );
      } catch (error) {
        if (!isNoSuchContainer(error)) throw error;
        // 404 on create: the image is not on this engine.
        if (job.defaultImage) {
          throw new Error(
            `image ${job.image} (the matrix's image for tier ${tier.name}) is not on this Docker engine; build it with \`npm run images -- build\``,
          );
        }
        return this.invalidJobEnvelope(
          spec,
          new InvalidJobError("image", `image ${job.image} is not on this Docker engine`),
        );
      }
      const attached = await this.engine.attach(id, ctx, (stream, chunk) => output.write(stream, chunk));
      if (stopper.pending) return stoppedBeforeStart();
      await this.engine.start(id, ctx);
      log.info(
        { tier: tier.name, image: job.image, timeoutSeconds: job.timeoutSeconds },
        "container started",
      );
      await stopper.started(id);
      const deadline = setTimeout(
        () => stopper.request({ reason: "timeout", graceSeconds: this.graceSeconds }),
        job.timeoutSeconds * 1000,
      );
      let waited: number;
      try {
        waited = await this.engine.wait(id, ctx);
      } finally {
        clearTimeout(deadline);
        stopper.finished();
      }
      await drain(attached.ended, log);
      output.end();
      const { State: state, Image: imageDigest } = await this.engine.inspect(id, ctx);
      const runner = await readRunnerResult(job.outputDir);
      // A job stopped from outside rarely gets to write its result; only an unexplained absence is news.
      if (runner.problem) {
        log[stopper.delivered ? "debug" : "warn"]({ problem: runner.problem }, "no usable runner result");
      }
      const exitCode = typeof state.ExitCode === "number" ? state.ExitCode : waited;
      const outcome = judge({
        stop: stopper.delivered,
        oom: state.OOMKilled,
        exitCode,
        runner,
        job,
        graceSeconds: this.graceSeconds,
      });
      const result = envelope({
        ...outcome,
        exitCode,
        executionTime: secondsBetween(state.StartedAt, state.FinishedAt),
        resources: runner.result?.resources ?? {},
        ...(output.metrics() && { metrics: output.metrics() }),
        ...(runner.result?.python && { python: runner.result.python }),
        imageDigest,
      });
      log.info(
        { status: result.status, reason: result.reason, exitCode, seconds: result.executionTime },
        "container finished",
      );
      return result;
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
      stopper.finished();
      if (id) {
        await this.engine.remove(id, ctx).catch((error: unknown) => {
          log.error(
            { err: error, containerId: id },
            "removing the job's container failed; `crucible gc` will retry",
          );
        });
      }
    }
  }

  /** What an abort asks for: its {@link StopRequest}, or a cancellation with the default grace. */
  private stopFrom(reason: unknown): Stop {
    if (reason instanceof StopRequest)
      return { reason: reason.reason, graceSeconds: Math.max(0, reason.graceSeconds) };
    return { reason: "cancelled", graceSeconds: this.graceSeconds };
  }

  private invalidJobEnvelope(input: JobSpecInput, error: InvalidJobError): Envelope {
    const jobId = typeof input.jobId === "string" ? input.jobId : "";
    // An envelope names a tier; when the tier itself is what is wrong, the smallest stands in.
    const tier = typeof input.tier === "string" && isTierName(input.tier) ? input.tier : TIER_NAMES[0];
    this.logger.warn({ jobId, field: error.field }, `invalid job: ${error.message}`);
    return envelopeSchema.parse({
      jobId,
      status: "error",
      reason: "invalid_job",
      error: { type: error.name, message: error.message },
      exitCode: null,
      executionTime: 0,
      timestamp: new Date().toISOString(),
      systemInfo: { jobId, tier, image: input.image ?? "", node: this.node },
      resources: {},
      logs: { stdout: "", stderr: "", truncated: false },
    });
  }
}

/**
 * Delivers at most one stop to a container: SIGTERM, then SIGKILL once the grace period is over. A stop
 * asked for before the container started is held and delivered as soon as it has.
 */
class Stopper {
  private id: string | undefined;
  private asked: Stop | undefined;
  private sent: Stop | undefined;
  private killTimer: NodeJS.Timeout | undefined;
  private done = false;

  constructor(
    private readonly engine: ContainerEngine,
    private readonly ctx: { jobId: string },
    private readonly log: Logger,
  ) {}

  /** A stop asked for before the container started: it should not start at all. */
  get pending(): boolean {
    return this.asked !== undefined && this.id === undefined;
  }

  /** The stop that reached the running container, if any; one that found it already exited does not count. */
  get delivered(): Stop | undefined {
    return this.sent;
  }

  request(stop: Stop): void {
    if (this.asked || this.done) return;
    this.asked = stop;
    if (this.id) void this.deliver(this.id, stop);
  }

  async started(id: string): Promise<void> {
    this.id = id;
    if (this.asked) await this.deliver(id, this.asked);
  }

  finished(): void {
    this.done = true;
    clearTimeout(this.killTimer);
  }

  private async deliver(id: string, stop: Stop): Promise<void> {
    this.log.info({ reason: stop.reason, graceSeconds: stop.graceSeconds }, "stopping job");
    try {
      const signal = stop.graceSeconds > 0 ? "SIGTERM" : "SIGKILL";
      if (!(await this.engine.kill(id, signal, this.ctx))) return;
      this.sent = stop;
      if (signal === "SIGKILL" || this.done) return;
      this.killTimer = setTimeout(() => {
        if (this.done) return;
        void this.engine.kill(id, "SIGKILL", this.ctx).catch((error: unknown) => {
          this.log.error({ err: error }, "SIGKILL failed");
        });
      }, stop.graceSeconds * 1000);
    } catch (error) {
      this.log.error({ err: error }, "stopping the job failed");
    }
  }
}

interface Judged {
  readonly status: Envelope["status"];
  readonly reason?: Reason;
  readonly result?: unknown;
  readonly error?: Envelope["error"];
}

/**
 * The outcome, trusting the engine's measurements over anything the job wrote: a stop that reached it,
 * then an OOM kill, then the runner's error, then the exit code; only a clean exit with a runner result
 * of success is a success.
 */
function judge(facts: {
  readonly stop: Stop | undefined;
  readonly oom: boolean;
  readonly exitCode: number;
  readonly runner: RunnerRead;
  readonly job: PreparedJob;
  readonly graceSeconds: number;
}): Judged {
  const { stop, oom, exitCode, runner, job } = facts;
  const { tier } = job;
  if (stop?.reason === "timeout") {
    return {
      status: "error",
      reason: "timeout",
      error: {
        type: "Timeout",
        message: `the job ran past its ${job.timeoutSeconds} s limit (tier ${tier.name}); it got SIGTERM and ${stop.graceSeconds} s before SIGKILL`,
      },
    };
  }
  if (stop) {
    return {
      status: "error",
      reason: stop.reason,
      error: {
        type: "Stopped",
        message: `the job was stopped (${stop.reason}); it got SIGTERM and ${stop.graceSeconds} s to checkpoint before SIGKILL`,
      },
    };
  }
  if (oom) {
    return {
      status: "error",
      reason: "oom",
      error: {
        type: "OutOfMemory",
        message: `the job used more than its ${tier.memoryMiB} MiB memory limit (tier ${tier.name}) and was killed`,
      },
    };
  }
  if (runner.result?.status === "error") {
    return {
      status: "error",
      reason: runner.result.reason ?? "exception",
      error: runner.result.error ?? {
        type: "Error",
        message: "the job failed and its runner gave no details",
      },
    };
  }
  if (exitCode !== 0) {
    const signal = exitCode > 128 ? signalName(exitCode - 128) : undefined;
    return {
      status: "error",
      reason: "exit_code",
      error: {
        type: "ExitCode",
        message: `the job exited with code ${exitCode}${signal ? ` (killed by ${signal})` : ""}${runner.problem ? `; ${runner.problem}` : ""}`,
      },
    };
  }
  if (!runner.result) {
    return {
      status: "error",
      reason: "invalid_job",
      error: {
        type: "NoRunnerResult",
        message: `${job.image} exited without a usable ${CONTAINER_PATHS.runnerResult} (${runner.problem}); is it a Crucible job image?`,
      },
    };
  }
  return { status: "success", result: runner.result.result };
}

interface RunnerRead {
  readonly result?: RunnerResult;
  readonly problem?: string;
}

/**
 * Reads what the runner wrote, without trusting it: the job can write to the same directory, so a link
 * (which could point anywhere on the host), a FIFO (which would block) or an oversized file are refused.
 */
export async function readRunnerResult(outputDir: string): Promise<RunnerRead> {
  const path = join(outputDir, basename(CONTAINER_PATHS.runnerResult));
  let handle;
  try {
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return {
      problem: code === "ENOENT" ? "runner.json is missing" : `runner.json cannot be opened (${code})`,
    };
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) return { problem: "runner.json is not a regular file" };
    if (info.size > MAX_RUNNER_RESULT_BYTES) {
      return {
        problem: `runner.json is ${info.size} bytes, more than the ${MAX_RUNNER_RESULT_BYTES} allowed`,
      };
    }
    const text = (await handle.readFile()).subarray(0, MAX_RUNNER_RESULT_BYTES).toString("utf8");
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return { problem: "runner.json is not valid JSON" };
    }
    const parsed = runnerResultSchema.safeParse(value);
    if (!parsed.success)
      return {
        problem: `runner.json does not match the runner contract: ${parsed.error.issues[0]?.message}`,
      };
    return { result: parsed.data };
  } finally {
    await handle.close();
  }
}

async function drain(ended: Promise<void>, log: Logger): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), DRAIN_TIMEOUT_MS);
  });
  const late = await Promise.race([ended.then(() => false), timedOut]);
  clearTimeout(timer);
  if (late)
    log.warn(`output streams still open ${DRAIN_TIMEOUT_MS} ms after exit; the logs may miss their end`);
}

/** Seconds between two engine timestamps (RFC 3339 with nanoseconds); 0 when the container never ran. */
function secondsBetween(started: string, finished: string): number {
  const a = epochSeconds(started);
  const b = epochSeconds(finished);
  // A container that never ran reports the zero time, year 1.
  if (a === undefined || b === undefined || a <= 0 || b < a) return 0;
  return Math.round((b - a) * 1e6) / 1e6;
}

function epochSeconds(timestamp: string): number | undefined {
  const match = /^(.*T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$/.exec(timestamp);
  if (!match) return undefined;
  const whole = Date.parse(`${match[1]}${match[3]}`);
  return Number.isFinite(whole) ? whole / 1000 + Number(`0.${match[2] ?? "0"}`) : undefined;
}

function signalName(signal: number): string | undefined {
  return Object.entries(osConstants.signals).find(([, n]) => n === signal)?.[0];
}

/** A process's start time in clock ticks after boot (field 22 of /proc/PID/stat), where Linux tells it. */
function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function thisProcess(): ProcessOwner {
  const start = processStart(process.pid);
  return { pid: process.pid, host: hostname(), ...(start !== undefined && { start }) };
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Removes a scratch directory named on a container, but only one this runtime could have made. */
async function removeScratch(path: string | undefined): Promise<void> {
  if (!path) return;
  const absolute = resolve(path);
  if (dirname(absolute) !== resolve(tmpdir()) || !basename(absolute).startsWith(SCRATCH_PREFIX)) return;
  await rm(absolute, { recursive: true, force: true });
}
