import * as aws from "@pulumi/aws";
import * as k8s from "@pulumi/kubernetes";
import * as pulumi from "@pulumi/pulumi";
import {
  type TierName,
  KUBERNETES,
  kubernetesAgentName,
  type Priority,
  AGENT_ENV_NAMES,
  toAgentEnv,
  type AgentEnvValues,
  type Senders,
  type SchedulingPolicy,
  type NodeLabel,
  kubernetesSandboxFacts,
} from "@crucible/runtime/catalog";
import { JOB_METRICS_STATEMENT, agentDataStatements, type AgentEnvironments } from "../fleet";
import { webIdentityTrustPolicy } from "../policy-document";
import { componentTags } from "../providers";
import { AGENT_RESOURCES, type JobLimits } from "./namespace";

/** The audience EKS's pod identity webhook requests service account tokens for. */
export const IRSA_AUDIENCE = "sts.amazonaws.com";
/** The annotation EKS's pod identity webhook reads to hand a pod its role's credentials. */
export const IRSA_ANNOTATION = "eks.amazonaws.com/role-arn";
/** The agent's own scratch (code, logs, its npm cache), besides what its jobs and datasets need. */
const AGENT_OWN_SCRATCH_GIB = 1;

/**
 * The agent's writable scratch space (its root file system is read-only), a cap rather than a reservation:
 * the tier's dataset cache, and for each job it may run its workspace's copy (the checkpoints and outputs
 * it collects from the job's pod), as a fleet node's root volume holds them.
 */
export function agentScratchSize(
  limits: Pick<JobLimits, "workspaceMiB" | "datasetCacheGiB">,
  maxJobs: number,
): string {
  return `${limits.datasetCacheGiB + Math.ceil((maxJobs * limits.workspaceMiB) / 1024) + AGENT_OWN_SCRATCH_GIB}Gi`;
}
/** The agent image's own user (images/agent/Dockerfile), stated so the kubelet can check non-root. */
const AGENT_UID = 1000;

/**
 * What the agent may do in its namespace and nothing more: run jobs as batch Jobs, watch their pods and
 * read their logs, ship each job's code.zip in a ConfigMap, and exec into its job pods (their keeper moves
 * the job's files; the job's container gets its stop signals). The launcher (runtime/src/launch/kubernetes/kubernetes-api.ts)
 * also lists ConfigMaps to collect an agent's leftovers and patches one to make its Job the owner. Exec
 * goes over WebSocket, a GET the API server authorizes as `get` on `pods/exec` and, from Kubernetes 1.35
 * (AuthorizePodWebsocketUpgradeCreatePermission), as `create` too: both, and no other verb.
 */
