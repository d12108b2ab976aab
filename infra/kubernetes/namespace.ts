import * as k8s from "@pulumi/kubernetes";
import type * as pulumi from "@pulumi/pulumi";
import { type Tier, KUBERNETES } from "@crucible/runtime/catalog";

/**
 * The Pod Security Standards release the namespace enforces. Pinned, so a cluster upgrade that tightens
 * `restricted` cannot start rejecting job pods on its own; audit and warn follow `latest`, so such a
 * change shows up in warnings and the audit log before this pin is raised.
 */
export const POD_SECURITY_VERSION = "v1.31";

/** What one agent pod asks for; the namespace's quota leaves room for every agent replica. */
export const AGENT_RESOURCES = {
  requests: { cpu: "100m", memory: "256Mi" },
  limits: { cpu: "500m", memory: "512Mi" },
} as const;
const AGENT_MILLICPU = { requests: 100, limits: 500 };
const AGENT_MEMORY_MIB = { requests: 256, limits: 512 };

/**
 * A job's limits as the namespace and its agent size them: jobs run with requests equal to limits, as in
 * Docker; the agent keeps each job's workspace and the tier's dataset cache.
 */
export type JobLimits = Pick<Tier, "memoryMiB" | "vcpus" | "gpu" | "workspaceMiB" | "datasetCacheGiB">;

const millicpu = (vcpus: number) => Math.round(vcpus * 1000);
const cpuQuantity = (milli: number) => `${milli}m`;
const memoryQuantity = (mib: number) => `${mib}Mi`;
const gpus = (limits: JobLimits) => limits.gpu?.count ?? 0;

/** Labels every object carries: managed-by, and the stack's cost tags as `crucible.dev/*` labels. */
export function stackLabels(stackTags: Readonly<Record<string, string>>): Record<string, string> {
  return {
    [KUBERNETES.managedBy.key]: KUBERNETES.managedBy.value,
    ...Object.fromEntries(
      Object.entries(stackTags).map(([k, v]) => [k.replace(/^crucible:/, "crucible.dev/"), v]),
    ),
  };
}

/** The namespace's Pod Security Admission labels: `restricted`, enforced at a pinned release. */
export function podSecurityLabels(): Record<string, string> {
  const psa = "pod-security.kubernetes.io";
  return {
    [`${psa}/enforce`]: "restricted",
    [`${psa}/enforce-version`]: POD_SECURITY_VERSION,
    [`${psa}/audit`]: "restricted",
    [`${psa}/audit-version`]: "latest",
    [`${psa}/warn`]: "restricted",
    [`${psa}/warn-version`]: "latest",
  };
}

/**
 * The namespace's hard quota: every enabled tier running `maxJobsPerTier` jobs at its limits, each with
 * its pod's keeper (the container through which the agent moves the job's files), plus every agent
 * replica. Past it the API server refuses new job pods, and the launcher leaves the job queued.
 */
export function quotaHard(
  tiers: readonly JobLimits[],
  maxJobsPerTier: number,
  agentReplicas: number,
): Record<string, string> {
  const agents = tiers.length * agentReplicas;
  const sum = (f: (t: JobLimits) => number) => tiers.reduce((n, t) => n + f(t) * maxJobsPerTier, 0);
  const keeper = KUBERNETES.keeperResources;
  const cpu = sum((t) => millicpu(t.vcpus) + keeper.millicpu);
  const memory = sum((t) => t.memoryMiB + keeper.memoryMiB);
  const gpu = sum(gpus);
  return {
    pods: String(tiers.length * maxJobsPerTier + agents),
    "requests.cpu": cpuQuantity(cpu + agents * AGENT_MILLICPU.requests),
    "limits.cpu": cpuQuantity(cpu + agents * AGENT_MILLICPU.limits),
    "requests.memory": memoryQuantity(memory + agents * AGENT_MEMORY_MIB.requests),
    "limits.memory": memoryQuantity(memory + agents * AGENT_MEMORY_MIB.limits),
    ...(gpu > 0 && { [`requests.${KUBERNETES.gpuResource}`]: String(gpu) }),
  };
}

/**
 * Per container: at most the largest enabled tier's limits (elementwise, so stack overrides count), and
 * the smallest tier's (the first enabled, the catalog runs smallest first) for a container that names none.
 */
export function containerLimits(tiers: readonly JobLimits[]): k8s.types.input.core.v1.LimitRangeItem {
  const max = (f: (t: JobLimits) => number) => Math.max(...tiers.map(f));
  const smallest = tiers[0]!;
  const defaults = {
    cpu: cpuQuantity(millicpu(smallest.vcpus)),
    memory: memoryQuantity(smallest.memoryMiB),
  };
  const gpu = max(gpus);
  return {
    type: "Container",
    max: {
      cpu: cpuQuantity(max((t) => millicpu(t.vcpus))),
      memory: memoryQuantity(max((t) => t.memoryMiB)),
      ...(gpu > 0 && { [KUBERNETES.gpuResource]: String(gpu) }),
    },
    default: defaults,
    defaultRequest: defaults,
  };
}

/**
 * The environment's namespace, `restricted` by Pod Security Admission, with its quota, container limits,
 * a default-deny policy for job pods (the sandbox's "no network") and the jobs' token-less account.
 */
export function jobNamespace(
  name: string,
  args: {
    readonly namespace: string;
    readonly labels: Readonly<Record<string, string>>;
    readonly tiers: readonly JobLimits[];
    readonly maxJobsPerTier: number;
    readonly agentReplicas: number;
  },
  opts: pulumi.CustomResourceOptions,
): k8s.core.v1.Namespace {
  const ns = new k8s.core.v1.Namespace(
    name,
    { metadata: { name: args.namespace, labels: { ...args.labels, ...podSecurityLabels() } } },
    opts,
  );
  const metadata = (objectName: string) => ({
    name: objectName,
    namespace: ns.metadata.name,
    labels: args.labels,
  });
  new k8s.core.v1.ResourceQuota(
    `${name}-quota`,
    {
      metadata: metadata("crucible-jobs"),
      spec: { hard: quotaHard(args.tiers, args.maxJobsPerTier, args.agentReplicas) },
    },
    opts,
  );
  new k8s.core.v1.LimitRange(
    `${name}-limits`,
    { metadata: metadata("crucible-jobs"), spec: { limits: [containerLimits(args.tiers)] } },
    opts,
  );
  // Policy types without rules: a job pod neither accepts nor opens any connection.
  new k8s.networking.v1.NetworkPolicy(
    `${name}-jobs-deny-all`,
    {
      metadata: metadata("crucible-jobs-deny-all"),
      spec: {
        podSelector: { matchLabels: { [KUBERNETES.labels.role]: "job" } },
        policyTypes: ["Ingress", "Egress"],
      },
    },
    opts,
  );
  new k8s.core.v1.ServiceAccount(
    `${name}-job`,
    { metadata: metadata(KUBERNETES.jobServiceAccount), automountServiceAccountToken: false },
    opts,
  );
  return ns;
}
