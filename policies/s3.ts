import * as aws from "@pulumi/aws";
import {
  validateResourceOfType,
  type PolicyResource,
  type ResourceValidationPolicy,
  type StackValidationArgs,
  type StackValidationPolicy,
} from "@pulumi/policy";
import { LEDGER_MIN_RETENTION_DAYS, LEDGER_PREFIX, WORKSPACES_PREFIX } from "@crucible/runtime/catalog";
import { configSchema, readSettings } from "./config";
import {
  UNKNOWN,
  actionsOf,
  asList,
  forStacksWith,
  join,
  keys,
  known,
  ofTypes,
  resourcesOf,
  statementsOf,
  type ResourceClass,
  type Statement,
} from "./lib";

/**
 * S3 with @pulumi/aws 7: a bucket's settings live on separate resources (public-access block,
 * encryption, versioning, policy, lifecycle) that name the bucket. Each concern has a resource
 * policy (what the setting says) and a stack policy (every bucket has the setting at all).
 */

const BUCKETS: ResourceClass[] = [aws.s3.Bucket, aws.s3.BucketV2];
const bucketKeys = (b: PolicyResource) => keys(b, "bucket", "id");

/** What each bucket-level concern checks, and the message for a bucket without it. */
function perBucketPolicy(spec: {
  name: string;
  description: string;
  configuring: ResourceClass[];
  /** True where the bucket configures the concern inline (the deprecated inline arguments). */
  inline?: (bucket: PolicyResource) => boolean;
  fix: string;
}): StackValidationPolicy {
  return {
    name: spec.name,
    description: spec.description,
    enforcementLevel: "mandatory",
    validateStack: forStacksWith(BUCKETS, (args, report) => {
      const buckets = ofTypes(args.resources, BUCKETS);
      const joined = join(buckets, ofTypes(args.resources, spec.configuring), "bucket", bucketKeys);
      for (const bucket of buckets) {
        if (joined.of(bucket).length > 0 || spec.inline?.(bucket) || joined.undecided) continue;
        report(`S3 bucket ${bucket.name} has no ${spec.fix}`, bucket.urn);
      }
    }),
  };
}

export function s3PublicAccessBlocked(): ResourceValidationPolicy {
  return {
    name: "s3-public-access-blocked",
    description: "S3 public-access blocks turn on all four blocks.",
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.s3.BucketPublicAccessBlock, (pab, args, report) => {
      const off = (
        ["blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"] as const
      ).filter((flag) => pab[flag] !== true);
      if (off.length > 0) report(`${args.name}: set ${off.map((f) => `${f}: true`).join(", ")}.`);
    }),
  };
}

export function s3BucketsHavePublicAccessBlocks(): StackValidationPolicy {
  return perBucketPolicy({
    name: "s3-buckets-have-public-access-blocks",
    description: "Every S3 bucket has a public-access block.",
    configuring: [aws.s3.BucketPublicAccessBlock],
    fix: "public-access block: add an aws.s3.BucketPublicAccessBlock with all four blocks on for it",
  });
}

const SSE_ALGORITHMS = ["AES256", "aws:kms", "aws:kms:dsse"];

export function s3EncryptionConfigured(): ResourceValidationPolicy {
  const check = (
    rules: readonly { applyServerSideEncryptionByDefault?: { sseAlgorithm?: string } }[] | undefined,
    name: string,
    report: (m: string) => void,
  ) => {
    const algorithms = asList(rules).map((r) => r.applyServerSideEncryptionByDefault?.sseAlgorithm);
    if (algorithms.length === 0 || algorithms.some((a) => !a || !SSE_ALGORITHMS.includes(a))) {
      report(
        `${name}: every rule needs applyServerSideEncryptionByDefault.sseAlgorithm set to one of ${SSE_ALGORITHMS.join(", ")}.`,
      );
    }
  };
  return {
    name: "s3-encryption-configured",
    description: "S3 default-encryption configurations encrypt with S3-managed or KMS keys.",
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.s3.BucketServerSideEncryptionConfiguration, (c, args, report) =>
        check(c.rules, args.name, report),
      ),
      validateResourceOfType(aws.s3.BucketServerSideEncryptionConfigurationV2, (c, args, report) =>
        check(c.rules, args.name, report),
      ),
    ],
  };
}