export const AGENT_RULES: k8s.types.input.rbac.v1.PolicyRule[] = [
  { apiGroups: ["batch"], resources: ["jobs"], verbs: ["create", "get", "list", "watch", "delete"] },
  { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
  { apiGroups: [""], resources: ["pods/log"], verbs: ["get"] },
  { apiGroups: [""], resources: ["pods/exec"], verbs: ["create", "get"] },
  { apiGroups: [""], resources: ["configmaps"], verbs: ["create", "get", "list", "patch", "delete"] },
];

/** The workspaces and datasets buckets as an agent reaches them. */
export interface AgentWorkspaces {
  readonly bucketName: pulumi.Input<string>;
  readonly bucketArn: pulumi.Input<string>;
  readonly prefix: pulumi.Input<string>;
  /** The datasets bucket, where the agent fetches jobs' datasets and publishes the pre-cached sets. */
  readonly datasetsBucketName: pulumi.Input<string>;
  readonly datasetsBucketArn: pulumi.Input<string>;
  /** The buckets' KMS key (one for both); undefined with SSE-S3. */
  readonly kmsKeyArn?: pulumi.Input<string>;
}

/** The cluster's IAM OIDC provider (`crucible:kubernetes.oidc`). */
export interface ClusterOidc {
  readonly issuerUrl: string;
  readonly providerArn: string;
}

export interface TierAgentArgs {
  readonly tier: TierName;
  readonly namespace: pulumi.Input<string>;
  readonly labels: Readonly<Record<string, string>>;
  readonly replicas: number;
  /** The tier's limits in this stack: its agent's scratch holds its dataset cache and its jobs' workspaces. */
  readonly limits: Pick<JobLimits, "workspaceMiB" | "datasetCacheGiB">;
  /** Jobs of the tier that may run at once (`maxJobsPerTier`). */
  readonly maxJobs: number;
  readonly image: pulumi.Input<string>;
  readonly queueUrls: pulumi.Input<Record<Priority, string>>;
  readonly queueArns: readonly pulumi.Input<string>[];
  /** The tier's other senders (`CRUCIBLE_SENDERS`); the agent's own IRSA role joins `agents`. */
  readonly senders: pulumi.Input<Senders>;
  readonly workspaces: AgentWorkspaces;
  readonly jobImages: pulumi.Input<Record<string, pulumi.Input<string>>>;
  readonly heartbeatSeconds: number;
  readonly visibilityTimeoutSeconds: number;
  readonly scheduling?: pulumi.Input<SchedulingPolicy>;
  /** The label GPU job pods select nodes by; set for GPU tiers only. */
  readonly gpuNodeLabel?: NodeLabel;
  readonly region: string;
  readonly oidc?: ClusterOidc;
  /** Job environments, as a node's agent has them (infra/fleet `AgentEnvironments`); absent with `index: none`. */
  readonly environments?: AgentEnvironments;
}

/** One tier's agent: its account (with an AWS role through IRSA when the cluster has OIDC), RBAC, Deployment. */
export function tierAgent(
  name: string,
  args: TierAgentArgs,
  opts: { readonly parent: pulumi.Resource; readonly provider: k8s.Provider },
): { readonly deploymentName: pulumi.Output<string>; readonly roleArn?: pulumi.Output<string> } {
  const agentName = kubernetesAgentName(args.tier);
  const labels = { ...args.labels, [KUBERNETES.labels.role]: "agent", [KUBERNETES.labels.tier]: args.tier };
  const metadata = { name: agentName, namespace: args.namespace, labels };
  const role = args.oidc && agentRole(name, args, args.oidc, opts.parent);
  const account = new k8s.core.v1.ServiceAccount(
    name,
    {
      metadata: { ...metadata, ...(role && { annotations: { [IRSA_ANNOTATION]: role.arn } }) },
      // The agent talks to the API server with this account's token.
      automountServiceAccountToken: true,
    },
    opts,
  );
  const rbac = new k8s.rbac.v1.Role(name, { metadata, rules: AGENT_RULES }, opts);
  new k8s.rbac.v1.RoleBinding(
    name,
    {
      metadata,
      roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "Role", name: rbac.metadata.name },
      subjects: [{ kind: "ServiceAccount", name: account.metadata.name, namespace: args.namespace }],
    },
    opts,
  );
  const deployment = new k8s.apps.v1.Deployment(
    name,
    {
      metadata: {
        ...metadata,
        // What its job pods' sandbox guarantees, for the policy pack (kubernetes-agents-sandboxed).
        annotations: {
          [KUBERNETES.sandboxFactsAnnotation]: JSON.stringify(kubernetesSandboxFacts(args.tier)),
        },
      },
      spec: {
        replicas: args.replicas,
        selector: {
          matchLabels: { [KUBERNETES.labels.role]: "agent", [KUBERNETES.labels.tier]: args.tier },
        },
        template: {
          metadata: { labels },
          spec: {
            serviceAccountName: account.metadata.name,
            securityContext: {
              runAsNonRoot: true,
              runAsUser: AGENT_UID,
              runAsGroup: AGENT_UID,
              // Lets the non-root agent read the projected web identity token.
              fsGroup: AGENT_UID,
              seccompProfile: { type: "RuntimeDefault" },
            },
            containers: [
              {
                name: "agent",
                image: args.image,
                // The image's entrypoint is the crucible CLI (images/agent/Dockerfile), as on a node.
                args: ["agent", "--tier", args.tier],
                env: agentEnv(args, role?.uniqueId),
                resources: AGENT_RESOURCES,
                securityContext: {
                  runAsNonRoot: true,
                  readOnlyRootFilesystem: true,
                  allowPrivilegeEscalation: false,
                  capabilities: { drop: ["ALL"] },
                  seccompProfile: { type: "RuntimeDefault" },
                },
                volumeMounts: [{ name: "tmp", mountPath: "/tmp" }],
              },
            ],
            volumes: [{ name: "tmp", emptyDir: { sizeLimit: agentScratchSize(args.limits, args.maxJobs) } }],
          },
        },
      },
    },
    opts,
  );
  return { deploymentName: deployment.metadata.name, ...(role && { roleArn: role.arn }) };
}

