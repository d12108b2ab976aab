import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import type { CrucibleConfig, Environment } from "./config";
import type { PolicyDocument, PolicyStatement } from "./policy-document";
import { webIdentityTrustPolicy } from "./policy-document";
import { COST_TAGS, componentTags } from "./providers";
import { permissionsBoundaryName } from "./boundary";
import { packageDomainName } from "./environments";

/** The issuer of GitHub Actions' OIDC tokens, without its scheme (how IAM names its condition keys). */
export const GITHUB_OIDC_HOST = "token.actions.githubusercontent.com";
/** The audience aws-actions/configure-aws-credentials requests. */
export const GITHUB_OIDC_AUDIENCE = "sts.amazonaws.com";
/**
 * The project CI's smoke jobs submit to, and the user they submit as: the smoke role assumes that project's
 * submitter role (infra/access.ts) with this session name and `crucible-user` tag (scripts/assume-submitter.sh).
 */
export const SMOKE_PROJECT = "ci";
export const SMOKE_USER = "ci";
/** How long a deploy session lasts: a dev `pulumi up` builds and pushes the image matrix, CUDA included. */
export const DEPLOY_SESSION_SECONDS = 2 * 3600;
/**
 * AWS managed policies earlier versions attached to the nodes' roles (now an inline Session Manager
 * statement): the deploy role may detach them, never attach, so the first deploy of this version can.
 */
export const DETACHABLE_MANAGED_POLICIES = ["AmazonSSMManagedInstanceCore"] as const;

export type GitHubSettings = NonNullable<CrucibleConfig["ci"]>["github"];

/** Arguments of {@link CiAccess}. */
export interface CiAccessArgs {
  /**
   * `crucible:ci.github`: the repository; `branch` defaults to main, `environments` to the stack's
   * environment, `oidcProvider` to declare.
   */
  readonly github: GitHubSettings;
  /** The stack's environment: the tag and name prefix that scope the deploy role. */
  readonly environment: Environment;
  /** The stack's name: the CI roles, the dashboard and the node-event log are named after it. */
  readonly stack: string;
  /**
   * The permissions boundary the program declares (infra/boundary.ts): the deploy role may create roles
   * and write their policies only when they carry it.
   */
  readonly permissionsBoundaryArn: pulumi.Input<string>;
  /**
   * Project `ci`'s submitter role, which the smoke role may assume (and tag the session) and nothing else;
   * absent where `crucible:access` has no project `ci`: the smoke role may then do nothing.
   */
  readonly smokeSubmitterRoleArn?: pulumi.Input<string>;
}

/** The `sub` claims of GitHub's tokens that each role trusts, exactly (no wildcards). */
export interface CiSubjects {
  /** Jobs in the stack's GitHub environments; for dev, also jobs on pushes to the deploy branch. */
  readonly deploy: readonly string[];
  /** Pull requests' jobs, which only preview. */
  readonly preview: readonly string[];
  /** Jobs that run the smoke job after a deploy: the deploy subjects, and for dev pushes to the branch. */
  readonly smoke: readonly string[];
}

/**
 * What GitHub Actions may do in the stack's account, through OIDC (no long-lived keys): the account's
 * GitHub OIDC provider, a read-only preview role that pull requests assume, a deploy role for
 * `pulumi up` that only jobs in the stack's GitHub environment (which may require an approval) assume,
 * and a smoke role that may only become project `ci`'s submitter, as user `ci`, to run one job.
 */
export class CiAccess extends pulumi.ComponentResource {
  public readonly oidcProviderArn: pulumi.Output<string>;
  public readonly previewRoleArn: pulumi.Output<string>;
  public readonly deployRoleArn: pulumi.Output<string>;
  public readonly smokeRoleArn: pulumi.Output<string>;
  /**
   * The smoke role itself: project `ci`'s submitter role trusts it by ARN, and IAM refuses a trust policy
   * naming a principal that does not exist yet, so the submitter roles depend on it.
   */
  public readonly smokeRole: aws.iam.Role;
  public readonly subjects: CiSubjects;

