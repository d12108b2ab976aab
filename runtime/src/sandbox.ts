import type Dockerode from "dockerode";
import { CONTAINER_PATHS } from "./contract";
import type { Tier, TierLimits, TierName } from "./tiers";
import { getTier } from "./tiers";

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
} as const;

/** Caps of the engine's own copy of a job's output (the runtime keeps its own bounded tails). */
export const LOG_MAX_SIZE = "10m";
export const LOG_MAX_FILES = "2";

export interface SandboxUser {
  readonly uid: number;
  readonly gid: number;
}

/** Who jobs run as when the runtime runs as root: a fixed unprivileged id, never root. */
export const ROOTLESS_FALLBACK_USER: SandboxUser = { uid: 1000, gid: 1000 };

/**
 * Jobs run as the caller's own user, so files they leave in a workspace belong to whoever ran them; a
 * runtime running as root (the agent on a node) runs them as {@link ROOTLESS_FALLBACK_USER} instead.
 */
export function sandboxUser(): SandboxUser {
  const uid = process.getuid?.() ?? 0;
  const gid = process.getgid?.() ?? 0;
  return uid === 0 ? ROOTLESS_FALLBACK_USER : { uid, gid: gid === 0 ? uid : gid };
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
  readonly user: SandboxUser;
  readonly hostPaths: {
    readonly codeZip: string;
    readonly output: string;
    readonly workspace: string;
    readonly datasets?: string;
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

/** The process a container belongs to: alive only while a process with that pid and start time runs. */
export interface ProcessOwner {
  readonly pid: number;
  readonly host: string;
  readonly start?: string;
}

/**
 * The one place a job's container is defined: no network, read-only root, capped `/tmp`, memory without
 * swap, CPU, pids and file limits, no capabilities or privilege gain, an init, private IPC, bounded engine
 * logs, a non-root user, the job's mounts, and GPUs only for GPU tiers.
 */
export function containerSpec(input: SandboxInput): Dockerode.ContainerCreateOptions {
  const { tier, hostPaths } = input;
  const memory = tier.memoryMiB * MiB;
  const fileSize = tier.maxFileSizeMiB * MiB;
  const gpuCount = tier.gpu?.count ?? 0;
  const env = jobEnvironment(input.jobId, tier, input.env);
  return {
    Image: input.image,
    User: `${input.user.uid}:${input.user.gid}`,
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    Labels: {
      [LABELS.managed]: "true",
      [LABELS.jobId]: input.jobId,
      [LABELS.tier]: tier.name,
      [LABELS.ownerPid]: String(input.owner.pid),
      [LABELS.ownerHost]: input.owner.host,
      ...(input.owner.start !== undefined && { [LABELS.ownerStart]: input.owner.start }),
      [LABELS.scratch]: input.scratchDir,
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
      ],
      Memory: memory,
      MemorySwap: memory,
      NanoCpus: Math.round(tier.vcpus * 1e9),
      PidsLimit: tier.pidsLimit,
      CapDrop: ["ALL"],
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
  readonly noNewPrivileges: boolean;
  readonly dockerSocketMounted: boolean;
  readonly gpuCount: number;
  readonly memoryMiB: number;
  readonly pidsLimit: number;
}

/** The facts of a tier's sandbox, read off the very container spec the launcher creates (never restated). */
export function sandboxFacts(name: TierName): SandboxFacts {
  const { tier } = effectiveTier(name);
  const spec = containerSpec({
    jobId: "sandbox-facts",
    tier,
    image: "crucible/facts",
    env: {},
    user: ROOTLESS_FALLBACK_USER,
    hostPaths: { codeZip: "/code.zip", output: "/output", workspace: "/workspace", datasets: "/datasets" },
    owner: { pid: 0, host: "facts" },
    scratchDir: "/scratch",
    graceSeconds: 10,
  });
  const host = spec.HostConfig ?? {};
  // dockerode types these two as any; containerSpec sets both as string lists.
  const capDrop = (host.CapDrop ?? []) as string[];
  const securityOpt = (host.SecurityOpt ?? []) as string[];
  const mounts = [...(host.Mounts ?? []).map((m) => m.Source ?? ""), ...(host.Binds ?? [])];
  return {
    networkMode: host.NetworkMode ?? "default",
    readonlyRootfs: host.ReadonlyRootfs === true,
    privileged: host.Privileged === true,
    capDrop,
    noNewPrivileges: securityOpt.includes("no-new-privileges:true"),
    dockerSocketMounted: mounts.some((m) => m.includes("docker.sock")),
    gpuCount: (host.DeviceRequests ?? []).reduce((n, r) => n + (r.Count ?? 0), 0),
    memoryMiB: (host.Memory ?? 0) / MiB,
    pidsLimit: host.PidsLimit ?? 0,
  };
}
