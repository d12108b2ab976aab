import { z } from "zod";
import {
  IMAGE_FAMILIES,
  INSTANCE_TYPES,
  TIER_NAMES,
  type TierName,
  PRIORITIES,
  schedulingPolicySchema,
  LEDGER_MIN_RETENTION_DAYS,
  KUBERNETES_LABEL_VALUE,
  KUBERNETES_LABEL_VALUE_RULE,
  jobAddressSchema,
} from "@crucible/runtime/catalog";

/**
 * The shape of every `crucible:*` setting: each section's keys, types, ranges and the message a bad
 * value gets. Checks that compare one setting with another are in rules.ts; defaults in environments.ts.
 */

export const ENVIRONMENTS = ["dev", "staging", "prod"] as const;
/** The states an Auto Scaling warm pool may hold its instances in. */
export const WARM_POOL_STATES = ["Stopped", "Hibernated", "Running"] as const;
export type WarmPoolState = (typeof WARM_POOL_STATES)[number];
export type Environment = (typeof ENVIRONMENTS)[number];

/** A whole number in a range; `why`, when given, follows the range in the message to say why the bounds. */
const int = (min: number, max: number, why?: string) => {
  const error = `must be a whole number from ${min} to ${max}${why === undefined ? "" : ` (${why})`}`;
  return z.number({ error }).int({ error }).min(min, { error }).max(max, { error });
};
const positive = () =>
  z.number({ error: "must be a positive number" }).positive({ error: "must be a positive number" });
const nonEmpty = (what: string) =>
  z.string({ error: `must be ${what}` }).min(1, { error: `must be ${what}` });
const oneOf = <T extends readonly [string, ...string[]]>(values: T) =>
  z.enum(values, { error: `must be one of ${values.join(", ")}` });
const bool = () => z.boolean({ error: "must be true or false" });
const uniqueList = <T extends z.ZodType>(item: T, what: string) =>
  z
    .array(item, { error: `must be a list of ${what}` })
    .refine((xs) => new Set(xs).size === xs.length, { error: `must not repeat ${what}` });

const email = z.email({ error: "must be an email address such as finance@example.com" });
const accountId = z.string().regex(/^\d{12}$/, { error: "must be a 12-digit AWS account id" });
const cidr = z
  .string()
  .regex(/^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\/(1[6-9]|2[0-4])$/, {
    error: "must be an IPv4 CIDR block with a prefix from /16 to /24, such as 10.20.0.0/16",
  })
  .refine(
    (v) =>
      v
        .split("/")[0]!
        .split(".")
        .every((o) => Number(o) <= 255),
    {
      error: "must be an IPv4 CIDR block with octets from 0 to 255",
    },
  );
/** EventBridge-style schedule for Auto Scaling scheduled actions: five cron fields. */
const cron = z.string().regex(/^(\S+\s+){4}\S+$/, {
  error: 'must be a cron expression of five fields, such as "0 8 * * 1-5"',
});
const instanceTypeName = z.string().refine((v) => INSTANCE_TYPES.has(v), {
  error: `must be a known instance type (${[...INSTANCE_TYPES.keys()].join(", ")})`,
});

const networkSchema = z.strictObject({
  /** Address range of the VPC the stack creates. */
  cidr,
  /** Availability zones to spread subnets and nodes over. */
  azCount: int(2, 6),
  /** NAT for private subnets; with `none`, VPC endpoints carry all the nodes' AWS traffic. */
  nat: oneOf(["none", "single", "onePerAz"]),
  /** An existing VPC to use instead of creating one. */
  existing: z
    .strictObject({
      vpcId: z
        .string()
        .regex(/^vpc-[0-9a-f]{8,17}$/, { error: "must be a VPC id such as vpc-0abc12345def67890" }),
      privateSubnetIds: uniqueList(
        z.string().regex(/^subnet-[0-9a-f]{8,17}$/, {
          error: "must be a subnet id such as subnet-0abc12345def67890",
        }),
        "private subnet ids (one per availability zone)",
      ).min(2, { error: "must list private subnets in at least 2 availability zones" }),
    })
    .optional(),
});

