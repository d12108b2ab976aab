import { beforeAll, describe, expect, it } from "vitest";
import { CHECKPOINT_OBJECT_TAG } from "../../runtime/src/job/contract";
import { LEDGER_PREFIX } from "../../runtime/src/catalog/bucket-layout";
import { MOCK_ACCOUNT_ID } from "../../scripts/lib/mock-engine";
import { STACKS, configProblems, runStack, type DeclaredResource, type Plan } from "../support/harness";

/** What each stack file says (or inherits from its environment's defaults). */
const EXPECTED = {
  dev: { retentionDays: 14, checkpointDays: undefined, ledgerDays: 400, quota: 50, encryption: "s3" },
  staging: { retentionDays: 30, checkpointDays: undefined, ledgerDays: 400, quota: 100, encryption: "kms" },
  prod: { retentionDays: 30, checkpointDays: 14, ledgerDays: 730, quota: 500, encryption: "kms" },
} as const;
const NONCURRENT_DAYS = 7;
const ABORT_MULTIPART_DAYS = 2;

const BUCKETS = ["workspaces-workspaces", "workspaces-datasets"] as const;

const abortStalledUploads = {
  id: "abort-incomplete-multipart-uploads",
  status: "Enabled",
  filter: {},
  abortIncompleteMultipartUpload: { daysAfterInitiation: ABORT_MULTIPART_DAYS },
};
const housekeeping = [
  {
    id: "expire-noncurrent-versions",
    status: "Enabled",
    filter: {},
    noncurrentVersionExpiration: { noncurrentDays: NONCURRENT_DAYS },
    expiration: { expiredObjectDeleteMarker: true },
  },
  abortStalledUploads,
];

