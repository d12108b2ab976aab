import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import type { Environment } from "./config";
import {
  PERMISSIONS_BOUNDARY_SUFFIX,
  SESSION_MANAGER_ACTIONS,
  isCiRoleName,
} from "@crucible/runtime/catalog";
import { packageDomainName } from "./environments";
import type { PolicyDocument } from "./policy-document";
import { componentTags } from "./providers";

/** `crucible-<stack>-permissions-boundary`: a fixed name, so CI's deploy role can name it in its conditions. */
export const permissionsBoundaryName = (stack: string) => `crucible-${stack}${PERMISSIONS_BOUNDARY_SUFFIX}`;

/** Arguments of {@link PermissionsBoundary}. */
export interface PermissionsBoundaryArgs {
  readonly environment: Environment;
  /** The stack's name: the boundary is named after it. */
  readonly stack: string;
}

/**
 * The ceiling of every role the program creates (nodes, Kubernetes agents, the budget enforcer,
 * submitters): job data in this account's workspace buckets and queues, image pulls, reads of the
 * environment's package index, the node's own lifecycle, logs and metrics. Never IAM, STS (but the
 * CodeArtifact-only bearer token its index's token needs), or anything that starts compute or changes the network,
 * so a role written by a deploy (CI's deploy role may create roles only with this boundary) can never
 * hold more than this, whatever its own policy says. Its content depends on no config value, so it changes
 * only with this file; CI may not change it (an engineer applies it, as CI's own roles).
 */
export class PermissionsBoundary extends pulumi.ComponentResource {
  public readonly arn: pulumi.Output<string>;

  constructor(name: string, args: PermissionsBoundaryArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:iam:PermissionsBoundary", name, {}, opts);
    const partition = aws.getPartitionOutput({}, { parent: this }).partition;
    const region = aws.getRegionOutput({}, { parent: this }).name;
    const accountId = aws.getCallerIdentityOutput({}, { parent: this }).accountId;
    const policy = new aws.iam.Policy(
      name,
      {
        name: permissionsBoundaryName(args.stack),
        description: `Ceiling of every role Crucible ${args.stack} creates (nodes, agents, enforcer, submitters)`,
        policy: pulumi.jsonStringify(boundaryPolicy({ partition, region, accountId }, args.environment)),
        tags: componentTags("iam"),
      },
      { parent: this },
    );
    this.arn = policy.arn;
    this.registerOutputs({ arn: this.arn });
  }
}

/**
 * Every role declared after this call carries `boundaryArn` as its permissions boundary, unless it sets
 * one itself or is one of CI's own roles ({@link isCiRoleName}). A stack transformation, so roles of every
 * component (and of components added later) carry it without each one plumbing it through;
 * the policy pack's `iam-roles-have-permissions-boundary` holds the stack to it.
 */
export function boundEveryRole(boundaryArn: pulumi.Input<string>): void {
  pulumi.runtime.registerStackTransformation((args) => {
    if (args.type !== "aws:iam/role:Role") return undefined;
    const props = args.props as aws.iam.RoleArgs;
    if (props.permissionsBoundary !== undefined || isCiRoleName(props.name)) return undefined;
    return { props: { ...args.props, permissionsBoundary: boundaryArn }, opts: args.opts };
  });
}

interface Scope {
  readonly partition: pulumi.Input<string>;
  readonly region: pulumi.Input<string>;
  readonly accountId: pulumi.Input<string>;
}

/**
 * The boundary's document: each statement a service the platform's roles use, scoped to this account
 * (and, where the program names things after the environment, to those names). Bucket names are Pulumi
 * auto-names `workspaces-<kind>-<suffix>`; queues and keys are auto-named, so they are scoped to the
 * account and region.
 */
