import type Dockerode from "dockerode";
import { Writable } from "node:stream";
import type { Logger } from "../../logger";
import type { StreamName } from "../output";

/** Who a call is for: every log line around an engine call carries the job id. */
export interface CallContext {
  readonly jobId?: string;
}

export interface AttachedOutput {
  /** Settles once both streams have ended (the container exited) or the connection failed. */
  readonly ended: Promise<void>;
}

/**
 * The few container operations the runtime needs. Docker implements it below; tests and other launchers
 * use the same shape. Stopping and removing are idempotent: a container that is gone or already stopped
 * is not an error.
 */
export interface ContainerEngine {
  create(options: Dockerode.ContainerCreateOptions, ctx: CallContext): Promise<string>;
  /** Streams the container's stdout and stderr to `onOutput`; attach before start to miss nothing. */
  attach(
    id: string,
    ctx: CallContext,
    onOutput: (stream: StreamName, chunk: Buffer) => void,
  ): Promise<AttachedOutput>;
  start(id: string, ctx: CallContext): Promise<void>;
  /** Resolves with the exit code once the container is not running. */
  wait(id: string, ctx: CallContext): Promise<number>;
  /** Sends a signal; resolves false when the container was not running (or is gone). */
  kill(id: string, signal: "SIGTERM" | "SIGKILL", ctx: CallContext): Promise<boolean>;
  /** Removes the container, stopping it first if needed; resolves false when it was already gone. */
  remove(id: string, ctx: CallContext): Promise<boolean>;
  inspect(id: string, ctx: CallContext): Promise<Dockerode.ContainerInspectInfo>;
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

export class DockerEngine implements ContainerEngine {
  constructor(
    private readonly docker: Dockerode,
    private readonly logger: Logger,
  ) {}

  async create(options: Dockerode.ContainerCreateOptions, ctx: CallContext): Promise<string> {
    return this.call("create", ctx, undefined, async () => (await this.docker.createContainer(options)).id);
  }

  async attach(
    id: string,
    ctx: CallContext,
    onOutput: (stream: StreamName, chunk: Buffer) => void,
  ): Promise<AttachedOutput> {
    const stream = await this.call("attach", ctx, id, () =>
      this.docker.getContainer(id).attach({ stream: true, stdout: true, stderr: true }),
    );
    const sink = (name: StreamName): Writable =>
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          onOutput(name, chunk);
          callback();
        },
      });
    this.docker.modem.demuxStream(stream, sink("stdout"), sink("stderr"));
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