const registrySchema = z.strictObject({
  /** Image families this stack builds (or promotes). */
  families: uniqueList(oneOf(IMAGE_FAMILIES), "image families").min(1, {
    error: "must name at least one image family",
  }),
  /** `org/project/stack` of an upstream stack whose exported digests this stack runs instead of building. */
  promoteFrom: z
    .string()
    .regex(/^[\w.-]+\/[\w.-]+\/[\w.-]+$/, {
      error: "must be a stack reference of the form org/project/stack",
    })
    .optional(),
  /** Accounts of downstream stacks allowed to pull. */
  pullAccountIds: uniqueList(accountId, "account ids"),
  /** Images kept per tag prefix by the lifecycle policy. */
  keepImages: int(1, 1000),
  untaggedExpiryDays: int(1, 365),
});

const limitsSchema = z.strictObject({
  memoryMiB: int(128, 1024 * 1024).optional(),
  vcpus: positive().optional(),
  maxRuntimeSeconds: int(1, 7 * 24 * 3600).optional(),
});

const tierSchema = z.strictObject({
  enabled: bool(),
  instanceTypes: uniqueList(instanceTypeName, "instance types").min(1, {
    error: "must list at least one instance type",
  }),
  minSize: int(0, 1000),
  maxSize: int(0, 1000),
  desired: int(0, 1000),
  spot: z.strictObject({
    enabled: bool(),
    /** On-demand instances kept before any spot capacity. */
    onDemandBase: int(0, 1000),
    /** Share of capacity above the base that is on-demand. */
    onDemandPercentage: int(0, 100),
  }),
  /** Pre-initialised instances for on-demand groups; never on spot groups. */
  warmPool: z
    .strictObject({
      minSize: int(0, 1000),
      maxPreparedCapacity: int(0, 1000),
      /**
       * What the pool holds its instances as: `Stopped` (billed for the root volume only), `Hibernated`
       * (the same, RAM saved to the volume: faster to resume; only instance types that hibernate) or
       * `Running` (billed in full, takes jobs within seconds). Defaults to Stopped.
       */
      state: oneOf(WARM_POOL_STATES).default("Stopped"),
    })
    .optional(),
  /** Scheduled raises of minimum capacity, e.g. working hours. */
  prewarmSchedule: z.array(
    z.strictObject({
      name: z.string().regex(/^[a-z0-9-]{1,40}$/, { error: "must be lowercase letters, digits and dashes" }),
      recurrence: cron,
      minSize: int(0, 1000),
      timeZone: nonEmpty("an IANA time zone such as Europe/Berlin").optional(),
    }),
  ),
  /** Jobs (waiting plus running) per in-service instance the scaling policy aims for. */
  targetJobsPerInstance: positive(),
  rootVolumeGiB: int(30, 16384),
  /** SSM parameter of the node AMI; defaults to the ECS-optimized Amazon Linux 2023 image. */
  amiParameter: z
    .string()
    .regex(/^\/[\w./-]+$/, { error: "must be an SSM parameter path such as /aws/service/..." })
    .optional(),
  /** Stack-specific job limits within the tier's ceilings. */
  limits: limitsSchema.optional(),
});
export type TierConfig = z.infer<typeof tierSchema>;

const tiersShape = Object.fromEntries(TIER_NAMES.map((t) => [t, tierSchema.optional()])) as Record<
  TierName,
  z.ZodOptional<typeof tierSchema>
>;

