import * as pulumi from "@pulumi/pulumi";
import { z } from "zod";
import {
  GPU_FAMILIES,
  IMAGE_FAMILIES,
  INSTANCE_TYPES,
  TIER_NAMES,
  TIERS,
  isGpuInstanceType,
  unfitReason,
  type TierName,
  DEFAULT_SCHEDULING,
  PRIORITIES,
  schedulingPolicySchema,
  type Priority,
  type SchedulingPolicy,
  LEDGER_MIN_RETENTION_DAYS,
  KUBERNETES,
  KUBERNETES_LABEL_VALUE,
  KUBERNETES_LABEL_VALUE_RULE,
  DEFAULT_QUOTA_GIB_PER_PROJECT,
  jobAddressSchema,
} from "@crucible/runtime/catalog";
import { PUBLIC_SUBNET_PREFIX, publicSubnetRoom, publicSubnetsFor } from "./cidr";

/**
 * Every `crucible:*` stack setting, validated in one place before any resource is declared.
 * Components receive the parsed {@link CrucibleConfig}; nothing else reads Pulumi config.
 */

export const ENVIRONMENTS = ["dev", "staging", "prod"] as const;
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
  /** Stopped, pre-initialised instances for on-demand groups; never on spot groups. */
  warmPool: z.strictObject({ minSize: int(0, 1000), maxPreparedCapacity: int(0, 1000) }).optional(),
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
    /** How long spare capacity lasts before it is scaled in. Defaults to 900 (15 one-minute datapoints). */
    scaleInCooldownSeconds: int(0, 86400),
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
  noncurrentVersionDays: int(1, 365),
  abortMultipartDays: int(1, 30),
  /** Storage a project may use under its prefix, enforced by the runtime on upload. */
  quotaGiBPerProject: positive(),
  encryption: oneOf(["kms", "s3"]),
});

/**
 * The runtime's own policy schema (runtime/src/catalog/scheduling.ts), so the stack and every agent accept the
 * same policy with the same limits and defaults; its budgets are set under `crucible:budgets` instead,
 * next to the account's, and joined back by {@link schedulingPolicy}.
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
const oidcIssuer = /^https:\/\/([a-z0-9.-]+(\/[\w.-]+)*)$/;

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

export const crucibleConfigSchema = z
  .strictObject({
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
  })
  .superRefine(checkCrossFieldRules);

export type CrucibleSettings = z.infer<typeof crucibleConfigSchema>;

/** The validated stack configuration every component is built from. */
export interface CrucibleConfig extends CrucibleSettings {
  readonly stack: string;
  readonly region: string;
}

/**
 * The policy every agent and the CLI read as `CRUCIBLE_SCHEDULING`: `crucible:scheduling` with the user
 * and project budgets of `crucible:budgets`.
 */
export function schedulingPolicy(config: CrucibleSettings): SchedulingPolicy {
  const { users, projects } = config.budgets;
  return { ...config.scheduling, budgets: { users, projects } };
}

type Ctx = z.RefinementCtx;

