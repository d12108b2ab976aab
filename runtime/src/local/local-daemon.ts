import Dockerode from "dockerode";
import { rmSync, writeFileSync } from "node:fs";
import { chmod, mkdir, rename, writeFile } from "node:fs/promises";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { createServer } from "node:http";
import { join } from "node:path";
import type { AgentTuning } from "../agent/agent";
import { Agent } from "../agent/agent";
import type { SchedulingPolicy } from "../catalog/scheduling";
import { PRIORITIES } from "../catalog/scheduling";
import type { TierName } from "../catalog/tiers";
import type { ImageFamily } from "../catalog/image-matrix";
import { getTier } from "../catalog/tiers";
import { openNodeDatasets } from "../agent/job-datasets";
import { NodeEnvironments, stackPackageIndex } from "../agent/job-environment";
import { DockerEngine } from "../launch/docker/container-engine";
import type { JobAddress, Launcher } from "../job/contract";
import { processStart } from "../launch/sandbox";
import type { Logger } from "../logger";
import type { LocalConnection, LocalPaths, LocalStatus, PlatformProcess } from "./local-control";
import { checkSocketPath, identityRequestSchema, isAlive, localPaths, readPidFile } from "./local-control";
import { jobAddressSchema } from "../job/contract";
import type { LocalPlatform } from "./local-platform";
import { startLocalPlatform } from "./local-platform";

export interface LocalDaemonOptions {
  readonly dataDir: string;
  /** The tiers its agents serve, one agent each. */
  readonly tiers: readonly TierName[];
  readonly logger: Logger;
  readonly launcher: Launcher;
  readonly policy: SchedulingPolicy;
  /** Agent settings a local platform takes from its caller (the CRUCIBLE_* agent variables). */
  readonly agent?: AgentTuning;
  /**
   * Where job environments' packages come from: a PEP 503 simple index URL (undefined: none, so a job's
   * requirements can name only what its image holds), and the allow and deny lists of package names.
   */
  readonly packages?: { readonly index?: string; readonly allow?: string[]; readonly deny?: string[] };
  /** The image of each family where it is not the local matrix tag. */
  readonly images?: Partial<Record<ImageFamily, string>>;
}

/** A running local platform that other processes reach through its data directory. */
export interface LocalDaemon {
  readonly connection: LocalConnection;
  readonly platform: LocalPlatform;
  /**
   * Agents hand their running jobs back with their checkpoints, then the servers stop and the state is
   * saved; the pid, connection and socket files go last. Calls after the first wait for the same stop.
   */
  stop(): Promise<void>;
}

/** Another process already serves the data directory. */
export class PlatformBusyError extends Error {
  override readonly name = "PlatformBusyError";
  constructor(
    readonly pid: number,
    dir: string,
  ) {
    super(`a local platform (pid ${pid}) already serves ${dir}`);
  }
}

/** Failures remembered for `GET /failure`, oldest forgotten first. */
const MAX_FAILURES = 1000;

/**
 * Serves the local platform for other processes: takes the data directory's pid file (the lock), starts
 * the platform on the directory's saved state and an agent per tier, answers the control socket, and
 * writes the connection file once all of it is ready (what `crucible local up` waits for).
 *
 * Agents poll with 1 s long polls, so a stop is quick, and run one job at a time each unless told
 * otherwise: every tier's agent shares this one machine.
 */
export async function serveLocal(options: LocalDaemonOptions): Promise<LocalDaemon> {
  const { dataDir, tiers, logger, launcher, policy } = options;
  const paths = localPaths(dataDir);
  await mkdir(dataDir, { recursive: true });
  // It holds the identities' keys and the control socket: the owner's only, however it was made.
  await chmod(dataDir, 0o700);
  checkSocketPath(paths);
  const owner = claim(paths);
  let platform: LocalPlatform | undefined;
  try {
    platform = await startLocalPlatform({
      tiers,
      logger,
      weights: policy.weights,
      dataDir,
      ...(options.agent?.visibilitySeconds && { visibilityTimeoutSeconds: options.agent.visibilitySeconds }),
    });
    // A platform killed mid-job left its containers running; their messages are back in the queues.
    const orphans = await launcher.gc();
    if (orphans > 0) logger.warn({ orphans }, "removed job containers of a local platform that died");
    return await serve(options, paths, owner, platform);
  } catch (error) {
    await platform?.stop();
    rmSync(paths.pid, { force: true });
    throw error;
  }
}