const fleetSchema = z.strictObject({
  /** The environment's cap on the size of any one group. */
  maxInstancesPerTier: int(1, 1000),
  /** How often the agent extends a running job's message visibility. */
  heartbeatSeconds: int(5, 300),
  queue: z.strictObject({
    visibilityTimeoutSeconds: int(30, 43200),
    maxReceiveCount: int(1, 1000),
    messageRetentionSeconds: int(60, 1209600),
  }),
  tiers: z.strictObject(tiersShape),
  /** How long a node takes to take jobs once scaling asks for it; the scaling simulation reads these. */
  startup: z.strictObject({
    /**
     * Launch of a fresh instance to its agent taking jobs: boot, agent image pull, launch hook. At most
     * the launch hook's timeout. Defaults to 240.
     */
    coldBootSeconds: int(10, 900),
    /** Start of a stopped warm-pool instance to its agent taking jobs (≤ coldBootSeconds). Defaults to 60. */
    warmStartSeconds: int(5, 900),
    /** Resume of a hibernated warm-pool instance to its agent taking jobs (≤ warmStartSeconds). Defaults to 30. */
    hibernatedStartSeconds: int(1, 900),
    /** A running warm-pool instance entering service to its agent taking jobs (≤ hibernatedStartSeconds). Defaults to 5. */
    runningStartSeconds: int(1, 900),
  }),
  /** The timing of the scaling policies, as the scaling simulation models them. */
  scaling: z.strictObject({
    /** Period of the metrics the policies read. Defaults to 60, the group metrics' 1-minute granularity. */
    metricPeriodSeconds: int(60, 3600),
    /**
     * Queue growth to a scale-out (and the from-zero alarm to its action): metric publication plus the
     * alarm's datapoints. Defaults to 180, target tracking's 3 one-minute datapoints.
     */
    scaleOutDelaySeconds: int(0, 3600),
    /**
     * A job's submission to the fast path raising the desired capacity, where the stack declares it: the
     * S3 event on spec.json, the scaler Lambda, SetDesiredCapacity. Defaults to 10.
     */
    fastScaleDelaySeconds: int(0, 600),
    /** How long spare capacity lasts before it is scaled in. Defaults to 900 (15 one-minute datapoints). */
    scaleInCooldownSeconds: int(0, 86400),
  }),
  /**
   * The fast scale-out path (infra/fleet/fast-scale.ts): each submission wakes a function that raises its
   * tier's group to the nodes the queues need, in seconds; target tracking stays the authoritative path.
   */
  fastScale: z.strictObject({
    /** Declare it. Defaults to true in every environment. */
    enabled: bool(),
    /** Seconds before a second look when the first found nothing to raise. Defaults to 2. */
    settleSeconds: int(0, 10, "the function runs one look at a time: a long settle delays every other event"),
  }),
  /**
   * Interruptions per spot instance-hour, a Poisson rate the scaling simulation draws from. Defaults to
   * 0.01 (one per 100 instance-hours): cautious, well above the Spot Instance Advisor's worst bucket.
   */
  spotInterruptionsPerHour: z
    .number({ error: "must be a number from 0 to 10" })
    .min(0, { error: "must be a number from 0 to 10" })
    .max(10, { error: "must be a number from 0 to 10" }),
});

const thresholdSchema = z.strictObject({
  type: oneOf(["ACTUAL", "FORECASTED"]),
  percent: z
    .number({ error: "must be a percentage from 1 to 1000" })
    .min(1, { error: "must be a percentage from 1 to 1000" })
    .max(1000, { error: "must be a percentage from 1 to 1000" }),
});

const workspacesSchema = z.strictObject({
  /** Days after which job files expire. */
  retentionDays: int(1, 3650),
  /** Days after which checkpoints expire; at most retentionDays. */
  checkpointRetentionDays: int(1, 3650).optional(),
  /**
   * Days after which finance's copy of the ledger (`ledger/<yyyy-mm>/...` at the bucket root, outside
   * `workspaces/`) expires. At least 62, two calendar months, so last month's report is always complete.
   * Defaults to 400 (13 months: a year of chargeback, and year-over-year for the month before).
   */
  ledgerRetentionDays: int(
    LEDGER_MIN_RETENTION_DAYS,
    3650,
    "at least two calendar months, so last month's report is always complete",
  ),
  /** Days the workspaces bucket keeps noncurrent versions; the datasets bucket keeps every version. */
  noncurrentVersionDays: int(1, 365),
  /** Days after which a stalled multipart upload is aborted, in both buckets. */
  abortMultipartDays: int(1, 30),
  /** Storage a project may use under its prefix, enforced by the runtime on upload. */
  quotaGiBPerProject: positive(),
  encryption: oneOf(["kms", "s3"]),
});

/**
 * The runtime's own policy schema (runtime/src/catalog/scheduling.ts), so the stack and every agent accept the
 * same policy with the same limits and defaults; its budgets are set under `crucible:budgets` instead,
 * next to the account's, and joined back by `schedulingPolicy` (derived.ts).
 */
const schedulingSchema = schedulingPolicySchema.omit({ budgets: true });
const spendLimits = schedulingPolicySchema.shape.budgets.unwrap().shape;

