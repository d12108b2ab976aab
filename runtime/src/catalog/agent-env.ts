import { z } from "zod";
import { IMAGE_FAMILIES } from "./image-matrix";
import type { NodeLabel } from "./kubernetes-names";
import { schedulingPolicySchema } from "./scheduling";
import { SENDERS_ENV, sendersSchema } from "./senders";
import { TIER_NAMES } from "./tiers";

/**
 * The agent's environment, the contract between the program that starts agents (infra/fleet/user-data.ts writes it
 * into a node's user data, infra/kubernetes/agent.ts into a Deployment) and the agent that reads it
 * (`crucible agent`, and the CLI's platform commands for the variables they share). One schema: each
 * variable's name, what it holds and how it is written as text. Writers call {@link toAgentEnv}, the
 * agent {@link readAgentEnv}; neither spells a variable name or parses a value on its own.
 */

/** How the agent runs jobs: on the node's Docker engine, or as Kubernetes Jobs. */
export const LAUNCHER_KINDS = ["docker", "kubernetes"] as const;
export type LauncherKind = (typeof LAUNCHER_KINDS)[number];

/** A variable's text as the environment holds it; unset and empty are the same (undefined). */
const text = z.string().min(1);

/** A whole number written in decimal, at least `min`; `rule` says what is allowed. */
const whole = (min: number, rule: string) =>
  z
    .string()
    .regex(/^\s*\d+\s*$/, { error: rule })
    .transform(Number)
    .pipe(z.number().int().min(min, { error: rule }).max(Number.MAX_SAFE_INTEGER, { error: rule }));

/** JSON text of a value `schema` accepts; errors name the key at fault. */
const json = <T extends z.ZodType>(schema: T, example: string) =>
  z
    .string()
    .transform((value, ctx): unknown => {
      try {
        return JSON.parse(value);
      } catch {
        ctx.addIssue({ code: "custom", message: `must be JSON such as ${example}`, input: value });
        return z.NEVER;
      }
    })
    .pipe(schema);

/** A node label as `key=value`. */
const nodeLabel = z.string().transform((value, ctx): NodeLabel => {
  const at = value.indexOf("=");
  if (at <= 0 || at === value.length - 1) {
    ctx.addIssue({
      code: "custom",
      message: "must be a node label as key=value, such as nvidia.com/gpu.present=true",
      input: value,
    });
    return z.NEVER;
  }
  return { key: value.slice(0, at), value: value.slice(at + 1) };
});

// Not z.url(): local endpoints such as http://sqs.us-east-1.127.0.0.1:4566/... are queue URLs too.
const url = z.string().regex(/^https?:\/\/\S+$/, { error: "must be a URL (http:// or https://)" });
const queueUrl = z.string().regex(/^https?:\/\/\S+$/, { error: "must be a queue URL (http:// or https://)" });
/** A record's error: its keys must be among `allowed`; it must be an object at all. */
function keysRule(issue: { code?: string }, what: string, allowed: readonly string[]): string | undefined {
  if (issue.code === "unrecognized_keys") return `may name only ${what}: ${allowed.join(", ")}`;
  if (issue.code === "invalid_type") return `must be an object keyed by ${what} (${allowed.join(", ")})`;
  return undefined;
}

/** Per tier, one queue for every priority or one per priority class (stack output `queues`). */
export const agentQueuesSchema = z.partialRecord(
  z.enum(TIER_NAMES, { error: `must be a tier: ${TIER_NAMES.join(", ")}` }),
  z.union([queueUrl, z.strictObject({ high: queueUrl, normal: queueUrl, low: queueUrl })], {
    error: 'must be a queue URL or {"high": url, "normal": url, "low": url}',
  }),
  { error: (issue) => keysRule(issue, "tiers", TIER_NAMES) },
);
export type AgentQueues = z.infer<typeof agentQueuesSchema>;

/** Each job family's image, by digest (the agent image's own entry is allowed and unused). */
export const agentImagesSchema = z.partialRecord(
  z.enum(IMAGE_FAMILIES, { error: `must be an image family: ${IMAGE_FAMILIES.join(", ")}` }),
  z.string({ error: "must be an image reference" }).regex(/^\S+$/, { error: "must be an image reference" }),
  { error: (issue) => keysRule(issue, "image families", IMAGE_FAMILIES) },
);

const POSITIVE = "must be a whole number greater than 0";
const packageNames = z.array(z.string().min(1), {
  error: 'must be a JSON array of package names, such as ["tensorflow"]',
});

/**
 * Every variable the agent reads, by field; {@link AGENT_ENV_NAMES} names each. Each field decodes the
 * variable's text; all are optional here, and the readers say which they need and when.
 */
