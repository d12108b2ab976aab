import { getInstanceType, isGpuInstanceType } from "./instance-types";

/** The resource tiers a job can ask for, smallest first. */
export const TIER_NAMES = ["cpu-small", "cpu-large", "gpu-small", "gpu-medium", "gpu-large"] as const;
export type TierName = (typeof TIER_NAMES)[number];

export interface GpuSpec {
  readonly count: number;
  /** Memory of each GPU, in GB. */
  readonly memoryGB: number;
}

/** What one job of a tier may use; the sandbox turns these into container limits. */
export interface TierLimits {
  readonly memoryMiB: number;
  readonly vcpus: number;
  readonly maxRuntimeSeconds: number;
  readonly pidsLimit: number;
  readonly tmpfsMiB: number;
  /** Largest single file a job may write (RLIMIT_FSIZE). */
  readonly maxFileSizeMiB: number;
  readonly openFiles: number;
  /**
   * Size of the job's writable disk space (`/workspace`), a volume of its own: past it writes fail with
   * ENOSPC and the envelope says the quota was reached; the node's own disk is never touched.
   */
  readonly workspaceMiB: number;
}

export interface Tier extends TierLimits {
  readonly name: TierName;
  readonly description: string;
  readonly gpu?: GpuSpec;
  /** Default node instance types, preferred first; spot groups diversify across all of them. */
  readonly instanceTypes: readonly string[];
  /** Every instance type a stack may choose for this tier. */
  readonly allowedInstanceTypes: readonly string[];
  /**
   * CPU tiers share a node between jobs; GPU tiers get a node (or a GPU) to themselves, so a
   * job's price is the node's, not a share of it.
   */
  readonly sharedNodes: boolean;
  /** On-demand price of one running job, USD per hour. */
  readonly onDemandHourlyUsd: number;
  /**
   * Disk a node keeps for datasets its jobs name (agent/dataset-cache.ts), least recently used evicted
   * first; a dataset larger than this is refused at admission. Sized beside the node's root volume
   * (infra/config/environments.ts) with the jobs' workspaces and the images.
   */
  readonly datasetCacheGiB: number;
  /**
   * The largest job environment (the packages a job's requirements install, catalog/environments.ts)
   * a job of this tier may use; a larger build fails with both sizes named. Nodes keep up to
   * {@link ENVIRONMENT_CACHE_FACTOR} times this in their environment cache.
   */
  readonly environmentGiB: number;
  /** Upper bounds for stack overrides of the limits. */
  readonly ceilings: Pick<TierLimits, "maxRuntimeSeconds" | "memoryMiB" | "vcpus">;
}

/** A node's environment cache holds this many of its tier's largest environments. */
export const ENVIRONMENT_CACHE_FACTOR = 3;

/**
 * Memory a node keeps for the OS, the Docker engine and the agent. The project's original brief gave
 * gpu-small 16 GiB on a 16 GiB g4dn.xlarge, which would let one job starve the node that runs it.
 */
export const NODE_RESERVED_MEMORY_MIB = 2048;

const MINUTE = 60;
const HOUR = 60 * MINUTE;

/** Price of the slice of an instance a job takes: the larger of its CPU and memory shares. */
function shareOfInstance(instanceType: string, limits: Pick<TierLimits, "vcpus" | "memoryMiB">): number {
  const it = getInstanceType(instanceType);
  const share = Math.max(limits.vcpus / it.vcpus, limits.memoryMiB / (it.memoryGiB * 1024));
  return Math.round(it.onDemandHourlyUsd * share * 10_000) / 10_000;
}

const SHARED_CPU_NODES = ["m6i.xlarge", "m6a.xlarge", "m5.xlarge", "m7i.xlarge", "c6i.xlarge"] as const;
const LARGE_NODES = ["m6i.large", "m6a.large", "m5.large", "r6i.large"] as const;

const cpuLarge = { memoryMiB: 4096, vcpus: 2 };