const budgetsSchema = z.strictObject({
  monthlyLimitUsd: positive(),
  /** Monthly limit per enabled tier, filtered by its `crucible:tier` tag. */
  tiers: z.strictObject(
    Object.fromEntries(TIER_NAMES.map((t) => [t, positive().optional()])) as Record<
      TierName,
      z.ZodOptional<z.ZodNumber>
    >,
  ),
  thresholds: z
    .array(thresholdSchema)
    .min(1, { error: "must list at least one threshold" })
    .max(10, { error: "must list at most 10 thresholds (AWS Budgets' limit per budget)" })
    .refine((ts) => new Set(ts.map((t) => `${t.type} ${t.percent}`)).size === ts.length, {
      error: "must not repeat a threshold (the same type and percent)",
    }),
  /** Email subscribers of every budget notification; AWS Budgets takes at most 10 per notification. */
  emails: uniqueList(email, "email addresses").max(10, {
    error: "must list at most 10 email addresses (AWS Budgets' limit per notification)",
  }),
  /** Stop new spend in a tier when its budget is reached. */
  enforce: bool(),
  /**
   * Expected spot price as a discount on on-demand, for finance's estimates only (AWS publishes
   * 60-90 % savings for spot; GPU types sit at the low end, so the default is cautious).
   */
  spotDiscountPercent: int(0, 90),
  /** Monthly USD limit per user, watched by CloudWatch alarms on the agent's spend metrics. */
  users: spendLimits.users,
  /** Monthly USD limit per project, watched the same way. */
  projects: spendLimits.projects,
});

const alarmsSchema = z.strictObject({
  /** Age of the oldest waiting job that raises an alarm. */
  oldestJobAgeSeconds: int(60, 86400),
});

/** The account's GitHub OIDC provider: declared by this stack, the one already there, or named by ARN. */
const oidcProviderChoice = z
  .string()
  .refine(
    (v) =>
      v === "declare" ||
      v === "existing" ||
      /^arn:aws[a-z-]*:iam::\d{12}:oidc-provider\/token\.actions\.githubusercontent\.com$/.test(v),
    {
      error:
        'must be "declare", "existing" or the ARN of the account\'s GitHub OIDC provider (arn:aws:iam::<account>:oidc-provider/token.actions.githubusercontent.com)',
    },
  );

const ciSchema = z.strictObject({
  /** The repository whose GitHub Actions workflows preview and deploy this stack, through OIDC. */
  github: z.strictObject({
    /** `owner/name`: every role's trust policy names it. */
    repository: z
      .string()
      .regex(/^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}\/(?!\.\.?$)[A-Za-z0-9._-]{1,100}$/, {
        error: "must be a GitHub repository as owner/name, such as acme/crucible",
      }),
    /** The branch whose pushes deploy a dev stack without a GitHub environment. Defaults to main. */
    branch: z
      .string()
      .regex(/^(?!\/)(?!.*\/\/)(?!.*\/$)(?!.*\.\.)[A-Za-z0-9._/-]{1,255}$/, {
        error: "must be a branch name such as main (letters, digits, ., _, - and /, no wildcards)",
      })
      .optional(),
    /** GitHub environments whose jobs may deploy this stack. Defaults to the stack's environment. */
    environments: uniqueList(
      z.string().regex(/^[A-Za-z0-9._-]{1,255}$/, {
        error: "must be a GitHub environment name (letters, digits, ., _ and -)",
      }),
      "GitHub environments",
    )
      .min(1, { error: "must name at least one GitHub environment" })
      .optional(),
    /**
     * The account's OIDC provider for token.actions.githubusercontent.com (an account holds one per URL):
     * `declare` it in this stack, use the `existing` one, or name it by ARN. Defaults to declare.
     */
    oidcProvider: oidcProviderChoice.optional(),
  }),
});

/**
 * The IAM identity of one person: an IAM user, or a role only that person can assume. A role shared by
 * several people (an Identity Center permission set's role) would let each of them pick any session name.
 */
const principalArn = z
  .string()
  .regex(/^arn:aws[a-z-]*:iam::\d{12}:(user|role)(\/[\w+=,.@-]+)*\/[\w+=,.@-]{1,128}$/, {
    error:
      "must be the ARN of one person's IAM user or role, such as arn:aws:iam::123456789012:user/alice (no wildcards, no assumed-role or root ARNs)",
  })
  .refine((arn) => !arn.includes(":role/aws-reserved/"), {
    error:
      "must not be an Identity Center permission set's role: everyone in the set could submit under any user name",
  });

