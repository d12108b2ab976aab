import type { Command } from "commander";
import { z } from "zod";
import { jobAddressSchema } from "../../store/job-store";
import { parseSchedulingPolicy } from "../../catalog/scheduling";
import type { UsageFormat, UsageKey, UsageWindow } from "../../cost/usage";
import {
  budgetsFor,
  buildUsage,
  periodWindow,
  renderUsage,
  sinceWindow,
  USAGE_FORMATS,
  USAGE_KEYS,
  USAGE_PERIODS,
} from "../../cost/usage";
import { platformFromEnv } from "./platform-access";
import { cliLogger, UsageError } from "./shared";

/** What `crucible usage` was asked, validated: the grouping, the window, the owners kept, the format. */
export interface UsageRequest {
  readonly by: UsageKey;
  readonly window: UsageWindow;
  /** Whether the window is the current calendar month, which the monthly budgets cover. */
  readonly month: boolean;
  readonly project?: string;
  readonly user?: string;
  readonly format: UsageFormat;
}

const oneOf = <T extends readonly [string, ...string[]]>(flag: string, values: T) =>
  z.enum(values, {
    error: (issue) => `${flag} must be one of ${values.join(", ")}, got "${String(issue.input)}"`,
  });

const named = (flag: string, schema: z.ZodString) =>
  z.string().superRefine((value, ctx) => {
    const issue = schema.safeParse(value).error?.issues[0];
    if (issue) ctx.addIssue({ code: "custom", message: `${flag} ${issue.message}, got "${value}"` });
  });

const SINCE_FORMS = "a date such as 2026-03-01 (UTC) or a timestamp such as 2026-03-01T09:00:00Z";

const flagsSchema = z
  .object({
    by: oneOf("--by", USAGE_KEYS).default("user"),
    period: oneOf("--period", USAGE_PERIODS).optional(),
    since: z
      .union([z.iso.date(), z.iso.datetime({ offset: true })], {
        error: (issue) => `--since must be ${SINCE_FORMS}, got "${String(issue.input)}"`,
      })
      .optional(),
    project: named("--project", jobAddressSchema.shape.project).optional(),
    user: named("--user", jobAddressSchema.shape.user).optional(),
    format: oneOf("--format", USAGE_FORMATS).default("table"),
  })
  .refine((f) => f.since === undefined || f.period === undefined, {
    error:
      "--since and --period exclude each other: --since starts the window at a date, --period at the start of this day, week or month",
  });

/** Validates the flags against `now`; every message names the flag, what is allowed and what was given. */
export function parseUsageFlags(flags: Record<string, unknown>, now: Date): UsageRequest {
  const parsed = flagsSchema.safeParse(flags);
  if (!parsed.success) throw new UsageError(parsed.error.issues[0]!.message);
  const { by, period, since, project, user, format } = parsed.data;
  let window = periodWindow(period ?? "month", now);
  if (since !== undefined) {
    // A bare date is midnight UTC, as every period is.
    const from = new Date(/T/.test(since) ? since : `${since}T00:00:00Z`);
    if (from.getTime() > now.getTime())
      throw new UsageError(`--since must not be in the future (now ${now.toISOString()}), got "${since}"`);
    window = sinceWindow(from);
  }
  return {
    by,
    window,
    month: since === undefined && (period ?? "month") === "month",
    format,
    ...(project !== undefined && { project }),
    ...(user !== undefined && { user }),
  };
}

/** `crucible usage`: spend from the cost ledger in the stack's bucket, grouped, for a period. */
export function registerUsage(program: Command): void {
  program
    .command("usage")
    .description("spend from the cost ledger this day, week or month, by user, project, tier or priority")
    .option("--by <key>", `group by ${USAGE_KEYS.join(", ")} (default: user)`)
    .option(
      "--period <period>",
      "the current UTC day, ISO week (from Monday) or calendar month (default: month)",
    )
    .option("--since <date>", "from a date (YYYY-MM-DD, UTC) or timestamp until now, instead of --period")
    .option("--project <project>", "only this project's jobs")
    .option("--user <user>", "only this user's jobs")
    .option("--format <format>", `${USAGE_FORMATS.join(", ")} (default: table)`)
    .action(async (flags: Record<string, unknown>) => {
      const request = parseUsageFlags(flags, new Date());
      let policy;
      try {
        policy = parseSchedulingPolicy(process.env.CRUCIBLE_SCHEDULING);
      } catch (error) {
        throw new UsageError((error as Error).message);
      }
      const { store } = platformFromEnv(cliLogger());
      const { from, to } = request.window;
      const entries = await store.ledgerEntries({
        ...(request.project && { project: request.project }),
        ...(request.user && { user: request.user }),
        since: from,
        // The window's end is exclusive; the store's, the month holding it.
        ...(to && { until: new Date(to.getTime() - 1) }),
      });
      const budgets = budgetsFor(policy, request);
      const report = buildUsage(entries, {
        by: request.by,
        window: request.window,
        ...(budgets && { budgets }),
      });
      process.stdout.write(renderUsage(report, request.format));
    });
}