describe.each(STACKS)("%s stack workspaces", (stack) => {
  const expected = EXPECTED[stack];
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });

  const bucket = (name: string) => plan.get("aws:s3/bucket:Bucket", name);
  /** The one resource of a type that configures the bucket. */
  const configOf = (type: string, name: string): DeclaredResource => {
    const found = plan.ofType(type).filter((r) => r.inputs.bucket === bucket(name).state.bucket);
    expect(found, `${type} for ${name}`).toHaveLength(1);
    return found[0]!;
  };

  it("declares exactly two buckets, both in the component", () => {
    const component = plan.get("crucible:workspaces:Workspaces", "workspaces");
    const buckets = plan.childrenOf(component.urn).filter((r) => r.type === "aws:s3/bucket:Bucket");
    expect(buckets.map((b) => b.name).sort()).toEqual([...BUCKETS].sort());
    expect(plan.ofType("aws:s3/bucket:Bucket")).toHaveLength(2);
  });

  it.each(BUCKETS)("%s: versioning on, all four public-access blocks, no ACLs", (name) => {
    expect(configOf("aws:s3/bucketVersioning:BucketVersioning", name).inputs.versioningConfiguration).toEqual(
      {
        status: "Enabled",
      },
    );
    expect(configOf("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", name).inputs).toMatchObject({
      blockPublicAcls: true,
      blockPublicPolicy: true,
      ignorePublicAcls: true,
      restrictPublicBuckets: true,
    });
    expect(configOf("aws:s3/bucketOwnershipControls:BucketOwnershipControls", name).inputs.rule).toEqual({
      objectOwnership: "BucketOwnerEnforced",
    });
  });

  it.each(BUCKETS)("%s: default encryption as the stack says", (name) => {
    const rules = configOf(
      "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
      name,
    ).inputs.rules;
    const keys = plan.ofType("aws:kms/key:Key").filter((k) => k.name === "workspaces-key");
    if (expected.encryption === "kms") {
      expect(keys).toHaveLength(1);
      expect(keys[0]!.inputs.enableKeyRotation).toBe(true);
      expect(rules).toEqual([
        {
          applyServerSideEncryptionByDefault: { sseAlgorithm: "aws:kms", kmsMasterKeyId: keys[0]!.state.arn },
          bucketKeyEnabled: true,
        },
      ]);
    } else {
      expect(keys).toHaveLength(0);
      expect(rules).toEqual([{ applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } }]);
    }
  });

  it.each(BUCKETS)("%s: the bucket policy refuses every request not made over TLS", (name) => {
    const arn = `arn:aws:s3:::${bucket(name).state.bucket as string}`;
    const policy = configOf("aws:s3/bucketPolicy:BucketPolicy", name);
    expect(JSON.parse(policy.inputs.policy as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        {
          Sid: "DenyInsecureTransport",
          Effect: "Deny",
          Principal: "*",
          Action: "s3:*",
          Resource: [arn, `${arn}/*`],
          Condition: { Bool: { "aws:SecureTransport": "false" } },
        },
      ],
    });
  });

  it("workspaces expire after the retention, checkpoints (by their tag) after theirs, the ledger after its own", () => {
    const rules = configOf(
      "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
      "workspaces-workspaces",
    ).inputs.rules;
    expect(rules).toEqual([
      {
        id: "expire-workspaces",
        status: "Enabled",
        filter: { prefix: "workspaces/" },
        expiration: { days: expected.retentionDays },
      },
      ...(expected.checkpointDays === undefined
        ? []
        : [
            {
              id: "expire-checkpoints",
              status: "Enabled",
              filter: {
                and: {
                  prefix: "workspaces/",
                  tags: { [CHECKPOINT_OBJECT_TAG.key]: CHECKPOINT_OBJECT_TAG.value },
                },
              },
              expiration: { days: expected.checkpointDays },
            },
          ]),
      {
        id: "expire-ledger",
        status: "Enabled",
        filter: { prefix: "ledger/" },
        expiration: { days: expected.ledgerDays },
      },
      ...housekeeping,
    ]);
  });

  it("keeps the ledger out of every rule that expires job files, and job files out of the ledger's", () => {
    expect(LEDGER_PREFIX).toBe("ledger/");
    const rules = configOf(
      "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
      "workspaces-workspaces",
    ).inputs.rules as { id: string; filter: { prefix?: string; and?: { prefix?: string } } }[];
    const prefixOf = (r: (typeof rules)[number]) => r.filter.prefix ?? r.filter.and?.prefix;
    const jobRules = rules.filter((r) => r.id === "expire-workspaces" || r.id === "expire-checkpoints");
    expect(jobRules.length).toBeGreaterThan(0);
    for (const r of jobRules) {
      expect(prefixOf(r), r.id).toBe("workspaces/");
      expect(`${LEDGER_PREFIX}2026-12/p/u/j/1.json`.startsWith(prefixOf(r)!), r.id).toBe(false);
    }
    const ledger = rules.filter((r) => prefixOf(r) !== undefined && LEDGER_PREFIX.startsWith(prefixOf(r)!));
    expect(ledger.map((r) => r.id)).toEqual(["expire-ledger"]);
    expect("workspaces/p/u/jobs/j/ledger/1.json".startsWith(LEDGER_PREFIX)).toBe(false);
  });

  it("datasets never expire, not even an old version; only stalled uploads go", () => {
    const rules = configOf(
      "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
      "workspaces-datasets",
    ).inputs.rules as Record<string, unknown>[];
    expect(rules).toEqual([abortStalledUploads]);
    // Versions are immutable: no rule may delete an object, a noncurrent version or a marker, or move one
    // out of an agent's reach.
    for (const rule of rules)
      for (const key of [
        "expiration",
        "noncurrentVersionExpiration",
        "transitions",
        "noncurrentVersionTransitions",
      ])
        expect(rule[key], `${rule.id as string}.${key}`).toBeUndefined();
  });

  it("exports the buckets, the prefixes (job files, finance's ledger) and the quota the runtime enforces", () => {
    const key = plan.ofType("aws:kms/key:Key").find((k) => k.name === "workspaces-key");
    expect(plan.outputs.storage).toEqual({
      bucketName: bucket("workspaces-workspaces").state.bucket,
      bucketArn: bucket("workspaces-workspaces").state.arn,
      datasetsBucketName: bucket("workspaces-datasets").state.bucket,
      datasetsBucketArn: bucket("workspaces-datasets").state.arn,
      workspacesPrefix: "workspaces/",
      ledgerPrefix: "ledger/",
      quotaGiBPerProject: expected.quota,
      ...(key ? { kmsKeyArn: key.state.arn } : {}),
    });
  });

  it("lets the account, through IAM, administer the bucket key", () => {
    const key = plan.ofType("aws:kms/key:Key").find((k) => k.name === "workspaces-key");
    if (!key) return expect(expected.encryption).toBe("s3");
    expect((JSON.parse(key.inputs.policy as string) as { Statement: unknown }).Statement).toEqual([
      {
        Sid: "AccountAdministers",
        Effect: "Allow",
        Principal: { AWS: `arn:aws:iam::${MOCK_ACCOUNT_ID}:root` },
        Action: "kms:*",
        Resource: "*",
      },
    ]);
  });
});