export const agentEnvSchema = z.strictObject({
  /** The tier this node serves (`--tier` wins). */
  tier: z.enum(TIER_NAMES, { error: `must be a tier: ${TIER_NAMES.join(", ")}` }).optional(),
  /** How the agent runs jobs (`--launcher` wins). Defaults to docker. */
  launcher: z.enum(LAUNCHER_KINDS, { error: `must be one of ${LAUNCHER_KINDS.join(", ")}` }).optional(),
  /** The workspaces bucket (stack output storage.bucketName). */
  bucket: text.optional(),
  /** Where job files live in the bucket. Defaults to `workspaces/` (bucket-layout.ts). */
  workspacesPrefix: text.optional(),
  /** The datasets bucket (stack output storage.datasetsBucketName): what jobs' `datasets` resolve in. */
  datasetsBucket: text.optional(),
  /**
   * Where job environments' packages come from (`crucible:environments.index`): an index URL (PEP 503
   * simple API), or `codeartifact://<domain>/<domain-owner>/<repository>` for the stack's CodeArtifact
   * proxy, whose endpoint and token the agent asks for. Unset: jobs that carry requirements are refused.
   */
  packageIndex: z
    .string()
    .regex(
      /^(https?:\/\/\S+|codeartifact:\/\/[a-z][a-z0-9-]{1,49}\/\d{12}\/[A-Za-z0-9][A-Za-z0-9._-]{1,99})$/,
      {
        error: "must be an index URL (http:// or https://) or codeartifact://<domain>/<account>/<repository>",
      },
    )
    .optional(),
  /** Package names the stack allows in environments (`crucible:environments.allow`); all when unset. */
  packageAllow: json(packageNames, '["numpy", "transformers"]').optional(),
  /** Package names the stack refuses in environments (`crucible:environments.deny`). */
  packageDeny: json(packageNames, '["tensorflow"]').optional(),
  /** S3 and SQS endpoint (the local platform); AWS's own by default. */
  endpoint: url.optional(),
  /** The AWS region of the clients. Defaults to us-east-1. */
  region: z
    .string()
    .regex(/^[a-z]{2}(-[a-z]+)+-\d$/, { error: "must be an AWS region such as us-east-1" })
    .optional(),
  /** Each tier's queues (stack output `queues`); a node's holds its own tier only. */
  queues: json(
    agentQueuesSchema,
    '{"cpu-small": {"high": "https://sqs...", "normal": "...", "low": "..."}}',
  ).optional(),
  /** The stack's scheduling policy (stack output `scheduling`). Defaults to the runtime's. */
  scheduling: json(schedulingPolicySchema, '{"weights": {"high": 6, "normal": 3, "low": 1}}').optional(),
  /** Who may put messages on the tier's queues (senders.ts). Required by the agent. */
  senders: json(sendersSchema, '{"agents": ["AROA..."], "submitters": {"AROA...": "ci"}}').optional(),
  /** GiB each project's users may hold (`crucible:workspaces.quotaGiBPerProject`), checked at submit. */
  quotaGiB: whole(1, POSITIVE).optional(),
  /** The pinned image of each family the launcher runs. */
  images: json(agentImagesSchema, '{"cpu": "<registry>/crucible/cpu@sha256:..."}').optional(),
  /** Jobs at once (`--concurrency` wins). Defaults to the tier's. */
  concurrency: whole(1, POSITIVE).optional(),
  heartbeatSeconds: whole(1, POSITIVE).optional(),
  visibilityTimeoutSeconds: whole(1, POSITIVE).optional(),
  /** Seconds an interrupted job gets to checkpoint. */
  graceSeconds: whole(1, POSITIVE).optional(),
  checkpointSeconds: whole(1, POSITIVE).optional(),
  /** Each job's workspace volume in MiB, 0 for no quota. Defaults to the tier's. */
  workspaceMiB: whole(0, "must be a whole number of MiB (0: no quota)").optional(),
  /** Log a job may store over all its attempts, in MiB. Defaults to 1 GiB. */
  logCapMiB: whole(1, POSITIVE).optional(),
  /** On a fleet node: its Auto Scaling group and lifecycle hooks, all three or none. */
  asgName: text.optional(),
  launchHook: text.optional(),
  terminationHook: text.optional(),
  /** With the Kubernetes launcher: the namespace jobs run in (required there). */
  k8sNamespace: text.optional(),
  /** A kubeconfig file; in-cluster or ~/.kube/config by default. */
  k8sKubeconfig: text.optional(),
  /** Seconds a job pod may stay unscheduled. */
  k8sPendingTimeoutSeconds: whole(1, "must be a whole number of seconds > 0").optional(),
  /** The label GPU job pods select nodes by. */
  k8sGpuNodeLabel: nodeLabel.optional(),
});

/** The agent's environment, decoded. */
export type AgentEnv = z.output<typeof agentEnvSchema>;

