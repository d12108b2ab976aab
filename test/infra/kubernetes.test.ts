import { beforeAll, describe, expect, it } from "vitest";
import { MOCK_ACCOUNT_ID } from "../../scripts/lib/mock-engine";
import { sandboxFacts } from "../../runtime/src/launch/sandbox";
import {
  STACKS,
  configWith,
  readStackConfig,
  runStack,
  type DeclaredResource,
  type Plan,
} from "../support/harness";

const T = {
  target: "crucible:kubernetes:KubernetesTarget",
  provider: "pulumi:providers:kubernetes",
  namespace: "kubernetes:core/v1:Namespace",
  quota: "kubernetes:core/v1:ResourceQuota",
  limitRange: "kubernetes:core/v1:LimitRange",
  networkPolicy: "kubernetes:networking.k8s.io/v1:NetworkPolicy",
  priorityClass: "kubernetes:scheduling.k8s.io/v1:PriorityClass",
  daemonSet: "kubernetes:apps/v1:DaemonSet",
  serviceAccount: "kubernetes:core/v1:ServiceAccount",
  role: "kubernetes:rbac.authorization.k8s.io/v1:Role",
  roleBinding: "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding",
  deployment: "kubernetes:apps/v1:Deployment",
  iamRole: "aws:iam/role:Role",
  iamRolePolicy: "aws:iam/rolePolicy:RolePolicy",
  queue: "aws:sqs/queue:Queue",
} as const;

/** How the engine marks a secret value (Pulumi's `specialSigKey` → `specialSecretSig`). */
const SECRET = { "4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270" };

const KUBECONFIG = [
  "apiVersion: v1",
  "kind: Config",
  "clusters:",
  "- name: crucible",
  "  cluster: { server: https://k8s.example.com }",
  "users:",
  "- name: deployer",
  "  user: { token: not-a-real-token }",
  "contexts:",
  "- name: crucible",
  "  context: { cluster: crucible, user: deployer }",
  "current-context: crucible",
].join("\n");
const ISSUER = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE";
const OIDC = {
  issuerUrl: `https://${ISSUER}`,
  providerArn: `arn:aws:iam::123456789012:oidc-provider/${ISSUER}`,
};
const PRIORITIES = ["high", "normal", "low"] as const;
/** Each agent's scratch: datasetCacheGiB + 4 × workspaceMiB + 1 GiB, from the tier catalog. */
const AGENT_SCRATCH: Record<string, string> = {
  "cpu-small": `${4 + 4 * 1 + 1}Gi`,
  "cpu-large": `${8 + 4 * 10 + 1}Gi`,
  "gpu-small": `${40 + 4 * 50 + 1}Gi`,
  "gpu-medium": `${40 + 4 * 80 + 1}Gi`,
  "gpu-large": `${50 + 4 * 100 + 1}Gi`,
};

/**
 * Per stack, written out by hand from the tier catalog (runtime/src/catalog/tiers.ts) for the tiers each stack
 * file enables, at the defaults of 4 jobs per tier and 1 agent per tier (agent: requests 100m/256Mi,
 * limits 500m/512Mi). Per job: cpu-small 500m/512Mi, cpu-large 2000m/4096Mi, gpu-small 4000m/14336Mi/1,
 * gpu-medium and gpu-large 8000m/30720Mi/1, each with its pod's keeper (200m/128Mi).
 */