describe("bad workspaces config names the key", () => {
  it("a retention below one day", () => {
    expect(configProblems("dev", { "crucible:workspaces": { retentionDays: 0 } })).toEqual([
      "crucible:workspaces.retentionDays must be a whole number from 1 to 3650, got 0",
    ]);
  });

  it("a fractional retention", () => {
    expect(configProblems("dev", { "crucible:workspaces": { retentionDays: 0.5 } })).toEqual([
      "crucible:workspaces.retentionDays must be a whole number from 1 to 3650, got 0.5",
    ]);
  });

  it("a ledger kept less than two calendar months", () => {
    expect(configProblems("dev", { "crucible:workspaces": { ledgerRetentionDays: 61 } })).toEqual([
      "crucible:workspaces.ledgerRetentionDays must be a whole number from 62 to 3650 (at least two calendar months, so last month's report is always complete), got 61",
    ]);
  });

  it("a ledger kept longer than ten years, while both bounds are accepted", () => {
    expect(configProblems("dev", { "crucible:workspaces": { ledgerRetentionDays: 3651 } })).toEqual([
      "crucible:workspaces.ledgerRetentionDays must be a whole number from 62 to 3650 (at least two calendar months, so last month's report is always complete), got 3651",
    ]);
    for (const days of [62, 3650])
      expect(configProblems("dev", { "crucible:workspaces": { ledgerRetentionDays: days } })).toEqual([]);
  });

  it("a fractional ledger retention", () => {
    expect(configProblems("prod", { "crucible:workspaces": { ledgerRetentionDays: 0.5 } })).toEqual([
      "crucible:workspaces.ledgerRetentionDays must be a whole number from 62 to 3650 (at least two calendar months, so last month's report is always complete), got 0.5",
    ]);
  });

  it("a ledger retention that is not a number", () => {
    expect(configProblems("staging", { "crucible:workspaces": { ledgerRetentionDays: "x" } })).toEqual([
      'crucible:workspaces.ledgerRetentionDays must be a whole number from 62 to 3650 (at least two calendar months, so last month\'s report is always complete), got "x"',
    ]);
  });

  it("a quota of 0", () => {
    expect(configProblems("prod", { "crucible:workspaces": { quotaGiBPerProject: 0 } })).toEqual([
      "crucible:workspaces.quotaGiBPerProject must be a positive number, got 0",
    ]);
  });

  it("checkpoints kept longer than the workspace that holds them", () => {
    expect(
      configProblems("prod", { "crucible:workspaces": { retentionDays: 10, checkpointRetentionDays: 20 } }),
    ).toEqual([
      "crucible:workspaces.checkpointRetentionDays must be at most workspaces.retentionDays (10), got 20",
    ]);
  });

  it("an unknown encryption", () => {
    expect(configProblems("dev", { "crucible:workspaces": { encryption: "none" } })).toEqual([
      'crucible:workspaces.encryption must be one of kms, s3, got "none"',
    ]);
  });
});