async function serve(
  options: LocalDaemonOptions,
  paths: LocalPaths,
  owner: PlatformProcess,
  platform: LocalPlatform,
): Promise<LocalDaemon> {
  const { tiers, logger, launcher, policy } = options;
  const running = new Map<TierName, number>();
  const failures = new Map<string, string>();
  // One cache of each for every tier's agent: they share this machine's disk. Sized as the largest tier's.
  const docker = new Dockerode();
  const datasets = await openNodeDatasets({
    s3: platform.s3,
    bucket: platform.datasetsBucket,
    tier: [...tiers].sort((a, b) => getTier(b).datasetCacheGiB - getTier(a).datasetCacheGiB)[0]!,
    root: join(paths.dir, "dataset-cache"),
    logger,
    docker,
  });
  const environments = await NodeEnvironments.open({
    s3: platform.s3,
    bucket: platform.datasetsBucket,
    tier: [...tiers].sort((a, b) => getTier(b).environmentGiB - getTier(a).environmentGiB)[0]!,
    docker,
    engine: new DockerEngine(docker, logger),
    root: join(paths.dir, "environment-cache"),
    logger,
    ...(options.images && { images: options.images }),
    ...(options.packages?.index && { index: stackPackageIndex(options.packages.index, platform.region) }),
    ...(options.packages?.allow && { allow: options.packages.allow }),
    ...(options.packages?.deny && { deny: options.packages.deny }),
  });
  const agents = tiers.map((tier) => {
    const agent = new Agent({
      tier,
      queues: platform.queues(tier),
      store: platform.store,
      senders: platform.senders,
      datasets,
      environments,
      launcher,
      logger,
      policy,
      concurrency: 1,
      waitSeconds: 1,
      ...options.agent,
    });
    agent.on("load", (count) => running.set(tier, count));
    agent.on("failed", (address, error) => {
      failures.set(failureKey(address), error instanceof Error ? error.message : String(error));
      for (const oldest of failures.keys()) {
        if (failures.size <= MAX_FAILURES) break;
        failures.delete(oldest);
      }
    });
    return agent;
  });
  const runs = agents.map((agent) => agent.run());
  const startedAt = new Date();
  let stopping = false;
  const status = async (): Promise<LocalStatus> => ({
    pid: owner.pid,
    startedAt: startedAt.toISOString(),
    endpoint: platform.endpoint,
    dataDir: paths.dir,
    stopping,
    tiers: await Promise.all(
      tiers.map(async (tier) => ({
        tier,
        queued: (await Promise.all(PRIORITIES.map((p) => platform.queue(tier, p).waiting()))).reduce(
          (a, b) => a + b,
          0,
        ),
        running: running.get(tier) ?? 0,
      })),
    ),
  });
  const stopAgents = async (): Promise<void> => {
    for (const agent of agents) agent.stop("interrupted");
    await Promise.allSettled(runs);
  };
  let control: Server;
  try {
    control = await listenControl(paths, logger, async (method, url, body) => {
      if (method === "GET" && url.pathname === "/status") return status();
      if (method === "POST" && url.pathname === "/identity") {
        const owner = identityRequestSchema.safeParse(body);
        if (!owner.success)
          throw new ControlError(
            400,
            `an identity is asked for a project and a user: ${owner.error.issues[0]?.message}`,
          );
        return platform.credentialsOf(owner.data.project, owner.data.user);
      }
      if (method === "GET" && url.pathname === "/failure") {
        const address = jobAddressSchema.safeParse(Object.fromEntries(url.searchParams));
        if (!address.success)
          throw new ControlError(
            400,
            `a failure is asked for a job's address: ${address.error.issues[0]?.message}`,
          );
        const error = failures.get(failureKey(address.data));
        return error === undefined ? {} : { error };
      }
      throw new ControlError(404, `no ${method} ${url.pathname}`);
    });
  } catch (error) {
    await stopAgents();
    throw error;
  }
  const connection: LocalConnection = {
    pid: owner.pid,
    startedAt: startedAt.toISOString(),
    endpoint: platform.endpoint,
    region: platform.region,
    bucket: platform.bucket,
    datasetsBucket: platform.datasetsBucket,
    tiers: [...tiers],
    queues: platform.queueUrls,
  };
  await writeFile(`${paths.connection}.tmp`, JSON.stringify(connection, null, 2), { mode: 0o600 });
  await rename(`${paths.connection}.tmp`, paths.connection);
  logger.info({ dataDir: paths.dir, endpoint: platform.endpoint, tiers }, "local platform ready");
  let stopped: Promise<void> | undefined;
  const stop = async (): Promise<void> => {
    stopping = true;
    logger.info("local platform stopping");
    await stopAgents();
    await platform.stop();
    control.closeAllConnections();
    await new Promise<void>((resolve) => control.close(() => resolve()));
    rmSync(paths.connection, { force: true });
    rmSync(paths.socket, { force: true });
    rmSync(paths.pid, { force: true });
    logger.info("local platform stopped");
  };
  return {
    connection,
    platform,
    stop: () => (stopped ??= stop()),
  };
}