function checkCrossFieldRules(cfg: z.infer<z.ZodObject<Record<string, z.ZodTypeAny>>>, ctx: Ctx): void {
  const c = cfg as unknown as CrucibleSettings;
  for (const name of TIER_NAMES) {
    const tier = c.fleet.tiers[name];
    if (tier) checkTier(name, tier, c.fleet.maxInstancesPerTier, ctx);
  }
  if (c.fleet.queue.visibilityTimeoutSeconds <= 2 * c.fleet.heartbeatSeconds) {
    ctx.addIssue({
      code: "custom",
      path: ["fleet", "queue", "visibilityTimeoutSeconds"],
      message: `must be more than twice fleet.heartbeatSeconds (${c.fleet.heartbeatSeconds}) so one missed heartbeat does not release a running job`,
      input: c.fleet.queue.visibilityTimeoutSeconds,
    });
  }
  if (c.fleet.startup.warmStartSeconds > c.fleet.startup.coldBootSeconds) {
    ctx.addIssue({
      code: "custom",
      path: ["fleet", "startup", "warmStartSeconds"],
      message: `must be at most fleet.startup.coldBootSeconds (${c.fleet.startup.coldBootSeconds}): a warm instance has already booted`,
      input: c.fleet.startup.warmStartSeconds,
    });
  }
  for (const [name, limit] of Object.entries(c.budgets.tiers)) {
    if (limit !== undefined && !c.fleet.tiers[name as TierName]?.enabled) {
      ctx.addIssue({
        code: "custom",
        path: ["budgets", "tiers", name],
        message: `is a budget for tier ${name}, which is not enabled in crucible:fleet.tiers`,
        input: limit,
      });
    }
  }
  const { checkpointRetentionDays, retentionDays } = c.workspaces;
  if (checkpointRetentionDays !== undefined && checkpointRetentionDays > retentionDays) {
    ctx.addIssue({
      code: "custom",
      path: ["workspaces", "checkpointRetentionDays"],
      message: `must be at most workspaces.retentionDays (${retentionDays})`,
      input: checkpointRetentionDays,
    });
  }
  c.ci?.github.environments?.forEach((name, i) => {
    if ((ENVIRONMENTS as readonly string[]).includes(name) && name !== c.environment) {
      ctx.addIssue({
        code: "custom",
        path: ["ci", "github", "environments", i],
        message: `must not be another stack's environment (this stack is ${c.environment}): its jobs would deploy here`,
        input: name,
      });
    }
  });
  checkNetwork(c.network, ctx);
  checkAccess(c, ctx);
  if (c.kubernetes.enabled) checkKubernetes(c, ctx);
  const anyEnabled = TIER_NAMES.some((t) => c.fleet.tiers[t]?.enabled);
  if (anyEnabled && !c.registry.families.includes("agent") && !c.registry.promoteFrom) {
    ctx.addIssue({
      code: "custom",
      path: ["registry", "families"],
      message: 'must include "agent": every node runs the agent image',
      input: c.registry.families,
    });
  }
}

/** A project's tiers must have queues: only enabled tiers do. */
function checkAccess(c: CrucibleSettings, ctx: Ctx): void {
  const enabled = TIER_NAMES.filter((t) => c.fleet.tiers[t]?.enabled);
  for (const [project, entry] of Object.entries(c.access)) {
    entry.tiers?.forEach((tier, i) => {
      if (!enabled.includes(tier)) {
        ctx.addIssue({
          code: "custom",
          path: ["access", project, "tiers", i],
          message: `must be a tier enabled in crucible:fleet.tiers (${enabled.join(", ")})`,
          input: tier,
        });
      }
    });
  }
}

/**
 * `crucible:access` with its defaults applied: each project's users, the tiers it may submit to (every
 * enabled tier unless it names some) and its priority classes ({@link DEFAULT_SUBMITTER_PRIORITIES}).
 */
export function submitterProjects(config: CrucibleSettings): Record<
  string,
  {
    readonly users: Readonly<Record<string, string>>;
    readonly tiers: TierName[];
    readonly priorities: Priority[];
  }
> {
  const enabled = TIER_NAMES.filter((t) => config.fleet.tiers[t]?.enabled);
  return Object.fromEntries(
    Object.entries(config.access).map(([project, entry]) => [
      project,
      {
        users: entry.users,
        tiers: entry.tiers ? [...entry.tiers] : enabled,
        priorities: [...(entry.priorities ?? DEFAULT_SUBMITTER_PRIORITIES)],
      },
    ]),
  );
}

function checkNetwork(network: CrucibleSettings["network"], ctx: Ctx): void {
  if (network.existing) return;
  const prefix = Number(network.cidr.split("/")[1]);
  const needed = publicSubnetsFor(network.nat, network.azCount);
  if (needed > publicSubnetRoom(prefix)) {
    ctx.addIssue({
      code: "custom",
      path: ["network", "cidr"],
      message: `must leave room for the ${needed} public /${PUBLIC_SUBNET_PREFIX} NAT subnets of nat ${network.nat} over ${network.azCount} zones (a /${prefix} holds ${publicSubnetRoom(prefix)}); use a larger range such as /22`,
      input: network.cidr,
    });
  }
}