/** Priority classes a project may send at when its entry does not say: `high` preempts others, so it is granted explicitly. */
export const DEFAULT_SUBMITTER_PRIORITIES = ["normal", "low"] as const;

const accessProjectSchema = z.strictObject({
  /** User name (as the job's address records it) → the IAM principal that submits as that user. */
  users: z
    .record(jobAddressSchema.shape.user, principalArn, { error: "must map user names to IAM principal ARNs" })
    .refine((users) => Object.keys(users).length > 0, { error: "must name at least one user" }),
  /** Tiers the project may submit to. Defaults to every enabled tier. */
  tiers: uniqueList(oneOf(TIER_NAMES), "tiers").min(1, { error: "must name at least one tier" }).optional(),
  /** Priority classes the project may send at. Defaults to normal and low. */
  priorities: uniqueList(oneOf(PRIORITIES), "priority classes")
    .min(1, { error: "must name at least one priority class" })
    .optional(),
});
export type AccessProject = z.infer<typeof accessProjectSchema>;

/** Who may submit to which project: one submitter role per project, assumable by its users only. */
const accessSchema = z.record(jobAddressSchema.shape.project, accessProjectSchema, {
  error: "must map project names to { users, tiers?, priorities? }",
});

/** What the NVIDIA device plugin runs when `kubernetes.devicePluginImage` is not set. */
export const DEFAULT_DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0";