  constructor(name: string, args: CiAccessArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:ci:CiAccess", name, {}, opts);
    const { github, environment, stack } = args;
    const tags = componentTags("ci");
    const scope = accountScope(this);
    this.subjects = ciSubjects(github, environment);
    this.oidcProviderArn = githubOidcProvider(name, github.oidcProvider ?? "declare", tags, this);

    const trusted = { providerArn: this.oidcProviderArn, tags };
    const preview = federatedRole(`${name}-preview`, this, {
      ...trusted,
      roleName: ciRoleName(stack, "preview"),
      description: `GitHub Actions previews of Crucible ${stack} from ${github.repository} pull requests (read-only)`,
      subjects: this.subjects.preview,
      policy: previewPolicy(scope, environment),
    });
    const deploy = federatedRole(`${name}-deploy`, this, {
      ...trusted,
      roleName: ciRoleName(stack, "deploy"),
      description: `GitHub Actions deployments of Crucible ${stack} from ${github.repository}`,
      subjects: this.subjects.deploy,
      policy: deployPolicy(scope, environment, stack, args.permissionsBoundaryArn),
      maxSessionDuration: DEPLOY_SESSION_SECONDS,
    });
    const smoke = federatedRole(`${name}-smoke`, this, {
      ...trusted,
      roleName: ciRoleName(stack, "smoke"),
      description: `GitHub Actions smoke jobs of Crucible ${stack} from ${github.repository}`,
      subjects: this.subjects.smoke,
      ...(args.smokeSubmitterRoleArn !== undefined && { policy: smokePolicy(args.smokeSubmitterRoleArn) }),
    });

    this.previewRoleArn = preview.arn;
    this.deployRoleArn = deploy.arn;
    this.smokeRoleArn = smoke.arn;
    this.smokeRole = smoke;
    this.registerOutputs({
      oidcProviderArn: this.oidcProviderArn,
      previewRoleArn: this.previewRoleArn,
      deployRoleArn: this.deployRoleArn,
      smokeRoleArn: this.smokeRoleArn,
      subjects: this.subjects,
    });
  }
}

/** `crucible-<stack>-ci-<purpose>`: fixed names, so the deploy role can be denied changes to them. */
export const ciRoleName = (stack: string, purpose: "deploy" | "preview" | "smoke") =>
  `crucible-${stack}-ci-${purpose}`;

export function ciSubjects(github: GitHubSettings, environment: Environment): CiSubjects {
  const repo = `repo:${github.repository}`;
  const deploy = (github.environments ?? [environment]).map((e) => `${repo}:environment:${e}`);
  return {
    // Only jobs in the stack's GitHub environments, behind their protection rules: no branch push.
    deploy,
    preview: [`${repo}:pull_request`],
    // Dev's smoke job runs on a push to the deploy branch (a job with no GitHub environment).
    smoke: [
      ...deploy,
      ...(environment === "dev" ? [`${repo}:ref:refs/heads/${github.branch ?? "main"}`] : []),
    ],
  };
}

/** The trust policy of a CI role: GitHub's tokens for sts.amazonaws.com whose `sub` is one of `subjects`. */
export function githubTrustPolicy(
  providerArn: pulumi.Input<string>,
  subjects: readonly string[],
): PolicyDocument {
  return webIdentityTrustPolicy("GitHubActions", {
    providerArn,
    issuer: GITHUB_OIDC_HOST,
    audience: GITHUB_OIDC_AUDIENCE,
    subjects,
  });
}

/** The partition, region and account the stack deploys to, as the policies' ARNs name them. */
export interface AccountScope {
  readonly partition: pulumi.Output<string>;
  readonly region: pulumi.Output<string>;
  readonly accountId: pulumi.Output<string>;
}

function accountScope(parent: pulumi.Resource): AccountScope {
  return {
    partition: aws.getPartitionOutput({}, { parent }).partition,
    region: aws.getRegionOutput({}, { parent }).name,
    accountId: aws.getCallerIdentityOutput({}, { parent }).accountId,
  };
}

function githubOidcProvider(
  name: string,
  choice: string,
  tags: Record<string, string>,
  parent: pulumi.Resource,
): pulumi.Output<string> {
  if (choice === "existing") {
    return aws.iam.getOpenIdConnectProviderOutput({ url: `https://${GITHUB_OIDC_HOST}` }, { parent }).arn;
  }
  if (choice !== "declare") return pulumi.output(choice);
  // No thumbprints: IAM trusts GitHub's certificate through its own root CAs.
  return new aws.iam.OpenIdConnectProvider(
    `${name}-github`,
    { url: `https://${GITHUB_OIDC_HOST}`, clientIdLists: [GITHUB_OIDC_AUDIENCE], tags },
    { parent },
  ).arn;
}