export function s3BucketsEncrypted(): StackValidationPolicy {
  return perBucketPolicy({
    name: "s3-buckets-encrypted",
    description: "Every S3 bucket has default encryption.",
    configuring: [
      aws.s3.BucketServerSideEncryptionConfiguration,
      aws.s3.BucketServerSideEncryptionConfigurationV2,
    ],
    inline: (b) =>
      known(() => {
        const cfg = b.props.serverSideEncryptionConfiguration as
          { rule?: { applyServerSideEncryptionByDefault?: { sseAlgorithm?: string } } } | undefined;
        return SSE_ALGORITHMS.includes(cfg?.rule?.applyServerSideEncryptionByDefault?.sseAlgorithm ?? "");
      }) !== false,
    fix: "default encryption: add an aws.s3.BucketServerSideEncryptionConfiguration (SSE-S3 or SSE-KMS) for it",
  });
}

/** A statement that refuses every request to the bucket made without TLS. */
function deniesInsecureTransport(s: Statement): boolean {
  const secure = s.Condition?.Bool?.["aws:SecureTransport"];
  const principal = s.Principal === "*" || (s.Principal as { AWS?: unknown } | undefined)?.AWS === "*";
  const allActions = actionsOf(s).some((a) => a === "*" || a === "s3:*");
  return s.Effect === "Deny" && principal && allActions && String(secure) === "false";
}

/** The TLS check of one policy document; the message says what is missing. */
function checkTlsPolicy(policy: unknown, name: string, report: (m: string) => void): void {
  const statements = statementsOf(policy);
  if (!statements) {
    report(`${name}: the policy is not a JSON policy document; build it as an object and JSON.stringify it.`);
    return;
  }
  const deny = statements.filter(deniesInsecureTransport);
  if (deny.length === 0) {
    report(
      `${name}: add a statement { Effect: "Deny", Principal: "*", Action: "s3:*", Resource: [<bucket arn>, "<bucket arn>/*"], ` +
        `Condition: { Bool: { "aws:SecureTransport": "false" } } } so requests without TLS are refused.`,
    );
  } else if (!deny.some((s) => resourcesOf(s).some((r) => r === "*" || r.endsWith("/*")))) {
    report(`${name}: the TLS-only statement must cover the bucket's objects too ("<bucket arn>/*").`);
  }
}

export function s3BucketPolicyRequiresTls(): ResourceValidationPolicy {
  return {
    name: "s3-bucket-policy-requires-tls",
    description: "S3 bucket policies deny every request made without TLS.",
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.s3.BucketPolicy, (p, args, report) =>
      checkTlsPolicy(p.policy, args.name, report),
    ),
  };
}

export function s3BucketsHaveTlsPolicy(): StackValidationPolicy {
  return perBucketPolicy({
    name: "s3-buckets-have-tls-policy",
    description: "Every S3 bucket has a bucket policy that denies requests made without TLS.",
    configuring: [aws.s3.BucketPolicy],
    inline: (b) => {
      const inline = known(() => b.props.policy as unknown);
      if (inline === UNKNOWN) return true;
      if (inline === undefined || inline === "") return false;
      let ok = true;
      checkTlsPolicy(inline, b.name, () => (ok = false));
      return ok;
    },
    fix: 'bucket policy denying requests without TLS: add an aws.s3.BucketPolicy with a Deny on "aws:SecureTransport": "false"',
  });
}

export function s3VersioningEnabled(): ResourceValidationPolicy {
  const check = (status: string | undefined, name: string, report: (m: string) => void) => {
    if (status !== "Enabled") {
      report(
        `${name}: set versioningConfiguration.status to "Enabled" (got ${JSON.stringify(status) ?? "nothing"}).`,
      );
    }
  };
  return {
    name: "s3-versioning-enabled",
    description: "S3 versioning configurations keep versioning enabled.",
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.s3.BucketVersioning, (v, args, report) =>
        check(v.versioningConfiguration?.status, args.name, report),
      ),
      validateResourceOfType(aws.s3.BucketVersioningV2, (v, args, report) =>
        check(v.versioningConfiguration?.status, args.name, report),
      ),
    ],
  };
}

export function s3BucketsVersioned(): StackValidationPolicy {
  return perBucketPolicy({
    name: "s3-buckets-versioned",
    description: "Every S3 bucket has versioning enabled.",
    configuring: [aws.s3.BucketVersioning, aws.s3.BucketVersioningV2],
    inline: (b) =>
      known(() => (b.props.versioning as { enabled?: boolean } | undefined)?.enabled === true) !== false,
    fix: 'versioning: add an aws.s3.BucketVersioning with versioningConfiguration.status "Enabled" for it',
  });
}

/**
 * The workspaces bucket is the one whose logical name ends in `workspaces` (the Workspaces component
 * names it `<name>-workspaces`; its sibling `<name>-datasets` never expires).
 */
export const isWorkspacesBucket = (b: PolicyResource): boolean => /(^|-)workspaces$/.test(b.name);