const EXPECTED = {
  dev: {
    tiers: ["cpu-small", "cpu-large", "gpu-small"],
    // jobs (500+2000+4000)m×4 = 26000m, (512+4096+14336)Mi×4 = 75776Mi; keepers 12 × 200m/128Mi; agents ×3.
    quota: {
      pods: "15",
      "requests.cpu": "28700m",
      "limits.cpu": "29900m",
      "requests.memory": "78080Mi",
      "limits.memory": "78848Mi",
      "requests.nvidia.com/gpu": "4",
    },
    max: { cpu: "4000m", memory: "14336Mi", "nvidia.com/gpu": "1" },
  },
  staging: {
    tiers: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium"],
    // jobs 14500m×4 = 58000m, 49664Mi×4 = 198656Mi; keepers 16 × 200m/128Mi; agents ×4.
    quota: {
      pods: "20",
      "requests.cpu": "61600m",
      "limits.cpu": "63200m",
      "requests.memory": "201728Mi",
      "limits.memory": "202752Mi",
      "requests.nvidia.com/gpu": "8",
    },
    max: { cpu: "8000m", memory: "30720Mi", "nvidia.com/gpu": "1" },
  },
  prod: {
    tiers: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium", "gpu-large"],
    // jobs 22500m×4 = 90000m, 80384Mi×4 = 321536Mi; keepers 20 × 200m/128Mi; agents ×5.
    quota: {
      pods: "25",
      "requests.cpu": "94500m",
      "limits.cpu": "96500m",
      "requests.memory": "325376Mi",
      "limits.memory": "326656Mi",
      "requests.nvidia.com/gpu": "12",
    },
    max: { cpu: "8000m", memory: "30720Mi", "nvidia.com/gpu": "1" },
  },
} as const;

/** The stack's own file with the Kubernetes target switched on (the kubeconfig in plain text: no secrets offline). */
function enabled(stack: string, kubernetes: Record<string, unknown> = {}): Record<string, string> {
  return configWith(stack, {
    "crucible:kubernetes": { enabled: true, kubeconfig: KUBECONFIG, oidc: OIDC, ...kubernetes },
  });
}

const metadataOf = (r: DeclaredResource) => r.inputs.metadata as Record<string, unknown>;
const specOf = (r: DeclaredResource) => r.inputs.spec as Record<string, unknown>;

interface PodSpec {
  serviceAccountName: string;
  securityContext: unknown;
  containers: {
    args: string[];
    image: string;
    env: { name: string; value: string }[];
    resources: unknown;
    securityContext: unknown;
    volumeMounts: unknown;
  }[];
  volumes: unknown;
}

