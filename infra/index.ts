import * as pulumi from "@pulumi/pulumi";
import { TIER_NAMES, TIERS, PRIORITIES, type Priority } from "@crucible/runtime/catalog";
import { Submitters } from "./access";
import { Budgets } from "./budgets";
import { PermissionsBoundary, boundEveryRole } from "./boundary";
import { CiAccess, SMOKE_PROJECT } from "./ci";
import { loadConfig, schedulingPolicy, submitterProjects } from "./config";
import { PackageIndex } from "./environments";
import { fixedMonthlyCosts, tierHourlyCosts } from "./finance";
import { TierFleet, type AgentEnvironments } from "./fleet";
import { FastScale, fastScaleJobsPerNode } from "./fleet/fast-scale";
import { KubernetesTarget } from "./kubernetes";
import { EndpointPolicies, Network } from "./network";
import { Notifications } from "./notifications";
import { Operations } from "./operations";
import { awsProvider, stackTags } from "./providers";
import { JobQueues } from "./queues";
import { Registry } from "./registry";
import { Workspaces } from "./workspaces";

// Wiring only: every concern is a component in its own module; outputs are what CI and finance read.
const config = loadConfig();
const aws = awsProvider(config);

const enabledTiers = TIER_NAMES.filter((t) => config.fleet.tiers[t]?.enabled);

// Every role declared below (nodes, agents, the enforcer, submitters; CI's own excepted) carries this
// boundary, and CI's deploy role may create and change roles only with it: no deploy reaches past it.
const boundary = new PermissionsBoundary(
  "permissions-boundary",
  { environment: config.environment, stack: config.stack },
  { provider: aws },
);
boundEveryRole(boundary.arn);
export const permissionsBoundaryArn = boundary.arn;

export const environment = config.environment;
export const region = config.region;
export const tiers = Object.fromEntries(
  enabledTiers.map((t) => [t, { ...TIERS[t], ...config.fleet.tiers[t]?.limits }]),
);

// Nodes live in private subnets; with nat "none", VPC endpoints carry all their AWS traffic.
const net = new Network(
  "network",
  {
    settings: config.network,
    region: config.region,
    // Without NAT, nodes reach the stack's package proxy through CodeArtifact's endpoints.
    codeArtifact: config.environments.index === "codeartifact",
  },
  { provider: aws },
);
export const network = {
  vpcId: net.vpcId,
  vpcCidr: net.vpcCidr,
  privateSubnetIds: net.privateSubnetIds,
  nodeSecurityGroupId: net.nodeSecurityGroupId,
  fixedCostCounts: net.fixedCostCounts,
};

// Jobs wait in their tier's queue of their priority; the agent and the fleet's scaling read these.
const jobQueues = new JobQueues(
  "queues",
  { tiers: enabledTiers, settings: config.fleet.queue },
  { provider: aws },
);
export const queues = jobQueues.byTier;
// How agents share a tier's slots, with the user and project budgets: CLI users set CRUCIBLE_SCHEDULING to it.
export const scheduling = schedulingPolicy(config);

// Images are built here, or promoted from the upstream stack by digest.
const registry = new Registry(
  "registry",
  { environment: config.environment, registry: config.registry },
  { provider: aws },
);
export const imageRefs = registry.imageRefs;

// Budgets and alarms share one encrypted topic; finance reads the budgets and cost figures below.
const notifications = new Notifications(
  "notifications",
  { emails: config.budgets.emails },
  { provider: aws },
);
const workspaces = new Workspaces("workspaces", { settings: config.workspaces }, { provider: aws });

// The VPC's S3 and SQS endpoints reach only this stack's buckets (and ECR's layers) and queues.
new EndpointPolicies(
  "network-endpoints",
  {
    endpointIds: net.endpointIds,
    region: config.region,
    bucketArns: [workspaces.bucketArn, workspaces.datasetsBucketArn],
    queueArns: enabledTiers.flatMap((t) => PRIORITIES.map((p) => jobQueues.byTier[t]![p].queueArn)),
  },
  { provider: aws },
);

// CI reaches the account through GitHub's OIDC provider: pull requests preview with a read-only role,
// jobs in the stack's GitHub environment deploy with the deploy role, and the smoke job may only become
// project ci's submitter (declared below, trusting the smoke role). Without crucible:ci, none exists.
const projects = submitterProjects(config);
const [ciSubmitterRoleArn, resolveCiSubmitterRoleArn] = pulumi.deferredOutput<string>();
const ciAccess = config.ci
  ? new CiAccess(
      "ci",
      {
        github: config.ci.github,
        environment: config.environment,
        stack: config.stack,
        permissionsBoundaryArn: boundary.arn,
        ...(projects[SMOKE_PROJECT] && { smokeSubmitterRoleArn: ciSubmitterRoleArn }),
      },
      { provider: aws },
    )
  : undefined;

