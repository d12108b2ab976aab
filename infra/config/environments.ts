import {
  TIERS,
  type TierName,
  DEFAULT_SCHEDULING,
  KUBERNETES,
  DEFAULT_QUOTA_GIB_PER_PROJECT,
} from "@crucible/runtime/catalog";
import { nodeDiskGiB } from "./derived";
import {
  DEFAULT_DEVICE_PLUGIN_IMAGE,
  type CrucibleSettings,
  type Environment,
  type TierConfig,
} from "./schema";

/**
 * Defaults per environment: a stack file only states where it differs. Its settings are merged over
 * its environment's with {@link deepMerge} before they are validated, so defaults pass the same checks.
 */

type DeepPartial<T> = T extends readonly (infer _U)[]
  ? T
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

/**
 * A tier's default root volume: 50 GiB for CPU nodes, 200 for GPU nodes, or what its default instance types'
 * nodes keep there (`nodeDiskGiB`: the system, job workspaces, dataset and environment caches) rounded up
 * to 10 GiB, whichever is larger.
 */
export const defaultRootVolumeGiB = (name: TierName): number =>
  Math.max(
    TIERS[name].gpu ? 200 : 50,
    Math.ceil(nodeDiskGiB(name, { instanceTypes: [...TIERS[name].instanceTypes] }).total / 10) * 10,
  );

const tierDefaults = (name: TierName, over: DeepPartial<TierConfig>): TierConfig =>
  deepMerge(
    {
      enabled: false,
      instanceTypes: [...TIERS[name].instanceTypes],
      minSize: 0,
      maxSize: 2,
      desired: 0,
      spot: { enabled: true, onDemandBase: 0, onDemandPercentage: 0 },
      prewarmSchedule: [],
      targetJobsPerInstance: TIERS[name].sharedNodes ? 4 : 1,
      rootVolumeGiB: defaultRootVolumeGiB(name),
    },
    over,
  );

const common: DeepPartial<CrucibleSettings> = {
  registry: {
    families: ["cpu", "ml-cpu", "ml-cuda", "agent", "builder"],
    pullAccountIds: [],
    keepImages: 20,
    untaggedExpiryDays: 3,
  },
  workspaces: {
    retentionDays: 30,
    ledgerRetentionDays: 400,
    noncurrentVersionDays: 7,
    abortMultipartDays: 2,
    quotaGiBPerProject: DEFAULT_QUOTA_GIB_PER_PROJECT,
    encryption: "kms",
  },
  budgets: {
    tiers: {},
    thresholds: [
      { type: "ACTUAL", percent: 50 },
      { type: "ACTUAL", percent: 80 },
      { type: "ACTUAL", percent: 100 },
      { type: "FORECASTED", percent: 100 },
    ],
    emails: [],
    enforce: false,
    spotDiscountPercent: 60,
  },
  fleet: {
    heartbeatSeconds: 30,
    queue: { visibilityTimeoutSeconds: 120, maxReceiveCount: 5, messageRetentionSeconds: 345600 },
    startup: {
      coldBootSeconds: 240,
      warmStartSeconds: 60,
      hibernatedStartSeconds: 30,
      runningStartSeconds: 5,
    },
    scaling: {
      metricPeriodSeconds: 60,
      scaleOutDelaySeconds: 180,
      scaleInCooldownSeconds: 900,
      fastScaleDelaySeconds: 10,
    },
    // On everywhere: it never asks for more than target tracking reaches minutes later, and dev runs the
    // path prod depends on.
    fastScale: { enabled: true, settleSeconds: 2 },
    spotInterruptionsPerHour: 0.01,
  },
  alarms: { oldestJobAgeSeconds: 900 },
  // The runtime's defaults, merged under a stack's partial `crucible:scheduling` like every other section.
  scheduling: {
    weights: DEFAULT_SCHEDULING.weights,
    fairShare: DEFAULT_SCHEDULING.fairShare,
    preemption: DEFAULT_SCHEDULING.preemption,
  },
  kubernetes: {
    enabled: false,
    maxJobsPerTier: 4,
    agentReplicas: 1,
    gpuNodeLabel: KUBERNETES.defaultGpuNodeLabel,
    devicePluginImage: DEFAULT_DEVICE_PLUGIN_IMAGE,
    clusterObjects: "declare",
  },
  // No one may submit until a stack names its projects and their users.
  access: {},
  // Job environments from the stack's own CodeArtifact proxy of PyPI, every package allowed.
  environments: { index: "codeartifact", deny: [] },
};

export const ENVIRONMENT_DEFAULTS: Record<Environment, DeepPartial<CrucibleSettings>> = {
  dev: deepMerge(common, {
    network: { cidr: "10.20.0.0/16", azCount: 2, nat: "none" },
    fleet: {
      maxInstancesPerTier: 4,
      tiers: {
        "cpu-small": tierDefaults("cpu-small", { enabled: true }),
        "cpu-large": tierDefaults("cpu-large", { enabled: true }),
        "gpu-small": tierDefaults("gpu-small", { enabled: true, maxSize: 1 }),
        "gpu-medium": tierDefaults("gpu-medium", {}),
        "gpu-large": tierDefaults("gpu-large", {}),
      },
    },
    budgets: { monthlyLimitUsd: 500 },
  }),
  staging: deepMerge(common, {
    network: { cidr: "10.30.0.0/16", azCount: 2, nat: "single" },
    fleet: {
      maxInstancesPerTier: 10,
      tiers: {
        "cpu-small": tierDefaults("cpu-small", { enabled: true, maxSize: 4 }),
        "cpu-large": tierDefaults("cpu-large", { enabled: true, maxSize: 4 }),
        "gpu-small": tierDefaults("gpu-small", { enabled: true, maxSize: 4 }),
        "gpu-medium": tierDefaults("gpu-medium", { enabled: true, maxSize: 2 }),
        "gpu-large": tierDefaults("gpu-large", {}),
      },
    },
    budgets: { monthlyLimitUsd: 3000 },
  }),
  prod: deepMerge(common, {
    network: { cidr: "10.40.0.0/16", azCount: 3, nat: "onePerAz" },
    fleet: {
      maxInstancesPerTier: 50,
      tiers: {
        "cpu-small": tierDefaults("cpu-small", { enabled: true, minSize: 1, desired: 1, maxSize: 20 }),
        "cpu-large": tierDefaults("cpu-large", { enabled: true, maxSize: 20 }),
        "gpu-small": tierDefaults("gpu-small", {
          enabled: true,
          minSize: 1,
          desired: 1,
          maxSize: 20,
          spot: { enabled: false, onDemandBase: 0, onDemandPercentage: 100 },
          warmPool: { minSize: 2, maxPreparedCapacity: 4 },
        }),
        "gpu-medium": tierDefaults("gpu-medium", { enabled: true, maxSize: 10 }),
        "gpu-large": tierDefaults("gpu-large", { enabled: true, maxSize: 8 }),
      },
    },
    budgets: { monthlyLimitUsd: 25000 },
    alarms: { oldestJobAgeSeconds: 600 },
  }),
};

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Merges `over` into `base`: objects merge key by key, everything else (lists included) replaces. */
export function deepMerge<T>(base: T, over: unknown): T {
  if (!isPlainObject(base) || !isPlainObject(over)) return (over === undefined ? base : over) as T;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(out[k], v);
  return out as T;
}