describe.each(STACKS)("%s stack with the Kubernetes target", (stack) => {
  const want = EXPECTED[stack];
  const file = readStackConfig(stack);
  const environment = file["crucible:environment"]!;
  const namespace = `crucible-${environment}`;
  const labels = {
    "app.kubernetes.io/managed-by": "crucible",
    "crucible.dev/environment": environment,
    "crucible.dev/owner": file["crucible:owner"]!,
    "crucible.dev/cost-center": file["crucible:costCenter"]!,
  };
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack, enabled(stack));
  });

  const queueOf = (tier: string, p: (typeof PRIORITIES)[number]) =>
    plan.get(T.queue, p === "normal" ? `queues-${tier}` : `queues-${tier}-${p}`);

  it("talks to the cluster through one provider that holds the kubeconfig as a secret", () => {
    const [provider, ...others] = plan.ofType(T.provider);
    expect(others).toEqual([]);
    expect(provider!.name).toBe("kubernetes-cluster");
    expect(provider!.inputs.kubeconfig).toEqual({ ...SECRET, value: KUBECONFIG });
    const k8sObjects = plan.resources.filter((r) => r.type.startsWith("kubernetes:"));
    expect(k8sObjects.length).toBeGreaterThan(0);
    for (const r of k8sObjects) expect(r.provider, r.name).toBe(`${provider!.urn}::${provider!.id}`);
    const target = plan.get(T.target, "kubernetes");
    expect(plan.childrenOf(target.urn).map((r) => r.name)).toEqual(
      expect.arrayContaining(k8sObjects.map((r) => r.name)),
    );
  });

  it("declares the environment's namespace, restricted by Pod Security Admission", () => {
    const [ns, ...others] = plan.ofType(T.namespace);
    expect(others).toEqual([]);
    expect(metadataOf(ns!)).toEqual({
      name: namespace,
      labels: {
        ...labels,
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "v1.31",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
      },
    });
  });

  it("sizes the quota from the catalog: 4 jobs of every enabled tier plus one agent each", () => {
    const quota = plan.get(T.quota, "kubernetes-quota");
    expect(metadataOf(quota)).toEqual({ name: "crucible-jobs", namespace, labels });
    expect(specOf(quota)).toEqual({ hard: want.quota });
  });

  it("caps containers at the largest enabled tier and defaults them to the smallest", () => {
    const limits = plan.get(T.limitRange, "kubernetes-limits");
    expect(metadataOf(limits)).toEqual({ name: "crucible-jobs", namespace, labels });
    expect(specOf(limits)).toEqual({
      limits: [
        {
          type: "Container",
          max: want.max,
          default: { cpu: "500m", memory: "512Mi" },
          defaultRequest: { cpu: "500m", memory: "512Mi" },
        },
      ],
    });
  });

  it("denies job pods every connection in and out", () => {
    const [policy, ...others] = plan.ofType(T.networkPolicy);
    expect(others).toEqual([]);
    expect(metadataOf(policy!)).toEqual({ name: "crucible-jobs-deny-all", namespace, labels });
    expect(specOf(policy!)).toEqual({
      podSelector: { matchLabels: { "crucible.dev/role": "job" } },
      policyTypes: ["Ingress", "Egress"],
    });
  });

  it("declares the two job priority classes: interactive preempts, batch never does", () => {
    const classes = plan.ofType(T.priorityClass).map((r) => ({
      name: metadataOf(r).name,
      labels: metadataOf(r).labels,
      value: r.inputs.value,
      globalDefault: r.inputs.globalDefault,
      preemptionPolicy: r.inputs.preemptionPolicy,
    }));
    expect(classes).toEqual([
      {
        name: "crucible-interactive",
        labels,
        value: 1000,
        globalDefault: false,
        preemptionPolicy: "PreemptLowerPriority",
      },
      { name: "crucible-batch", labels, value: 100, globalDefault: false, preemptionPolicy: "Never" },
    ]);
  });

  it("runs the NVIDIA device plugin in kube-system on GPU nodes only, tolerating their taint", () => {
    const [plugin, ...others] = plan.ofType(T.daemonSet);
    expect(others).toEqual([]);
    const selector = { "app.kubernetes.io/name": "crucible-nvidia-device-plugin" };
    expect(metadataOf(plugin!)).toEqual({
      name: "crucible-nvidia-device-plugin",
      namespace: "kube-system",
      labels,
    });
    expect(specOf(plugin!)).toEqual({
      selector: { matchLabels: selector },
      updateStrategy: { type: "RollingUpdate" },
      template: {
        metadata: { labels: { ...labels, ...selector } },
        spec: {
          priorityClassName: "system-node-critical",
          nodeSelector: { "nvidia.com/gpu.present": "true" },
          tolerations: [{ key: "nvidia.com/gpu", operator: "Exists", effect: "NoSchedule" }],
          automountServiceAccountToken: false,
          securityContext: { seccompProfile: { type: "RuntimeDefault" } },
          containers: [
            {
              name: "nvidia-device-plugin",
              image: "nvcr.io/nvidia/k8s-device-plugin:v0.17.0",
              securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
              resources: { requests: { cpu: "10m", memory: "32Mi" }, limits: { memory: "128Mi" } },
              volumeMounts: [{ name: "device-plugins", mountPath: "/var/lib/kubelet/device-plugins" }],
            },
          ],
          volumes: [
            {
              name: "device-plugins",
              hostPath: { path: "/var/lib/kubelet/device-plugins", type: "Directory" },
            },
          ],
        },
      },
    });
  });

  it("gives job pods an account with no API token", () => {
    const job = plan.get(T.serviceAccount, "kubernetes-job");
    expect(metadataOf(job)).toEqual({ name: "crucible-job", namespace, labels });
    expect(job.inputs.automountServiceAccountToken).toBe(false);
  });

  it("declares one agent per enabled tier, and exports them with their roles", () => {
    const agents = (type: string) =>
      plan
        .ofType(type)
        .filter((r) => r.name.startsWith("kubernetes-agent-"))
        .map((r) => r.name);
    const names = want.tiers.map((t) => `kubernetes-agent-${t}`);
    for (const type of [T.serviceAccount, T.role, T.roleBinding, T.deployment])
      expect(agents(type)).toEqual(names);
    expect(plan.outputs.kubernetes).toEqual({
      namespace,
      agentDeployments: Object.fromEntries(want.tiers.map((t) => [t, `crucible-agent-${t}`])),
      agentRoleArns: Object.fromEntries(
        want.tiers.map((t) => [t, plan.get(T.iamRole, `kubernetes-agent-${t}-irsa`).state.arn]),
      ),
    });
  });

  describe.each(want.tiers)("the %s agent", (tier) => {
    const name = `kubernetes-agent-${tier}`;
    const agentName = `crucible-agent-${tier}`;
    const agentLabels = () => ({ ...labels, "crucible.dev/role": "agent", "crucible.dev/tier": tier });

    it("has an account with a token, annotated with its IRSA role", () => {
      const account = plan.get(T.serviceAccount, name);
      expect(metadataOf(account)).toEqual({
        name: agentName,
        namespace,
        labels: agentLabels(),
        annotations: { "eks.amazonaws.com/role-arn": plan.get(T.iamRole, `${name}-irsa`).state.arn },
      });
      expect(account.inputs.automountServiceAccountToken).toBe(true);
    });

    it("may manage jobs, watch pods, read their logs, exec into them and ship code in ConfigMaps, in its namespace only", () => {
      const role = plan.get(T.role, name);
      expect(metadataOf(role)).toEqual({ name: agentName, namespace, labels: agentLabels() });
      expect(role.inputs.rules).toEqual([
        { apiGroups: ["batch"], resources: ["jobs"], verbs: ["create", "get", "list", "watch", "delete"] },
        { apiGroups: [""], resources: ["pods"], verbs: ["get", "list", "watch"] },
        { apiGroups: [""], resources: ["pods/log"], verbs: ["get"] },
        // The keeper's files and the job's stop signals, over WebSocket: `get` authorizes its upgrade,
        // and Kubernetes 1.35 asks for `create` as well. No attach, port-forward, or exec elsewhere.
        { apiGroups: [""], resources: ["pods/exec"], verbs: ["create", "get"] },
        { apiGroups: [""], resources: ["configmaps"], verbs: ["create", "get", "list", "patch", "delete"] },
      ]);
      // A Role, never a ClusterRole: the rules hold in the jobs' namespace only.
      expect(plan.ofType("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole")).toEqual([]);
      expect(plan.ofType("kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding")).toEqual([]);
      const binding = plan.get(T.roleBinding, name);
      expect(metadataOf(binding)).toEqual({ name: agentName, namespace, labels: agentLabels() });
      expect(binding.inputs.roleRef).toEqual({
        apiGroup: "rbac.authorization.k8s.io",
        kind: "Role",
        name: agentName,
      });
      expect(binding.inputs.subjects).toEqual([{ kind: "ServiceAccount", name: agentName, namespace }]);
    });

    it("runs the stack's agent image, locked down, with the tier's queues and the workspaces", () => {
      const deployment = plan.get(T.deployment, name);
      expect(metadataOf(deployment)).toEqual({
        name: agentName,
        namespace,
        labels: agentLabels(),
        annotations: { "crucible.dev/sandbox-facts": expect.any(String) as unknown },
      });
      const spec = specOf(deployment) as {
        replicas: number;
        selector: unknown;
        template: { metadata: unknown; spec: PodSpec };
      };
      expect(spec.replicas).toBe(1);
      expect(spec.selector).toEqual({
        matchLabels: { "crucible.dev/role": "agent", "crucible.dev/tier": tier },
      });
      expect(spec.template.metadata).toEqual({ labels: agentLabels() });
      const pod = spec.template.spec;
      expect(pod.serviceAccountName).toBe(agentName);
      expect(pod.securityContext).toEqual({
        runAsNonRoot: true,
        runAsUser: 1000,
        runAsGroup: 1000,
        fsGroup: 1000,
        seccompProfile: { type: "RuntimeDefault" },
      });
      // The tier's dataset cache, 4 jobs' workspaces and a GiB of its own.
      expect(pod.volumes).toEqual([{ name: "tmp", emptyDir: { sizeLimit: AGENT_SCRATCH[tier] } }]);
      const [container, ...others] = pod.containers;
      expect(others).toEqual([]);
      const images = plan.outputs.imageRefs as Record<string, string>;
      const storage = plan.outputs.storage as {
        bucketName: string;
        workspacesPrefix: string;
        datasetsBucketName: string;
      };
      expect(container!.image).toBe(images.agent);
      expect(container!.args).toEqual(["agent", "--tier", tier]);
      expect(container!.securityContext).toEqual({
        runAsNonRoot: true,
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ["ALL"] },
        seccompProfile: { type: "RuntimeDefault" },
      });
      expect(container!.resources).toEqual({
        requests: { cpu: "100m", memory: "256Mi" },
        limits: { cpu: "500m", memory: "512Mi" },
      });
      expect(container!.volumeMounts).toEqual([{ name: "tmp", mountPath: "/tmp" }]);
      const env = Object.fromEntries(container!.env.map((e) => [e.name, e.value]));
      const gpuTier = tier.startsWith("gpu-");
      expect(container!.env.map((e) => e.name)).toEqual([
        "CRUCIBLE_TIER",
        "CRUCIBLE_LAUNCHER",
        "CRUCIBLE_K8S_NAMESPACE",
        "CRUCIBLE_BUCKET",
        "CRUCIBLE_WORKSPACES_PREFIX",
        "CRUCIBLE_DATASETS_BUCKET",
        "CRUCIBLE_QUEUES",
        "CRUCIBLE_IMAGES",
        "CRUCIBLE_HEARTBEAT_SECONDS",
        "CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS",
        "CRUCIBLE_SCHEDULING",
        "CRUCIBLE_SENDERS",
        ...(gpuTier ? ["CRUCIBLE_K8S_GPU_NODE_LABEL"] : []),
        "AWS_REGION",
        "CRUCIBLE_PACKAGE_INDEX",
        "CRUCIBLE_PACKAGE_DENY",
      ]);
      const { agent: _agent, ...jobImages } = images;
      expect({ ...env, CRUCIBLE_QUEUES: JSON.parse(env.CRUCIBLE_QUEUES!) as unknown }).toEqual({
        CRUCIBLE_TIER: tier,
        CRUCIBLE_LAUNCHER: "kubernetes",
        CRUCIBLE_K8S_NAMESPACE: namespace,
        CRUCIBLE_BUCKET: storage.bucketName,
        CRUCIBLE_WORKSPACES_PREFIX: storage.workspacesPrefix,
        CRUCIBLE_DATASETS_BUCKET: storage.datasetsBucketName,
        CRUCIBLE_QUEUES: {
          [tier]: Object.fromEntries(PRIORITIES.map((p) => [p, queueOf(tier, p).state.url])),
        },
        CRUCIBLE_IMAGES: JSON.stringify(jobImages),
        CRUCIBLE_HEARTBEAT_SECONDS: "30",
        CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS: "120",
        CRUCIBLE_SCHEDULING: env.CRUCIBLE_SCHEDULING,
        // test/infra/access.test.ts checks its value.
        CRUCIBLE_SENDERS: env.CRUCIBLE_SENDERS,
        ...(gpuTier && { CRUCIBLE_K8S_GPU_NODE_LABEL: "nvidia.com/gpu.present=true" }),
        AWS_REGION: file["aws:region"],
        // The same package index as the stack's nodes (test/infra/fleet/user-data.test.ts).
        CRUCIBLE_PACKAGE_INDEX: `codeartifact://crucible-${file["crucible:environment"]}/${MOCK_ACCOUNT_ID}/pypi`,
        CRUCIBLE_PACKAGE_DENY: env.CRUCIBLE_PACKAGE_DENY,
      });
      expect(JSON.parse(env.CRUCIBLE_SCHEDULING!)).toMatchObject({ weights: { high: 6, normal: 3, low: 1 } });
    });

    it("publishes its job pods' sandbox facts: the fleet's, but where the README says Kubernetes differs", () => {
      const annotations = metadataOf(plan.get(T.deployment, name)).annotations as Record<string, string>;
      expect(JSON.parse(annotations["crucible.dev/sandbox-facts"]!)).toEqual({
        ...sandboxFacts(tier),
        capAdd: [],
        perJobUser: false,
        pidsLimit: 0,
      });
    });

    it("has an AWS role only its own service account's tokens assume, scoped to its tier's queues", () => {
      const role = plan.get(T.iamRole, `${name}-irsa`);
      expect(JSON.parse(role.inputs.assumeRolePolicy as string)).toEqual({
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "ClusterServiceAccount",
            Effect: "Allow",
            Principal: { Federated: OIDC.providerArn },
            Action: "sts:AssumeRoleWithWebIdentity",
            Condition: {
              StringEquals: {
                [`${ISSUER}:aud`]: "sts.amazonaws.com",
                [`${ISSUER}:sub`]: [`system:serviceaccount:${namespace}:${agentName}`],
              },
            },
          },
        ],
      });
      expect(role.inputs.tags).toEqual({ "crucible:component": "kubernetes", "crucible:tier": tier });
      const policy = JSON.parse(plan.get(T.iamRolePolicy, `${name}-irsa`).inputs.policy as string) as {
        Statement: { Sid: string; Action: unknown; Resource: unknown }[];
      };
      const storage = plan.outputs.storage as { bucketArn: string; workspacesPrefix: string };
      expect(policy.Statement.map((s) => s.Sid)).toEqual([
        "TierQueue",
        "Workspaces",
        "RunningMarkers",
        "ListWorkspaces",
        "Ledger",
        "ListLedger",
        "BudgetPause",
        "ListBudgetPause",
        "ReadDatasets",
        "ListDatasets",
        "PublishPrecachedDatasets",
        "BuildEnvironments",
        "ListEnvironments",
        "PackageIndexToken",
        "PackageIndexBearerToken",
        "ReadPackageIndex",
        ...(file["crucible:workspaces"]?.includes('"encryption":"s3"') ? [] : ["WorkspacesKey"]),
        "JobMetrics",
      ]);
      expect(policy.Statement[0]).toEqual({
        Sid: "TierQueue",
        Effect: "Allow",
        Action: [
          "sqs:ReceiveMessage",
          "sqs:SendMessage",
          "sqs:DeleteMessage",
          "sqs:ChangeMessageVisibility",
          "sqs:GetQueueAttributes",
        ],
        Resource: PRIORITIES.map((p) => queueOf(tier, p).state.arn),
      });
      expect(policy.Statement[1]!.Resource).toBe(`${storage.bucketArn}/${storage.workspacesPrefix}*`);
      expect(policy.Statement.slice(4, 8)).toEqual([
        {
          Sid: "Ledger",
          Effect: "Allow",
          Action: ["s3:PutObject", "s3:GetObject"],
          Resource: `${storage.bucketArn}/ledger/*`,
        },
        {
          Sid: "ListLedger",
          Effect: "Allow",
          Action: "s3:ListBucket",
          Resource: storage.bucketArn,
          Condition: { StringLike: { "s3:prefix": ["ledger/*"] } },
        },
        {
          Sid: "BudgetPause",
          Effect: "Allow",
          Action: "s3:GetObject",
          Resource: `${storage.bucketArn}/_control/paused/${tier}`,
        },
        {
          Sid: "ListBudgetPause",
          Effect: "Allow",
          Action: "s3:ListBucket",
          Resource: storage.bucketArn,
          Condition: { StringEquals: { "s3:prefix": `_control/paused/${tier}` } },
        },
      ]);
      // The datasets as a node's agent has them: read all, publish only the pre-cached sets.
      const datasetsArn = (plan.outputs.storage as { datasetsBucketArn: string }).datasetsBucketArn;
      expect(policy.Statement.slice(8, 11)).toEqual([
        { Sid: "ReadDatasets", Effect: "Allow", Action: "s3:GetObject", Resource: `${datasetsArn}/*` },
        { Sid: "ListDatasets", Effect: "Allow", Action: "s3:ListBucket", Resource: datasetsArn },
        {
          Sid: "PublishPrecachedDatasets",
          Effect: "Allow",
          Action: "s3:PutObject",
          Resource: `${datasetsArn}/precached/*`,
        },
      ]);
    });
  });
});