interface FederatedRoleArgs {
  readonly roleName: string;
  readonly description: string;
  readonly providerArn: pulumi.Input<string>;
  /** The `sub` claims the trust policy admits. */
  readonly subjects: readonly string[];
  /** The role's one inline policy; none: the role may do nothing. */
  readonly policy?: PolicyDocument;
  readonly maxSessionDuration?: number;
  readonly tags: Record<string, string>;
}

/** A role GitHub's tokens with one of `subjects` may assume, with its inline policy. */
function federatedRole(name: string, parent: pulumi.Resource, args: FederatedRoleArgs): aws.iam.Role {
  const role = new aws.iam.Role(
    name,
    {
      name: args.roleName,
      description: args.description,
      assumeRolePolicy: pulumi.jsonStringify(githubTrustPolicy(args.providerArn, args.subjects)),
      ...(args.maxSessionDuration !== undefined ? { maxSessionDuration: args.maxSessionDuration } : {}),
      tags: args.tags,
    },
    { parent },
  );
  if (args.policy !== undefined)
    new aws.iam.RolePolicy(name, { role: role.name, policy: pulumi.jsonStringify(args.policy) }, { parent });
  return role;
}

// ---------------------------------------------------------------------------------------------
// Permissions

const arnOf = (s: AccountScope, service: string, resource: string, where: "regional" | "global") =>
  where === "regional"
    ? pulumi.interpolate`arn:${s.partition}:${service}:${s.region}:${s.accountId}:${resource}`
    : pulumi.interpolate`arn:${s.partition}:${service}::${s.accountId}:${resource}`;

const ENVIRONMENT_TAG = COST_TAGS.environment;

/**
 * What `pulumi preview` (and a refresh) reads: descriptions and configurations of what the platform
 * declares, never data. No object in a bucket, no message in a queue, no parameter outside the
 * stack's own and AWS's public ones (a pull request's code runs with this role).
 */
export function readStatements(s: AccountScope, environment: Environment): PolicyStatement[] {
  return [
    {
      Sid: "ReadPlatformConfiguration",
      Effect: "Allow",
      Action: [
        "autoscaling:Describe*",
        "budgets:ViewBudget",
        "budgets:ListTagsForResource",
        "cloudwatch:Describe*",
        "cloudwatch:GetDashboard",
        "cloudwatch:ListTagsForResource",
        "codeartifact:Describe*",
        "codeartifact:Get*PermissionsPolicy",
        "codeartifact:ListTagsForResource",
        "ec2:Describe*",
        "ec2:GetLaunchTemplateData",
        "ecr:DescribeRepositories",
        "ecr:DescribeImages",
        "ecr:GetLifecyclePolicy",
        "ecr:GetRepositoryPolicy",
        "ecr:ListTagsForResource",
        // Answers the program's registry login (a data source); pulls and pushes need their own actions.
        "ecr:GetAuthorizationToken",
        "events:DescribeRule",
        "events:ListTargetsByRule",
        "events:ListTagsForResource",
        "iam:GetRole",
        "iam:GetRolePolicy",
        "iam:ListRolePolicies",
        "iam:ListAttachedRolePolicies",
        "iam:ListRoleTags",
        "iam:GetInstanceProfile",
        "iam:ListInstanceProfilesForRole",
        "iam:GetOpenIDConnectProvider",
        "iam:ListOpenIDConnectProviders",
        "kms:DescribeKey",
        "kms:GetKeyPolicy",
        "kms:GetKeyRotationStatus",
        "kms:ListAliases",
        "kms:ListResourceTags",
        "lambda:GetFunction",
        "lambda:GetFunctionCodeSigningConfig",
        "lambda:GetPolicy",
        "lambda:ListVersionsByFunction",
        "lambda:ListTags",
        "logs:DescribeLogGroups",
        "logs:DescribeMetricFilters",
        "logs:DescribeResourcePolicies",
        "logs:ListTagsForResource",
        "logs:ListTagsLogGroup",
        "s3:GetBucket*",
        "s3:GetLifecycleConfiguration",
        "s3:GetEncryptionConfiguration",
        "s3:GetAccelerateConfiguration",
        "s3:GetReplicationConfiguration",
        "s3:ListAllMyBuckets",
        "sns:GetTopicAttributes",
        "sns:GetSubscriptionAttributes",
        "sns:ListSubscriptionsByTopic",
        "sns:ListTagsForResource",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:ListQueueTags",
        "ssm:DescribeParameters",
        "ssm:ListTagsForResource",
      ],
      Resource: "*",
    },
    {
      // The nodes' AMI parameters (AWS's public ones) and the stack's own agent configuration.
      Sid: "ReadPlatformParameters",
      Effect: "Allow",
      Action: ["ssm:GetParameter", "ssm:GetParameters"],
      Resource: [
        pulumi.interpolate`arn:${s.partition}:ssm:${s.region}::parameter/aws/service/*`,
        arnOf(s, "ssm", `parameter/crucible/${environment}/*`, "regional"),
      ],
    },
  ];
}