function checkKubernetes(c: CrucibleSettings, ctx: Ctx): void {
  const k = c.kubernetes;
  if (k.kubeconfig === undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["kubernetes", "kubeconfig"],
      message:
        'is required when crucible:kubernetes.enabled is true; set it as a secret: pulumi config set --secret --path crucible:kubernetes.kubeconfig "$(cat kubeconfig)"',
      input: undefined,
    });
  }
  if (!TIER_NAMES.some((t) => c.fleet.tiers[t]?.enabled)) {
    ctx.addIssue({
      code: "custom",
      path: ["kubernetes", "enabled"],
      message: "needs at least one enabled tier in crucible:fleet.tiers: agents and the quota are per tier",
      input: k.enabled,
    });
  }
  // Both label every object the target declares; the API server rejects a bad label value at apply time.
  for (const key of ["owner", "costCenter"] as const) {
    if (!KUBERNETES_LABEL_VALUE.test(c[key])) {
      ctx.addIssue({
        code: "custom",
        path: [key],
        message: `must be ${KUBERNETES_LABEL_VALUE_RULE} while crucible:kubernetes.enabled is true: it labels every Kubernetes object`,
        input: c[key],
      });
    }
  }
  const issuer = k.oidc && oidcIssuer.exec(k.oidc.issuerUrl)?.[1];
  if (k.oidc && issuer && !k.oidc.providerArn.endsWith(`:oidc-provider/${issuer}`)) {
    ctx.addIssue({
      code: "custom",
      path: ["kubernetes", "oidc", "providerArn"],
      message: `must be the provider of kubernetes.oidc.issuerUrl (its ARN ends in :oidc-provider/${issuer})`,
      input: k.oidc.providerArn,
    });
  }
}

