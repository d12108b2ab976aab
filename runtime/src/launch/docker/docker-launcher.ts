import Dockerode from "dockerode";
import { constants as fsConstants } from "node:fs";
import { open, rm } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { basename, dirname, join, resolve } from "node:path";
import type { ContainerEngine } from "./container-engine";
import { DockerEngine, isNoSuchContainer } from "./container-engine";
import type { Envelope, JobSpecInput, Launcher, LauncherOptions, LaunchOptions } from "../../job/contract";
import { CONTAINER_PATHS } from "../../job/contract";
import type { PreparedJob } from "../../job/job-spec";
import { disposeJob, InvalidJobError, prepareJob, SCRATCH_PREFIX } from "../../job/job-spec";
import type { Logger } from "../../logger";
import { createLogger } from "../../logger";
import type { RunnerRead, Stop } from "../outcome";
import {
  drain,
  invalidJobEnvelope,
  judge,
  parseRunnerResult,
  runReporting,
  secondsBetween,
  stopFrom,
} from "../outcome";
import {
  checkQuotaSupport,
  createQuotaDir,
  isQuotaDir,
  quotaUsage,
  releaseQuotaDir,
  releaseQuotaDirsUnder,
} from "../quota-volume";
import type { JobUserLease } from "../sandbox";
import { sampleResources } from "../resource-sampler";
import type { GpuUsage } from "../../node/gpu/gpu-usage";
import {
  callerUser,
  containerSpec,
  LABELS,
  leaseJobUser,
  ownerAlive,
  perJobUsers,
  thisProcess,
} from "../sandbox";

export interface DockerLauncherOptions extends LauncherOptions {
  /** The engine to talk to. Defaults to the local one (DOCKER_HOST or the default socket). */
  readonly docker?: Dockerode;
  /** The container operations; defaults to Docker through `docker`. */
  readonly engine?: ContainerEngine;
  /**
   * Whether the workspace the launcher creates for a job is a volume of the tier's `workspaceMiB`
   * (quota-volume.ts). "on" needs root, mkfs.ext4 and loop devices, and a run fails with a clear error
   * without them; "off" lets a job fill the disk its workspace is on (the local CLI as a normal user).
   * Defaults to "on" on a root runtime, "off" otherwise.
   */
  readonly diskQuota?: "on" | "off";
  /** Seconds between samples of a running job's memory and CPU (and GPUs). Defaults to 5. */
  readonly resourceSampleSeconds?: number;
  /** Reads the node's GPUs for jobs of GPU tiers (nvidiaSmiUsage on a GPU node). Defaults to none. */
  readonly gpuUsage?: () => Promise<GpuUsage | undefined>;
}

