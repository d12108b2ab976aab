import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import {
  DATASETS_PRECACHED_PREFIX,
  LEDGER_PREFIX,
  userDatasetsPrefix,
  type TierName,
  type Priority,
} from "@crucible/runtime/catalog";
import type { PolicyDocument, PolicyStatement } from "./policy-document";
import { componentTags } from "./providers";

/**
 * The session tag that binds a submitter's session to one user: the trust policy requires it to equal the
 * role session name, and the permission policy confines objects to the prefix it names.
 */
export const USER_SESSION_TAG = "crucible-user";

/** One project's submitters and what they may reach (defaults already applied by `projectAccess`). */
export interface SubmitterProject {
  /** User name → the IAM principal (one person's user or role) that submits as that user. */
  readonly users: Readonly<Record<string, string>>;
  readonly tiers: readonly TierName[];
  readonly priorities: readonly Priority[];
}

/**
 * Where submitters write: the workspaces bucket, its prefix, the datasets bucket, their key, and the
 * queues by tier and class.
 */
export interface SubmitterScope {
  readonly bucketArn: pulumi.Input<string>;
  /** `workspaces/`, the prefix of every job's files. */
  readonly prefix: pulumi.Input<string>;
  /** The datasets bucket: each user's own versions under `users/<project>/<user>/`, `precached/` to read. */
  readonly datasetsBucketArn: pulumi.Input<string>;
  /** The buckets' KMS key (one for both); undefined with SSE-S3. */
  readonly kmsKeyArn?: pulumi.Input<string>;
  readonly regionName: pulumi.Input<string>;
  readonly queueArns: Readonly<Partial<Record<TierName, Readonly<Record<Priority, pulumi.Input<string>>>>>>;
}

/** Arguments of {@link Submitters}. */
export interface SubmittersArgs extends Omit<SubmitterScope, "regionName"> {
  /** `crucible:access`, each project's tiers and priorities resolved. */
  readonly projects: Readonly<Record<string, SubmitterProject>>;
}

/**
 * One submitter role per project of `crucible:access`. A researcher assumes their project's role with the
 * role session name and the `crucible-user` session tag both set to their user name (the trust policy
 * allows nothing else), writes the job under `workspaces/<project>/<user>/` and sends its message to a
 * queue the project may use. The stack's permissions boundary reaches these roles like every other
 * (infra/boundary.ts `boundEveryRole`). SQS then reports the message's `SenderId` as `<role unique id>:<user>`, which
 * the agent checks against the job's address ({@link Submitters.sendersByTier}, `CRUCIBLE_SENDERS`).
 */
export class Submitters extends pulumi.ComponentResource {
  /** Project → its submitter role's ARN: what researchers assume. */
  public readonly roleArns: Record<string, pulumi.Output<string>>;
  /** Project → its submitter role's unique id (`AROA...`): what SQS reports as the sender. */
  public readonly roleUniqueIds: Record<string, pulumi.Output<string>>;

  constructor(name: string, args: SubmittersArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:access:Submitters", name, {}, opts);
    const region = aws.getRegionOutput({}, { parent: this });
    const scope: SubmitterScope = { ...args, regionName: region.name };
    const roles = Object.entries(args.projects).map(([project, access]) => {
      const role = new aws.iam.Role(
        `${name}-${project}`,
        {
          description: `Crucible submitter for project ${project}: its users' own job prefixes and its queues`,
          assumeRolePolicy: JSON.stringify(submitterTrustPolicy(access.users)),
          tags: { ...componentTags("access"), "crucible:project": project },
        },
        // Children do not inherit a component's dependsOn; a role must wait for the principals its trust
        // names (CI's smoke role), or IAM refuses the trust policy.
        { parent: this, ...(opts?.dependsOn !== undefined && { dependsOn: opts.dependsOn }) },
      );
      new aws.iam.RolePolicy(
        `${name}-${project}`,
        { role: role.id, policy: pulumi.jsonStringify(submitterPolicy(project, access, scope)) },
        { parent: this },
      );
      return [project, role] as const;
    });
    this.roleArns = Object.fromEntries(roles.map(([p, role]) => [p, role.arn]));
    this.roleUniqueIds = Object.fromEntries(roles.map(([p, role]) => [p, role.uniqueId]));
    this.registerOutputs({ roleArns: this.roleArns });
  }

  /**
   * The `submitters` of `CRUCIBLE_SENDERS` for a tier's agents: role unique id → project, for the projects
   * that may submit to `tier` (its queues are the only ones their roles may send to).
   */
  static sendersFor(
    submitters: Submitters,
    projects: Readonly<Record<string, SubmitterProject>>,
    tier: TierName,
  ): pulumi.Output<Record<string, string>> {
    const entries = Object.entries(projects)
      .filter(([, access]) => access.tiers.includes(tier))
      .map(([project]) => submitters.roleUniqueIds[project]!.apply((id) => [id, project] as const));
    return pulumi.all(entries).apply((pairs) => Object.fromEntries(pairs));
  }
}

/**
 * Each user's principal may assume the role and tag the session only as themselves: the session name and
 * the `crucible-user` tag must both be the user's name, and no other tag may be set.
 */
