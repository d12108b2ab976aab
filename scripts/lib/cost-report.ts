import type { BudgetSummary } from "../../infra/budgets";
import type { FixedCostItem, TierHourlyCost } from "../../infra/finance";
import { usd } from "../../infra/prices";
import { HOURS_PER_MONTH, TIER_NAMES, isTierName, type TierName } from "../../runtime/src/catalog";
import type { LedgerEntry } from "../../runtime/src/cost/ledger";
import {
  buildUsage,
  formatUsd,
  periodWindow,
  toCsv,
  usageMarkdownTable,
  usedPercent,
  type UsageReport,
} from "../../runtime/src/cost/usage";
import type { Plan } from "./mock-engine";
import { cumulativeDailySpend, daysInMonth, type SpendChart } from "./spend-chart";

/**
 * The cost report finance reads without Pulumi: a stack's budgets, tier prices, fixed costs and an
 * estimate of a month, built from the outputs of the offline plan (what `pulumi up` would export).
 */

export const FORMATS = ["md", "csv", "json"] as const;
export type Format = (typeof FORMATS)[number];

type Budget = Omit<BudgetSummary, "topicArn"> & { readonly topicArn: string };

export interface EstimateLine {
  readonly item: string;
  readonly detail: string;
  readonly monthlyUsd: number;
}

/** What the ledger says the stack spent in one calendar month (UTC). */
export interface LedgerUsage {
  /** Where the entries came from: a directory or the bucket. */
  readonly source: string;
  /** `YYYY-MM`. */
  readonly month: string;
  readonly byTier: Omit<UsageReport, "entries">;
  readonly byProject: Omit<UsageReport, "entries">;
  readonly byUser: Omit<UsageReport, "entries">;
  /** Each budget of the stack against the month's spend in its scope. */
  readonly budgets: readonly {
    readonly name: string;
    readonly scope: Budget["scope"];
    readonly limitUsd: number;
    readonly usedUsd: number;
    readonly percent: number;
  }[];
  /** Cumulative spend at the end of each day of the month so far (the chart's line). */
  readonly cumulativeDailyUsd: readonly number[];
}

/** A ledger to report on: its entries, where they came from, the month and the time now. */
export interface LedgerInput {
  readonly source: string;
  readonly entries: readonly LedgerEntry[];
  /** The month's first instant (UTC). */
  readonly month: Date;
  readonly now: Date;
}

export interface CostReport {
  readonly stack: string;
  readonly region: string;
  readonly budgets: readonly Budget[];
  readonly tiers: readonly ({ readonly tier: TierName } & TierHourlyCost)[];
  readonly fixed: readonly FixedCostItem[];
  readonly estimate: {
    readonly lines: readonly EstimateLine[];
    readonly totalUsd: number;
    /** The estimate as a share of the environment's monthly budget, in percent. */
    readonly percentOfBudget: number;
  };
  /** Present only when a ledger was given. */
  readonly usage?: LedgerUsage;
}

/** Parses `--month 2026-03`; the current month or an earlier one. */
export function parseMonth(text: string, now: Date): Date {
  const match = /^(\d{4})-(0[1-9]|1[0-2])$/.exec(text);
  if (!match) throw new Error(`--month must be a month such as 2026-03, got "${text}"`);
  const month = new Date(Date.UTC(Number(match[1]), Number(match[2]) - 1, 1));
  if (month.getTime() > now.getTime())
    throw new Error(
      `--month must not be in the future (now ${now.toISOString().slice(0, 7)}), got "${text}"`,
    );
  return month;
}