/** Largest runner.json read back; a bigger result is reported as an error instead of read into memory. */
export const MAX_RUNNER_RESULT_BYTES = 16 * 1024 * 1024;
const DEFAULT_RESOURCE_SAMPLE_SECONDS = 5;
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
  private readonly diskQuota: "on" | "off";
  private quotaSupport: Promise<void> | undefined;

  constructor(private readonly options: DockerLauncherOptions = {}) {
    this.logger = options.logger ?? createLogger();
    this.engine = options.engine ?? new DockerEngine(options.docker ?? new Dockerode(), this.logger);
    this.node = options.node ?? hostname();
    this.graceSeconds = options.graceSeconds ?? 10;
    if (!Number.isFinite(this.graceSeconds) || this.graceSeconds < 0) {
      throw new Error(`graceSeconds must be a number of seconds >= 0, got ${this.graceSeconds}`);
    }
    this.diskQuota = options.diskQuota ?? (perJobUsers() ? "on" : "off");
    if (this.diskQuota === "on" && !perJobUsers()) {
      throw new Error(
        `diskQuota "on" needs a root runtime (it mounts a volume per job); this one runs as uid ${process.getuid?.()}. Run it as root, or pass diskQuota: "off"`,
      );
    }
  }

  async run(input: JobSpecInput, options: LaunchOptions = {}): Promise<Envelope> {
    if (this.diskQuota === "on") {
      this.quotaSupport ??= checkQuotaSupport();
      await this.quotaSupport;
    }
    // A root runtime gives each job a uid of its own; otherwise the job runs as the caller.
    const lease: JobUserLease | undefined = perJobUsers() ? await leaseJobUser(this.owner) : undefined;
    try {
      let job: PreparedJob;
      try {
        job = await prepareJob(input, {
          tierOverrides: this.options.tierOverrides,
          user: lease?.user ?? callerUser(),
          // The workspace volume is made while the container is created (runPrepared).
          workspaceQuota: false,
          ...(this.options.images && { images: this.options.images }),
        });
      } catch (error) {
        if (error instanceof InvalidJobError) return this.invalidJobEnvelope(input, error);
        throw error;
      }
      const log = this.logger.child({ jobId: job.spec.jobId });
      for (const line of job.capped) log.warn(`tier override capped: ${line}`);
      try {
        return await this.runPrepared(job, lease, options, log);
      } finally {
        await disposeJob(job).catch((error: unknown) =>
          log.error({ err: error }, "removing scratch files failed"),
        );
      }
    } finally {
      // Only once the container and the job's files are gone may another job get this uid.
      await lease?.release();
    }
  }

  async gc(): Promise<number> {
    const containers = await this.engine.listByLabel({ [LABELS.managed]: "true" });
    const orphans = containers.filter((c) => {
      const pid = Number(c.Labels[LABELS.ownerPid]);
      if (c.Labels[LABELS.ownerHost] !== this.owner.host || !Number.isInteger(pid)) return false;
      return !ownerAlive(pid, c.Labels[LABELS.ownerStart]);
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

  private async runPrepared(
    job: PreparedJob,
    lease: JobUserLease | undefined,
    options: LaunchOptions,
    log: Logger,
  ): Promise<Envelope> {
    const { spec, tier } = job;
    const ctx = { jobId: spec.jobId };
    const reporting = runReporting(job, this.node, this.options.tailBytes, options);
    const { output, envelope } = reporting;
    const stoppedBeforeStart = (): Envelope =>
      reporting.stoppedBeforeStart(this.stopFrom(options.signal?.reason));
    if (options.signal?.aborted) return stoppedBeforeStart();

    let id: string | undefined;
    /** The workspace volume's release, started once the container has exited. */
    let released: Promise<void> | undefined;
    const stopper = new Stopper(this.engine, ctx, log);
    const onAbort = (): void => stopper.request(this.stopFrom(options.signal?.reason));
    options.signal?.addEventListener("abort", onAbort, { once: true });
    // The workspace the launcher made (not one the caller gave) becomes a volume of the tier's size,
    // mounted on its empty directory while the container is created: Docker binds the directory when
    // the container starts, which waits for the volume.
    const quota = this.diskQuota === "on" && job.spec.workspaceDir === undefined;
    const volume = quota
      ? createQuotaDir(job.workspaceDir, tier.workspaceMiB, lease?.user ?? callerUser())
      : Promise.resolve(undefined);
    // Awaited below on every path; handled now so that a failure while the container is created is not
    // reported as unhandled first.
    volume.catch(() => undefined);
    try {
      try {
        id = await this.engine.create(
          containerSpec({
            jobId: spec.jobId,
            tier,
            image: job.image,
            env: spec.env,
            user: lease?.user ?? callerUser(),
            separateSupervisor: lease !== undefined,
            hostPaths: {
              codeZip: job.codeZip,
              output: job.outputDir,
              workspace: job.workspaceDir,
              ...(job.datasetsDir && { datasets: job.datasetsDir }),
              ...(job.datasetDirs && { namedDatasets: job.datasetDirs }),
              ...(job.environment && { environment: job.environment }),
            },
            owner: this.owner,
            scratchDir: job.scratchDir,
            graceSeconds: this.graceSeconds,
          }),
          ctx,
        );
      } catch (error) {
        // Settled before the job's files are disposed of, so no volume is mounted after its release.
        await volume.catch(() => undefined);
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
      await volume;
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
      const started = id;
      const sampler =
        options.onResources &&
        sampleResources({
          everyMs: (this.options.resourceSampleSeconds ?? DEFAULT_RESOURCE_SAMPLE_SECONDS) * 1000,
          sandbox: () => this.engine.usage(started, ctx),
          ...(tier.gpu && this.options.gpuUsage && { gpu: this.options.gpuUsage }),
          onSample: options.onResources,
          log,
        });
      let waited: number;
      try {
        waited = await this.engine.wait(id, ctx);
      } finally {
        clearTimeout(deadline);
        stopper.finished();
        await sampler?.stop();
      }
      // The container has exited, and its mounts with it: the workspace volume is measured (is it full?)
      // and released while the rest of the run is read and the container removed.
      const measured = this.diskFull(job, log);
      if (quota)
        released = measured
          .then(() => releaseQuotaDir(job.workspaceDir))
          .catch((error: unknown) => {
            log.warn({ err: error }, "releasing the workspace volume failed; retried with the scratch files");
          });
      await drain(attached.ended, log, DRAIN_TIMEOUT_MS);
      output.end();
      const { State: state, Image: imageDigest } = await this.engine.inspect(id, ctx);
      const runner = await readRunnerResult(job.outputDir);
      // A job stopped from outside rarely gets to write its result; only an unexplained absence is news.
      if (runner.problem) {
        log[stopper.delivered ? "debug" : "warn"]({ problem: runner.problem }, "no usable runner result");
      }
      const exitCode = typeof state.ExitCode === "number" ? state.ExitCode : waited;
      const diskFull = await measured;
      const outcome = judge({
        stop: stopper.delivered,
        oom: state.OOMKilled,
        exitCode,
        runner,
        job,
        ...(diskFull && { diskFull }),
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
      const removed = id
        ? this.engine.remove(id, ctx).catch((error: unknown) => {
            log.error(
              { err: error, containerId: id },
              "removing the job's container failed; `crucible gc` will retry",
            );
          })
        : undefined;
      // Without a release started (the container never exited), disposeJob releases the volume once
      // the container is gone.
      await Promise.all([removed, released]);
    }
  }

  /**
   * Whether the job's workspace volume is full now that it has ended, measured here (outside the job):
   * a job that ran into its quota got ENOSPC, and the envelope says why. Undefined without a quota.
   */
  private async diskFull(job: PreparedJob, log: Logger): Promise<{ quotaMiB: number } | undefined> {
    try {
      if (!(await isQuotaDir(job.workspaceDir))) return undefined;
      const usage = await quotaUsage(job.workspaceDir);
      if (!usage.full) return undefined;
      log.info({ freeBytes: usage.freeBytes, sizeBytes: usage.sizeBytes }, "workspace quota full");
      // The quota as declared (tier.workspaceMiB, what the volume was made with), not ext4's usable part.
      return { quotaMiB: job.tier.workspaceMiB };
    } catch (error) {
      log.warn({ err: error }, "could not measure the workspace quota");
      return undefined;
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
 * Reads what the runner wrote, without trusting it: on a root runtime the directory is the supervisor's
 * (root, 0700) and the job cannot write it, but a runtime that is not root shares its uid with the job,
 * so a link (which could point anywhere on the host), a FIFO (which would block) or an oversized file
 * are refused either way.
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

/** Removes a scratch directory named on a container, but only one this runtime could have made. */
async function removeScratch(path: string | undefined): Promise<void> {
  if (!path) return;
  const absolute = resolve(path);
  if (dirname(absolute) !== resolve(tmpdir()) || !basename(absolute).startsWith(SCRATCH_PREFIX)) return;
  // A crashed run's workspace volume is still mounted there: unmount it (and drop its image) first.
  await releaseQuotaDirsUnder(absolute);
  await rm(absolute, { recursive: true, force: true });
}
