import { z } from "zod";

/**
 * How a tier's nodes share their slots: priority classes with weighted polling, per-user and per-project
 * limits on running jobs, preemption of lower-priority work for a high-priority job that waited too long,
 * and monthly per-user / per-project budgets. One schema: the stack validates `crucible:scheduling` and
 * `crucible:budgets.users|projects` with it, and hands the parsed policy to every agent and to the CLI as
 * `CRUCIBLE_SCHEDULING` (JSON).
 */

/** Priority classes, highest first. Each tier has one queue per class. */
export const PRIORITIES = ["high", "normal", "low"] as const;
export type Priority = (typeof PRIORITIES)[number];
export const DEFAULT_PRIORITY: Priority = "normal";

export const isPriority = (value: string): value is Priority =>
  (PRIORITIES as readonly string[]).includes(value);

const whole = (min: number, max: number) =>
  z
    .number({ error: `must be a whole number from ${min} to ${max}` })
    .int({ error: `must be a whole number from ${min} to ${max}` })
    .min(min, { error: `must be a whole number from ${min} to ${max}` })
    .max(max, { error: `must be a whole number from ${min} to ${max}` });

const usd = z
  .number({ error: "must be a positive amount of US dollars" })
  .positive({ error: "must be a positive amount of US dollars" });

/** The same names a job's address allows (contract.ts jobAddressSchema). */
const userName = z.string().regex(/^[a-z0-9][a-z0-9._-]{0,62}$/, {
  error: "must be a user name: lowercase letters, digits, dots and dashes",
});
const projectName = z.string().regex(/^[a-z0-9][a-z0-9-]{0,62}$/, {
  error: "must be a project name: lowercase letters, digits and dashes",
});

export const DEFAULT_SCHEDULING = {
  /** Of every 10 receives, 6 look at `high` first, 3 at `normal`, 1 at `low`; empty classes fall through. */
  weights: { high: 6, normal: 3, low: 1 },
  fairShare: {
    /** Jobs one user may run at once in one tier, over all its nodes. */
    perUser: 8,
    /** Jobs one project may run at once in one tier. */
    perProject: 32,
    /** How long a job over its owner's share waits before it is offered again. */
    deferSeconds: 15,
  },
  preemption: {
    enabled: true,
    /** A high-priority job that has waited this long may stop lower-priority work. */
    afterSeconds: 600,
    /** What `--no-preempt` costs: the attempt's cost is multiplied by this in the ledger and estimates. */
    noPreemptPriceFactor: 1.5,
  },
  /** Monthly limits in USD, by user and by project. None by default. */
  budgets: { users: {}, projects: {} },
} as const;

export const schedulingPolicySchema = z.strictObject({
  weights: z
    .strictObject({ high: whole(1, 100), normal: whole(1, 100), low: whole(1, 100) })
    .default(DEFAULT_SCHEDULING.weights),
  fairShare: z
    .strictObject({
      perUser: whole(1, 10_000).default(DEFAULT_SCHEDULING.fairShare.perUser),
      perProject: whole(1, 100_000).default(DEFAULT_SCHEDULING.fairShare.perProject),
      // SQS's largest message delay.
      deferSeconds: whole(1, 900).default(DEFAULT_SCHEDULING.fairShare.deferSeconds),
    })
    .default(DEFAULT_SCHEDULING.fairShare),
  preemption: z
    .strictObject({
      enabled: z.boolean({ error: "must be true or false" }).default(DEFAULT_SCHEDULING.preemption.enabled),
      afterSeconds: whole(1, 7 * 86_400).default(DEFAULT_SCHEDULING.preemption.afterSeconds),
      noPreemptPriceFactor: z
        .number({ error: "must be a number from 1 to 10" })
        .min(1, { error: "must be a number from 1 to 10" })
        .max(10, { error: "must be a number from 1 to 10" })
        .default(DEFAULT_SCHEDULING.preemption.noPreemptPriceFactor),
    })
    .default(DEFAULT_SCHEDULING.preemption),
  budgets: z
    .strictObject({
      users: z.record(userName, usd).default({}),
      projects: z.record(projectName, usd).default({}),
    })
    .default({ users: {}, projects: {} }),
});

export type SchedulingPolicy = z.infer<typeof schedulingPolicySchema>;
export type SchedulingPolicyInput = z.input<typeof schedulingPolicySchema>;

/** Parses `CRUCIBLE_SCHEDULING` (or any JSON text of the policy); the error names the key at fault. */
export function parseSchedulingPolicy(
  text: string | undefined,
  source = "CRUCIBLE_SCHEDULING",
): SchedulingPolicy {
  let value: unknown = {};
  if (text !== undefined && text.trim() !== "") {
    try {
      value = JSON.parse(text);
    } catch {
      throw new Error(`${source} must be JSON such as {"weights": {"high": 6, "normal": 3, "low": 1}}`);
    }
  }
  const parsed = schedulingPolicySchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new Error(`${source}.${issue.path.join(".")} ${issue.message}`);
  }
  return parsed.data;
}