/** Parses `--gpu-hours gpu-small=200,gpu-medium=50`: job hours per month for tiers the stack enables. */
export function parseGpuHours(text: string, enabled: readonly string[]): Map<TierName, number> {
  const hours = new Map<TierName, number>();
  for (const entry of text.split(",").map((e) => e.trim())) {
    const match = /^([^=\s]+)\s*=\s*(\S+)$/.exec(entry);
    if (!match) throw new Error(`--gpu-hours: "${entry}" is not tier=hours, such as gpu-small=200`);
    const [, tier, value] = match as unknown as [string, string, string];
    if (!isTierName(tier))
      throw new Error(`--gpu-hours: unknown tier "${tier}"; tiers are ${TIER_NAMES.join(", ")}`);
    if (!enabled.includes(tier)) {
      throw new Error(
        `--gpu-hours: tier ${tier} is not enabled in this stack; enabled: ${enabled.join(", ")}`,
      );
    }
    const n = Number(value);
    if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(n)) {
      throw new Error(`--gpu-hours: hours for ${tier} must be a non-negative number, got "${value}"`);
    }
    if (hours.has(tier)) throw new Error(`--gpu-hours: tier ${tier} is given twice`);
    hours.set(tier, n);
  }
  return hours;
}

function required<T>(plan: Plan, key: string): T {
  const value = plan.outputs[key];
  if (value === undefined) {
    throw new Error(
      `stack ${plan.stack} exports no ${key}; the cost report needs infra/index.ts to export it`,
    );
  }
  return value as T;
}

const money = (x: number, digits = 2) =>
  `$${x.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits })}`;
const rate = (x: number) => `$${x.toFixed(4)}`;
const unitPrice = (f: FixedCostItem) =>
  f.unit === "hour" ? `${rate(f.unitPriceUsd)}/h` : `${money(f.unitPriceUsd)}/month`;

/** The month's spend from the ledger, by tier and project, against the stack's budgets. */
function ledgerUsage(ledger: LedgerInput, budgets: readonly Budget[]): LedgerUsage {
  const window = periodWindow("month", ledger.month);
  const withoutEntries = ({ entries: _entries, ...rest }: UsageReport) => rest;
  const byTier = withoutEntries(buildUsage(ledger.entries, { by: "tier", window }));
  const byProject = withoutEntries(buildUsage(ledger.entries, { by: "project", window }));
  const byUser = withoutEntries(buildUsage(ledger.entries, { by: "user", window }));
  const spentBy = (usage: typeof byTier, key: string) => usage.rows.find((r) => r.key === key)?.costUsd ?? 0;
  // Scopes as the stack names them: the environment, a tier, `user:<name>` or `project:<name>`.
  const inScope = (scope: string): number => {
    if (scope === "environment") return byTier.total.costUsd;
    const [kind, owner] = scope.split(":", 2) as [string, string | undefined];
    if (owner === undefined) return spentBy(byTier, scope);
    return spentBy(kind === "user" ? byUser : byProject, owner);
  };
  const thisMonth = ledger.now.getTime() < (window.to?.getTime() ?? 0);
  const days = thisMonth ? ledger.now.getUTCDate() : daysInMonth(ledger.month);
  return {
    source: ledger.source,
    month: ledger.month.toISOString().slice(0, 7),
    byTier,
    byProject,
    byUser,
    budgets: budgets.map((b) => ({
      name: b.name,
      scope: b.scope,
      limitUsd: b.limitUsd,
      usedUsd: inScope(b.scope),
      percent: usedPercent(inScope(b.scope), b.limitUsd),
    })),
    cumulativeDailyUsd: cumulativeDailySpend(ledger.entries, window, days),
  };
}

/** The month's spend over the month, with the environment's budget, for `--chart`. */
export function spendChartOf(report: CostReport & { usage: LedgerUsage }): SpendChart {
  const budget = report.budgets.find((b) => b.scope === "environment");
  const month = new Date(`${report.usage.month}-01T00:00:00Z`);
  return {
    title: `Spend of stack ${report.stack}, ${month.toLocaleString("en-US", { month: "long", year: "numeric", timeZone: "UTC" })}`,
    month,
    cumulativeUsd: report.usage.cumulativeDailyUsd,
    ...(budget && { budgetUsd: budget.limitUsd }),
  };
}

/**
 * The report of a planned stack for the given job hours per tier (tiers not given run 0 hours), with
 * the month's spend when a ledger is given.
 */