const labelKey = z
  .string()
  .regex(
    /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?(?=.{1,63}$)[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/,
    {
      error:
        "must be a Kubernetes label key: an optional DNS prefix and /, then up to 63 letters, digits, -, _ and ., such as nvidia.com/gpu.present",
    },
  );
export const oidcIssuer = /^https:\/\/([a-z0-9.-]+(\/[\w.-]+)*)$/;

const kubernetesSchema = z.strictObject({
  /** Declare the Kubernetes target (namespace, quota, agents) on the cluster of `kubeconfig`. */
  enabled: bool(),
  /**
   * The cluster's kubeconfig, YAML or JSON. Set it only as a secret (`pulumi config set --secret --path`):
   * the provider gets it as one, and errors never print it. Required when enabled.
   */
  kubeconfig: z
    .string({ error: "must be the cluster's kubeconfig as text (YAML or JSON)" })
    .refine((v) => /\bclusters\b/.test(v), {
      error: "must be a kubeconfig: YAML or JSON text with a clusters list",
    })
    .optional(),
  /** Jobs of each enabled tier that may run at once; sizes the namespace's ResourceQuota. Defaults to 4. */
  maxJobsPerTier: int(1, 1000),
  /** Agent replicas per enabled tier. Defaults to 1. */
  agentReplicas: int(1, 20),
  /** The node label the NVIDIA device plugin selects GPU nodes by. Defaults to nvidia.com/gpu.present=true. */
  gpuNodeLabel: z.strictObject({
    key: labelKey,
    value: z.string().regex(KUBERNETES_LABEL_VALUE, { error: `must be ${KUBERNETES_LABEL_VALUE_RULE}` }),
  }),
  /** The NVIDIA device plugin's image, with a tag or (better) a digest. Defaults to {@link DEFAULT_DEVICE_PLUGIN_IMAGE}. */
  devicePluginImage: z
    .string()
    .regex(
      /^[a-z0-9]+([.-][a-z0-9]+)*(:\d+)?(\/[a-z0-9]+([._-][a-z0-9]+)*)+(:\w[\w.-]{0,127}(@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})$/,
      {
        error:
          "must be an image reference with a tag or a digest, such as nvcr.io/nvidia/k8s-device-plugin:v0.17.0@sha256:<64 hex digits>",
      },
    ),
  /**
   * PriorityClasses and the device plugin are cluster-wide: one stack per cluster `declare`s them, the
   * others sharing that cluster use the `existing` ones. Defaults to declare.
   */
  clusterObjects: oneOf(["declare", "existing"]),
  /** The cluster's IAM OIDC provider, for agents' AWS roles (IRSA). Absent: agents get no AWS role. */
  oidc: z
    .strictObject({
      issuerUrl: z.string().regex(oidcIssuer, {
        error:
          "must be the cluster's OIDC issuer URL, such as https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE",
      }),
      providerArn: z.string().regex(/^arn:aws[a-z-]*:iam::\d{12}:oidc-provider\/[a-z0-9.-]+(\/[\w.-]+)*$/, {
        error: "must be an IAM OIDC provider ARN such as arn:aws:iam::123456789012:oidc-provider/oidc.eks...",
      }),
    })
    .optional(),
});

/** What `crucible:environments.index` takes besides an existing index's `{ url }`. */
export const PACKAGE_INDEX_CHOICES = ["codeartifact", "none"] as const;

/** A package name as PEP 503 normalises it: lowercase, with runs of `-`, `_` and `.` as one `-`. */
export const normalisePackageName = (name: string): string => name.toLowerCase().replace(/[-_.]+/g, "-");
const PEP503_NAME = /^[a-z0-9]+(-[a-z0-9]+)*$/;
const packageName = z
  .string({ error: "must be a package name such as scikit-learn" })
  .refine((v) => PEP503_NAME.test(v), {
    error: (issue) => {
      const given = typeof issue.input === "string" ? issue.input : "";
      const normal = normalisePackageName(given);
      return `must be a package name as PEP 503 normalises it (lowercase letters, digits and single dashes, such as scikit-learn)${
        normal !== given && PEP503_NAME.test(normal) ? `: write it ${normal}` : ""
      }`;
    },
  });

/** An existing package index's simple API, never with credentials: the URL is written into nodes' user data. */
const indexUrl = z
  .string({ error: "must be the URL of a PEP 503 simple index, such as https://pypi.example.com/simple/" })
  .regex(/^https?:\/\/[^\s/?#@]+(\/[^\s?#]*)?$/, {
    error:
      "must be the http(s) URL of a PEP 503 simple index without credentials, query or fragment, such as https://pypi.example.com/simple/",
  });

const environmentsSchema = z.strictObject({
  /**
   * Where job environments' packages come from: `codeartifact`, a CodeArtifact proxy of PyPI the stack
   * declares (infra/environments/); `{ url }`, an existing PEP 503 index; or `none`, no job environments
   * (jobs that carry requirements are refused). Defaults to codeartifact.
   */
  index: z.union([z.enum(PACKAGE_INDEX_CHOICES), z.strictObject({ url: indexUrl })], {
    error:
      'must be "codeartifact" (a CodeArtifact proxy of PyPI this stack declares), "none" (no job environments) or { url: "https://…/simple/" } (an existing PEP 503 index)',
  }),
  /** The only packages environments may install, PEP 503-normalised. Absent: every package but `deny`'s. */
  allow: uniqueList(packageName, "package names")
    .min(1, { error: "must name at least one package; leave allow out to allow every package" })
    .optional(),
  /** Packages environments never install, PEP 503-normalised. Defaults to none. */
  deny: uniqueList(packageName, "package names"),
});
export type EnvironmentsSettings = z.infer<typeof environmentsSchema>;

/**
 * Every section with its own checks. The rules between sections (rules.ts) make it
 * `crucibleConfigSchema`, the schema a stack is parsed with.
 */
export const sectionsSchema = z.strictObject({
  environment: oneOf(ENVIRONMENTS),
  owner: nonEmpty("the owning team's name"),
  costCenter: nonEmpty("a cost center code"),
  network: networkSchema,
  registry: registrySchema,
  fleet: fleetSchema,
  workspaces: workspacesSchema,
  budgets: budgetsSchema,
  alarms: alarmsSchema,
  /** Priority weights, fair share and preemption, handed to every agent in `CRUCIBLE_SCHEDULING`. */
  scheduling: schedulingSchema,
  /** CI's access to the stack's account (OIDC provider and roles); absent: none is declared. */
  ci: ciSchema.optional(),
  /** The Kubernetes target (off unless enabled). */
  kubernetes: kubernetesSchema,
  /** Who may submit jobs to which project, tier and priority (a submitter role per project). */
  access: accessSchema,
  /** Job environments: the package index their packages come from, and which packages they may use. */
  environments: environmentsSchema,
});

export type CrucibleSettings = z.infer<typeof sectionsSchema>;

/** The validated stack configuration every component is built from. */
export interface CrucibleConfig extends CrucibleSettings {
  readonly stack: string;
  readonly region: string;
}
