import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { CHECKPOINT_OBJECT_TAG, LEDGER_PREFIX, WORKSPACES_PREFIX } from "@crucible/runtime/catalog";
import type { CrucibleConfig } from "./config";
import { type PolicyDocument, accountRoot } from "./policy-document";
import { componentTags } from "./providers";

/** Where job state lives in the workspaces bucket: `workspaces/<project>/<user>/jobs/<jobId>/`. */
export { WORKSPACES_PREFIX };

/** Arguments of {@link Workspaces}. */
export interface WorkspacesArgs {
  /** Retention, quota and encryption settings, validated by `infra/config/`. */
  readonly settings: CrucibleConfig["workspaces"];
}

type Settings = WorkspacesArgs["settings"];

/**
 * The workspaces bucket (job code, state, logs, outputs, checkpoints under `workspaces/`, expiring after
 * the retention; finance's copy of the cost ledger under `ledger/`, kept far longer for chargeback and
 * budgets) and the datasets bucket (researchers' dataset versions under `users/<project>/<user>/`, the
 * platform's pre-cached sets under `precached/`; nothing there expires), both locked down the same way.
 */
export class Workspaces extends pulumi.ComponentResource {
  public readonly bucketName: pulumi.Output<string>;
  public readonly bucketArn: pulumi.Output<string>;
  public readonly datasetsBucketName: pulumi.Output<string>;
  public readonly datasetsBucketArn: pulumi.Output<string>;
  public readonly workspacesPrefix = WORKSPACES_PREFIX;
  /** Where finance reads the cost ledger, one partition per month (`ledger/<yyyy-mm>/`). */
  public readonly ledgerPrefix = LEDGER_PREFIX;
  /** Storage a project may use under its prefix; the runtime enforces it on upload. */
  public readonly quotaGiBPerProject: number;
  /** The buckets' KMS key; undefined where the stack encrypts with S3-managed keys. */
  public readonly kmsKeyArn: pulumi.Output<string> | undefined;

  constructor(name: string, args: WorkspacesArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:workspaces:Workspaces", name, {}, opts);
    const { settings } = args;
    const tags = componentTags("workspaces");
    const key = settings.encryption === "kms" ? bucketKey(name, tags, this) : undefined;

    const workspaces = lockedBucket(`${name}-workspaces`, { key, tags }, this);
    new aws.s3.BucketLifecycleConfiguration(
      `${name}-workspaces-lifecycle`,
      {
        bucket: workspaces.id,
        rules: [...expiryRules(settings), noncurrentVersionsRule(settings), stalledUploadsRule(settings)],
      },
      { parent: this },
    );
    // Dataset versions are immutable and must never vanish: no rule expires an object or any version of
    // one (a noncurrent version there is only ever an accident's, an overwrite or a delete, and stays to
    // be restored). Only stalled uploads, which never became objects, go.
    const datasets = lockedBucket(`${name}-datasets`, { key, tags }, this);
    new aws.s3.BucketLifecycleConfiguration(
      `${name}-datasets-lifecycle`,
      { bucket: datasets.id, rules: [stalledUploadsRule(settings)] },
      { parent: this },
    );

    this.bucketName = workspaces.bucket;
    this.bucketArn = workspaces.arn;
    this.datasetsBucketName = datasets.bucket;
    this.datasetsBucketArn = datasets.arn;
    this.quotaGiBPerProject = settings.quotaGiBPerProject;
    this.kmsKeyArn = key?.arn;
    this.registerOutputs({
      bucketName: this.bucketName,
      bucketArn: this.bucketArn,
      datasetsBucketName: this.datasetsBucketName,
      datasetsBucketArn: this.datasetsBucketArn,
      workspacesPrefix: this.workspacesPrefix,
      quotaGiBPerProject: this.quotaGiBPerProject,
      kmsKeyArn: this.kmsKeyArn,
    });
  }
}

function bucketKey(name: string, tags: Record<string, string>, parent: pulumi.Resource): aws.kms.Key {
  const { accountId } = aws.getCallerIdentityOutput({}, { parent });
  const { partition } = aws.getPartitionOutput({}, { parent });
  // IAM decides who uses the key (node roles get kms:Decrypt/GenerateDataKey through their policies).
  const policy: PolicyDocument = {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "AccountAdministers",
        Effect: "Allow",
        Principal: { AWS: accountRoot(partition, accountId) },
        Action: "kms:*",
        Resource: "*",
      },
    ],
  };
  const key = new aws.kms.Key(
    `${name}-key`,
    {
      description: "Encrypts the Crucible workspaces and datasets buckets",
      enableKeyRotation: true,
      deletionWindowInDays: 30,
      policy: pulumi.jsonStringify(policy),
      tags,
    },
    { parent },
  );
  new aws.kms.Alias(
    `${name}-key-alias`,
    { namePrefix: `alias/crucible-${name}-`, targetKeyId: key.keyId },
    { parent },
  );
  return key;
}

