import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import {
  type TierName,
  kubernetesNamespace,
  type Priority,
  type Senders,
  type SchedulingPolicy,
} from "@crucible/runtime/catalog";
import type { CrucibleConfig, Environment } from "../config";
import type { AgentEnvironments } from "../fleet";
import { tierAgent, type AgentWorkspaces } from "./agent";
import { devicePlugin, priorityClasses } from "./cluster";
import { jobNamespace, stackLabels, type JobLimits } from "./namespace";

export * from "./agent";
export * from "./cluster";
export * from "./namespace";

/** `crucible:kubernetes` as the target uses it: the kubeconfig travels separately, as a secret. */
export type KubernetesSettings = Omit<CrucibleConfig["kubernetes"], "enabled" | "kubeconfig">;

/** One enabled tier as the target runs it. */
export interface KubernetesTierArgs {
  /** The tier's job limits in this stack: the catalog's, with the stack's overrides. */
  readonly limits: JobLimits;
  /** The tier's queue URL for each priority, as the agent reads them from `CRUCIBLE_QUEUES`. */
  readonly queueUrls: pulumi.Input<Record<Priority, string>>;
  /** The ARNs of those queues: the agent's AWS role may take and delete messages there only. */
  readonly queueArns: readonly pulumi.Input<string>[];
  /**
   * Who else may send to the tier's queues: the tier's node role (`agents`) and the submitter roles of
   * the projects that may use the tier. The agent's own IRSA role is added to `agents`.
   */
  readonly senders: pulumi.Input<Senders>;
}

/** Arguments of {@link KubernetesTarget}. */
export interface KubernetesTargetArgs {
  /** The stack's environment: names the namespace. */
  readonly environment: Environment;
  /** The cluster's kubeconfig. Kept a secret whatever the caller passes. */
  readonly kubeconfig: pulumi.Input<string>;
  /** `crucible:kubernetes`, validated (quota size, replicas, GPU node label, device plugin, OIDC). */
  readonly settings: KubernetesSettings;
  /** The stack's cost tags, which every object carries as `crucible.dev/*` labels. */
  readonly stackTags: Readonly<Record<string, string>>;
  /** The stack's region, where the agents reach the queues and buckets. */
  readonly region: string;
  /** The enabled tiers, smallest first (the namespace's default container limits are the first's). */
  readonly tiers: Readonly<Partial<Record<TierName, KubernetesTierArgs>>>;
  /** The agent image, by digest. */
  readonly agentImage: pulumi.Input<string>;
  /** Each job image family's reference, by digest, for the launcher to run. */
  readonly jobImages: pulumi.Input<Record<string, pulumi.Input<string>>>;
  readonly workspaces: AgentWorkspaces;
  readonly heartbeatSeconds: number;
  readonly visibilityTimeoutSeconds: number;
  /** The scheduling policy (`CRUCIBLE_SCHEDULING`). Defaults to none: the agent's own defaults. */
  readonly scheduling?: pulumi.Input<SchedulingPolicy>;
  /** Job environments, as the fleet's agents have them; absent with `crucible:environments.index` none. */
  readonly environments?: AgentEnvironments;
}

/**
 * Crucible on a Kubernetes cluster: the environment's `restricted` namespace with a quota sized from the
 * tier catalog, container limits, default-deny networking for jobs and their token-less account; the
 * jobs' priority classes and the NVIDIA device plugin (where a GPU tier is enabled); and per tier an
 * agent Deployment with exactly the API access the Kubernetes launcher needs and its AWS role via IRSA.
 */
export class KubernetesTarget extends pulumi.ComponentResource {
  public readonly namespace: pulumi.Output<string>;
  public readonly agentDeployments: Partial<Record<TierName, pulumi.Output<string>>>;
  /** Each agent's AWS role; empty without `crucible:kubernetes.oidc`. */
  public readonly agentRoleArns: Partial<Record<TierName, pulumi.Output<string>>>;

  constructor(name: string, args: KubernetesTargetArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:kubernetes:KubernetesTarget", name, {}, opts);
    const { settings } = args;
    const provider = new k8s.Provider(
      `${name}-cluster`,
      { kubeconfig: pulumi.secret(args.kubeconfig) },
      { parent: this },
    );
    const child = { parent: this, provider };
    const labels = stackLabels(args.stackTags);
    const tiers = Object.entries(args.tiers) as [TierName, KubernetesTierArgs][];
    const limits = tiers.map(([, t]) => t.limits);

    const ns = jobNamespace(
      name,
      {
        namespace: kubernetesNamespace(args.environment),
        labels,
        tiers: limits,
        maxJobsPerTier: settings.maxJobsPerTier,
        agentReplicas: settings.agentReplicas,
      },
      child,
    );
    if (settings.clusterObjects === "declare") {
      priorityClasses(name, labels, child);
      if (limits.some((l) => l.gpu)) {
        devicePlugin(
          `${name}-device-plugin`,
          { image: settings.devicePluginImage, gpuNodeLabel: settings.gpuNodeLabel, labels },
          child,
        );
      }
    }
    const agents = tiers.map(
      ([tier, t]) =>
        [
          tier,
          tierAgent(
            `${name}-agent-${tier}`,
            {
              tier,
              namespace: ns.metadata.name,
              labels,
              replicas: settings.agentReplicas,
              limits: t.limits,
              maxJobs: settings.maxJobsPerTier,
              image: args.agentImage,
              queueUrls: t.queueUrls,
              queueArns: t.queueArns,
              senders: t.senders,
              workspaces: args.workspaces,
              jobImages: args.jobImages,
              heartbeatSeconds: args.heartbeatSeconds,
              visibilityTimeoutSeconds: args.visibilityTimeoutSeconds,
              scheduling: args.scheduling,
              ...(t.limits.gpu && { gpuNodeLabel: settings.gpuNodeLabel }),
              region: args.region,
              oidc: settings.oidc,
              ...(args.environments && { environments: args.environments }),
            },
            child,
          ),
        ] as const,
    );

    this.namespace = ns.metadata.name;
    this.agentDeployments = Object.fromEntries(agents.map(([tier, a]) => [tier, a.deploymentName]));
    this.agentRoleArns = Object.fromEntries(
      agents.flatMap(([tier, a]) => (a.roleArn ? [[tier, a.roleArn]] : [])),
    );
    this.registerOutputs({
      namespace: this.namespace,
      agentDeployments: this.agentDeployments,
      agentRoleArns: this.agentRoleArns,
    });
  }
}