export function boundaryPolicy(s: Scope, environment: Environment): PolicyDocument {
  const at = pulumi.interpolate`${s.region}:${s.accountId}`;
  const arn = (service: string, resource: string) =>
    pulumi.interpolate`arn:${s.partition}:${service}:${at}:${resource}`;
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "JobQueues",
        Effect: "Allow",
        Action: [
          "sqs:SendMessage",
          "sqs:ReceiveMessage",
          "sqs:DeleteMessage",
          "sqs:ChangeMessageVisibility",
          "sqs:GetQueueAttributes",
          "sqs:GetQueueUrl",
        ],
        Resource: arn("sqs", "*"),
      },
      {
        Sid: "JobObjects",
        Effect: "Allow",
        Action: ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging", "s3:DeleteObject"],
        Resource: pulumi.interpolate`arn:${s.partition}:s3:::workspaces-*/*`,
        Condition: { StringEquals: { "aws:ResourceAccount": s.accountId } },
      },
      {
        Sid: "ListJobObjects",
        Effect: "Allow",
        Action: "s3:ListBucket",
        Resource: pulumi.interpolate`arn:${s.partition}:s3:::workspaces-*`,
        Condition: { StringEquals: { "aws:ResourceAccount": s.accountId } },
      },
      {
        Sid: "BucketKey",
        Effect: "Allow",
        Action: ["kms:Decrypt", "kms:GenerateDataKey"],
        Resource: arn("kms", "key/*"),
      },
      {
        // Pulls may come from an upstream stack's registry (promotion), in another account.
        Sid: "PullImages",
        Effect: "Allow",
        Action: [
          "ecr:GetAuthorizationToken",
          "ecr:BatchGetImage",
          "ecr:GetDownloadUrlForLayer",
          "ecr:BatchCheckLayerAvailability",
        ],
        Resource: "*",
      },
      {
        Sid: "OwnGroups",
        Effect: "Allow",
        Action: [
          "autoscaling:SetInstanceProtection",
          "autoscaling:CompleteLifecycleAction",
          "autoscaling:RecordLifecycleActionHeartbeat",
          "autoscaling:SetInstanceHealth",
          "autoscaling:UpdateAutoScalingGroup",
          "autoscaling:CreateOrUpdateTags",
          // The fast scale-out path (infra/fleet/fast-scale.ts) raises groups between target tracking's looks.
          "autoscaling:SetDesiredCapacity",
        ],
        Resource: arn("autoscaling", `autoScalingGroup:*:autoScalingGroupName/crucible-${environment}-*`),
      },
      {
        Sid: "OwnLogs",
        Effect: "Allow",
        Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
        Resource: [
          arn("logs", `log-group:/crucible/${environment}/*`),
          arn("logs", `log-group:/aws/lambda/crucible-${environment}-*`),
        ],
      },
      {
        // Job environments' packages: a token for the environment's own CodeArtifact domain (infra/environments/),
        // and reads of its repositories; never a publish or a change.
        Sid: "ReadPackageIndex",
        Effect: "Allow",
        Action: [
          "codeartifact:GetAuthorizationToken",
          "codeartifact:GetRepositoryEndpoint",
          "codeartifact:ReadFromRepository",
        ],
        Resource: [
          arn("codeartifact", `domain/${packageDomainName(environment)}`),
          arn("codeartifact", `repository/${packageDomainName(environment)}/*`),
        ],
      },
      {
        // The bearer token CodeArtifact's GetAuthorizationToken asks STS for on its caller's behalf: for
        // CodeArtifact only, so no other credential can be had through it.
        Sid: "PackageIndexBearerToken",
        Effect: "Allow",
        Action: "sts:GetServiceBearerToken",
        Resource: "*",
        Condition: { StringEquals: { "sts:AWSServiceName": "codeartifact.amazonaws.com" } },
      },
      {
        Sid: "OwnParameters",
        Effect: "Allow",
        Action: "ssm:GetParameter",
        Resource: arn("ssm", `parameter/crucible/${environment}/*`),
      },
      {
        // Actions IAM authorises only on "*": they read, report metrics, or open Session Manager channels.
        Sid: "AccountWideOnly",
        Effect: "Allow",
        Action: [
          "autoscaling:DescribeAutoScalingGroups",
          "cloudwatch:PutMetricData",
          "ec2:DescribeSpotPriceHistory",
          ...SESSION_MANAGER_ACTIONS,
        ],
        Resource: "*",
      },
    ],
  };
}
