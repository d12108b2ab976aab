import type Dockerode from "dockerode";
import { randomInt } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { hostname } from "node:os";
import { join } from "node:path";
import { CONTAINER_PATHS } from "../job/contract";
import type { Tier, TierLimits, TierName } from "../catalog/tiers";
import { getTier } from "../catalog/tiers";

/** Labels on every container the runtime creates; `crucible gc` finds orphans by them. */
export const LABELS = {
  managed: "crucible.managed",
  jobId: "crucible.job-id",
  tier: "crucible.tier",
  /** The process that owns the container, so a later `gc` can tell whether it is still alive. */
  ownerPid: "crucible.owner-pid",
  ownerHost: "crucible.owner-host",
  /**
   * When the owner started (Linux: clock ticks after boot). A restarted agent container reuses its
   * predecessor's pid, so the pid alone would keep a dead agent's containers looking owned.
   */
  ownerStart: "crucible.owner-start",
  /** Host directory with the job's code zip and output, removed with the container. */
  scratch: "crucible.scratch",
  /** The uid the job runs as (a lease of {@link JOB_UID_POOL} on a root runtime). */
  jobUid: "crucible.job-uid",
  /** What a container that runs no job is for (`copy-out`: reading files out of an image). */
  purpose: "crucible.purpose",
} as const;

/** Caps of the engine's own copy of a job's output (the runtime keeps its own bounded tails). */
export const LOG_MAX_SIZE = "10m";
export const LOG_MAX_FILES = "2";

export interface SandboxUser {
  readonly uid: number;
  readonly gid: number;
}

/**
 * The images' own job user (`useradd --uid 1000` in images/*): who a Kubernetes pod runs as, where the
 * pod is the boundary between jobs. Never used for a Docker job on a root runtime: uid 1000 is
 * `ec2-user` on the nodes' AMI.
 */
export const ROOTLESS_FALLBACK_USER: SandboxUser = { uid: 1000, gid: 1000 };

/**
 * The uids (and gids, the same numbers) running jobs get, one each, on a root runtime: 600000-665535,
 * inside the range systemd documents for container uids (524288-1879048191, "Users, Groups, UIDs and
 * GIDs on systemd Systems"), so never a host user (regular users are 1000-60000, 65534 is nobody), a
 * system or dynamic user, nor the first user's default `/etc/subuid` range (100000-165535).
 */
export const JOB_UID_POOL = { first: 600_000, size: 65_536 } as const;

/**
 * Capabilities the container starts with (all others dropped, no-new-privileges kept) on a root runtime:
 * its supervisor stays uid 0 with only these, so a job (another uid, no capabilities) can neither signal,
 * ptrace nor read the `/proc` of it or of the container's init. SETUID and SETGID let it start the job as
 * the job's uid (setgroups, setgid, setuid); KILL lets it forward SIGTERM to a process of another uid so
 * the job can checkpoint. The job loses all of them at setuid and cannot regain them (no-new-privileges).
 */
export const SUPERVISOR_CAPABILITIES = ["KILL", "SETGID", "SETUID"] as const;

/** Where a root runtime records which job uids are leased, one file per uid: `<uid>` holding `<pid> <start>`. */
export const JOB_UID_LEASES = "/run/crucible/job-uids";

/**
 * Whether jobs get their own uid with a supervisor apart from them: only a root runtime can hand a
 * directory to another uid. A runtime that is not root (the local CLI) runs jobs as its caller, as before.
 */
export function perJobUsers(): boolean {
  return process.getuid?.() === 0;
}

/** The caller's own user: who jobs run as when the runtime is not root. */
export function callerUser(): SandboxUser {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  return { uid, gid: gid === 0 ? uid : gid };
}

/**
 * The one user of a container whose supervisor and job share a uid ({@link SandboxInput.separateSupervisor}
 * false): the caller, or the images' user on a root runtime (which the launcher itself never uses: it
 * leases a uid per job). For tools that build a container without the launcher (scripts/bench.ts).
 */
export function sandboxUser(): SandboxUser {
  return perJobUsers() ? ROOTLESS_FALLBACK_USER : callerUser();
}

/** A job's uid for as long as it runs; release it once its container and files are gone. */
export interface JobUserLease {
  readonly user: SandboxUser;
  /** Idempotent. */
  release(): Promise<void>;
}

/**
 * Leases a uid of {@link JOB_UID_POOL} (or `pool`, in tests) no other running job holds, across processes: a lease is a file
 * created exclusively under `dir`, naming its holder; a holder that is gone (or was restarted, same pid
 * with another start time) loses its leases to the next caller.
 */