describe("the Kubernetes target in variants of the staging stack", () => {
  it("is not declared at all while disabled (every stack file leaves it off)", async () => {
    for (const stack of STACKS) {
      const plan = await runStack(stack);
      expect(plan.resources.filter((r) => r.type.startsWith("kubernetes:") || r.type === T.provider)).toEqual(
        [],
      );
      expect(plan.ofType(T.target)).toEqual([]);
      expect(plan.outputs.kubernetes).toBeUndefined();
    }
  });

  it("sizes the quota from maxJobsPerTier and agentReplicas, and runs that many agents", async () => {
    const plan = await runStack("staging", enabled("staging", { maxJobsPerTier: 2, agentReplicas: 3 }));
    // jobs 14500m×2 = 29000m, 49664Mi×2 = 99328Mi, 2 GPU tiers × 2 = 4 GPUs; keepers 8 × 200m/128Mi;
    // agents 4 tiers × 3 = 12.
    expect(specOf(plan.get(T.quota, "kubernetes-quota"))).toEqual({
      hard: {
        pods: "20",
        "requests.cpu": "31800m",
        "limits.cpu": "36600m",
        "requests.memory": "103424Mi",
        "limits.memory": "106496Mi",
        "requests.nvidia.com/gpu": "4",
      },
    });
    for (const d of plan.ofType(T.deployment)) expect(specOf(d).replicas).toBe(3);
  });

  it("with CPU tiers only: no GPU quota or limit, no device plugin", async () => {
    const plan = await runStack(
      "staging",
      configWith("staging", {
        "crucible:kubernetes": { enabled: true, kubeconfig: KUBECONFIG },
        "crucible:fleet": { tiers: { "gpu-small": { enabled: false }, "gpu-medium": { enabled: false } } },
        "crucible:budgets": { monthlyLimitUsd: 3000, emails: [] },
      }),
    );
    expect(plan.ofType(T.daemonSet)).toEqual([]);
    expect(specOf(plan.get(T.quota, "kubernetes-quota"))).toEqual({
      hard: {
        pods: "10",
        "requests.cpu": "11800m",
        "limits.cpu": "12600m",
        "requests.memory": "19968Mi",
        "limits.memory": "20480Mi",
      },
    });
    expect(
      (specOf(plan.get(T.limitRange, "kubernetes-limits")).limits as { max: unknown }[])[0]!.max,
    ).toEqual({
      cpu: "2000m",
      memory: "4096Mi",
    });
  });

  it("without OIDC: no AWS roles, no role annotation, no role ARNs", async () => {
    const plan = await runStack(
      "staging",
      configWith("staging", { "crucible:kubernetes": { enabled: true, kubeconfig: KUBECONFIG } }),
    );
    expect(plan.ofType(T.iamRole).filter((r) => r.name.startsWith("kubernetes-"))).toEqual([]);
    for (const sa of plan.ofType(T.serviceAccount)) expect(metadataOf(sa).annotations).toBeUndefined();
    expect((plan.outputs.kubernetes as { agentRoleArns: unknown }).agentRoleArns).toEqual({});
  });

  it("with the cluster objects existing: no priority classes, no device plugin; a digest-pinned plugin otherwise", async () => {
    const existing = await runStack("staging", enabled("staging", { clusterObjects: "existing" }));
    expect(existing.ofType(T.priorityClass)).toEqual([]);
    expect(existing.ofType(T.daemonSet)).toEqual([]);
    const image = `nvcr.io/nvidia/k8s-device-plugin:v0.17.0@sha256:${"a".repeat(64)}`;
    const pinned = await runStack(
      "staging",
      enabled("staging", {
        devicePluginImage: image,
        gpuNodeLabel: { key: "node.crucible.dev/gpu", value: "yes" },
      }),
    );
    const pod = (
      specOf(pinned.ofType(T.daemonSet)[0]!).template as { spec: PodSpec & { nodeSelector: unknown } }
    ).spec;
    expect(pod.containers[0]!.image).toBe(image);
    expect(pod.nodeSelector).toEqual({ "node.crucible.dev/gpu": "yes" });
    // The GPU agents' job pods select the same nodes the device plugin runs on.
    const agentEnv: Record<string, string | undefined> = Object.fromEntries(
      pinned.ofType(T.deployment).map((d): [string, string | undefined] => {
        const container = (specOf(d).template as { spec: PodSpec }).spec.containers[0]!;
        const label = container.env.find((e) => e.name === "CRUCIBLE_K8S_GPU_NODE_LABEL");
        return [container.args[2]!, label?.value];
      }),
    );
    expect(agentEnv).toEqual({
      "cpu-small": undefined,
      "cpu-large": undefined,
      "gpu-small": "node.crucible.dev/gpu=yes",
      "gpu-medium": "node.crucible.dev/gpu=yes",
    });
  });
});