export function buildReport(
  plan: Plan,
  gpuHours: ReadonlyMap<TierName, number>,
  ledger?: LedgerInput,
): CostReport {
  const budgets = required<Budget[]>(plan, "budgets");
  const hourly = required<Partial<Record<TierName, TierHourlyCost>>>(plan, "tierHourlyCost");
  const fixed = required<FixedCostItem[]>(plan, "fixedMonthlyCost");
  const tiers = TIER_NAMES.flatMap((tier) => (hourly[tier] ? [{ tier, ...hourly[tier] }] : []));

  const fixedTotal = usd(fixed.reduce((sum, f) => sum + f.monthlyUsd, 0));
  const lines: EstimateLine[] = [
    {
      item: "fixed costs",
      detail: fixed.map((f) => `${f.count} ${f.item}`).join(", "),
      monthlyUsd: fixedTotal,
    },
  ];
  for (const t of tiers) {
    if (t.minInstances > 0) {
      lines.push({
        item: `${t.tier} always-on`,
        detail: `${t.minInstances} × ${t.nodeInstanceType} × ${HOURS_PER_MONTH} h × ${rate(t.nodeExpectedHourlyUsd)}`,
        monthlyUsd: usd(t.minInstances * HOURS_PER_MONTH * t.nodeExpectedHourlyUsd),
      });
    }
    if (t.warmPool && t.warmPool.idleInstances > 0) {
      const w = t.warmPool;
      lines.push({
        item: `${t.tier} warm pool`,
        detail: `${w.idleInstances} × ${w.state} ${t.nodeInstanceType} × ${HOURS_PER_MONTH} h × ${rate(w.idleHourlyUsdEach)} (${w.state === "Running" ? "on-demand" : "root volume"})`,
        monthlyUsd: w.monthlyUsd,
      });
    }
    const h = gpuHours.get(t.tier);
    if (h !== undefined) {
      lines.push({
        item: `${t.tier} jobs`,
        detail: `${h} h × ${rate(t.expectedHourlyUsd)}`,
        monthlyUsd: usd(h * t.expectedHourlyUsd),
      });
    }
  }
  const totalUsd = usd(lines.reduce((sum, l) => sum + l.monthlyUsd, 0));
  const envBudget = budgets.find((b) => b.scope === "environment");
  return {
    stack: plan.stack,
    region: String(plan.outputs.region),
    budgets,
    tiers,
    fixed,
    estimate: {
      lines,
      totalUsd,
      percentOfBudget: envBudget ? Math.round((totalUsd / envBudget.limitUsd) * 1000) / 10 : 0,
    },
    ...(ledger && { usage: ledgerUsage(ledger, budgets) }),
  };
}

const thresholdsText = (b: Budget) => b.thresholds.map((t) => `${t.type} ${t.percent} %`).join(", ");
const subscribersText = (b: Budget) => ["SNS topic", ...b.emails].join(", ");

const table = (head: string[], rows: string[][]) =>
  [
    `| ${head.join(" | ")} |`,
    `| ${head.map(() => "---").join(" | ")} |`,
    ...rows.map((x) => `| ${x.join(" | ")} |`),
  ].join("\n");

function usageMarkdown(usage: LedgerUsage | undefined): string[] {
  if (!usage)
    return [
      "## Usage (cost ledger)",
      "",
      "No ledger given: pass `--ledger <dir>` or set `CRUCIBLE_BUCKET` to read the stack's bucket.",
      "",
    ];
  const { total } = usage.byTier;
  return [
    `## Usage (cost ledger, ${usage.month}, UTC)`,
    "",
    `From ${usage.source}: $${formatUsd(total.costUsd)} in ${usage.month} (attempts ${total.attempts}, jobs ${total.jobs}).`,
    "",
    usageMarkdownTable(usage.byTier),
    "",
    usageMarkdownTable(usage.byProject),
    "",
    usageMarkdownTable(usage.byUser),
    "",
    table(
      ["budget", "covers", "limit", "spent", "used"],
      usage.budgets.map((b) => [
        b.name,
        b.scope,
        money(b.limitUsd),
        `$${formatUsd(b.usedUsd)}`,
        `${b.percent} %`,
      ]),
    ),
    "",
  ];
}