export function submitterTrustPolicy(users: Readonly<Record<string, string>>): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: Object.entries(users).map(([user, principal]) => ({
      Sid: `User${statementId(user)}`,
      Effect: "Allow",
      Principal: { AWS: principal },
      Action: ["sts:AssumeRole", "sts:TagSession"],
      Condition: {
        StringEquals: {
          "sts:RoleSessionName": user,
          [`aws:RequestTag/${USER_SESSION_TAG}`]: user,
        },
        "ForAllValues:StringEquals": { "aws:TagKeys": [USER_SESSION_TAG] },
      },
    })),
  };
}

/**
 * What a project's submitters may do: their own user's prefix (write a job, read its results, drop the
 * cancel marker), read its project's ledger partitions, push and read their own dataset versions and read
 * the pre-cached sets, and send to the project's tiers at its priority classes. No write to the ledger,
 * no delete of a dataset version, nothing of other users' prefixes or of the bucket's control objects.
 */
export function submitterPolicy(
  project: string,
  access: Pick<SubmitterProject, "tiers" | "priorities">,
  scope: SubmitterScope,
): PolicyDocument {
  const own = pulumi.interpolate`${scope.prefix}${project}/\${aws:PrincipalTag/${USER_SESSION_TAG}}/*`;
  const ledger = `${LEDGER_PREFIX}????-??/${project}/*`;
  const ownDatasets = `${userDatasetsPrefix(project, `\${aws:PrincipalTag/${USER_SESSION_TAG}}`)}*`;
  const ownBlobs = `${userDatasetsPrefix(project, `\${aws:PrincipalTag/${USER_SESSION_TAG}}`)}blobs/*`;
  const precached = `${DATASETS_PRECACHED_PREFIX}*`;
  const queues = access.tiers.flatMap((tier) => {
    const arns = scope.queueArns[tier];
    if (!arns) throw new Error(`project ${project} may submit to tier ${tier}, which has no queues`);
    return access.priorities.map((p) => arns[p]);
  });
  const statements: PolicyStatement[] = [
    {
      Sid: "OwnJobs",
      Effect: "Allow",
      // DeleteObject: cancelling a job is removing nothing but writing its cancel marker, and a
      // re-submission replaces a job's files; both stay within the user's own prefix.
      Action: ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
      Resource: pulumi.interpolate`${scope.bucketArn}/${own}`,
    },
    {
      Sid: "ListOwnJobs",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringLike: { "s3:prefix": [own] } },
    },
    {
      // Read-only: a submission checks its project's budget against the month's ledger entries (submit.ts).
      // Only agents write the ledger; `?` keeps the month segment one partition wide.
      Sid: "ReadProjectLedger",
      Effect: "Allow",
      Action: "s3:GetObject",
      Resource: pulumi.interpolate`${scope.bucketArn}/${ledger}`,
    },
    {
      Sid: "ListProjectLedger",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.bucketArn,
      Condition: { StringLike: { "s3:prefix": [ledger] } },
    },
    {
      // Versions are immutable (the runtime writes each manifest once, If-None-Match): no DeleteObject here.
      Sid: "OwnDatasets",
      Effect: "Allow",
      Action: ["s3:GetObject", "s3:PutObject"],
      Resource: pulumi.interpolate`${scope.datasetsBucketArn}/${ownDatasets}`,
    },
    {
      // A file that changed while it was pushed went up under the hash it had when scanned: the push
      // removes that blob, or the next push of the same content would find it and skip the upload.
      Sid: "DropOwnChangedBlobs",
      Effect: "Allow",
      Action: "s3:DeleteObject",
      Resource: pulumi.interpolate`${scope.datasetsBucketArn}/${ownBlobs}`,
    },
    {
      // The platform's pre-cached sets, which agents publish: read-only.
      Sid: "ReadPrecachedDatasets",
      Effect: "Allow",
      Action: "s3:GetObject",
      Resource: pulumi.interpolate`${scope.datasetsBucketArn}/${precached}`,
    },
    {
      Sid: "ListDatasets",
      Effect: "Allow",
      Action: "s3:ListBucket",
      Resource: scope.datasetsBucketArn,
      Condition: { StringLike: { "s3:prefix": [ownDatasets, precached] } },
    },
    {
      Sid: "SendJobs",
      Effect: "Allow",
      Action: ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
      Resource: queues,
    },
  ];
  if (scope.kmsKeyArn !== undefined) {
    // SSE-KMS: writing a job or a dataset needs GenerateDataKey, reading either Decrypt; through S3 only.
    // Both buckets share this one key, so the statement covers the datasets bucket too.
    statements.push({
      Sid: "WorkspacesKey",
      Effect: "Allow",
      Action: ["kms:Decrypt", "kms:GenerateDataKey"],
      Resource: scope.kmsKeyArn,
      Condition: {
        StringEquals: { "kms:ViaService": pulumi.interpolate`s3.${scope.regionName}.amazonaws.com` },
      },
    });
  }
  return { Version: "2012-10-17", Statement: statements };
}

/** A statement id from a user name: IAM's Sid takes letters and digits only. */
function statementId(user: string): string {
  return user.replace(/[^A-Za-z0-9]/g, (c) => `X${c.charCodeAt(0).toString(16)}`);
}