export const TIERS: Readonly<Record<TierName, Tier>> = {
  "cpu-small": {
    name: "cpu-small",
    description: "quick CPU jobs: scripts, small numpy and pandas work",
    memoryMiB: 512,
    vcpus: 0.5,
    maxRuntimeSeconds: 30,
    pidsLimit: 128,
    tmpfsMiB: 64,
    maxFileSizeMiB: 256,
    openFiles: 1024,
    workspaceMiB: 1024,
    datasetCacheGiB: 4,
    environmentGiB: 2,
    instanceTypes: SHARED_CPU_NODES,
    allowedInstanceTypes: [...SHARED_CPU_NODES, ...LARGE_NODES, "c6i.large"],
    sharedNodes: true,
    onDemandHourlyUsd: 0.02,
    ceilings: { maxRuntimeSeconds: 5 * MINUTE, memoryMiB: 2048, vcpus: 1 },
  },
  "cpu-large": {
    name: "cpu-large",
    description: "CPU training and data processing",
    ...cpuLarge,
    maxRuntimeSeconds: 10 * MINUTE,
    pidsLimit: 512,
    tmpfsMiB: 1024,
    maxFileSizeMiB: 4096,
    openFiles: 4096,
    workspaceMiB: 10 * 1024,
    datasetCacheGiB: 8,
    environmentGiB: 5,
    instanceTypes: SHARED_CPU_NODES,
    allowedInstanceTypes: [...SHARED_CPU_NODES, ...LARGE_NODES],
    sharedNodes: true,
    onDemandHourlyUsd: shareOfInstance(SHARED_CPU_NODES[0], cpuLarge),
    ceilings: { maxRuntimeSeconds: 2 * HOUR, memoryMiB: 6144, vcpus: 2 },
  },
  "gpu-small": {
    name: "gpu-small",
    description: "single 16 GB GPU: fine-tuning, small training runs",
    memoryMiB: 14 * 1024,
    vcpus: 4,
    gpu: { count: 1, memoryGB: 16 },
    maxRuntimeSeconds: 2 * HOUR,
    pidsLimit: 1024,
    tmpfsMiB: 4096,
    maxFileSizeMiB: 16 * 1024,
    openFiles: 65536,
    workspaceMiB: 50 * 1024,
    datasetCacheGiB: 40,
    environmentGiB: 8,
    instanceTypes: ["g4dn.xlarge"],
    allowedInstanceTypes: ["g4dn.xlarge", "g4dn.2xlarge", "g5.xlarge", "g6.xlarge"],
    sharedNodes: false,
    onDemandHourlyUsd: 0.526,
    ceilings: { maxRuntimeSeconds: 8 * HOUR, memoryMiB: 14 * 1024, vcpus: 4 },
  },
  "gpu-medium": {
    name: "gpu-medium",
    description: "single 16 GB GPU with more CPU and memory: longer training",
    memoryMiB: 30 * 1024,
    vcpus: 8,
    gpu: { count: 1, memoryGB: 16 },
    maxRuntimeSeconds: 8 * HOUR,
    pidsLimit: 2048,
    tmpfsMiB: 8192,
    maxFileSizeMiB: 32 * 1024,
    openFiles: 65536,
    workspaceMiB: 80 * 1024,
    datasetCacheGiB: 40,
    environmentGiB: 8,
    instanceTypes: ["g4dn.2xlarge"],
    allowedInstanceTypes: ["g4dn.2xlarge", "g4dn.4xlarge", "g5.2xlarge", "g6.2xlarge"],
    sharedNodes: false,
    onDemandHourlyUsd: 0.752,
    ceilings: { maxRuntimeSeconds: 24 * HOUR, memoryMiB: 30 * 1024, vcpus: 8 },
  },
  "gpu-large": {
    name: "gpu-large",
    description: "single 24 GB GPU: multi-hour training",
    memoryMiB: 30 * 1024,
    vcpus: 8,
    gpu: { count: 1, memoryGB: 24 },
    maxRuntimeSeconds: 24 * HOUR,
    pidsLimit: 2048,
    tmpfsMiB: 8192,
    maxFileSizeMiB: 64 * 1024,
    openFiles: 65536,
    workspaceMiB: 100 * 1024,
    datasetCacheGiB: 50,
    environmentGiB: 10,
    instanceTypes: ["g5.2xlarge"],
    allowedInstanceTypes: ["g5.2xlarge", "g5.4xlarge", "g6.2xlarge", "g6.4xlarge"],
    sharedNodes: false,
    onDemandHourlyUsd: 2.012,
    ceilings: { maxRuntimeSeconds: 72 * HOUR, memoryMiB: 60 * 1024, vcpus: 16 },
  },
};

export function isTierName(value: string): value is TierName {
  return (TIER_NAMES as readonly string[]).includes(value);
}

export function getTier(name: string): Tier {
  if (!isTierName(name)) {
    throw new Error(`unknown tier "${name}"; expected one of ${TIER_NAMES.join(", ")}`);
  }
  return TIERS[name];
}

/**
 * Jobs of a tier one agent runs at once on a node of `nodeVcpus` vCPUs: a GPU tier's GPU count, a CPU
 * tier's share of the node's vCPUs (at least one). The agent sizes its slots by it, and the fleet's fast
 * scale-out path (infra/fleet/fast-scale.ts) its nodes, so both count a node's capacity alike.
 */
export function jobsPerNode(tier: Pick<Tier, "gpu" | "vcpus">, nodeVcpus: number): number {
  return tier.gpu ? tier.gpu.count : Math.max(1, Math.floor(nodeVcpus / tier.vcpus));
}

export function isGpuTier(tier: Tier): boolean {
  return tier.gpu !== undefined;
}

/**
 * Why a job of these limits cannot run on an instance type, or undefined when it can: the node
 * must hold the job plus {@link NODE_RESERVED_MEMORY_MIB}, its vCPUs, and a GPU for GPU tiers.
 */
export function unfitReason(
  tier: Pick<Tier, "gpu" | "vcpus" | "memoryMiB">,
  instanceType: string,
): string | undefined {
  const it = getInstanceType(instanceType);
  if (tier.gpu && !isGpuInstanceType(instanceType)) return `${instanceType} has no GPU`;
  if (!tier.gpu && it.gpus > 0) return `${instanceType} is a GPU instance type, wasted on a CPU tier`;
  if (tier.gpu && (it.gpus < tier.gpu.count || it.gpuMemoryGB < tier.gpu.memoryGB)) {
    return `${instanceType} has ${it.gpus} GPU(s) of ${it.gpuMemoryGB} GB, the tier needs ${tier.gpu.count} of ${tier.gpu.memoryGB} GB`;
  }
  if (it.vcpus < tier.vcpus) return `${instanceType} has ${it.vcpus} vCPUs, the tier needs ${tier.vcpus}`;
  const usable = it.memoryGiB * 1024 - NODE_RESERVED_MEMORY_MIB;
  if (usable < tier.memoryMiB) {
    return `${instanceType} leaves ${usable} MiB for jobs, the tier needs ${tier.memoryMiB} MiB`;
  }
  return undefined;
}