/**
 * A bucket with versioning, all four public-access blocks, no ACLs, default encryption (the key with
 * an S3 bucket key, else SSE-S3) and a policy that refuses any request not made over TLS.
 */
function lockedBucket(
  name: string,
  { key, tags }: { readonly key: aws.kms.Key | undefined; readonly tags: Record<string, string> },
  parent: pulumi.Resource,
): aws.s3.Bucket {
  const bucket = new aws.s3.Bucket(name, { forceDestroy: false, tags }, { parent });
  new aws.s3.BucketVersioning(
    name,
    { bucket: bucket.id, versioningConfiguration: { status: "Enabled" } },
    { parent },
  );
  const publicAccess = new aws.s3.BucketPublicAccessBlock(
    name,
    {
      bucket: bucket.id,
      blockPublicAcls: true,
      blockPublicPolicy: true,
      ignorePublicAcls: true,
      restrictPublicBuckets: true,
    },
    { parent },
  );
  new aws.s3.BucketOwnershipControls(
    name,
    { bucket: bucket.id, rule: { objectOwnership: "BucketOwnerEnforced" } },
    { parent },
  );
  new aws.s3.BucketServerSideEncryptionConfiguration(
    name,
    {
      bucket: bucket.id,
      rules: [
        key
          ? {
              applyServerSideEncryptionByDefault: { sseAlgorithm: "aws:kms", kmsMasterKeyId: key.arn },
              bucketKeyEnabled: true,
            }
          : { applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } },
      ],
    },
    { parent },
  );
  const policy: PolicyDocument = {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "DenyInsecureTransport",
        Effect: "Deny",
        Principal: "*",
        Action: "s3:*",
        Resource: [bucket.arn, pulumi.interpolate`${bucket.arn}/*`],
        Condition: { Bool: { "aws:SecureTransport": "false" } },
      },
    ],
  };
  // Put after the public-access block: S3 rejects concurrent policy and block changes on one bucket.
  new aws.s3.BucketPolicy(
    name,
    { bucket: bucket.id, policy: pulumi.jsonStringify(policy) },
    { parent, dependsOn: [publicAccess] },
  );
  return bucket;
}

/**
 * Job files expire after the retention; tagged checkpoints after their own, shorter one. The ledger sits
 * outside `workspaces/`, so the job files' rules never reach it, and expires after its own retention.
 */
function expiryRules(settings: Settings): aws.types.input.s3.BucketLifecycleConfigurationRule[] {
  const rules: aws.types.input.s3.BucketLifecycleConfigurationRule[] = [
    {
      id: "expire-workspaces",
      status: "Enabled",
      filter: { prefix: WORKSPACES_PREFIX },
      expiration: { days: settings.retentionDays },
    },
  ];
  if (settings.checkpointRetentionDays !== undefined) {
    rules.push({
      id: "expire-checkpoints",
      status: "Enabled",
      filter: {
        and: {
          prefix: WORKSPACES_PREFIX,
          tags: { [CHECKPOINT_OBJECT_TAG.key]: CHECKPOINT_OBJECT_TAG.value },
        },
      },
      expiration: { days: settings.checkpointRetentionDays },
    });
  }
  rules.push({
    id: "expire-ledger",
    status: "Enabled",
    filter: { prefix: LEDGER_PREFIX },
    expiration: { days: settings.ledgerRetentionDays },
  });
  return rules;
}

/** Old versions and leftover delete markers go: for a bucket whose objects are replaced and expire. */
function noncurrentVersionsRule(settings: Settings): aws.types.input.s3.BucketLifecycleConfigurationRule {
  return {
    id: "expire-noncurrent-versions",
    status: "Enabled",
    filter: {},
    noncurrentVersionExpiration: { noncurrentDays: settings.noncurrentVersionDays },
    expiration: { expiredObjectDeleteMarker: true },
  };
}

/** Stalled multipart uploads abort: their parts are billed and never become an object. Every bucket. */
function stalledUploadsRule(settings: Settings): aws.types.input.s3.BucketLifecycleConfigurationRule {
  return {
    id: "abort-incomplete-multipart-uploads",
    status: "Enabled",
    filter: {},
    abortIncompleteMultipartUpload: { daysAfterInitiation: settings.abortMultipartDays },
  };
}