const failureKey = (address: JobAddress): string => `${address.project}/${address.user}/${address.jobId}`;

/**
 * Takes the data directory: creates its pid file, which must not exist, or name a process that is gone
 * (then that platform's leftover files are removed; its data stays).
 */
function claim(paths: LocalPaths): PlatformProcess {
  const start = processStart(process.pid);
  const me: PlatformProcess = { pid: process.pid, ...(start && { start }) };
  for (;;) {
    try {
      writeFileSync(paths.pid, `${me.pid} ${me.start ?? ""}`.trim(), { flag: "wx", mode: 0o600 });
      return me;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const holder = readPidFile(paths);
    if (holder && isAlive(holder)) throw new PlatformBusyError(holder.pid, paths.dir);
    for (const file of [paths.connection, paths.socket, paths.pid]) rmSync(file, { force: true });
  }
}

class ControlError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Bodies of control requests are a project and a user name. */
const MAX_CONTROL_BODY_BYTES = 64 * 1024;

/** The control socket: JSON in and out; only the data directory's owner reaches it. */
async function listenControl(
  paths: LocalPaths,
  logger: Logger,
  handle: (method: string, url: URL, body: unknown) => Promise<unknown>,
): Promise<Server> {
  const { socket } = paths;
  // The pid file is ours: a socket file here is a dead platform's.
  rmSync(socket, { force: true });
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const reply = (status: number, value: unknown): void => {
      const text = JSON.stringify(value);
      res.writeHead(status, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(text),
      });
      res.end(text);
    };
    readJson(req)
      .then((body) => handle(req.method ?? "GET", new URL(req.url ?? "/", "http://local"), body))
      .then(
        (answer) => reply(200, answer),
        (error: unknown) => {
          if (error instanceof ControlError) return reply(error.status, { error: error.message });
          logger.error({ err: error, url: req.url }, "local control request failed");
          reply(500, { error: error instanceof Error ? error.message : String(error) });
        },
      );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socket, () => {
      server.off("error", reject);
      resolve();
    });
  });
  return server;
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  let text = "";
  for await (const chunk of req) {
    text += (chunk as Buffer).toString("utf8");
    if (text.length > MAX_CONTROL_BODY_BYTES)
      throw new ControlError(413, `a control request is at most ${MAX_CONTROL_BODY_BYTES} bytes`);
  }
  if (text === "") return undefined;
  try {
    return JSON.parse(text);
  } catch {
    throw new ControlError(400, "a control request's body is JSON");
  }
}