// Researchers submit as themselves: each project's role, assumed with the user's name as session name and
// tag, writes only that user's prefixes (job files, dataset versions) and sends only to the project's
// queues; agents check the sender.
// After CI's smoke role, which a trust policy may name only once it exists.
const submitters = new Submitters(
  "submitters",
  {
    projects,
    bucketArn: workspaces.bucketArn,
    prefix: workspaces.workspacesPrefix,
    datasetsBucketArn: workspaces.datasetsBucketArn,
    kmsKeyArn: workspaces.kmsKeyArn,
    queueArns: Object.fromEntries(
      enabledTiers.map((t) => [
        t,
        Object.fromEntries(PRIORITIES.map((p) => [p, jobQueues.byTier[t]![p].queueArn])),
      ]),
    ),
  },
  { provider: aws, dependsOn: ciAccess ? [ciAccess.smokeRole] : [] },
);
if (projects[SMOKE_PROJECT]) resolveCiSubmitterRoleArn(submitters.roleArns[SMOKE_PROJECT]!);
export const access = { submitterRoleArns: submitters.roleArns };

// Job environments' packages: the stack's CodeArtifact proxy of PyPI, an existing index, or none.
const packageIndex = new PackageIndex(
  "environments",
  { environment: config.environment, settings: config.environments },
  { provider: aws },
);
const agentEnvironments: AgentEnvironments | undefined = packageIndex.packageIndex && {
  packageIndex: packageIndex.packageIndex,
  ...(packageIndex.allow && { allow: packageIndex.allow }),
  deny: packageIndex.deny,
  ...(packageIndex.codeArtifact && {
    codeArtifact: {
      domainArn: packageIndex.codeArtifact.domainArn,
      repositoryArn: packageIndex.codeArtifact.repositoryArn,
    },
  }),
};
// What the agent gets in CRUCIBLE_IMAGES: the job families and the environment builder (never the agent's own).
const jobImages = Object.fromEntries(
  Object.entries(registry.imageRefs).filter(([family]) => family !== "agent"),
);
// One fleet per enabled tier: nodes that start the agent by digest against the tier's queue.
const fleets = Object.fromEntries(
  enabledTiers.map((tier) => {
    const fleet = new TierFleet(
      `fleet-${tier}`,
      {
        environment: config.environment,
        stackTags: stackTags(config),
        tier,
        settings: config.fleet.tiers[tier]!,
        heartbeatSeconds: config.fleet.heartbeatSeconds,
        visibilityTimeoutSeconds: config.fleet.queue.visibilityTimeoutSeconds,
        subnetIds: net.privateSubnetIds,
        securityGroupId: net.nodeSecurityGroupId,
        queues: jobQueues.byTier[tier]!,
        scheduling,
        submitters: Submitters.sendersFor(submitters, projects, tier),
        workspaces: {
          bucketName: workspaces.bucketName,
          bucketArn: workspaces.bucketArn,
          prefix: workspaces.workspacesPrefix,
          quotaGiB: workspaces.quotaGiBPerProject,
          datasetsBucketName: workspaces.datasetsBucketName,
          datasetsBucketArn: workspaces.datasetsBucketArn,
          kmsKeyArn: workspaces.kmsKeyArn,
        },
        agentImage: registry.imageRefs.agent!,
        jobImages,
        repositoryArns: Object.values(registry.repositoryArns),
        ...(agentEnvironments && { environments: agentEnvironments }),
      },
      { provider: aws },
    );
    return [tier, fleet];
  }),
);
const asgNamesByTier = Object.fromEntries(Object.entries(fleets).map(([tier, f]) => [tier, f.asgNames]));

// Seconds from a submission to a bigger group: each new job's spec.json wakes a function that raises its
// tier's group to what the queues need. Target tracking (in TierFleet) stays authoritative, and scales in.
const fastScale =
  config.fleet.fastScale.enabled && enabledTiers.length > 0
    ? new FastScale(
        "fast-scale",
        {
          environment: config.environment,
          tiers: Object.fromEntries(
            enabledTiers.map((tier) => [
              tier,
              {
                asgNames: fleets[tier]!.asgNames,
                queues: jobQueues.byTier[tier]!,
                jobsPerNode: fastScaleJobsPerNode(tier, config.fleet.tiers[tier]!),
              },
            ]),
          ),
          bucket: { name: workspaces.bucketName, arn: workspaces.bucketArn },
          prefix: workspaces.workspacesPrefix,
          settleSeconds: config.fleet.fastScale.settleSeconds,
        },
        { provider: aws },
      )
    : undefined;
export const fleet = Object.fromEntries(
  Object.entries(fleets).map(([tier, f]) => [
    tier,
    {
      asgNames: f.asgNames,
      launchTemplateId: f.launchTemplateId,
      agentConfigParameter: f.agentConfigParameter,
      agentLogGroup: f.agentLogGroupName,
      capacity: f.capacity,
    },
  ]),
);
export const fastScaleFunctionArn = fastScale?.functionArn;