/** The variable of each field. */
export const AGENT_ENV_NAMES: { readonly [K in keyof AgentEnv]-?: string } = {
  tier: "CRUCIBLE_TIER",
  launcher: "CRUCIBLE_LAUNCHER",
  bucket: "CRUCIBLE_BUCKET",
  workspacesPrefix: "CRUCIBLE_WORKSPACES_PREFIX",
  datasetsBucket: "CRUCIBLE_DATASETS_BUCKET",
  packageIndex: "CRUCIBLE_PACKAGE_INDEX",
  packageAllow: "CRUCIBLE_PACKAGE_ALLOW",
  packageDeny: "CRUCIBLE_PACKAGE_DENY",
  endpoint: "CRUCIBLE_ENDPOINT",
  region: "AWS_REGION",
  queues: "CRUCIBLE_QUEUES",
  scheduling: "CRUCIBLE_SCHEDULING",
  senders: SENDERS_ENV,
  quotaGiB: "CRUCIBLE_QUOTA_GIB",
  images: "CRUCIBLE_IMAGES",
  concurrency: "CRUCIBLE_CONCURRENCY",
  heartbeatSeconds: "CRUCIBLE_HEARTBEAT_SECONDS",
  visibilityTimeoutSeconds: "CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS",
  graceSeconds: "CRUCIBLE_GRACE_SECONDS",
  checkpointSeconds: "CRUCIBLE_CHECKPOINT_SECONDS",
  workspaceMiB: "CRUCIBLE_WORKSPACE_MIB",
  logCapMiB: "CRUCIBLE_LOG_CAP_MIB",
  asgName: "CRUCIBLE_ASG_NAME",
  launchHook: "CRUCIBLE_LAUNCH_HOOK",
  terminationHook: "CRUCIBLE_TERMINATION_HOOK",
  k8sNamespace: "CRUCIBLE_K8S_NAMESPACE",
  k8sKubeconfig: "CRUCIBLE_K8S_KUBECONFIG",
  k8sPendingTimeoutSeconds: "CRUCIBLE_K8S_PENDING_TIMEOUT_SECONDS",
  k8sGpuNodeLabel: "CRUCIBLE_K8S_GPU_NODE_LABEL",
};

type Field = keyof AgentEnv;
const FIELDS = Object.keys(AGENT_ENV_NAMES) as Field[];
const JSON_FIELDS: ReadonlySet<Field> = new Set([
  "queues",
  "scheduling",
  "senders",
  "images",
  "packageAllow",
  "packageDeny",
]);

/** A variable the agent cannot use: the message names it, its value and what is allowed. */
export class AgentEnvError extends Error {
  override readonly name = "AgentEnvError";
}

/** A value for an error message: whole when short, else its start. */
const shown = (value: string): string => (value.length > 80 ? `${value.slice(0, 80)}...` : value);

/** Reads the agent's environment; a variable that is set (not empty) but malformed throws {@link AgentEnvError}. */
export function readAgentEnv(env: Readonly<Record<string, string | undefined>> = process.env): AgentEnv {
  const input: Partial<Record<Field, string>> = {};
  for (const field of FIELDS) {
    const value = env[AGENT_ENV_NAMES[field]];
    if (value !== undefined && value !== "") input[field] = value;
  }
  const parsed = agentEnvSchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const [field, ...at] = issue.path as [Field, ...PropertyKey[]];
    const key = [AGENT_ENV_NAMES[field], ...at.map(String)].join(".");
    throw new AgentEnvError(`${key} ${issue.message}, got "${shown(input[field] ?? "")}"`);
  }
  if (parsed.data.asgName !== undefined && (!parsed.data.launchHook || !parsed.data.terminationHook)) {
    throw new AgentEnvError(
      `${AGENT_ENV_NAMES.asgName} is set (${parsed.data.asgName}), so ${AGENT_ENV_NAMES.launchHook} and ${AGENT_ENV_NAMES.terminationHook} must name its lifecycle hooks`,
    );
  }
  return parsed.data;
}

/** What a writer may set: each field's decoded value (the scheduling policy as parsed, a label as key and value). */
export type AgentEnvValues = { readonly [K in Field]?: AgentEnv[K] };

/**
 * The environment of `values`, variable by variable in the order of `values`' fields (the writers keep
 * theirs). Each value is read back before it is returned, so a writer cannot hand an agent a variable
 * it would refuse.
 */
export function toAgentEnv(values: AgentEnvValues): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [field, value] of Object.entries(values) as [Field, AgentEnv[Field]][]) {
    if (value === undefined) continue;
    const name = AGENT_ENV_NAMES[field];
    if (name === undefined) throw new AgentEnvError(`${field} is not a variable of the agent's environment`);
    env[name] = encode(field, value);
  }
  readAgentEnv(env);
  return env;
}

function encode(field: Field, value: NonNullable<AgentEnv[Field]>): string {
  if (JSON_FIELDS.has(field)) return JSON.stringify(value);
  if (field === "k8sGpuNodeLabel") {
    const label = value as NodeLabel;
    return `${label.key}=${label.value}`;
  }
  // Every other field is text or a whole number.
  return typeof value === "number" ? String(value) : (value as string);
}
