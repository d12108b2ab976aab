import { describe, expect, it } from "vitest";
import {
  s3BucketPolicyRequiresTls,
  s3BucketsEncrypted,
  s3BucketsHavePublicAccessBlocks,
  s3BucketsHaveTlsPolicy,
  s3BucketsVersioned,
  s3EncryptionConfigured,
  s3PublicAccessBlocked,
  s3VersioningEnabled,
  s3LedgerKept,
  s3WorkspacesExpire,
} from "../../policies/s3";
import {
  UNKNOWN_VALUE,
  messages,
  urnOf,
  validateResource,
  validateStack,
  type TestResource,
} from "./run-policy";

const BUCKET = "aws:s3/bucket:Bucket";
const PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock";
const SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration";
const POLICY = "aws:s3/bucketPolicy:BucketPolicy";
const VERSIONING = "aws:s3/bucketVersioning:BucketVersioning";
const LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration";

const bucket = (name: string, props: Record<string, unknown> = {}): TestResource => ({
  type: BUCKET,
  name,
  props: { bucket: `${name}-abc1234`, arn: `arn:aws:s3:::${name}-abc1234`, ...props },
});
const allBlocks = {
  blockPublicAcls: true,
  blockPublicPolicy: true,
  ignorePublicAcls: true,
  restrictPublicBuckets: true,
};
const tlsPolicy = (arn: string) =>
  JSON.stringify({
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

describe("s3-public-access-blocked", () => {
  const policy = s3PublicAccessBlocked();

  it("passes a block with all four flags on", async () => {
    const o = await validateResource(policy, { type: PAB, name: "ws", props: { bucket: "b", ...allBlocks } });
    expect(o.violations).toEqual([]);
    expect(o.notApplicable).toBeUndefined();
  });

  it("names each flag that is off", async () => {
    const o = await validateResource(policy, {
      type: PAB,
      name: "ws",
      props: { bucket: "b", ...allBlocks, blockPublicPolicy: false, restrictPublicBuckets: undefined },
    });
    expect(messages(o)).toEqual(["ws: set blockPublicPolicy: true, restrictPublicBuckets: true."]);
  });

  it("does not apply to other types (the engine's type fast path)", async () => {
    const o = await validateResource(policy, bucket("ws"));
    expect(o.notApplicable).toBe(`Policy only applies to resources of type '${PAB}'`);
  });
});

describe("s3-buckets-have-public-access-blocks", () => {
  const policy = s3BucketsHavePublicAccessBlocks();

  it("joins a block to its bucket by the bucket's name", async () => {
    const o = await validateStack(policy, [
      bucket("ws"),
      { type: PAB, name: "ws", props: { bucket: "ws-abc1234" } },
    ]);
    expect(o.violations).toEqual([]);
  });

  it("reports the bucket without a block, with its URN", async () => {
    const o = await validateStack(policy, [
      bucket("ws"),
      bucket("datasets"),
      { type: PAB, name: "ws", props: { bucket: "ws-abc1234" } },
    ]);
    expect(o.violations).toEqual([
      {
        message:
          "S3 bucket datasets has no public-access block: add an aws.s3.BucketPublicAccessBlock with all four blocks on for it",
        urn: urnOf(BUCKET, "datasets"),
      },
    ]);
  });

  it("joins by property dependency when the bucket reference is unknown during preview", async () => {
    const o = await validateStack(policy, [
      bucket("ws", { bucket: UNKNOWN_VALUE.string }),
      bucket("datasets", { bucket: UNKNOWN_VALUE.string }),
      {
        type: PAB,
        name: "ws",
        props: { bucket: UNKNOWN_VALUE.string },
        propertyDependencies: { bucket: [urnOf(BUCKET, "ws")] },
      },
    ]);
    expect(o.violations.map((v) => v.urn)).toEqual([urnOf(BUCKET, "datasets")]);
  });

  it("does not report a false violation when an unknown reference cannot be resolved", async () => {
    const o = await validateStack(policy, [
      bucket("ws", { bucket: UNKNOWN_VALUE.string }),
      { type: PAB, name: "ws", props: { bucket: UNKNOWN_VALUE.string } },
    ]);
    expect(o).toEqual({ violations: [] });
  });

  it("does not apply to a stack without buckets", async () => {
    const o = await validateStack(policy, [{ type: PAB, name: "x", props: { bucket: "elsewhere" } }]);
    expect(o.notApplicable).toContain("aws:s3/bucket:Bucket");
  });
});

describe("s3-encryption-configured", () => {
  const policy = s3EncryptionConfigured();
  const sse = (sseAlgorithm?: string): TestResource => ({
    type: SSE,
    name: "ws",
    props: {
      bucket: "b",
      rules: [{ applyServerSideEncryptionByDefault: sseAlgorithm ? { sseAlgorithm } : undefined }],
    },
  });

  it("passes SSE-KMS and SSE-S3", async () => {
    expect((await validateResource(policy, sse("aws:kms"))).violations).toEqual([]);
    expect((await validateResource(policy, sse("AES256"))).violations).toEqual([]);
  });

  it("fails a rule without a default algorithm", async () => {
    expect(messages(await validateResource(policy, sse()))).toEqual([
      "ws: every rule needs applyServerSideEncryptionByDefault.sseAlgorithm set to one of AES256, aws:kms, aws:kms:dsse.",
    ]);
  });
});

describe("s3-buckets-encrypted", () => {
  const policy = s3BucketsEncrypted();

  it("passes a bucket with a separate encryption configuration", async () => {
    const o = await validateStack(policy, [
      bucket("ws"),
      { type: SSE, name: "ws", props: { bucket: "ws-abc1234" } },
    ]);
    expect(o.violations).toEqual([]);
  });

  it("passes a bucket encrypted inline", async () => {
    const inline = { rule: { applyServerSideEncryptionByDefault: { sseAlgorithm: "AES256" } } };
    const o = await validateStack(policy, [bucket("ws", { serverSideEncryptionConfiguration: inline })]);
    expect(o.violations).toEqual([]);
  });

  it("fails a bucket without default encryption", async () => {
    expect(messages(await validateStack(policy, [bucket("ws")]))).toEqual([
      "S3 bucket ws has no default encryption: add an aws.s3.BucketServerSideEncryptionConfiguration (SSE-S3 or SSE-KMS) for it",
    ]);
  });
});

describe("s3-bucket-policy-requires-tls", () => {
  const policy = s3BucketPolicyRequiresTls();
  const arn = "arn:aws:s3:::ws-abc1234";

  it("passes a policy that denies requests without TLS on the bucket and its objects", async () => {
    const o = await validateResource(policy, {
      type: POLICY,
      name: "ws",
      props: { bucket: "b", policy: tlsPolicy(arn) },
    });
    expect(o.violations).toEqual([]);
  });

  it("fails a policy without the TLS deny", async () => {
    const allow = JSON.stringify({
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Principal: { AWS: "arn:aws:iam::1:root" }, Action: "s3:GetObject", Resource: "*" },
      ],
    });
    const [message] = messages(
      await validateResource(policy, { type: POLICY, name: "ws", props: { policy: allow } }),
    );
    expect(message).toMatch(/^ws: add a statement \{ Effect: "Deny", Principal: "\*", Action: "s3:\*"/);
  });

  it("fails a TLS deny that leaves the objects out", async () => {
    const bucketOnly = tlsPolicy(arn).replace(`,"${arn}/*"`, "");
    expect(
      messages(await validateResource(policy, { type: POLICY, name: "ws", props: { policy: bucketOnly } })),
    ).toEqual([`ws: the TLS-only statement must cover the bucket's objects too ("<bucket arn>/*").`]);
  });

  it("leaves a policy unknown during preview to the engine's advisory note", async () => {
    const o = await validateResource(policy, {
      type: POLICY,
      name: "ws",
      props: { policy: UNKNOWN_VALUE.string },
    });
    expect(o.violations).toEqual([]);
    expect(o.unknown).toBe("string value at .policy can't be known during preview");
  });
});

describe("s3-buckets-have-tls-policy", () => {
  const policy = s3BucketsHaveTlsPolicy();

  it("passes a bucket with a bucket policy", async () => {
    const o = await validateStack(policy, [
      bucket("ws"),
      { type: POLICY, name: "ws", props: { bucket: "ws-abc1234", policy: tlsPolicy("x") } },
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails a bucket without one", async () => {
    expect(messages(await validateStack(policy, [bucket("ws")]))).toEqual([
      'S3 bucket ws has no bucket policy denying requests without TLS: add an aws.s3.BucketPolicy with a Deny on "aws:SecureTransport": "false"',
    ]);
  });
});

describe("s3-versioning-enabled", () => {
  const policy = s3VersioningEnabled();
  const versioning = (status: string): TestResource => ({
    type: VERSIONING,
    name: "ws",
    props: { bucket: "b", versioningConfiguration: { status } },
  });

  it("passes Enabled", async () => {
    expect((await validateResource(policy, versioning("Enabled"))).violations).toEqual([]);
  });

  it("fails Suspended", async () => {
    expect(messages(await validateResource(policy, versioning("Suspended")))).toEqual([
      'ws: set versioningConfiguration.status to "Enabled" (got "Suspended").',
    ]);
  });
});

describe("s3-buckets-versioned", () => {
  const policy = s3BucketsVersioned();

  it("passes a bucket with a versioning resource", async () => {
    const o = await validateStack(policy, [
      bucket("ws"),
      { type: VERSIONING, name: "ws", props: { bucket: "ws-abc1234" } },
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails a bucket whose only versioning is the computed default", async () => {
    expect(messages(await validateStack(policy, [bucket("ws", { versioning: { enabled: false } })]))).toEqual(
      [
        'S3 bucket ws has no versioning: add an aws.s3.BucketVersioning with versioningConfiguration.status "Enabled" for it',
      ],
    );
  });
});

describe("s3-workspaces-expire", () => {
  const policy = s3WorkspacesExpire();
  const config = { workspaceRetentionDays: 30 };
  const lifecycle = (rules: unknown[]): TestResource => ({
    type: LIFECYCLE,
    name: "workspaces-workspaces-lifecycle",
    props: { bucket: "workspaces-workspaces-abc1234", rules },
  });
  const expire = (days: number, filter: unknown = { prefix: "workspaces/" }) => ({
    id: "expire",
    status: "Enabled",
    filter,
    expiration: { days },
  });

  it("passes a workspaces bucket whose job files expire within the retention", async () => {
    const o = await validateStack(policy, [bucket("workspaces-workspaces"), lifecycle([expire(30)])], config);
    expect(o.violations).toEqual([]);
  });

  it("ignores the datasets bucket, which never expires", async () => {
    const o = await validateStack(policy, [bucket("workspaces-datasets")], config);
    expect(o.violations).toEqual([]);
  });

  it("fails an expiry longer than the retention", async () => {
    const o = await validateStack(policy, [bucket("workspaces-workspaces"), lifecycle([expire(45)])], config);
    expect(messages(o)).toEqual([
      "S3 bucket workspaces-workspaces expires job files after 45 days, longer than the retention of 30 days: set the rule's expiration.days to at most 30.",
    ]);
  });

  it("leaves the ledger's longer expiry alone, and does not count it for job files", async () => {
    const ledger = expire(400, { prefix: "ledger/" });
    const both = await validateStack(
      policy,
      [bucket("workspaces-workspaces"), lifecycle([expire(30), ledger])],
      config,
    );
    expect(both.violations).toEqual([]);
    const alone = await validateStack(policy, [bucket("workspaces-workspaces"), lifecycle([ledger])], config);
    expect(messages(alone)[0]).toMatch(
      /^S3 bucket workspaces-workspaces keeps job files forever: add an enabled lifecycle rule/,
    );
  });

  it("does not count a rule that only covers tagged objects", async () => {
    const tagged = expire(7, { and: { prefix: "workspaces/", tags: { "crucible:kind": "checkpoint" } } });
    const o = await validateStack(policy, [bucket("workspaces-workspaces"), lifecycle([tagged])], config);
    expect(messages(o)[0]).toMatch(
      /^S3 bucket workspaces-workspaces keeps job files forever: add an enabled lifecycle rule/,
    );
  });

  it("fails without its config, naming the setting and the fix", async () => {
    await expect(validateStack(policy, [bucket("workspaces-workspaces")], {})).rejects.toThrow(
      "policy s3-workspaces-expire: config workspaceRetentionDays must be a whole number of at least 1, got nothing; write the file with `npm run policy-config -- <stack>`",
    );
  });
});

describe("s3-ledger-kept", () => {
  const policy = s3LedgerKept();
  const lifecycle = (rules: unknown[]): TestResource => ({
    type: LIFECYCLE,
    name: "workspaces-workspaces-lifecycle",
    props: { bucket: "workspaces-workspaces-abc1234", rules },
  });
  const expire = (id: string, days: number, filter: unknown) => ({
    id,
    status: "Enabled",
    filter,
    expiration: { days },
  });
  const jobFiles = expire("expire-workspaces", 14, { prefix: "workspaces/" });

  it("passes job files expiring after 14 days beside a ledger kept 400", async () => {
    const rules = [jobFiles, expire("expire-ledger", 400, { prefix: "ledger/" })];
    const o = await validateStack(policy, [bucket("workspaces-workspaces"), lifecycle(rules)]);
    expect(o.violations).toEqual([]);
  });

  it("passes a ledger no rule expires, and ignores rules over tagged objects only", async () => {
    const tagged = expire("expire-checkpoints", 7, {
      and: { prefix: "", tags: { "crucible:kind": "checkpoint" } },
    });
    const o = await validateStack(policy, [bucket("workspaces-workspaces"), lifecycle([jobFiles, tagged])]);
    expect(o.violations).toEqual([]);
  });

  it("fails a rule over the whole bucket that would take the ledger with the job files", async () => {
    const o = await validateStack(policy, [
      bucket("workspaces-workspaces"),
      lifecycle([expire("expire-everything", 30, {}), expire("expire-ledger", 400, { prefix: "ledger/" })]),
    ]);
    expect(messages(o)).toEqual([
      'S3 bucket workspaces-workspaces expires the cost ledger (ledger/) after 30 days: keep it at least 62 days (workspaces.ledgerRetentionDays), and give job-file rules the prefix "workspaces/".',
    ]);
  });

  it("fails a ledger rule shorter than two months, set inline on the bucket too", async () => {
    const o = await validateStack(policy, [
      bucket("workspaces-workspaces", {
        lifecycleRules: [{ enabled: true, prefix: "ledger/", expiration: { days: 31 } }],
      }),
    ]);
    expect(messages(o)).toEqual([
      'S3 bucket workspaces-workspaces expires the cost ledger (ledger/) after 31 days: keep it at least 62 days (workspaces.ledgerRetentionDays), and give job-file rules the prefix "workspaces/".',
    ]);
  });

  it("ignores the datasets bucket", async () => {
    const o = await validateStack(policy, [bucket("workspaces-datasets"), lifecycle([expire("x", 1, {})])]);
    expect(o.violations).toEqual([]);
  });
});