export function previewPolicy(s: AccountScope, environment: Environment): PolicyDocument {
  return { Version: "2012-10-17", Statement: readStatements(s, environment) };
}

/** EC2 actions that create a resource (with its tags, in the same request). */
const EC2_CREATE_ACTIONS = [
  "ec2:CreateVpc",
  "ec2:CreateSubnet",
  "ec2:CreateRouteTable",
  "ec2:CreateInternetGateway",
  "ec2:AllocateAddress",
  "ec2:CreateNatGateway",
  "ec2:CreateSecurityGroup",
  "ec2:CreateVpcEndpoint",
  "ec2:CreateLaunchTemplate",
] as const;

/** Actions that create a tagged resource: allowed only with this environment's tag in the request. */
const CREATE_ACTIONS = [
  ...EC2_CREATE_ACTIONS,
  "sqs:CreateQueue",
  "sns:CreateTopic",
  "kms:CreateKey",
  "cloudwatch:PutMetricAlarm",
  "events:PutRule",
] as const;

/** Actions on existing resources: allowed only on resources tagged for this environment. */
const MANAGE_ACTIONS = [
  "ec2:DeleteVpc",
  "ec2:ModifyVpcAttribute",
  "ec2:DeleteSubnet",
  "ec2:ModifySubnetAttribute",
  "ec2:DeleteRouteTable",
  "ec2:AssociateRouteTable",
  "ec2:DisassociateRouteTable",
  "ec2:ReplaceRouteTableAssociation",
  "ec2:CreateRoute",
  "ec2:ReplaceRoute",
  "ec2:DeleteRoute",
  "ec2:AttachInternetGateway",
  "ec2:DetachInternetGateway",
  "ec2:DeleteInternetGateway",
  "ec2:DisassociateAddress",
  "ec2:ReleaseAddress",
  "ec2:DeleteNatGateway",
  "ec2:DeleteSecurityGroup",
  "ec2:AuthorizeSecurityGroupIngress",
  "ec2:AuthorizeSecurityGroupEgress",
  "ec2:RevokeSecurityGroupIngress",
  "ec2:RevokeSecurityGroupEgress",
  "ec2:ModifySecurityGroupRules",
  "ec2:UpdateSecurityGroupRuleDescriptionsIngress",
  "ec2:UpdateSecurityGroupRuleDescriptionsEgress",
  "ec2:ModifyVpcEndpoint",
  "ec2:DeleteVpcEndpoints",
  "ec2:CreateLaunchTemplateVersion",
  "ec2:ModifyLaunchTemplate",
  "ec2:DeleteLaunchTemplate",
  "sqs:DeleteQueue",
  "sqs:SetQueueAttributes",
  "sns:DeleteTopic",
  "sns:SetTopicAttributes",
  "sns:Subscribe",
  "sns:Unsubscribe",
  "sns:SetSubscriptionAttributes",
  "kms:ScheduleKeyDeletion",
  "kms:CancelKeyDeletion",
  "kms:EnableKeyRotation",
  "kms:DisableKeyRotation",
  "kms:PutKeyPolicy",
  "kms:UpdateKeyDescription",
  "kms:EnableKey",
  "kms:DisableKey",
  // The key's side of an alias; the alias's own side is scoped by name (it carries no tags).
  "kms:CreateAlias",
  "kms:UpdateAlias",
  "kms:DeleteAlias",
  "cloudwatch:PutMetricAlarm",
  "cloudwatch:DeleteAlarms",
  "events:PutRule",
  "events:DeleteRule",
  "events:PutTargets",
  "events:RemoveTargets",
] as const;