export async function leaseJobUser(
  holder: ProcessOwner,
  options: { readonly dir?: string; readonly pool?: { readonly first: number; readonly size: number } } = {},
): Promise<JobUserLease> {
  const { dir, pool } = { dir: JOB_UID_LEASES, pool: JOB_UID_POOL, ...options };
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const offset = randomInt(pool.size);
  for (let i = 0; i < pool.size; i++) {
    const uid = pool.first + ((offset + i) % pool.size);
    const path = join(dir, String(uid));
    if (!(await claim(path, holder))) continue;
    let released = false;
    return {
      user: { uid, gid: uid },
      async release() {
        if (released) return;
        released = true;
        await rm(path, { force: true });
      },
    };
  }
  throw new Error(`all ${pool.size} job uids are leased (${dir}); is something leaking leases?`);
}

async function claim(path: string, holder: ProcessOwner): Promise<boolean> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      await writeFile(path, `${holder.pid} ${holder.start ?? ""}\n`, { flag: "wx", mode: 0o600 });
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
    }
    const [pid, start] = (await readFile(path, "utf8").catch(() => "")).trim().split(" ");
    if (ownerAlive(Number(pid), start || undefined)) return false;
    await rm(path, { force: true });
  }
  return false;
}

/** Whether a process with this pid (and, when given, this start time) still runs. */
export function ownerAlive(pid: number, start: string | undefined): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (!processAlive(pid)) return false;
  return start === undefined || processStart(pid) === start;
}

