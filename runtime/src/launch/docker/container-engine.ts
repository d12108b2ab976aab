import type Dockerode from "dockerode";
import type { Logger } from "../../logger";
import type { StreamName } from "../output";
import { isOutputHold } from "../output";

/** Who a call is for: every log line around an engine call carries the job id. */
export interface CallContext {
  readonly jobId?: string;
}

/** Takes a piece of a container's output; an `OutputHold` it returns holds further output back. */
export type OutputSink = (stream: StreamName, chunk: Buffer) => unknown;

export interface AttachedOutput {
  /** Settles once both streams have ended (the container exited) or the connection failed. */
  readonly ended: Promise<void>;
}

/** A running container's use of memory and CPU at one moment. */
export interface ContainerUsage {
  /** Memory in use less the page cache the kernel could reclaim (inactive file pages). */
  readonly memoryBytes: number;
  /** CPU time used since the container started, in nanoseconds: cumulative, so rates come from two. */
  readonly cpuNanos: number;
}

/**
 * The few container operations the runtime needs. Docker implements it below; tests and other launchers
 * use the same shape. Stopping and removing are idempotent: a container that is gone or already stopped
 * is not an error.
 */
export interface ContainerEngine {
  create(options: Dockerode.ContainerCreateOptions, ctx: CallContext): Promise<string>;
  /**
   * Streams the container's stdout and stderr to `onOutput`; attach before start to miss nothing. When
   * `onOutput` returns an `OutputHold` (output.ts), no more is read until it is released: the job waits
   * on its full pipe instead of the runtime buffering what it prints.
   */
  attach(id: string, ctx: CallContext, onOutput: OutputSink): Promise<AttachedOutput>;
  start(id: string, ctx: CallContext): Promise<void>;
  /** Resolves with the exit code once the container is not running. */
  wait(id: string, ctx: CallContext): Promise<number>;
  /** Sends a signal; resolves false when the container was not running (or is gone). */
  kill(id: string, signal: "SIGTERM" | "SIGKILL", ctx: CallContext): Promise<boolean>;
  /** Removes the container, stopping it first if needed; resolves false when it was already gone. */
  remove(id: string, ctx: CallContext): Promise<boolean>;
  inspect(id: string, ctx: CallContext): Promise<Dockerode.ContainerInspectInfo>;
  /** What a running container uses now; undefined once it is not running (or gone). */
  usage(id: string, ctx: CallContext): Promise<ContainerUsage | undefined>;
  /** Containers, running or not, carrying every one of the labels. */
  listByLabel(
    labels: Readonly<Record<string, string>>,
    ctx?: CallContext,
  ): Promise<Dockerode.ContainerInfo[]>;
}

/** Docker's answer for a container that does not exist (or no longer does). */
export function isNoSuchContainer(error: unknown): boolean {
  return statusOf(error) === 404;
}

function statusOf(error: unknown): number | undefined {
  const code = (error as { statusCode?: unknown } | null)?.statusCode;
  return typeof code === "number" ? code : undefined;
}

/** `docker kill` of a stopped container and `docker rm` of one being removed answer 409. */
function isAlreadyDone(error: unknown, what: RegExp): boolean {
  return statusOf(error) === 409 && what.test(String((error as Error).message));
}

/**
 * Docker's multiplexed attach stream split into its frames (an 8-byte header: the stream, 1 or 2, and the
 * payload's big-endian length; then the payload). Payloads are handed on as views of the bytes received,
 * never copied or gathered: a flood costs no memory here beyond the chunk being read. A stream that does
 * not start with a valid header (a TTY's, not multiplexed) is passed through whole as stdout.
 */
export class FrameSplitter {
  private readonly header = Buffer.alloc(8);
  private headerBytes = 0;
  /** Payload bytes of the current frame still to come. */
  private remaining = 0;
  private current: StreamName = "stdout";
  private raw = false;

  push(chunk: Buffer, emit: (stream: StreamName, payload: Buffer) => void): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.raw) {
        emit("stdout", at === 0 ? chunk : chunk.subarray(at));
        return;
      }
      if (this.remaining > 0) {
        const end = Math.min(chunk.length, at + this.remaining);
        this.remaining -= end - at;
        emit(this.current, chunk.subarray(at, end));
        at = end;
        continue;
      }
      const taken = Math.min(8 - this.headerBytes, chunk.length - at);
      chunk.copy(this.header, this.headerBytes, at, at + taken);
      this.headerBytes += taken;
      at += taken;
      if (this.headerBytes < 8) return;
      this.headerBytes = 0;
      const type = this.header[0]!;
      if (type > 2) {
        // Not a frame header: what was taken for one is output too, and so is everything after it.
        this.raw = true;
        emit("stdout", Buffer.from(this.header));
        continue;
      }
      this.current = type === 2 ? "stderr" : "stdout";
      this.remaining = this.header.readUInt32BE(4);
    }
  }
}