interface ExpiryRule {
  status?: string;
  enabled?: boolean;
  prefix?: string;
  tags?: Record<string, string>;
  filter?: { prefix?: string; and?: unknown; tag?: unknown; objectSizeGreaterThan?: number };
  expiration?: { days?: number } | { days?: number }[];
}

/**
 * Days after which a rule expires every object under `under` (`workspaces/` for job files), or undefined
 * if it does not: a rule filtered by tag or size leaves some objects out.
 */
function expiryDaysOver(under: string, rule: ExpiryRule): number | undefined {
  if (rule.status !== undefined ? rule.status !== "Enabled" : rule.enabled !== true) return undefined;
  const f = rule.filter ?? {};
  const tagged = f.and !== undefined || f.tag !== undefined || Object.keys(rule.tags ?? {}).length > 0;
  if (tagged || f.objectSizeGreaterThan !== undefined) return undefined;
  const prefix = f.prefix ?? rule.prefix ?? "";
  if (!under.startsWith(prefix)) return undefined;
  return asList(rule.expiration).find((e) => typeof e.days === "number" && e.days > 0)?.days;
}

const LIFECYCLES: ResourceClass[] = [
  aws.s3.BucketLifecycleConfiguration,
  aws.s3.BucketLifecycleConfigurationV2,
];

/**
 * Each workspaces bucket with the expiry days of its lifecycle rules (inline or in lifecycle resources)
 * over `under`; a bucket whose rules are not all known yet is left out.
 */
function workspacesExpiries(
  args: StackValidationArgs,
  under: string,
): { bucket: PolicyResource; days: number[] }[] {
  const buckets = ofTypes(args.resources, BUCKETS).filter(isWorkspacesBucket);
  const joined = join(buckets, ofTypes(args.resources, LIFECYCLES), "bucket", bucketKeys);
  const over = (rule: ExpiryRule) => expiryDaysOver(under, rule);
  return buckets.flatMap((bucket) => {
    const rules = [
      ...joined.of(bucket).map((l) => known(() => asList(l.props.rules as ExpiryRule[]).map(over))),
      known(() => asList(bucket.props.lifecycleRules as ExpiryRule[]).map(over)),
    ];
    if (joined.undecided && joined.of(bucket).length === 0) return [];
    const resolved = rules.filter((r): r is (number | undefined)[] => r !== UNKNOWN);
    if (resolved.length < rules.length) return [];
    return [{ bucket, days: resolved.flat().filter((d): d is number => d !== undefined) }];
  });
}

export function s3WorkspacesExpire(): StackValidationPolicy {
  const name = "s3-workspaces-expire";
  return {
    name,
    description: `The workspaces bucket expires job files (${WORKSPACES_PREFIX}) within the configured retention.`,
    enforcementLevel: "mandatory",
    configSchema: configSchema("workspaceRetentionDays"),
    validateStack: forStacksWith(BUCKETS, (args, report) => {
      const { workspaceRetentionDays: retention } = readSettings(args, name, "workspaceRetentionDays");
      for (const { bucket, days } of workspacesExpiries(args, WORKSPACES_PREFIX)) {
        const shortest = days.length > 0 ? Math.min(...days) : undefined;
        if (shortest === undefined) {
          report(
            `S3 bucket ${bucket.name} keeps job files forever: add an enabled lifecycle rule with filter { prefix: "${WORKSPACES_PREFIX}" } ` +
              `and expiration.days at most ${retention} (workspaceRetentionDays).`,
            bucket.urn,
          );
        } else if (shortest > retention) {
          report(
            `S3 bucket ${bucket.name} expires job files after ${shortest} days, longer than the retention of ${retention} days: ` +
              `set the rule's expiration.days to at most ${retention}.`,
            bucket.urn,
          );
        }
      }
    }),
  };
}

export function s3LedgerKept(): StackValidationPolicy {
  return {
    name: "s3-ledger-kept",
    description: `No lifecycle rule expires the cost ledger (${LEDGER_PREFIX}) within ${LEDGER_MIN_RETENTION_DAYS} days: last month's chargeback must stay complete.`,
    enforcementLevel: "mandatory",
    validateStack: forStacksWith(BUCKETS, (args, report) => {
      for (const { bucket, days } of workspacesExpiries(args, LEDGER_PREFIX)) {
        const shortest = Math.min(...days);
        if (shortest < LEDGER_MIN_RETENTION_DAYS) {
          report(
            `S3 bucket ${bucket.name} expires the cost ledger (${LEDGER_PREFIX}) after ${shortest} days: ` +
              `keep it at least ${LEDGER_MIN_RETENTION_DAYS} days (workspaces.ledgerRetentionDays), and give job-file rules the prefix "${WORKSPACES_PREFIX}".`,
            bucket.urn,
          );
        }
      }
    }),
  };
}
