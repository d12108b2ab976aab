import * as pulumi from "@pulumi/pulumi";
import {
  DATASETS_PRECACHED_PREFIX,
  ENVIRONMENTS_PREFIX,
  JOB_METRICS,
  SESSION_MANAGER_ACTIONS,
  LEDGER_PREFIX,
  pauseMarkerKey,
} from "@crucible/runtime/catalog";
import type { PolicyDocument, PolicyStatement } from "../policy-document";

/**
 * A node's IAM: who may assume its role (EC2 only) and what the role may do. The agent's data statements
 * are shared with the Kubernetes target's agents (infra/kubernetes/agent.ts), so an agent has the same
 * data access wherever it runs.
 */

/** The node role's trust policy: only EC2, for the tier's instances, assumes it. */
export const NODE_ASSUME_ROLE_POLICY = JSON.stringify({
  Version: "2012-10-17",
  Statement: [{ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }],
});

/**
 * What a node may do: its tier's priority queues, its workspace prefix, the ledger and the datasets (and the
 * buckets' key, through S3 only), pulls, its own group's hooks, its job metrics and its agent's log; on a spot group, spot
 * prices for the ledger.
 */
export function nodePolicy(
  scope: AgentDataScope & {
    readonly repositoryArns: readonly pulumi.Input<string>[];
    readonly groupArn: pulumi.Input<string>;
    /** The tier's agent log group. */
    readonly logGroupArn: pulumi.Input<string>;
    /** The group runs spot instances, whose agents charge jobs the spot price. */
    readonly spot: boolean;
  },
): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      ...agentDataStatements(scope),
      // The one wildcard resource: ECR issues registry tokens account-wide, and the token only reads.
      { Sid: "RegistryToken", Effect: "Allow", Action: "ecr:GetAuthorizationToken", Resource: "*" },
      {
        Sid: "PullImages",
        Effect: "Allow",
        Action: ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
        Resource: [...scope.repositoryArns],
      },
      {
        Sid: "OwnGroupLifecycle",
        Effect: "Allow",
        Action: [
          "autoscaling:SetInstanceProtection",
          "autoscaling:CompleteLifecycleAction",
          // A GPU node that fails its health check has the group replace it.
          "autoscaling:SetInstanceHealth",
        ],
        Resource: scope.groupArn,
      },
      JOB_METRICS_STATEMENT,
      {
        // The Docker engine's awslogs driver writes the agent's output; the group itself is declared here.
        Sid: "AgentLog",
        Effect: "Allow",
        Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
        Resource: pulumi.interpolate`${scope.logGroupArn}:*`,
      },
      SESSION_MANAGER_STATEMENT,
      ...(scope.spot ? [SPOT_PRICES_STATEMENT] : []),
    ],
  };
}

/** Where an agent's data lives: its tier's queues (one per priority class), the buckets and their key. */
export interface AgentDataScope {
  /** The agent's tier: it reads that tier's budget pause marker only. */
  readonly tier: string;
  readonly queueArns: readonly pulumi.Input<string>[];
  readonly bucketArn: pulumi.Input<string>;
  readonly prefix: pulumi.Input<string>;
  /** The datasets bucket: the agent reads every job's datasets and publishes the pre-cached sets. */
  readonly datasetsBucketArn: pulumi.Input<string>;
  /** The buckets' KMS key (one for both); undefined where they use S3-managed keys. */
  readonly kmsKeyArn?: pulumi.Input<string>;
  /** The stack's region: the key is usable only through this region's S3. */
  readonly regionName: pulumi.Input<string>;
  /**
   * Job environments, where the stack builds them (`crucible:environments.index` is not `none`): the agent
   * builds, stores and caches them under `environments/` in the datasets bucket, and, with the stack's
   * CodeArtifact proxy, reads packages from its nodes' repository. Absent: no environment grant.
   */
  readonly environments?: EnvironmentsScope;
}

/** What an agent's environment builds read: the stack's CodeArtifact proxy, where it declares one. */
export interface EnvironmentsScope {
  /** The CodeArtifact domain and the one repository nodes read (infra/environments/); absent for a URL index. */
  readonly codeArtifact?: {
    readonly domainArn: pulumi.Input<string>;
    readonly repositoryArn: pulumi.Input<string>;
  };
}

/**
 * What an agent needs wherever it runs (a node, a Kubernetes pod): its tier's queues, its workspace prefix,
 * the ledger's month partitions, the datasets (every user's and the pre-cached sets, which it alone
 * writes), and the buckets' key, through S3 only.
 */
