/**
 * EC2 instance types the platform may run nodes on, with the facts sizing and pricing need.
 * Prices are us-east-1 Linux on-demand list prices in USD per hour; budgets, estimates and the
 * scaling simulation read them from here so every figure a user sees comes from one table.
 */
export interface InstanceType {
  readonly name: string;
  readonly vcpus: number;
  readonly memoryGiB: number;
  readonly gpus: number;
  /** Memory of one GPU in GB; 0 for CPU-only types. */
  readonly gpuMemoryGB: number;
  readonly onDemandHourlyUsd: number;
  /** Whether EC2 can hibernate it, so a warm pool may hold it `Hibernated` ({@link HIBERNATION_FAMILIES}). */
  readonly hibernation: boolean;
}

/**
 * Instance families EC2 hibernates (saves RAM to the encrypted root volume, then stops), among those in
 * the table below: AWS lists C3-C7, M3-M7, R3-R7, T2-T4g and I3 families, up to 150 GiB of RAM, and no GPU
 * family (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/hibernating-prerequisites.html, 2026-12-03).
 */
export const HIBERNATION_FAMILIES = ["c6i", "m5", "m6a", "m6i", "m7i", "r6i"] as const;

const types = [
  { name: "c6i.large", vcpus: 2, memoryGiB: 4, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.085 },
  { name: "c6i.xlarge", vcpus: 4, memoryGiB: 8, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.17 },
  { name: "m5.large", vcpus: 2, memoryGiB: 8, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.096 },
  { name: "m5.xlarge", vcpus: 4, memoryGiB: 16, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.192 },
  { name: "m6a.large", vcpus: 2, memoryGiB: 8, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.0864 },
  { name: "m6a.xlarge", vcpus: 4, memoryGiB: 16, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.1728 },
  { name: "m6i.large", vcpus: 2, memoryGiB: 8, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.096 },
  { name: "m6i.xlarge", vcpus: 4, memoryGiB: 16, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.192 },
  { name: "m7i.xlarge", vcpus: 4, memoryGiB: 16, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.2016 },
  { name: "r6i.large", vcpus: 2, memoryGiB: 16, gpus: 0, gpuMemoryGB: 0, onDemandHourlyUsd: 0.126 },
  { name: "g4dn.xlarge", vcpus: 4, memoryGiB: 16, gpus: 1, gpuMemoryGB: 16, onDemandHourlyUsd: 0.526 },
  { name: "g4dn.2xlarge", vcpus: 8, memoryGiB: 32, gpus: 1, gpuMemoryGB: 16, onDemandHourlyUsd: 0.752 },
  { name: "g4dn.4xlarge", vcpus: 16, memoryGiB: 64, gpus: 1, gpuMemoryGB: 16, onDemandHourlyUsd: 1.204 },
  { name: "g5.xlarge", vcpus: 4, memoryGiB: 16, gpus: 1, gpuMemoryGB: 24, onDemandHourlyUsd: 1.006 },
  { name: "g5.2xlarge", vcpus: 8, memoryGiB: 32, gpus: 1, gpuMemoryGB: 24, onDemandHourlyUsd: 1.212 },
  { name: "g5.4xlarge", vcpus: 16, memoryGiB: 64, gpus: 1, gpuMemoryGB: 24, onDemandHourlyUsd: 1.624 },
  { name: "g6.xlarge", vcpus: 4, memoryGiB: 16, gpus: 1, gpuMemoryGB: 24, onDemandHourlyUsd: 0.8048 },
  { name: "g6.2xlarge", vcpus: 8, memoryGiB: 32, gpus: 1, gpuMemoryGB: 24, onDemandHourlyUsd: 0.9776 },
  { name: "g6.4xlarge", vcpus: 16, memoryGiB: 64, gpus: 1, gpuMemoryGB: 24, onDemandHourlyUsd: 1.3232 },
] as const satisfies readonly Omit<InstanceType, "hibernation">[];

export type InstanceTypeName = (typeof types)[number]["name"];

export const INSTANCE_TYPES: ReadonlyMap<string, InstanceType> = new Map(
  types.map((t) => [
    t.name,
    { ...t, hibernation: (HIBERNATION_FAMILIES as readonly string[]).includes(instanceFamily(t.name)) },
  ]),
);

/** GPU instance families the platform accepts for GPU tiers. */
export const GPU_FAMILIES = ["g4dn", "g5", "g6", "g6e", "p3", "p4d", "p5"] as const;

export function instanceFamily(instanceType: string): string {
  return instanceType.split(".")[0] ?? instanceType;
}

export function isGpuInstanceType(instanceType: string): boolean {
  return (GPU_FAMILIES as readonly string[]).includes(instanceFamily(instanceType));
}

export function getInstanceType(name: string): InstanceType {
  const found = INSTANCE_TYPES.get(name);
  if (!found) {
    throw new Error(`unknown instance type "${name}"; known types: ${[...INSTANCE_TYPES.keys()].join(", ")}`);
  }
  return found;
}
