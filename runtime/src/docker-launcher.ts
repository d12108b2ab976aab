import Dockerode from "dockerode";
import { constants as fsConstants, readFileSync } from "node:fs";
import { open, rm } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import type { ContainerEngine } from "./container-engine";
import { DockerEngine, isNoSuchContainer } from "./container-engine";
import type { Envelope, JobSpecInput, Launcher, LauncherOptions, LaunchOptions } from "./contract";
import { CONTAINER_PATHS } from "./contract";
import type { PreparedJob } from "./job-spec";
import { disposeJob, InvalidJobError, prepareJob, SCRATCH_PREFIX } from "./job-spec";
import type { Logger } from "./logger";
import { createLogger } from "./logger";
import type { RunnerRead, Stop } from "./outcome";
import {
  drain,
  invalidJobEnvelope,
  judge,
  parseRunnerResult,
  runReporting,
  secondsBetween,
  stopFrom,
} from "./outcome";
import type { ProcessOwner } from "./sandbox";
import { containerSpec, LABELS, sandboxUser } from "./sandbox";

export interface DockerLauncherOptions extends LauncherOptions {
  /** The engine to talk to. Defaults to the local one (DOCKER_HOST or the default socket). */
  readonly docker?: Dockerode;
  /** The container operations; defaults to Docker through `docker`. */
  readonly engine?: ContainerEngine;
}

/** Largest runner.json read back; a bigger result is reported as an error instead of read into memory. */
export const MAX_RUNNER_RESULT_BYTES = 16 * 1024 * 1024;
/** How long after exit the output streams may take to drain before the envelope is written without them. */
const DRAIN_TIMEOUT_MS = 5_000;

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
    const reporting = runReporting(job, this.node, this.options.tailBytes, options);
    const { output, envelope } = reporting;
    const stoppedBeforeStart = (): Envelope =>
      reporting.stoppedBeforeStart(this.stopFrom(options.signal?.reason));
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
      await drain(attached.ended, log, DRAIN_TIMEOUT_MS);
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

  private stopFrom(reason: unknown): Stop {
    return stopFrom(reason, this.graceSeconds);
  }

  private invalidJobEnvelope(input: JobSpecInput, error: InvalidJobError): Envelope {
    return invalidJobEnvelope(input, error, this.node, this.logger);
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
    return parseRunnerResult((await handle.readFile()).subarray(0, MAX_RUNNER_RESULT_BYTES).toString("utf8"));
  } finally {
    await handle.close();
  }
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