const budgetSet = new Budgets(
  "budgets",
  {
    environment: config.environment,
    settings: config.budgets,
    topicArn: notifications.topicArn,
    asgNamesByTier,
    pauseMarkers: {
      bucketName: workspaces.bucketName,
      bucketArn: workspaces.bucketArn,
      kmsKeyArn: workspaces.kmsKeyArn,
    },
  },
  { provider: aws },
);

// Alarms notify the same topic as budgets; the dashboard follows each tier's groups.
const operations = new Operations(
  "operations",
  {
    stack: config.stack,
    region: config.region,
    queues: jobQueues.byTier,
    alarmTopicArn: notifications.topicArn,
    oldestJobAgeSeconds: config.alarms.oldestJobAgeSeconds,
    asgNamesByTier,
  },
  { provider: aws },
);
export const dashboardName = operations.dashboardName;

export const notificationTopicArn = notifications.topicArn;
// What agents build job environments from (CRUCIBLE_PACKAGE_INDEX, _ALLOW, _DENY), and the stack's proxy.
export const environments = {
  packageIndex: packageIndex.packageIndex ?? null,
  allow: packageIndex.allow ?? null,
  deny: packageIndex.deny,
  codeArtifact: packageIndex.codeArtifact ?? null,
};
export const storage = {
  bucketName: workspaces.bucketName,
  bucketArn: workspaces.bucketArn,
  datasetsBucketName: workspaces.datasetsBucketName,
  datasetsBucketArn: workspaces.datasetsBucketArn,
  workspacesPrefix: workspaces.workspacesPrefix,
  ledgerPrefix: workspaces.ledgerPrefix,
  quotaGiBPerProject: workspaces.quotaGiBPerProject,
  kmsKeyArn: workspaces.kmsKeyArn,
};
export const budgets = budgetSet.budgets;
export const tierHourlyCost = tierHourlyCosts(config);
export const fixedMonthlyCost = fixedMonthlyCosts(config.region, {
  natGateways: net.fixedCostCounts.natGateways,
  interfaceEndpointAzs: net.fixedCostCounts.interfaceEndpointAzs,
  kmsKeys: [notifications.kmsKeyArn, workspaces.kmsKeyArn].filter(Boolean).length,
});

// Agents on a Kubernetes cluster, from the same queues and workspaces as the fleet; off unless enabled.
const { enabled: kubernetesEnabled, kubeconfig, ...kubernetesSettings } = config.kubernetes;
const kubernetesTarget = kubernetesEnabled
  ? new KubernetesTarget(
      "kubernetes",
      {
        environment: config.environment,
        // Config validation requires it when enabled.
        kubeconfig: kubeconfig!,
        settings: kubernetesSettings,
        stackTags: stackTags(config),
        region: config.region,
        tiers: Object.fromEntries(
          enabledTiers.map((tier) => {
            const queues = jobQueues.byTier[tier]!;
            return [
              tier,
              {
                limits: tiers[tier]!,
                queueUrls: pulumi.output(
                  Object.fromEntries(PRIORITIES.map((p) => [p, queues[p].queueUrl])) as Record<
                    Priority,
                    pulumi.Output<string>
                  >,
                ),
                queueArns: PRIORITIES.map((p) => queues[p].queueArn),
                // The tier's nodes re-send to the same queues.
                senders: pulumi
                  .all([fleets[tier]!.roleUniqueId, Submitters.sendersFor(submitters, projects, tier)])
                  .apply(([node, bySubmitter]) => ({ agents: [node], submitters: bySubmitter })),
              },
            ];
          }),
        ),
        agentImage: registry.imageRefs.agent!,
        jobImages,
        workspaces: {
          bucketName: workspaces.bucketName,
          bucketArn: workspaces.bucketArn,
          prefix: workspaces.workspacesPrefix,
          datasetsBucketName: workspaces.datasetsBucketName,
          datasetsBucketArn: workspaces.datasetsBucketArn,
          kmsKeyArn: workspaces.kmsKeyArn,
        },
        heartbeatSeconds: config.fleet.heartbeatSeconds,
        visibilityTimeoutSeconds: config.fleet.queue.visibilityTimeoutSeconds,
        scheduling,
        ...(agentEnvironments && { environments: agentEnvironments }),
      },
      { provider: aws },
    )
  : undefined;
export const kubernetes = kubernetesTarget && {
  namespace: kubernetesTarget.namespace,
  agentDeployments: kubernetesTarget.agentDeployments,
  agentRoleArns: kubernetesTarget.agentRoleArns,
};

export const ci = ciAccess && {
  oidcProviderArn: ciAccess.oidcProviderArn,
  previewRoleArn: ciAccess.previewRoleArn,
  deployRoleArn: ciAccess.deployRoleArn,
  smokeRoleArn: ciAccess.smokeRoleArn,
  subjects: ciAccess.subjects,
};