function checkTier(name: TierName, tier: TierConfig, cap: number, ctx: Ctx): void {
  const at = (...rest: (string | number)[]) => ["fleet", "tiers", name, ...rest];
  const catalog = TIERS[name];
  tier.instanceTypes.forEach((type, i) => {
    if (catalog.gpu && !isGpuInstanceType(type)) {
      ctx.addIssue({
        code: "custom",
        path: at("instanceTypes", i),
        message: `must be a GPU instance type (${GPU_FAMILIES.join(", ")})`,
        input: type,
      });
    } else if (!catalog.allowedInstanceTypes.includes(type)) {
      ctx.addIssue({
        code: "custom",
        path: at("instanceTypes", i),
        message: `must be one of the tier's allowed instance types (${catalog.allowedInstanceTypes.join(", ")})`,
        input: type,
      });
    } else {
      const why = unfitReason({ ...catalog, ...tier.limits }, type);
      if (why)
        ctx.addIssue({
          code: "custom",
          path: at("instanceTypes", i),
          message: `cannot run the tier: ${why}`,
          input: type,
        });
    }
  });
  if (tier.minSize > tier.maxSize) {
    ctx.addIssue({
      code: "custom",
      path: at("minSize"),
      message: `must be at most maxSize (${tier.maxSize})`,
      input: tier.minSize,
    });
  }
  if (tier.desired < tier.minSize || tier.desired > tier.maxSize) {
    ctx.addIssue({
      code: "custom",
      path: at("desired"),
      message: `must lie between minSize (${tier.minSize}) and maxSize (${tier.maxSize})`,
      input: tier.desired,
    });
  }
  if (tier.maxSize > cap) {
    ctx.addIssue({
      code: "custom",
      path: at("maxSize"),
      message: `must be at most the environment cap fleet.maxInstancesPerTier (${cap})`,
      input: tier.maxSize,
    });
  }
  if (tier.warmPool && tier.spot.enabled) {
    ctx.addIssue({
      code: "custom",
      path: at("warmPool"),
      message:
        "cannot be used on a spot group (warm pools only hold on-demand instances); set spot.enabled to false or use prewarmSchedule",
      input: tier.warmPool,
    });
  }
  if (
    tier.warmPool &&
    tier.warmPool.maxPreparedCapacity > 0 &&
    tier.warmPool.maxPreparedCapacity < tier.warmPool.minSize
  ) {
    ctx.addIssue({
      code: "custom",
      path: at("warmPool", "maxPreparedCapacity"),
      message: `must be at least warmPool.minSize (${tier.warmPool.minSize})`,
      input: tier.warmPool.maxPreparedCapacity,
    });
  }
  tier.prewarmSchedule.forEach((s, i) => {
    if (s.minSize > tier.maxSize) {
      ctx.addIssue({
        code: "custom",
        path: at("prewarmSchedule", i, "minSize"),
        message: `must be at most maxSize (${tier.maxSize})`,
        input: s.minSize,
      });
    }
  });
  const limits = tier.limits ?? {};
  for (const key of ["memoryMiB", "vcpus", "maxRuntimeSeconds"] as const) {
    const value = limits[key];
    if (value !== undefined && value > catalog.ceilings[key]) {
      ctx.addIssue({
        code: "custom",
        path: at("limits", key),
        message: `must be at most the ${name} ceiling of ${catalog.ceilings[key]}`,
        input: value,
      });
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Defaults per environment: a stack file only states where it differs.

type DeepPartial<T> = T extends readonly (infer _U)[]
  ? T
  : T extends object
    ? { [K in keyof T]?: DeepPartial<T[K]> }
    : T;

const tierDefaults = (name: TierName, over: DeepPartial<TierConfig>): TierConfig =>
  deepMerge(
    {
      enabled: false,
      instanceTypes: [...TIERS[name].instanceTypes],
      minSize: 0,
      maxSize: 2,
      desired: 0,
      spot: { enabled: true, onDemandBase: 0, onDemandPercentage: 0 },
      prewarmSchedule: [],
      targetJobsPerInstance: TIERS[name].sharedNodes ? 4 : 1,
      rootVolumeGiB: TIERS[name].gpu ? 200 : 50,
    },
    over,
  );

const common: DeepPartial<CrucibleSettings> = {
  registry: {
    families: ["cpu", "ml-cpu", "ml-cuda", "agent"],
    pullAccountIds: [],
    keepImages: 20,
    untaggedExpiryDays: 3,
  },
  workspaces: {
    retentionDays: 30,
    ledgerRetentionDays: 400,
    noncurrentVersionDays: 7,
    abortMultipartDays: 2,
    quotaGiBPerProject: DEFAULT_QUOTA_GIB_PER_PROJECT,
    encryption: "kms",
  },
  budgets: {
    tiers: {},
    thresholds: [
      { type: "ACTUAL", percent: 50 },
      { type: "ACTUAL", percent: 80 },
      { type: "ACTUAL", percent: 100 },
      { type: "FORECASTED", percent: 100 },
    ],
    emails: [],
    enforce: false,
    spotDiscountPercent: 60,
  },
  fleet: {
    heartbeatSeconds: 30,
    queue: { visibilityTimeoutSeconds: 120, maxReceiveCount: 5, messageRetentionSeconds: 345600 },
    startup: { coldBootSeconds: 240, warmStartSeconds: 60 },
    scaling: { metricPeriodSeconds: 60, scaleOutDelaySeconds: 180, scaleInCooldownSeconds: 900 },
    spotInterruptionsPerHour: 0.01,
  },
  alarms: { oldestJobAgeSeconds: 900 },
  // The runtime's defaults, merged under a stack's partial `crucible:scheduling` like every other section.
  scheduling: {
    weights: DEFAULT_SCHEDULING.weights,
    fairShare: DEFAULT_SCHEDULING.fairShare,
    preemption: DEFAULT_SCHEDULING.preemption,
  },
  kubernetes: {
    enabled: false,
    maxJobsPerTier: 4,
    agentReplicas: 1,
    gpuNodeLabel: KUBERNETES.defaultGpuNodeLabel,
    devicePluginImage: DEFAULT_DEVICE_PLUGIN_IMAGE,
    clusterObjects: "declare",
  },
  // No one may submit until a stack names its projects and their users.
  access: {},
};

export const ENVIRONMENT_DEFAULTS: Record<Environment, DeepPartial<CrucibleSettings>> = {
  dev: deepMerge(common, {
    network: { cidr: "10.20.0.0/16", azCount: 2, nat: "none" },
    fleet: {
      maxInstancesPerTier: 4,
      tiers: {
        "cpu-small": tierDefaults("cpu-small", { enabled: true }),
        "cpu-large": tierDefaults("cpu-large", { enabled: true }),
        "gpu-small": tierDefaults("gpu-small", { enabled: true, maxSize: 1 }),
        "gpu-medium": tierDefaults("gpu-medium", {}),
        "gpu-large": tierDefaults("gpu-large", {}),
      },
    },
    budgets: { monthlyLimitUsd: 500 },
  }),
  staging: deepMerge(common, {
    network: { cidr: "10.30.0.0/16", azCount: 2, nat: "single" },
    fleet: {
      maxInstancesPerTier: 10,
      tiers: {
        "cpu-small": tierDefaults("cpu-small", { enabled: true, maxSize: 4 }),
        "cpu-large": tierDefaults("cpu-large", { enabled: true, maxSize: 4 }),
        "gpu-small": tierDefaults("gpu-small", { enabled: true, maxSize: 4 }),
        "gpu-medium": tierDefaults("gpu-medium", { enabled: true, maxSize: 2 }),
        "gpu-large": tierDefaults("gpu-large", {}),
      },
    },
    budgets: { monthlyLimitUsd: 3000 },
  }),
  prod: deepMerge(common, {
    network: { cidr: "10.40.0.0/16", azCount: 3, nat: "onePerAz" },
    fleet: {
      maxInstancesPerTier: 50,
      tiers: {
        "cpu-small": tierDefaults("cpu-small", { enabled: true, minSize: 1, desired: 1, maxSize: 20 }),
        "cpu-large": tierDefaults("cpu-large", { enabled: true, maxSize: 20 }),
        "gpu-small": tierDefaults("gpu-small", {
          enabled: true,
          minSize: 1,
          desired: 1,
          maxSize: 20,
          spot: { enabled: false, onDemandBase: 0, onDemandPercentage: 100 },
          warmPool: { minSize: 2, maxPreparedCapacity: 4 },
        }),
        "gpu-medium": tierDefaults("gpu-medium", { enabled: true, maxSize: 10 }),
        "gpu-large": tierDefaults("gpu-large", { enabled: true, maxSize: 8 }),
      },
    },
    budgets: { monthlyLimitUsd: 25000 },
    alarms: { oldestJobAgeSeconds: 600 },
  }),
};

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Merges `over` into `base`: objects merge key by key, everything else (lists included) replaces. */
export function deepMerge<T>(base: T, over: unknown): T {
  if (!isPlainObject(base) || !isPlainObject(over)) return (over === undefined ? base : over) as T;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = deepMerge(out[k], v);
  return out as T;
}

// ---------------------------------------------------------------------------------------------
// Parsing and errors

/** A stack configuration that failed validation; its message lists every problem, one per line. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid stack configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

function keyPath(path: readonly PropertyKey[]): string {
  const [head, ...rest] = path;
  let out = `crucible:${String(head ?? "")}`;
  for (const p of rest) out += typeof p === "number" ? `[${p}]` : `.${String(p)}`;
  return out;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** The keys a strict object at `path` accepts, to name them when an unknown one appears. */
function allowedKeysAt(path: readonly PropertyKey[]): string[] {
  let schema: z.ZodType = crucibleConfigSchema;
  for (const p of path) {
    schema = unwrapped(schema);
    if (schema instanceof z.ZodObject) schema = (schema.shape as Record<string, z.ZodType>)[String(p)]!;
    else if (schema instanceof z.ZodArray) schema = schema.element as z.ZodType;
    else if (schema instanceof z.ZodRecord) schema = schema.valueType as z.ZodType;
    else return [];
  }
  schema = unwrapped(schema);
  return schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
}

/** The schema inside optional, defaulted and piped wrappers (the runtime's policy defaults its sections). */
function unwrapped(schema: z.ZodType): z.ZodType {
  while (
    schema instanceof z.ZodOptional ||
    schema instanceof z.ZodDefault ||
    schema instanceof z.ZodPrefault ||
    schema instanceof z.ZodPipe
  ) {
    schema = schema instanceof z.ZodPipe ? (schema.in as z.ZodType) : (schema.unwrap() as z.ZodType);
  }
  return schema;
}

/** Settings whose values an error must never print. */
const SECRET_KEYS = new Set(["kubeconfig"]);

function formatIssue(issue: z.core.$ZodIssue): string[] {
  if (issue.code === "unrecognized_keys") {
    const allowed = allowedKeysAt(issue.path);
    return issue.keys.map(
      (k) => `${keyPath([...issue.path, k])} is not a known setting; allowed here: ${allowed.join(", ")}`,
    );
  }
  // A record's key (a user or project name) failed its own schema: say what that schema allows.
  if (issue.code === "invalid_key") {
    return issue.issues.map((i) => `${keyPath(issue.path)} ${i.message}, got ${describe(issue.input)}`);
  }
  if (issue.code === "invalid_type" && issue.input === undefined) {
    return [`${keyPath(issue.path)} is required (${issue.message.replace(/^Invalid input: /, "")})`];
  }
  const secret = SECRET_KEYS.has(String(issue.path.at(-1))) && issue.input !== undefined;
  const got = secret ? "a secret (not shown)" : describe(issue.input);
  return [`${keyPath(issue.path)} ${issue.message}, got ${got}`];
}

/** Reads a raw `crucible:*` value: structured values arrive from Pulumi as JSON text. */
function decodeValue(raw: unknown): unknown {
  if (typeof raw !== "string") return raw;
  const trimmed = raw.trim();
  if (!/^[[{]/.test(trimmed)) return raw;
  try {
    return JSON.parse(trimmed);
  } catch {
    return raw;
  }
}

/**
 * Validates a stack's `crucible:*` settings (keys without the namespace) over the defaults of its
 * environment. The environment is `environment` when given, else the stack's name.
 */
export function parseCrucibleConfig(
  settings: Readonly<Record<string, unknown>>,
  context: { readonly stack: string; readonly region: string },
): CrucibleConfig {
  const decoded = Object.fromEntries(Object.entries(settings).map(([k, v]) => [k, decodeValue(v)]));
  const environment = decoded.environment ?? context.stack;
  const defaults = (ENVIRONMENTS as readonly unknown[]).includes(environment)
    ? ENVIRONMENT_DEFAULTS[environment as Environment]
    : {};
  const result = crucibleConfigSchema.safeParse(deepMerge(defaults, { ...decoded, environment }), {
    reportInput: true,
  });
  if (!result.success) throw new ConfigError(result.error.issues.flatMap(formatIssue));
  return { ...result.data, stack: context.stack, region: context.region };
}

/** The stack's configuration, read once from the Pulumi engine and validated. */
export function loadConfig(): CrucibleConfig {
  const prefix = "crucible:";
  const settings = Object.fromEntries(
    Object.entries(pulumi.runtime.allConfig())
      .filter(([k]) => k.startsWith(prefix))
      .map(([k, v]) => [k.slice(prefix.length), v]),
  );
  const region = new pulumi.Config("aws").get("region");
  if (!region) throw new ConfigError(["aws:region is required (the AWS region to deploy to), got nothing"]);
  return parseCrucibleConfig(settings, { stack: pulumi.getStack(), region });
}
