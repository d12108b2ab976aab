// What another process does with a local platform that runs in the background (local-daemon.ts): find it
// through its data directory, ask it for an identity or its status, start it detached, stop it. Loaded by
// every job command, so it stays light: no fauxqs, no agent, no Docker.
import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, watch } from "node:fs";
import { request } from "node:http";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { z } from "zod";
import { PRIORITIES } from "../catalog/scheduling";
import { TIER_NAMES } from "../catalog/tiers";
import { jobAddressSchema } from "../job/contract";
import { ownerAlive } from "../launch/sandbox";
import type { LocalCredentials } from "./local-gateway";

/** The variable that names the local platform's data directory (default `~/.crucible/local`). */
export const LOCAL_DIR_ENV = "CRUCIBLE_LOCAL_DIR";

/** The data directory: the flag's, else `$CRUCIBLE_LOCAL_DIR`, else `~/.crucible/local`; absolute. */
export function localDir(flag?: string): string {
  const fromEnv = process.env[LOCAL_DIR_ENV];
  return resolve(
    flag ?? (fromEnv === undefined || fromEnv === "" ? join(homedir(), ".crucible", "local") : fromEnv),
  );
}

/** The files of a data directory besides the platform's saved state (`state/`, local-state.ts). */
export interface LocalPaths {
  readonly dir: string;
  /** `<pid> <start>` of the process that serves the directory, from its start until it exits: the lock. */
  readonly pid: string;
  /** The connection ({@link LocalConnection}), written once the platform is ready, removed as it stops. */
  readonly connection: string;
  /** The control socket ({@link control}): only the directory's owner may connect. */
  readonly socket: string;
  /** What `crucible local up` sends the background process's output to. */
  readonly log: string;
}

export function localPaths(dir: string): LocalPaths {
  return {
    dir,
    pid: join(dir, "platform.pid"),
    connection: join(dir, "platform.json"),
    socket: join(dir, "control.sock"),
    log: join(dir, "platform.log"),
  };
}

/** A Unix socket's path must fit in sun_path (108 bytes on Linux, 104 on macOS, with its NUL). */
const MAX_SOCKET_PATH_BYTES = 103;

/** Refuses a data directory whose control socket path would be too long to listen on. */
export function checkSocketPath(paths: LocalPaths): void {
  if (Buffer.byteLength(paths.socket) > MAX_SOCKET_PATH_BYTES)
    throw new Error(
      `the local platform's data directory ${paths.dir} is too long a path for its control socket ` +
        `(${paths.socket} is over ${MAX_SOCKET_PATH_BYTES} bytes): choose a shorter --data-dir or ${LOCAL_DIR_ENV}`,
    );
}

const tierSchema = z.enum(TIER_NAMES);
const queueUrlsSchema = z.record(z.enum(PRIORITIES), z.string());

/** Where a ready local platform is and what it serves, for CLIs in other processes. No secrets. */
export const connectionSchema = z.object({
  pid: z.number().int().positive(),
  startedAt: z.string(),
  endpoint: z.string(),
  region: z.string(),
  bucket: z.string(),
  /** Absent in the connection file of a platform started before datasets existed. */
  datasetsBucket: z.string().optional(),
  /** The tiers its agents serve; only these are offered to submit to. */
  tiers: z.array(tierSchema),
  queues: z.partialRecord(tierSchema, queueUrlsSchema),
});
export type LocalConnection = z.infer<typeof connectionSchema>;

export interface PlatformProcess {
  readonly pid: number;
  /** Its start time where the system tells it (Linux), so a reused pid is not taken for it. */
  readonly start?: string;
}