function markdown(r: CostReport): string {
  return [
    `# Cost report: stack ${r.stack} (${r.region})`,
    "",
    "## Budgets (monthly, cost)",
    "",
    table(
      ["budget", "covers", "limit", "notifies at", "subscribers", "pauses the tier at 100 %"],
      r.budgets.map((b) => [
        b.name,
        b.scope,
        money(b.limitUsd),
        thresholdsText(b),
        subscribersText(b),
        b.enforced ? "yes" : "no",
      ]),
    ),
    "",
    `Topic: ${r.budgets[0]?.topicArn ?? "none"}`,
    "",
    "## Tier prices (per job hour)",
    "",
    table(
      ["tier", "on-demand", "spot", "on-demand share", "expected", "always-on instances"],
      r.tiers.map((t) => [
        t.tier,
        rate(t.onDemandHourlyUsd),
        rate(t.spotHourlyUsd),
        `${Math.round(t.onDemandShare * 100)} %`,
        rate(t.expectedHourlyUsd),
        t.minInstances ? `${t.minInstances} × ${t.nodeInstanceType}` : "0",
      ]),
    ),
    "",
    "## Fixed monthly costs (list prices)",
    "",
    table(
      ["item", "count", "unit price", "per month", "source"],
      r.fixed.map((f) => [f.item, String(f.count), unitPrice(f), money(f.monthlyUsd), f.source]),
    ),
    "",
    "## Estimate of a month",
    "",
    table(
      ["item", "how", "per month"],
      [
        ...r.estimate.lines.map((l) => [l.item, l.detail, money(l.monthlyUsd)]),
        [
          "**total**",
          `${r.estimate.percentOfBudget} % of the environment budget`,
          `**${money(r.estimate.totalUsd)}**`,
        ],
      ],
    ),
    "",
    "Always-on instances are billed all month; job hours on them are counted again, so the estimate errs high.",
    "",
    ...usageMarkdown(r.usage),
  ].join("\n");
}

function csv(r: CostReport): string {
  const rows: (string | number)[][] = [["section", "name", "detail", "amount_usd"]];
  for (const b of r.budgets)
    rows.push([
      "budget",
      b.name,
      `${b.scope}; ${thresholdsText(b)}; ${subscribersText(b)}`,
      b.limitUsd.toFixed(2),
    ]);
  for (const t of r.tiers) {
    rows.push(["tier-hourly", t.tier, "on-demand", t.onDemandHourlyUsd.toFixed(4)]);
    rows.push(["tier-hourly", t.tier, "spot", t.spotHourlyUsd.toFixed(4)]);
    rows.push([
      "tier-hourly",
      t.tier,
      `expected (${Math.round(t.onDemandShare * 100)} % on-demand)`,
      t.expectedHourlyUsd.toFixed(4),
    ]);
  }
  for (const f of r.fixed)
    rows.push(["fixed-monthly", f.item, `${f.count} × ${unitPrice(f)}`, f.monthlyUsd.toFixed(2)]);
  for (const l of r.estimate.lines) rows.push(["estimate", l.item, l.detail, l.monthlyUsd.toFixed(2)]);
  rows.push([
    "estimate",
    "total",
    `${r.estimate.percentOfBudget} % of the environment budget`,
    r.estimate.totalUsd.toFixed(2),
  ]);
  if (r.usage) {
    // Per tier, project and user, without totals: each section sums to the month's spend exactly.
    for (const [section, usage] of [
      ["usage-tier", r.usage.byTier],
      ["usage-project", r.usage.byProject],
      ["usage-user", r.usage.byUser],
    ] as const)
      for (const row of usage.rows)
        rows.push([
          section,
          row.key,
          `${r.usage.month}; attempts ${row.attempts}, jobs ${row.jobs}, hours ${row.hours.toFixed(2)}`,
          formatUsd(row.costUsd),
        ]);
    for (const b of r.usage.budgets)
      rows.push([
        "usage-budget",
        b.name,
        `${r.usage.month}; ${b.percent} % of ${b.limitUsd.toFixed(2)}`,
        formatUsd(b.usedUsd),
      ]);
  }
  return toCsv(rows);
}

export function renderReport(report: CostReport, format: Format): string {
  if (format === "json") return `${JSON.stringify(report, null, 2)}\n`;
  return format === "csv" ? csv(report) : markdown(report);
}