export class DockerEngine implements ContainerEngine {
  constructor(
    private readonly docker: Dockerode,
    private readonly logger: Logger,
  ) {}

  async create(options: Dockerode.ContainerCreateOptions, ctx: CallContext): Promise<string> {
    return this.call("create", ctx, undefined, async () => (await this.docker.createContainer(options)).id);
  }

  async attach(id: string, ctx: CallContext, onOutput: OutputSink): Promise<AttachedOutput> {
    const stream = await this.call("attach", ctx, id, () =>
      this.docker.getContainer(id).attach({ stream: true, stdout: true, stderr: true }),
    );
    const frames = new FrameSplitter();
    stream.on("data", (chunk: Buffer) => {
      const holds: Promise<unknown>[] = [];
      frames.push(chunk, (name, payload) => {
        const hold = onOutput(name, payload);
        if (isOutputHold(hold)) holds.push(hold.released);
      });
      if (holds.length === 0) return;
      // Backpressure: the socket stops being read, then dockerd's copy, then the job's write.
      stream.pause();
      const resume = () => void stream.resume();
      Promise.all(holds).then(resume, resume);
    });
    const ended = new Promise<void>((resolve) => {
      stream.once("end", resolve);
      stream.once("close", resolve);
      stream.once("error", (error: Error) => {
        this.logger.warn({ ...ctx, containerId: id, err: error }, "docker attach stream failed");
        resolve();
      });
    });
    return { ended };
  }

  async start(id: string, ctx: CallContext): Promise<void> {
    await this.call("start", ctx, id, () => this.docker.getContainer(id).start());
  }

  async wait(id: string, ctx: CallContext): Promise<number> {
    const result = (await this.call("wait", ctx, id, () => this.docker.getContainer(id).wait())) as {
      StatusCode: number;
    };
    return result.StatusCode;
  }

  async kill(id: string, signal: "SIGTERM" | "SIGKILL", ctx: CallContext): Promise<boolean> {
    return this.call(`kill ${signal}`, ctx, id, async () => {
      try {
        await this.docker.getContainer(id).kill({ signal });
        return true;
      } catch (error) {
        if (isNoSuchContainer(error) || isAlreadyDone(error, /is not running/i)) return false;
        throw error;
      }
    });
  }

  async remove(id: string, ctx: CallContext): Promise<boolean> {
    return this.call("remove", ctx, id, async () => {
      try {
        await this.docker.getContainer(id).remove({ force: true, v: true });
        return true;
      } catch (error) {
        if (isNoSuchContainer(error) || isAlreadyDone(error, /already in progress/i)) return false;
        throw error;
      }
    });
  }

  async inspect(id: string, ctx: CallContext): Promise<Dockerode.ContainerInspectInfo> {
    return this.call("inspect", ctx, id, () => this.docker.getContainer(id).inspect());
  }

  async usage(id: string, ctx: CallContext): Promise<ContainerUsage | undefined> {
    // One-shot: the engine answers from the cgroup at once instead of waiting a second to fill precpu_stats.
    const stats = await this.call("stats", ctx, id, () =>
      this.docker
        .getContainer(id)
        .stats({ stream: false, "one-shot": true })
        .catch((error: unknown) => {
          if (isNoSuchContainer(error)) return undefined;
          throw error;
        }),
    );
    const memory = stats?.memory_stats;
    // A stopped container answers with empty memory stats.
    if (!stats || memory?.usage === undefined) return undefined;
    const cache = memory.stats?.inactive_file ?? memory.stats?.total_inactive_file ?? 0;
    return {
      memoryBytes: Math.max(0, memory.usage - cache),
      cpuNanos: stats.cpu_stats.cpu_usage.total_usage,
    };
  }

  async listByLabel(
    labels: Readonly<Record<string, string>>,
    ctx: CallContext = {},
  ): Promise<Dockerode.ContainerInfo[]> {
    const filters = { label: Object.entries(labels).map(([k, v]) => `${k}=${v}`) };
    return this.call("list", ctx, undefined, () =>
      this.docker.listContainers({ all: true, filters: JSON.stringify(filters) }),
    );
  }

  /** Logs before and after every engine call, with the job and container it concerns and how long it took. */
  private async call<T>(
    op: string,
    ctx: CallContext,
    containerId: string | undefined,
    fn: () => Promise<T>,
  ): Promise<T> {
    const fields = { ...ctx, ...(containerId && { containerId: containerId.slice(0, 12) }), op };
    const started = performance.now();
    this.logger.debug(fields, `docker ${op}`);
    try {
      const result = await fn();
      this.logger.debug({ ...fields, ms: Math.round(performance.now() - started) }, `docker ${op} done`);
      return result;
    } catch (error) {
      this.logger.warn(
        { ...fields, ms: Math.round(performance.now() - started), err: error },
        `docker ${op} failed`,
      );
      throw error;
    }
  }
}