/** The process the pid file names, alive or not; undefined without a pid file. */
export function readPidFile(paths: LocalPaths): PlatformProcess | undefined {
  let text: string;
  try {
    text = readFileSync(paths.pid, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const [pid, start] = text.trim().split(" ");
  return { pid: Number(pid), ...(start && { start }) };
}

export const isAlive = (owner: PlatformProcess): boolean => ownerAlive(owner.pid, owner.start);

/**
 * The connection of the platform that serves `dir` and is ready; undefined when none does. Files that a
 * platform which died left behind do not count.
 */
export function runningPlatform(dir: string): LocalConnection | undefined {
  const paths = localPaths(dir);
  const owner = readPidFile(paths);
  if (!owner || !isAlive(owner)) return undefined;
  let text: string;
  try {
    text = readFileSync(paths.connection, "utf8");
  } catch (error) {
    // Not ready yet, or stopping.
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
  const parsed = connectionSchema.safeParse(JSON.parse(text));
  if (!parsed.success)
    throw new Error(
      `${paths.connection} is not a local platform's connection: ${parsed.error.issues[0]?.message}`,
    );
  return parsed.data.pid === owner.pid ? parsed.data : undefined;
}

/**
 * Removes the pid, connection and socket files that `owner`, now dead, left by not stopping cleanly,
 * unless another platform holds the directory by now. The data stays.
 */
export function removeLeftovers(paths: LocalPaths, owner: PlatformProcess): void {
  if (readPidFile(paths)?.pid !== owner.pid) return;
  for (const file of [paths.connection, paths.socket, paths.pid]) rmSync(file, { force: true });
}

export const statusSchema = z.object({
  pid: z.number(),
  startedAt: z.string(),
  endpoint: z.string(),
  dataDir: z.string(),
  stopping: z.boolean(),
  tiers: z.array(z.object({ tier: tierSchema, queued: z.number(), running: z.number() })),
});
export type LocalStatus = z.infer<typeof statusSchema>;

export const identityRequestSchema = jobAddressSchema.pick({ project: true, user: true });

const credentialsSchema = z.object({ accessKeyId: z.string(), secretAccessKey: z.string() });
const failureSchema = z.object({ error: z.string().optional() });
const errorSchema = z.object({ error: z.string() });

/** How long a control request may take: each is answered from memory, or after one small write. */
const CONTROL_TIMEOUT_MS = 10_000;

/**
 * One request to the platform's control socket, its JSON answer checked against `schema`. A refused
 * request throws with the platform's reason.
 */
export function control<T>(
  dir: string,
  method: "GET" | "POST",
  path: string,
  schema: z.ZodType<T>,
  body?: unknown,
): Promise<T> {
  const { socket } = localPaths(dir);
  return new Promise<T>((resolvePromise, reject) => {
    const req = request(
      {
        socketPath: socket,
        method,
        path,
        headers: { "content-type": "application/json" },
        timeout: CONTROL_TIMEOUT_MS,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("error", reject);
        res.on("end", () => {
          try {
            const answer: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
            if ((res.statusCode ?? 500) >= 300)
              throw new Error(
                `the local platform refused ${method} ${path}: ${errorSchema.parse(answer).error}`,
              );
            resolvePromise(schema.parse(answer));
          } catch (error) {
            reject(error instanceof Error ? error : new Error(String(error)));
          }
        });
      },
    );
    req.on("timeout", () =>
      req.destroy(
        new Error(
          `the local platform in ${dir} did not answer ${method} ${path} within ${CONTROL_TIMEOUT_MS} ms`,
        ),
      ),
    );
    req.on("error", reject);
    req.end(body === undefined ? undefined : JSON.stringify(body));
  });
}

/** The credentials of a project user's submitter identity on the platform that serves `dir`. */
export function identityOf(dir: string, owner: { project: string; user: string }): Promise<LocalCredentials> {
  return control(dir, "POST", "/identity", credentialsSchema, owner);
}

export function platformStatus(dir: string): Promise<LocalStatus> {
  return control(dir, "GET", "/status", statusSchema);
}

/**
 * Why the platform's agents last failed to run a job outside the job itself (the engine, the store), if
 * they did; such a job's message returns to its queue and no envelope is written.
 */
export async function jobFailure(
  dir: string,
  address: { project: string; user: string; jobId: string },
): Promise<string | undefined> {
  const query = new URLSearchParams(address).toString();
  return (await control(dir, "GET", `/failure?${query}`, failureSchema)).error;
}

/** Waits this long after a `down`'s SIGTERM between looks at whether the process is gone. */
const EXIT_POLL_MS = 100;

/**
 * Starts `command` (the CLI's `local serve` for `dir`) detached, its output appended to the log, and
 * resolves with the connection once it is ready. If it exits first, or is not ready within `timeoutMs`
 * (then it is stopped), rejects with a message that points at the log.
 */
export async function startInBackground(
  dir: string,
  command: { readonly file: string; readonly args: readonly string[] },
  timeoutMs: number,
): Promise<LocalConnection> {
  const paths = localPaths(dir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const log = openSync(paths.log, "a", 0o600);
  let child: ChildProcess;
  try {
    child = spawn(command.file, command.args, { detached: true, stdio: ["ignore", log, log] });
  } finally {
    // The child has its own descriptor now.
    closeSync(log);
  }
  try {
    return await readyOf(child, dir, timeoutMs);
  } finally {
    // Not waited for: this process may exit while the platform runs on.
    child.unref();
  }
}

function readyOf(child: ChildProcess, dir: string, timeoutMs: number): Promise<LocalConnection> {
  const paths = localPaths(dir);
  return new Promise((resolvePromise, reject) => {
    // Watched before the first look, so a connection written in between is not missed.
    const watcher = watch(dir, () => check());
    const timer = setTimeout(() => {
      finish();
      child.kill("SIGTERM");
      reject(
        new Error(
          `the local platform was not ready within ${Math.round(timeoutMs / 1000)} s and was stopped; its log: ${paths.log}`,
        ),
      );
    }, timeoutMs);
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      finish();
      reject(
        new Error(
          `the local platform exited (${signal ?? `code ${code}`}) before it was ready; its log: ${paths.log}`,
        ),
      );
    };
    child.once("exit", onExit);
    const finish = (): void => {
      watcher.close();
      clearTimeout(timer);
      child.off("exit", onExit);
    };
    function check(): void {
      let connection: LocalConnection | undefined;
      try {
        connection = runningPlatform(dir);
      } catch {
        // Read as it was being replaced: the rename that completes it is another event.
        return;
      }
      if (!connection || connection.pid !== child.pid) return;
      finish();
      resolvePromise(connection);
    }
    check();
  });
}

/**
 * Stops the platform that serves `dir`: SIGTERM, which hands running jobs back with their checkpoints
 * and saves the state, then waits until the process is gone (a process not our child cannot be waited
 * on, so its pid is looked at every {@link EXIT_POLL_MS}). Returns the process stopped, or undefined when
 * none ran; the files of one that had died are removed.
 */
export async function stopPlatform(dir: string, timeoutMs: number): Promise<PlatformProcess | undefined> {
  const paths = localPaths(dir);
  const owner = readPidFile(paths);
  if (!owner) return undefined;
  if (!isAlive(owner)) {
    removeLeftovers(paths, owner);
    return undefined;
  }
  process.kill(owner.pid, "SIGTERM");
  const deadline = Date.now() + timeoutMs;
  while (isAlive(owner)) {
    if (Date.now() > deadline)
      throw new Error(
        `the local platform (pid ${owner.pid}) did not stop within ${Math.round(timeoutMs / 1000)} s; ` +
          `its log: ${paths.log}. \`kill -9 ${owner.pid}\` stops it at once (running jobs are then offered again at the next start)`,
      );
    await new Promise((wake) => setTimeout(wake, EXIT_POLL_MS));
  }
  // A clean stop removed them; a crash during the stop did not.
  removeLeftovers(paths, owner);
  return owner;
}