export function agentDataStatements(scope: AgentDataScope): PolicyStatement[] {
  return [
    {
      Sid: "TierQueue",
      Effect: "Allow",
      Action: [
        "sqs:ReceiveMessage",
        // Fair-share deferral and preemption re-send a job's message to its own queue (job-queue.ts `requeue`).
        "sqs:SendMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
      ],
      Resource: [...scope.queueArns],
    },
    {
      Sid: "Workspaces",
      Effect: "Allow",
      Action: ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"],
      Resource: pulumi.interpolate`${scope.bucketArn}/${scope.prefix}*`,
    },
    {
      // Fair share's running-job markers (<prefix><project>/_running/...) are the only objects agents delete.
      Sid: "RunningMarkers",
      Effect: "Allow",
      Action: "s3:DeleteObject",
      Resource: pulumi.interpolate`${scope.bucketArn}/${scope.prefix}*/_running/*`,
    },
    {
      Sid: "ListWorkspaces",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringLike: { "s3:prefix": [pulumi.interpolate`${scope.prefix}*`] } },
    },
    {
      // Finance's copy of each attempt's cost entry; agents read the month's partition for budgets.
      Sid: "Ledger",
      Effect: "Allow",
      Action: ["s3:PutObject", "s3:GetObject"],
      Resource: pulumi.interpolate`${scope.bucketArn}/${LEDGER_PREFIX}*`,
    },
    {
      Sid: "ListLedger",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringLike: { "s3:prefix": [`${LEDGER_PREFIX}*`] } },
    },
    {
      // The tier's budget pause marker (budget-pause.ts), checked before each receive: the agent lists
      // its one key (absent: not paused), then reads it. A read it may not make counts as a pause.
      Sid: "BudgetPause",
      Effect: "Allow",
      Action: "s3:GetObject",
      Resource: pulumi.interpolate`${scope.bucketArn}/${pauseMarkerKey(scope.tier)}`,
    },
    {
      Sid: "ListBudgetPause",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringEquals: { "s3:prefix": pauseMarkerKey(scope.tier) } },
    },
    {
      // Any job may name any user's dataset version or a pre-cached set: the agent fetches it for the job.
      Sid: "ReadDatasets",
      Effect: "Allow",
      Action: "s3:GetObject",
      Resource: pulumi.interpolate`${scope.datasetsBucketArn}/*`,
    },
    {
      Sid: "ListDatasets",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.datasetsBucketArn,
    },
    {
      // Agents publish the pre-cached sets their images hold; users' versions are written by their owners only.
      Sid: "PublishPrecachedDatasets",
      Effect: "Allow",
      Action: "s3:PutObject",
      Resource: pulumi.interpolate`${scope.datasetsBucketArn}/${DATASETS_PRECACHED_PREFIX}*`,
    },
    ...(scope.environments === undefined ? [] : environmentStatements(scope, scope.environments)),
    // SSE-KMS objects: reading needs Decrypt, writing GenerateDataKey. The key policy leaves its use
    // to IAM, so without this a node could neither fetch a job's code nor upload its result. Both buckets
    // share the key: this covers the datasets too.
    ...(scope.kmsKeyArn === undefined
      ? []
      : [
          {
            Sid: "WorkspacesKey",
            Effect: "Allow" as const,
            Action: ["kms:Decrypt", "kms:GenerateDataKey"],
            Resource: scope.kmsKeyArn,
            Condition: {
              StringEquals: { "kms:ViaService": pulumi.interpolate`s3.${scope.regionName}.amazonaws.com` },
            },
          },
        ]),
  ];
}

/**
 * Job environments (the builder, runtime/src/environments/): read and store built environments under
 * `environments/` in the datasets bucket and list only there (never delete: an environment is immutable,
 * keyed by what it is built from); with the stack's CodeArtifact proxy, a token for its domain and reads
 * of the nodes' repository only, never a publish, a delete or the store repository behind it.
 */
function environmentStatements(scope: AgentDataScope, environments: EnvironmentsScope): PolicyStatement[] {
  const statements: PolicyStatement[] = [
    {
      Sid: "BuildEnvironments",
      Effect: "Allow",
      Action: ["s3:GetObject", "s3:PutObject"],
      Resource: pulumi.interpolate`${scope.datasetsBucketArn}/${ENVIRONMENTS_PREFIX}*`,
    },
    {
      Sid: "ListEnvironments",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.datasetsBucketArn,
      Condition: { StringLike: { "s3:prefix": [`${ENVIRONMENTS_PREFIX}*`] } },
    },
  ];
  const index = environments.codeArtifact;
  if (index === undefined) return statements;
  return [
    ...statements,
    {
      // A token is issued per domain; it reads only what the repository grants below allow.
      Sid: "PackageIndexToken",
      Effect: "Allow",
      Action: "codeartifact:GetAuthorizationToken",
      Resource: index.domainArn,
    },
    {
      // GetAuthorizationToken asks STS for a bearer token on the caller's behalf: for CodeArtifact only.
      Sid: "PackageIndexBearerToken",
      Effect: "Allow",
      Action: "sts:GetServiceBearerToken",
      Resource: "*",
      Condition: { StringEquals: { "sts:AWSServiceName": "codeartifact.amazonaws.com" } },
    },
    {
      Sid: "ReadPackageIndex",
      Effect: "Allow",
      Action: ["codeartifact:GetRepositoryEndpoint", "codeartifact:ReadFromRepository"],
      Resource: index.repositoryArn,
    },
  ];
}

/**
 * Session Manager shells, so operators reach nodes without SSH or open ports. In place of
 * AmazonSSMManagedInstanceCore, which also lets a node read every SSM parameter in the account.
 */
const SESSION_MANAGER_STATEMENT: PolicyStatement = {
  Sid: "SessionManager",
  Effect: "Allow",
  Action: SESSION_MANAGER_ACTIONS,
  Resource: "*",
};

/** A read-only action with no resource-level permissions: IAM authorises it only on "*". */
const SPOT_PRICES_STATEMENT: PolicyStatement = {
  Sid: "SpotPrices",
  Effect: "Allow",
  Action: "ec2:DescribeSpotPriceHistory",
  Resource: "*",
};

/** The agent's job outcome metrics, in their own namespace only. */
export const JOB_METRICS_STATEMENT: PolicyStatement = {
  Sid: "JobMetrics",
  Effect: "Allow",
  Action: "cloudwatch:PutMetricData",
  Resource: "*",
  Condition: { StringEquals: { "cloudwatch:namespace": JOB_METRICS.namespace } },
};