function agentEnv(
  args: TierAgentArgs,
  roleUniqueId?: pulumi.Output<string>,
): k8s.types.input.core.v1.EnvVar[] {
  const values = {
    tier: args.tier,
    launcher: "kubernetes" as const,
    k8sNamespace: args.namespace,
    bucket: args.workspaces.bucketName,
    workspacesPrefix: args.workspaces.prefix,
    datasetsBucket: args.workspaces.datasetsBucketName,
    queues: { [args.tier]: args.queueUrls },
    images: args.jobImages,
    heartbeatSeconds: args.heartbeatSeconds,
    visibilityTimeoutSeconds: args.visibilityTimeoutSeconds,
    ...(args.scheduling !== undefined && { scheduling: args.scheduling }),
    senders: pulumi.all([pulumi.output(args.senders), roleUniqueId]).apply(([senders, self]): Senders => ({
      ...senders,
      agents: [...(self === undefined ? [] : [self]), ...senders.agents],
    })),
    ...(args.gpuNodeLabel && { k8sGpuNodeLabel: args.gpuNodeLabel }),
    region: args.region,
    ...(args.environments && {
      packageIndex: args.environments.packageIndex,
      ...(args.environments.allow && { packageAllow: [...args.environments.allow] }),
      packageDeny: [...args.environments.deny],
    }),
  };
  // The agent's environment (runtime/src/catalog/agent-env.ts): each variable written by toAgentEnv (which checks
  // it as the agent will read it) as soon as its own value is known, the others not waiting on it.
  return (Object.entries(values) as [keyof AgentEnvValues, unknown][]).map(([field, value]) => {
    const name = AGENT_ENV_NAMES[field];
    const text = (resolved: unknown): string => toAgentEnv({ [field]: resolved })[name]!;
    return {
      name,
      value: holdsOutputs(value) ? (pulumi.output(value) as pulumi.Output<unknown>).apply(text) : text(value),
    };
  });
}

/** Whether a value is or holds an Output (or a promise), so it can only be written once resolved. */
function holdsOutputs(value: unknown): boolean {
  if (pulumi.Output.isInstance(value) || value instanceof Promise) return true;
  if (typeof value !== "object" || value === null) return false;
  return Object.values(value).some(holdsOutputs);
}

/** The agent's AWS role: assumable only by its own service account's tokens, scoped to its tier's data. */
function agentRole(
  name: string,
  args: TierAgentArgs,
  oidc: ClusterOidc,
  parent: pulumi.Resource,
): aws.iam.Role {
  const issuer = oidc.issuerUrl.replace(/^https:\/\//, "");
  const tags = componentTags("kubernetes", args.tier);
  const role = new aws.iam.Role(
    `${name}-irsa`,
    {
      description: `Crucible ${args.tier} agent on Kubernetes (IRSA)`,
      assumeRolePolicy: pulumi.output(args.namespace).apply((ns) =>
        JSON.stringify(
          webIdentityTrustPolicy("ClusterServiceAccount", {
            providerArn: oidc.providerArn,
            issuer,
            audience: IRSA_AUDIENCE,
            subjects: [`system:serviceaccount:${ns}:${kubernetesAgentName(args.tier)}`],
          }),
        ),
      ),
      tags,
    },
    { parent },
  );
  new aws.iam.RolePolicy(
    `${name}-irsa`,
    {
      role: role.id,
      policy: pulumi.jsonStringify({
        Version: "2012-10-17",
        Statement: [
          ...agentDataStatements({
            ...args.workspaces,
            tier: args.tier,
            queueArns: args.queueArns,
            regionName: args.region,
            ...(args.environments && { environments: args.environments }),
          }),
          JOB_METRICS_STATEMENT,
        ],
      }),
    },
    { parent },
  );
  return role;
}