/** Tagging actions: on this environment's resources, never touching the environment tag itself. */
const TAG_ACTIONS = [
  "ec2:CreateTags",
  "ec2:DeleteTags",
  "sqs:TagQueue",
  "sqs:UntagQueue",
  "sns:TagResource",
  "sns:UntagResource",
  "kms:TagResource",
  "kms:UntagResource",
  "cloudwatch:TagResource",
  "cloudwatch:UntagResource",
  "events:TagResource",
  "events:UntagResource",
  "iam:TagRole",
  "iam:UntagRole",
  "iam:TagInstanceProfile",
  "iam:UntagInstanceProfile",
] as const;

/** Tagging a resource in the request that creates it: EC2 names the create action, the others do not. */
const TAG_ON_CREATE_ACTIONS = TAG_ACTIONS.filter((a) => a.includes(":Tag") && !a.startsWith("ec2:"));

/**
 * What `pulumi up` of the whole platform needs, scoped as far as AWS allows, with tag conditions that
 * never match an untagged resource (no `...IfExists`):
 *
 * - by ARN where the program names a resource after the environment or the stack (ECR repositories,
 *   SSM parameters, log groups, the enforcer Lambda, Auto Scaling groups, budgets, the dashboard);
 * - where Pulumi auto-names the resource (EC2 networking and launch templates, queues, topics, keys,
 *   alarms, the event rule), by the provider's `crucible:environment` default tag: a create only with that
 *   tag in the request (`aws:RequestTag`), anything else only on a resource that carries it
 *   (`aws:ResourceTag`), and tag changes never touch the environment tag (`aws:TagKeys`). Tagging in the
 *   request that creates a resource is allowed by `ec2:CreateAction` for EC2, and elsewhere only on a
 *   resource with no environment tag yet (`Null`), to this environment;
 * - IAM: roles only with the program's permissions boundary (`iam:PermissionsBoundary` on CreateRole,
 *   PutRolePolicy and DeleteRolePolicy) and this environment's tag; no trust policy changes
 *   (UpdateAssumeRolePolicy is not granted: a new trust is applied by an engineer), no managed policy
 *   attached; roles passed only to EC2 and Lambda; never CI's own roles, the boundary or the OIDC provider.
 *
 * What could not be scoped: bucket names are Pulumi auto-names (`workspaces-<kind>-<suffix>`) with no
 * environment in them, so bucket configuration is scoped to this account's `workspaces-*` buckets, not
 * to this stack's; CloudWatch Logs resource policies exist only account-wide (`Resource: "*"`); KMS aliases
 * carry no tags, so they are scoped by the program's `alias/crucible-*` names; and `ec2:RunInstances`,
 * which Auto Scaling checks against the caller, is scoped to launches from this account's launch templates
 * (the instance can only be handed a role tagged for this environment, which carries the boundary).
 */
