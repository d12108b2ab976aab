// Shared by the tests of the local platform as a background process (local-daemon.test.ts) and of
// `crucible local run` (test/runtime/cli/local.test.ts): the CLI pointed at a scratch data directory,
// and what is left of a platform once a command says it stopped.
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { DEFAULT_SCHEDULING } from "../../../runtime/src/catalog/scheduling";
import { localPlatform } from "../../../runtime/src/cli/commands/platform-access";
import type { PlatformProcess } from "../../../runtime/src/local/local-control";
import {
  isAlive,
  localPaths,
  readPidFile,
  runningPlatform,
  stopPlatform,
} from "../../../runtime/src/local/local-control";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import type { JobStore } from "../../../runtime/src/store/job-store";
import { crucible } from "../../support/cli";

export const OWNER = { project: "lab", user: "ada" } as const;

/** A scratch data directory and job code; `cli` runs the CLI against them as OWNER, with no stack configured. */
export interface LocalScratch {
  readonly dir: string;
  readonly code: string;
  cli(args: string[], env?: NodeJS.ProcessEnv): ReturnType<typeof crucible>;
  /** Stops any platform left in the directory and removes it. */
  remove(): Promise<void>;
}

export async function localScratch(jobs: Record<string, string>): Promise<LocalScratch> {
  const root = await mkdtemp(join(tmpdir(), "crucible-local-test-"));
  const dir = join(root, "data");
  const code = join(root, "code");
  for (const [name, source] of Object.entries(jobs)) {
    await mkdir(join(code, name), { recursive: true });
    await writeFile(join(code, name, "main.py"), source);
  }
  const env = {
    CRUCIBLE_LOCAL_DIR: dir,
    CRUCIBLE_PROJECT: OWNER.project,
    CRUCIBLE_USER: OWNER.user,
    CRUCIBLE_BUCKET: "",
    CRUCIBLE_LOCAL: "",
    // Agent timings for tests, as FAST_AGENT: each step shows within seconds.
    CRUCIBLE_HEARTBEAT_SECONDS: "1",
    CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS: "5",
    CRUCIBLE_CHECKPOINT_SECONDS: "1",
    CRUCIBLE_GRACE_SECONDS: "5",
    CRUCIBLE_WORKSPACE_MIB: "64",
  };
  return {
    dir,
    code,
    cli: (args, extra = {}) => crucible(args, undefined, { ...env, ...extra }),
    async remove() {
      await stopPlatform(dir, 60_000);
      await rm(root, { recursive: true, force: true });
    },
  };
}

/** The store of the platform that serves `dir`, as OWNER reaches it (through the control socket's identity). */
export function storeOf(dir: string): JobStore {
  const connection = runningPlatform(dir);
  if (!connection) throw new Error(`no local platform runs in ${dir}`);
  return localPlatform(dir, connection, pino({ level: "silent" }), DEFAULT_SCHEDULING.weights, () => OWNER)
    .store;
}

export const addressOf = (jobId: string): JobAddress => ({ ...OWNER, jobId });

/** Resolves with `look`'s first defined answer, looking every 250 ms; fails after `timeoutMs`. */
export async function until<T>(
  what: string,
  look: () => Promise<T | undefined>,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = await look();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((wake) => setTimeout(wake, 250));
  }
}

/** The platform process of `dir`, read from its pid file while it runs. */
export function platformProcess(dir: string): PlatformProcess {
  const owner = readPidFile(localPaths(dir));
  if (!owner) throw new Error(`no pid file in ${dir}`);
  return owner;
}

/** Whether a process is gone, as `process.kill(pid, 0)` tells. */
export function gone(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "ESRCH";
  }
}

/** Nothing of a platform is left running in `dir`: no pid, connection or socket file, its process gone. */
export function nothingRuns(
  dir: string,
  pid: number,
): { pidFile: boolean; connection: boolean; socket: boolean; alive: boolean } {
  const paths = localPaths(dir);
  return {
    pidFile: existsSync(paths.pid),
    connection: existsSync(paths.connection),
    socket: existsSync(paths.socket),
    alive: !gone(pid) && isAlive({ pid }),
  };
}

export const NOTHING_RUNS = { pidFile: false, connection: false, socket: false, alive: false };