/** A process's start time in clock ticks after boot (field 22 of /proc/PID/stat), where Linux tells it. */
export function processStart(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Limits of a tier after a stack's overrides, and which overrides were cut down to the tier's ceilings. */
export interface EffectiveTier {
  readonly tier: Tier;
  /** One line per override that asked for more than allowed. */
  readonly capped: readonly string[];
}

/**
 * Applies overrides to a tier's limits, never beyond its ceilings: memory, vCPUs and runtime up to the
 * tier's declared ceilings, the other limits (which have no declared ceiling) up to the catalog's value.
 * `/tmp` never exceeds the memory limit, since tmpfs pages count against it.
 */
export function effectiveTier(name: TierName, overrides: Partial<TierLimits> = {}): EffectiveTier {
  const base = getTier(name);
  const capped: string[] = [];
  const limit = (key: keyof TierLimits, ceiling: number): number => {
    const asked = overrides[key];
    if (asked === undefined) return Math.min(base[key], ceiling);
    if (!Number.isFinite(asked) || asked <= 0) {
      throw new Error(`tier override ${name}.${key} must be a positive number, got ${String(asked)}`);
    }
    if (asked > ceiling) capped.push(`${name}.${key}: asked ${asked}, capped at ${ceiling}`);
    return Math.min(asked, ceiling);
  };
  const memoryMiB = limit("memoryMiB", base.ceilings.memoryMiB);
  const tier: Tier = {
    ...base,
    memoryMiB,
    vcpus: limit("vcpus", base.ceilings.vcpus),
    maxRuntimeSeconds: limit("maxRuntimeSeconds", base.ceilings.maxRuntimeSeconds),
    pidsLimit: Math.floor(limit("pidsLimit", base.pidsLimit)),
    tmpfsMiB: Math.floor(limit("tmpfsMiB", Math.min(base.tmpfsMiB, memoryMiB))),
    maxFileSizeMiB: limit("maxFileSizeMiB", base.maxFileSizeMiB),
    openFiles: Math.floor(limit("openFiles", base.openFiles)),
    workspaceMiB: Math.floor(limit("workspaceMiB", base.workspaceMiB)),
  };
  return { tier, capped };
}

/** Everything a job's container is made from. */
export interface SandboxInput {
  readonly jobId: string;
  /** The tier with its effective limits ({@link effectiveTier}). */
  readonly tier: Tier;
  readonly image: string;
  /** The job's own variables, already validated against the reserved names. */
  readonly env: Readonly<Record<string, string>>;
  /** The job's own uid and gid. */
  readonly user: SandboxUser;
  /**
   * True on a root runtime: the container starts as uid 0 with only {@link SUPERVISOR_CAPABILITIES}, and
   * its supervisor runs the job as `user`. False: the whole container runs as `user` (a runtime that is
   * not root; the job can then trace its own supervisor, as it runs as the same uid). Defaults to false.
   */
  readonly separateSupervisor?: boolean;
  readonly hostPaths: {
    readonly codeZip: string;
    readonly output: string;
    readonly workspace: string;
    readonly datasets?: string;
    /** Name → directory, each mounted read-only at /datasets/<name> (contract.ts `datasetDirs`). */
    readonly namedDatasets?: Readonly<Record<string, string>>;
    /** The job's environment, mounted read-only, its `pythonPath` first on the job's Python path. */
    readonly environment?: { readonly dir: string; readonly pythonPath: readonly string[] };
  };
  readonly owner: ProcessOwner;
  readonly scratchDir: string;
  /** Seconds between SIGTERM and SIGKILL when the engine itself stops the container. */
  readonly graceSeconds: number;
}

const MiB = 1024 * 1024;

/** A job's environment: its own variables, then the runtime's, which it cannot override. */
export function jobEnvironment(
  jobId: string,
  tier: Tier,
  own: Readonly<Record<string, string>>,
): Record<string, string> {
  const gpuCount = tier.gpu?.count ?? 0;
  return {
    ...own,
    CRUCIBLE_JOB_ID: jobId,
    CRUCIBLE_TIER: tier.name,
    CRUCIBLE_CHECKPOINT_DIR: CONTAINER_PATHS.checkpoints,
    // The root filesystem is read-only: tools that write under $HOME get the tmpfs instead.
    HOME: CONTAINER_PATHS.tmp,
    ...(gpuCount > 0 && { CUDA_VISIBLE_DEVICES: Array.from({ length: gpuCount }, (_, i) => i).join(",") }),
  };
}

/**
 * A job's whole environment as its container gets it, on either launcher: {@link jobEnvironment}, and
 * its job environment's directories first on the Python path when it has one.
 */
export function sandboxEnvironment(
  jobId: string,
  tier: Tier,
  own: Readonly<Record<string, string>>,
  environment: { readonly pythonPath: readonly string[] } | undefined,
): Record<string, string> {
  return {
    ...jobEnvironment(jobId, tier, own),
    ...(environment && {
      PYTHONPATH: environment.pythonPath.map((p) => `${CONTAINER_PATHS.environment}/${p}`).join(":"),
    }),
  };
}

/** The process a container belongs to: alive only while a process with that pid and start time runs. */
export interface ProcessOwner {
  readonly pid: number;
  readonly host: string;
  readonly start?: string;
}

/** This process, as the labels of what it creates name their owner. */
export function thisProcess(): ProcessOwner {
  const start = processStart(process.pid);
  return { pid: process.pid, host: hostname(), ...(start !== undefined && { start }) };
}

/** The labels that let a later `crucible gc` tell whether a container's owner is still alive. */
export function ownerLabels(owner: ProcessOwner): Record<string, string> {
  return {
    [LABELS.ownerPid]: String(owner.pid),
    [LABELS.ownerHost]: owner.host,
    ...(owner.start !== undefined && { [LABELS.ownerStart]: owner.start }),
  };
}

/**
 * The one place a job's container is defined: no network, read-only root, capped `/tmp`, memory without
 * swap, CPU, pids and file limits, no capabilities (but the supervisor's three, when it runs apart from
 * the job) or privilege gain, an init, private IPC, bounded engine logs, the job's own non-root user, the
 * job's mounts, and GPUs only for GPU tiers.
 */
export function containerSpec(input: SandboxInput): Dockerode.ContainerCreateOptions {
  const { tier, hostPaths } = input;
  const memory = tier.memoryMiB * MiB;
  const fileSize = tier.maxFileSizeMiB * MiB;
  const gpuCount = tier.gpu?.count ?? 0;
  const environment = hostPaths.environment;
  const env = sandboxEnvironment(input.jobId, tier, input.env, environment);
  return {
    Image: input.image,
    // Apart: the supervisor (images/runner/supervise.py) starts as root and drops the job to its uid.
    User: input.separateSupervisor === true ? "0:0" : `${input.user.uid}:${input.user.gid}`,
    ...(input.separateSupervisor && { Cmd: ["--job-user", `${input.user.uid}:${input.user.gid}`] }),
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    Labels: {
      [LABELS.managed]: "true",
      [LABELS.jobId]: input.jobId,
      [LABELS.tier]: tier.name,
      ...ownerLabels(input.owner),
      [LABELS.scratch]: input.scratchDir,
      [LABELS.jobUid]: String(input.user.uid),
    },
    AttachStdin: false,
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    OpenStdin: false,
    NetworkDisabled: true,
    StopSignal: "SIGTERM",
    StopTimeout: input.graceSeconds,
    HostConfig: {
      NetworkMode: "none",
      ReadonlyRootfs: true,
      Tmpfs: { [CONTAINER_PATHS.tmp]: `rw,nosuid,nodev,size=${tier.tmpfsMiB}m,mode=1777` },
      Mounts: [
        { Type: "bind", Source: hostPaths.codeZip, Target: CONTAINER_PATHS.code, ReadOnly: true },
        { Type: "bind", Source: hostPaths.output, Target: CONTAINER_PATHS.output, ReadOnly: false },
        { Type: "bind", Source: hostPaths.workspace, Target: CONTAINER_PATHS.workspace, ReadOnly: false },
        ...(hostPaths.datasets
          ? [
              {
                Type: "bind" as const,
                Source: hostPaths.datasets,
                Target: CONTAINER_PATHS.datasets,
                ReadOnly: true,
              },
            ]
          : []),
        ...Object.entries(hostPaths.namedDatasets ?? {}).map(([name, source]) => ({
          Type: "bind" as const,
          Source: source,
          Target: `${CONTAINER_PATHS.datasets}/${name}`,
          ReadOnly: true,
        })),
        ...(environment
          ? [
              {
                Type: "bind" as const,
                Source: environment.dir,
                Target: CONTAINER_PATHS.environment,
                ReadOnly: true,
              },
            ]
          : []),
      ],
      Memory: memory,
      MemorySwap: memory,
      NanoCpus: Math.round(tier.vcpus * 1e9),
      PidsLimit: tier.pidsLimit,
      CapDrop: ["ALL"],
      ...(input.separateSupervisor && { CapAdd: [...SUPERVISOR_CAPABILITIES] }),
      SecurityOpt: ["no-new-privileges:true"],
      Privileged: false,
      Ulimits: [
        { Name: "nofile", Soft: tier.openFiles, Hard: tier.openFiles },
        { Name: "fsize", Soft: fileSize, Hard: fileSize },
      ],
      Init: true,
      IpcMode: "private",
      LogConfig: { Type: "json-file", Config: { "max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILES } },
      AutoRemove: false,
      ...(gpuCount > 0 && { DeviceRequests: [{ Driver: "", Count: gpuCount, Capabilities: [["gpu"]] }] }),
    },
  };
}

/** What a tier's sandbox guarantees, as the fleet publishes it for the policy pack to check. */
export interface SandboxFacts {
  readonly networkMode: string;
  readonly readonlyRootfs: boolean;
  readonly privileged: boolean;
  readonly capDrop: readonly string[];
  /** Capabilities kept: only the supervisor's ({@link SUPERVISOR_CAPABILITIES}); the job has none. */
  readonly capAdd: readonly string[];
  /** Whether each job runs as a uid of its own, apart from its supervisor. */
  readonly perJobUser: boolean;
  readonly noNewPrivileges: boolean;
  readonly dockerSocketMounted: boolean;
  readonly gpuCount: number;
  readonly memoryMiB: number;
  readonly pidsLimit: number;
}

/**
 * The facts of a tier's sandbox on a node (a root runtime: per-job uids), read off the very container spec
 * the launcher creates (never restated).
 */
export function sandboxFacts(name: TierName): SandboxFacts {
  const { tier } = effectiveTier(name);
  const spec = containerSpec({
    jobId: "sandbox-facts",
    tier,
    image: "crucible/facts",
    env: {},
    user: { uid: JOB_UID_POOL.first, gid: JOB_UID_POOL.first },
    separateSupervisor: true,
    hostPaths: { codeZip: "/code.zip", output: "/output", workspace: "/workspace", datasets: "/datasets" },
    owner: { pid: 0, host: "facts" },
    scratchDir: "/scratch",
    graceSeconds: 10,
  });
  const host = spec.HostConfig ?? {};
  // dockerode types these two as any; containerSpec sets both as string lists.
  const capDrop = (host.CapDrop ?? []) as string[];
  const capAdd = (host.CapAdd ?? []) as string[];
  const securityOpt = (host.SecurityOpt ?? []) as string[];
  const mounts = [...(host.Mounts ?? []).map((m) => m.Source ?? ""), ...(host.Binds ?? [])];
  return {
    networkMode: host.NetworkMode ?? "default",
    readonlyRootfs: host.ReadonlyRootfs === true,
    privileged: host.Privileged === true,
    capDrop,
    capAdd,
    perJobUser: spec.User === "0:0" && (spec.Cmd ?? []).includes("--job-user"),
    noNewPrivileges: securityOpt.includes("no-new-privileges:true"),
    dockerSocketMounted: mounts.some((m) => m.includes("docker.sock")),
    gpuCount: (host.DeviceRequests ?? []).reduce((n, r) => n + (r.Count ?? 0), 0),
    memoryMiB: (host.Memory ?? 0) / MiB,
    pidsLimit: host.PidsLimit ?? 0,
  };
}