export function deployPolicy(
  s: AccountScope,
  environment: Environment,
  stack: string,
  boundaryArn: pulumi.Input<string>,
): PolicyDocument {
  const regional = (service: string, resource: string) => arnOf(s, service, resource, "regional");
  const global = (service: string, resource: string) => arnOf(s, service, resource, "global");
  const resourceTag = `aws:ResourceTag/${ENVIRONMENT_TAG}`;
  const requestTag = `aws:RequestTag/${ENVIRONMENT_TAG}`;
  const roles = [global("iam", "role/*"), global("iam", "instance-profile/*")];
  const thisAccount = { StringEquals: { "aws:ResourceAccount": s.accountId } };
  const taggedHere = { StringEquals: { [resourceTag]: environment } };
  const boundary = { "iam:PermissionsBoundary": boundaryArn };
  return {
    Version: "2012-10-17",
    Statement: [
      ...readStatements(s, environment),
      {
        Sid: "NamedResources",
        Effect: "Allow",
        Action: [
          "ecr:*",
          "ssm:PutParameter",
          "ssm:DeleteParameter",
          "ssm:AddTagsToResource",
          "ssm:RemoveTagsFromResource",
          "logs:*",
          "lambda:*",
          "autoscaling:*",
          "budgets:*",
          "cloudwatch:PutDashboard",
          "cloudwatch:DeleteDashboards",
          // The package index (infra/environments/): create, change and delete its domain and
          // repositories, their upstream connection and tags; never their packages. Wildcards keep the
          // policy within IAM's size limit.
          "codeartifact:*Domain",
          "codeartifact:*Repository",
          "codeartifact:*ExternalConnection",
          "codeartifact:*TagResource",
        ],
        Resource: [
          regional("ecr", `repository/crucible/${environment}/*`),
          regional("ssm", `parameter/crucible/${environment}/*`),
          regional("logs", `log-group:/crucible/${environment}/*`),
          regional("logs", `log-group:/aws/lambda/crucible-${environment}-*`),
          regional("logs", `log-group:/aws/events/crucible-${stack}-*`),
          regional("lambda", `function:crucible-${environment}-*`),
          regional("autoscaling", `autoScalingGroup:*:autoScalingGroupName/crucible-${environment}-*`),
          global("budgets", `budget/crucible-${environment}`),
          global("budgets", `budget/crucible-${environment}-*`),
          global("cloudwatch", `dashboard/crucible-${stack}`),
          regional("codeartifact", `domain/${packageDomainName(environment)}`),
          regional("codeartifact", `repository/${packageDomainName(environment)}/*`),
        ],
      },
      {
        Sid: "CreateTaggedForThisEnvironment",
        Effect: "Allow",
        Action: [...CREATE_ACTIONS],
        Resource: "*",
        Condition: { StringEquals: { [requestTag]: environment } },
      },
      {
        Sid: "ManageTaggedForThisEnvironment",
        Effect: "Allow",
        Action: [...MANAGE_ACTIONS],
        Resource: "*",
        Condition: taggedHere,
      },
      {
        Sid: "RetagTaggedForThisEnvironment",
        Effect: "Allow",
        Action: [...TAG_ACTIONS],
        Resource: "*",
        Condition: { ...taggedHere, "ForAllValues:StringNotEquals": { "aws:TagKeys": [ENVIRONMENT_TAG] } },
      },
      {
        Sid: "TagEc2ResourcesOnCreate",
        Effect: "Allow",
        Action: "ec2:CreateTags",
        Resource: "*",
        Condition: {
          StringEquals: { "ec2:CreateAction": [...EC2_CREATE_ACTIONS], [requestTag]: environment },
        },
      },
      {
        Sid: "TagNewResourcesForThisEnvironment",
        Effect: "Allow",
        Action: [...TAG_ON_CREATE_ACTIONS],
        Resource: "*",
        Condition: { Null: { [resourceTag]: "true" }, StringEquals: { [requestTag]: environment } },
      },
      {
        Sid: "ProgramKeyAliases",
        Effect: "Allow",
        Action: ["kms:CreateAlias", "kms:UpdateAlias", "kms:DeleteAlias"],
        Resource: regional("kms", "alias/crucible-*"),
      },
      {
        // Auto Scaling checks that the caller could launch the group's template.
        Sid: "LaunchFromThisAccountsTemplates",
        Effect: "Allow",
        Action: "ec2:RunInstances",
        Resource: "*",
        Condition: { ArnLike: { "ec2:LaunchTemplate": regional("ec2", "launch-template/*") } },
      },
      {
        Sid: "CreateRolesWithTheBoundary",
        Effect: "Allow",
        Action: "iam:CreateRole",
        Resource: global("iam", "role/*"),
        Condition: { StringEquals: { [requestTag]: environment, ...boundary } },
      },
      {
        Sid: "CreateInstanceProfilesForThisEnvironment",
        Effect: "Allow",
        Action: "iam:CreateInstanceProfile",
        Resource: global("iam", "instance-profile/*"),
        Condition: { StringEquals: { [requestTag]: environment } },
      },
      {
        // PutRolePermissionsBoundary: a role of an earlier version gets the boundary, never another one.
        Sid: "RolePoliciesWithinTheBoundary",
        Effect: "Allow",
        Action: ["iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:PutRolePermissionsBoundary"],
        Resource: global("iam", "role/*"),
        Condition: { StringEquals: { [resourceTag]: environment, ...boundary } },
      },
      {
        Sid: "ManageRolesOfThisEnvironment",
        Effect: "Allow",
        Action: [
          "iam:DeleteRole",
          "iam:UpdateRole",
          "iam:UpdateRoleDescription",
          "iam:DeleteInstanceProfile",
          "iam:AddRoleToInstanceProfile",
          "iam:RemoveRoleFromInstanceProfile",
        ],
        Resource: roles,
        Condition: taggedHere,
      },
      {
        Sid: "DetachTheNodesFormerManagedPolicies",
        Effect: "Allow",
        Action: "iam:DetachRolePolicy",
        Resource: global("iam", "role/*"),
        Condition: {
          StringEquals: { [resourceTag]: environment, ...boundary },
          ArnEquals: {
            "iam:PolicyARN": DETACHABLE_MANAGED_POLICIES.map(
              (p) => pulumi.interpolate`arn:${s.partition}:iam::aws:policy/${p}`,
            ),
          },
        },
      },
      {
        Sid: "PassRolesToNodesAndTheEnforcer",
        Effect: "Allow",
        Action: "iam:PassRole",
        Resource: global("iam", "role/*"),
        Condition: {
          StringEquals: {
            [resourceTag]: environment,
            "iam:PassedToService": ["ec2.amazonaws.com", "lambda.amazonaws.com"],
          },
        },
      },
      {
        // Auto Scaling creates its service-linked role with the account's first group.
        Sid: "AutoScalingServiceLinkedRole",
        Effect: "Allow",
        Action: "iam:CreateServiceLinkedRole",
        Resource: global("iam", "role/aws-service-role/*"),
        Condition: { StringEquals: { "iam:AWSServiceName": "autoscaling.amazonaws.com" } },
      },
      {
        // Bucket-level actions only: objects are never matched by these actions.
        Sid: "WorkspaceBuckets",
        Effect: "Allow",
        Action: [
          "s3:CreateBucket",
          "s3:DeleteBucket",
          "s3:ListBucket",
          "s3:ListBucketVersions",
          "s3:GetBucket*",
          "s3:PutBucket*",
          "s3:DeleteBucketPolicy",
          "s3:GetLifecycleConfiguration",
          "s3:PutLifecycleConfiguration",
          "s3:GetEncryptionConfiguration",
          "s3:PutEncryptionConfiguration",
        ],
        Resource: pulumi.interpolate`arn:${s.partition}:s3:::workspaces-*`,
        Condition: thisAccount,
      },
      {
        // CloudWatch Logs resource policies are account-wide: IAM authorises them only on "*".
        Sid: "AccountWideLogPolicies",
        Effect: "Allow",
        Action: ["logs:PutResourcePolicy", "logs:DeleteResourcePolicy"],
        Resource: "*",
      },
      {
        // CI never widens its own access: its roles (tagged like the rest), the roles' boundary, the OIDC
        // provider; nor does it lift a role's boundary.
        Sid: "NoChangesToCiAccess",
        Effect: "Deny",
        Action: [
          "iam:Create*",
          "iam:Delete*",
          "iam:Update*",
          "iam:Put*",
          "iam:Attach*",
          "iam:Detach*",
          "iam:Tag*",
          "iam:Untag*",
          "iam:SetDefaultPolicyVersion",
          "iam:PassRole",
          "iam:AddClientIDToOpenIDConnectProvider",
          "iam:RemoveClientIDFromOpenIDConnectProvider",
        ],
        Resource: [
          global("iam", "role/crucible-*-ci-*"),
          global("iam", `policy/${permissionsBoundaryName("*")}`),
          global("iam", `oidc-provider/${GITHUB_OIDC_HOST}`),
        ],
      },
      {
        Sid: "NoRoleWithoutTheBoundary",
        Effect: "Deny",
        Action: "iam:DeleteRolePermissionsBoundary",
        Resource: "*",
      },
    ],
  };
}

/**
 * What the smoke job needs and no more: to become project `ci`'s submitter as user `ci` (role chaining,
 * scripts/assume-submitter.sh), whose own policy then confines it to that user's prefix, the project's
 * ledger entries and queues (infra/access.ts). The submitter's trust fixes the session name and the one
 * session tag. Nothing of S3 or SQS directly: a message sent as the smoke role has a SenderId no agent
 * accepts. The stack's outputs come from Pulumi Cloud, not AWS.
 */
export function smokePolicy(submitterRoleArn: pulumi.Input<string>): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "AssumeCiSubmitter",
        Effect: "Allow",
        Action: ["sts:AssumeRole", "sts:TagSession"],
        Resource: submitterRoleArn,
      },
    ],
  };
}
