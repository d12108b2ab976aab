import type { Priority } from "./scheduling";
import type { TierName } from "./tiers";

/**
 * The names the Kubernetes target and the Kubernetes launcher share: the program declares these objects
 * (infra/kubernetes.ts), the launcher creates job pods that refer to them. Defined once here.
 */
export const KUBERNETES = {
  /** Job pods run as this account, with no API token mounted. */
  jobServiceAccount: "crucible-job",
  /** The label every object the project creates carries, as Docker containers carry theirs. */
  managedBy: { key: "app.kubernetes.io/managed-by", value: "crucible" },
  labels: {
    /** `job` for job pods (the default-deny NetworkPolicy selects them), `agent` for agents. */
    role: "crucible.dev/role",
    tier: "crucible.dev/tier",
    jobId: "crucible.dev/job-id",
    priority: "crucible.dev/priority",
  },
  /** The extended resource the NVIDIA device plugin advertises. */
  gpuResource: "nvidia.com/gpu",
  /** The node label GPU pods select by unless configured otherwise: the one NVIDIA's feature discovery sets. */
  defaultGpuNodeLabel: { key: "nvidia.com/gpu.present", value: "true" },
  /** Interactive jobs (high priority) may evict batch ones when the cluster is full. */
  priorityClasses: { interactive: "crucible-interactive", batch: "crucible-batch" },
  /**
   * Each job pod's keeper (the container through which the agent moves the job's files, beside the job):
   * its requests and limits, which the namespace's quota counts with every job.
   */
  keeperResources: { millicpu: 200, memoryMiB: 128 },
  /**
   * The annotation on each tier's agent Deployment holding the sandbox facts of the pods it launches
   * (kubernetesSandboxFacts), which the policy pack checks as it checks a fleet tier's agent config.
   */
  sandboxFactsAnnotation: "crucible.dev/sandbox-facts",
} as const;

/** A label value: up to 63 characters, alphanumeric at both ends (the API server's own rule). */
export const KUBERNETES_LABEL_VALUE = /^(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
/** {@link KUBERNETES_LABEL_VALUE} in words, for errors. */
export const KUBERNETES_LABEL_VALUE_RULE =
  "a Kubernetes label value (1 to 63 letters, digits, -, _ and ., starting and ending with a letter or digit)";

/** A node label as a pod's node selector names it. */
export interface NodeLabel {
  readonly key: string;
  readonly value: string;
}

/** The namespace of one stack's environment. */
export const kubernetesNamespace = (environment: string): string => `crucible-${environment}`;

/** One agent Deployment (and its ServiceAccount and Role) per tier. */
export const kubernetesAgentName = (tier: TierName): string => `crucible-agent-${tier}`;

/** High-priority jobs are interactive; the rest are batch. */
export const priorityClassFor = (priority: Priority): string =>
  priority === "high" ? KUBERNETES.priorityClasses.interactive : KUBERNETES.priorityClasses.batch;
