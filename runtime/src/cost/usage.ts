import { readdir, readFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { z } from "zod";
import type { LedgerEntry } from "./ledger";
import { LEDGER_PARTITION_PATH, ledgerEntrySchema, monthStart } from "./ledger";
import type { SchedulingPolicy } from "../catalog/scheduling";

/**
 * Showback from the cost ledger: which entries fall in a period, their totals by user, project, tier or
 * priority, and those totals as a table, Markdown, CSV or JSON. `crucible usage` and the cost report
 * both use it.
 */

export const USAGE_KEYS = ["user", "project", "tier", "priority"] as const;
export type UsageKey = (typeof USAGE_KEYS)[number];
export const USAGE_PERIODS = ["day", "week", "month"] as const;
export type UsagePeriod = (typeof USAGE_PERIODS)[number];
export const USAGE_FORMATS = ["table", "md", "csv", "json"] as const;
export type UsageFormat = (typeof USAGE_FORMATS)[number];

const DAY_MS = 86_400_000;
/** The ledger rounds each attempt to a hundredth of a cent; sums are kept in those units so they add up. */
const UNITS_PER_USD = 10_000;

/** The instants whose ledger entries count: `from` ≤ endedAt < `to` (no `to`: up to now and beyond). */
export interface UsageWindow {
  readonly from: Date;
  readonly to?: Date;
  readonly label: string;
}

const ymd = (at: Date): string => at.toISOString().slice(0, 10);

/** The current UTC day, ISO week (Monday to Sunday) or calendar month (as AWS Budgets count it). */
export function periodWindow(period: UsagePeriod, now: Date): UsageWindow {
  const midnight = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  if (period === "day") {
    return { from: new Date(midnight), to: new Date(midnight + DAY_MS), label: `day ${ymd(now)} (UTC)` };
  }
  if (period === "week") {
    const monday = midnight - ((now.getUTCDay() + 6) % 7) * DAY_MS;
    // The ISO week belongs to the year of its Thursday, and week 1 is the one holding January 4th.
    const thursday = new Date(monday + 3 * DAY_MS);
    const week =
      Math.floor((thursday.getTime() - Date.UTC(thursday.getUTCFullYear(), 0, 1)) / (7 * DAY_MS)) + 1;
    const sunday = new Date(monday + 6 * DAY_MS);
    return {
      from: new Date(monday),
      to: new Date(monday + 7 * DAY_MS),
      label: `week ${thursday.getUTCFullYear()}-W${String(week).padStart(2, "0")} (${ymd(new Date(monday))} to ${ymd(sunday)}, UTC)`,
    };
  }
  const from = monthStart(now);
  return {
    from,
    to: new Date(Date.UTC(from.getUTCFullYear(), from.getUTCMonth() + 1, 1)),
    label: `month ${ymd(from).slice(0, 7)} (UTC)`,
  };
}

/** From `since` on, with no end. */
export function sinceWindow(since: Date): UsageWindow {
  return { from: since, label: `since ${since.toISOString()}` };
}

/** When the attempt was charged: at its end. A malformed timestamp fails loudly, never drops spend. */
export function endedAt(entry: LedgerEntry): number {
  const at = Date.parse(entry.endedAt);
  if (Number.isNaN(at))
    throw new Error(
      `ledger entry of job ${entry.jobId} attempt ${entry.attempt} has endedAt "${entry.endedAt}", which is not a timestamp`,
    );
  return at;
}

export function inWindow(entry: LedgerEntry, window: UsageWindow): boolean {
  const at = endedAt(entry);
  return at >= window.from.getTime() && (window.to === undefined || at < window.to.getTime());
}

/** Dollars as whole ten-thousandths; exact for the ledger's amounts, which are rounded to them. */
export const usdUnits = (usd: number): number => Math.round(usd * UNITS_PER_USD);

/** Ten-thousandths of a dollar as dollars with 4 decimals, written from the integer so nothing rounds. */
export function formatUnits(units: number): string {
  const sign = units < 0 ? "-" : "";
  const abs = Math.abs(units);
  return `${sign}${Math.floor(abs / UNITS_PER_USD)}.${String(abs % UNITS_PER_USD).padStart(4, "0")}`;
}

/** Dollars as 4 decimals; exact for amounts in whole ten-thousandths, as every usage figure is. */
export const formatUsd = (usd: number): string => formatUnits(usdUnits(usd));

export interface UsageTotals {
  readonly attempts: number;
  /** Distinct jobs (project, user and job id). */
  readonly jobs: number;
  readonly seconds: number;
  readonly hours: number;
  readonly costUsd: number;
}

export interface UsageRow extends UsageTotals {
  readonly key: string;
  /** This group's share of the total cost, in percent with one decimal. */
  readonly sharePercent: number;
}

/** How much of a monthly budget the month's entries used. */
export interface BudgetUse {
  readonly kind: "user" | "project";
  readonly name: string;
  readonly limitUsd: number;
  readonly usedUsd: number;
  /** Used as a percentage of the limit, one decimal. */
  readonly percent: number;
}

export interface UsageReport {
  readonly by: UsageKey;
  readonly window: { readonly from: string; readonly to: string | null; readonly label: string };
  /** Most expensive first; ties by key. */
  readonly rows: readonly UsageRow[];
  readonly total: UsageTotals;
  /** Budgets of the grouped kind, when the window is a calendar month; otherwise empty. */
  readonly budgets: readonly BudgetUse[];
  /** The entries counted, oldest first: the report is also a ledger export (see {@link readLedgerDir}). */
  readonly entries: readonly LedgerEntry[];
}

interface Sums {
  attempts: number;
  jobs: Set<string>;
  millis: number;
  units: number;
}

const jobOf = (e: LedgerEntry): string => `${e.project}/${e.user}/${e.jobId}`;

function totalsOf(sums: Sums): UsageTotals {
  return {
    attempts: sums.attempts,
    jobs: sums.jobs.size,
    seconds: sums.millis / 1000,
    hours: Math.round(sums.millis / 36) / 100_000,
    costUsd: sums.units / UNITS_PER_USD,
  };
}

const percentOf = (part: number, whole: number): number =>
  whole === 0 ? 0 : Math.round((part * 1000) / whole) / 10;

/** `usedUsd` as a percentage of `limitUsd`, one decimal, as budgets are reported. */
export const usedPercent = (usedUsd: number, limitUsd: number): number =>
  percentOf(usdUnits(usedUsd), usdUnits(limitUsd));

/**
 * Totals of the entries in `window` by `by`. Money and time are summed as integers (ten-thousandths of
 * a dollar, milliseconds), so the groups add up to the total exactly. `budgets` (name → monthly USD)
 * are reported against the groups' spend.
 */
export function buildUsage(
  entries: readonly LedgerEntry[],
  options: { by: UsageKey; window: UsageWindow; budgets?: Readonly<Record<string, number>> },
): UsageReport {
  const { by, window } = options;
  const counted = entries.filter((e) => inWindow(e, window)).sort((a, b) => endedAt(a) - endedAt(b));
  const empty = (): Sums => ({ attempts: 0, jobs: new Set(), millis: 0, units: 0 });
  const total = empty();
  const groups = new Map<string, Sums>();
  for (const entry of counted) {
    const key = entry[by];
    const group = groups.get(key) ?? empty();
    groups.set(key, group);
    for (const sums of [group, total]) {
      sums.attempts += 1;
      sums.jobs.add(jobOf(entry));
      sums.millis += Math.round(entry.seconds * 1000);
      sums.units += usdUnits(entry.costUsd);
    }
  }
  const rows = [...groups]
    .sort(([ka, a], [kb, b]) => b.units - a.units || (ka < kb ? -1 : ka > kb ? 1 : 0))
    .map(([key, sums]) => ({ key, ...totalsOf(sums), sharePercent: percentOf(sums.units, total.units) }));
  const budgets =
    by === "user" || by === "project"
      ? Object.entries(options.budgets ?? {})
          .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
          .map(([name, limitUsd]) => {
            const used = groups.get(name)?.units ?? 0;
            return {
              kind: by,
              name,
              limitUsd,
              usedUsd: used / UNITS_PER_USD,
              percent: usedPercent(used / UNITS_PER_USD, limitUsd),
            };
          })
      : [];
  return {
    by,
    window: { from: window.from.toISOString(), to: window.to?.toISOString() ?? null, label: window.label },
    rows,
    total: totalsOf(total),
    budgets,
    entries: counted,
  };
}

/**
 * The monthly budgets a usage report can be measured against: only over a calendar month (budgets are
 * monthly), only for the kind grouped by, and only when no filter on the other kind leaves a group's
 * spend partial (a user's budget covers all their projects).
 */
export function budgetsFor(
  policy: SchedulingPolicy,
  scope: { by: UsageKey; month: boolean; project?: string; user?: string },
): Record<string, number> | undefined {
  if (!scope.month) return undefined;
  const pick = (all: Record<string, number>, only: string | undefined) =>
    only === undefined ? all : Object.fromEntries(Object.entries(all).filter(([name]) => name === only));
  if (scope.by === "user" && scope.project === undefined) return pick(policy.budgets.users, scope.user);
  if (scope.by === "project" && scope.user === undefined) return pick(policy.budgets.projects, scope.project);
  return undefined;
}

/** One CSV field, quoted per RFC 4180 when it holds a quote, a comma or a line break. */
export function csvField(value: string | number): string {
  const text = String(value);
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** CSV records, one a line (LF, which RFC 4180 readers accept), with the last one terminated too. */
export function toCsv(rows: readonly (readonly (string | number)[])[]): string {
  return rows.map((row) => `${row.map(csvField).join(",")}\n`).join("");
}

const HEADINGS = ["attempts", "jobs", "hours", "cost (USD)", "share"] as const;

function cells(t: UsageTotals, share: string): string[] {
  return [String(t.attempts), String(t.jobs), t.hours.toFixed(2), formatUsd(t.costUsd), share];
}

/** Markdown would read a `|` in a name as a column break. */
const mdCell = (text: string): string => text.replace(/\|/g, "\\|").replace(/[\r\n]+/g, " ");

/** The groups and their total as a Markdown table (the cost report embeds it). */
export function usageMarkdownTable(report: Pick<UsageReport, "by" | "rows" | "total">): string {
  const line = (cols: readonly string[]) => `| ${cols.join(" | ")} |`;
  return [
    line([report.by, ...HEADINGS]),
    line(["---", ...HEADINGS.map(() => "---:")]),
    ...report.rows.map((r) => line([mdCell(r.key), ...cells(r, `${r.sharePercent.toFixed(1)} %`)])),
    line(["**total**", ...cells(report.total, "100.0 %").map((c) => `**${c}**`)]),
  ].join("\n");
}

function budgetLine(report: UsageReport): string | undefined {
  if (report.budgets.length === 0) return undefined;
  const uses = report.budgets.map(
    (b) =>
      `${b.kind} ${b.name} $${formatUsd(b.usedUsd)} of $${b.limitUsd.toFixed(2)} (${b.percent.toFixed(1)} %)`,
  );
  return `budgets used this month: ${uses.join(", ")}`;
}

function table(report: UsageReport): string {
  const rows = [
    [report.by.toUpperCase(), ...HEADINGS.map((h) => h.toUpperCase())],
    ...report.rows.map((r) => [r.key, ...cells(r, `${r.sharePercent.toFixed(1)} %`)]),
    ["TOTAL", ...cells(report.total, "100.0 %")],
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  // Names read left to right; figures line up on their last digit.
  return rows
    .map((row) =>
      row.map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join("  "),
    )
    .join("\n");
}

function csv(report: UsageReport): string {
  // No totals row: spreadsheets sum the rows, and the rows already add up to the total exactly.
  return toCsv([
    [report.by, "attempts", "jobs", "seconds", "hours", "cost_usd", "share_percent"],
    ...report.rows.map((r) => [
      r.key,
      r.attempts,
      r.jobs,
      r.seconds,
      r.hours.toFixed(4),
      formatUsd(r.costUsd),
      r.sharePercent.toFixed(1),
    ]),
  ]);
}

export function renderUsage(report: UsageReport, format: UsageFormat): string {
  if (format === "json") return `${JSON.stringify(report, null, 2)}\n`;
  if (format === "csv") return csv(report);
  const title = `usage by ${report.by}, ${report.window.label}`;
  if (report.rows.length === 0) return `${title}: no ledger entries\n`;
  const budgets = budgetLine(report);
  const body =
    format === "md"
      ? [`## ${title}`, "", usageMarkdownTable(report), ...(budgets ? ["", budgets] : [])]
      : [title, "", table(report), ...(budgets ? ["", budgets] : [])];
  return `${body.join("\n")}\n`;
}

/** The object `crucible usage --format json` prints, as far as a ledger export needs it. */
const usageExportSchema = z.object({ entries: z.array(ledgerEntrySchema) });

/**
 * Reads a ledger from a local directory, recursively:
 * - `…/ledger/<attempt>.json`: one entry, as the agent writes it (`aws s3 sync s3://<bucket>/workspaces/
 *   <dir>` copies them with their job's path);
 * - any other `*.json` holding an object with `entries`: a `crucible usage --format json` export.
 * Other files (a synced job's `spec.json`, `state.json`…) are ignored. An entry found twice (an export
 * beside a sync) counts once. A file that does not parse fails with its path and the field at fault.
 */
export async function readLedgerDir(dir: string): Promise<LedgerEntry[]> {
  const files = (await readdir(dir, { recursive: true, withFileTypes: true }))
    .filter((f) => f.isFile() && f.name.endsWith(".json"))
    .map((f) => join(f.parentPath, f.name))
    .sort();
  const entries = new Map<string, LedgerEntry>();
  for (const file of files) {
    const path = relative(dir, file).split(sep).join("/");
    // A job's copy (`…/jobs/<id>/ledger/<n>.json`) or finance's (`[ledger/]<yyyy-mm>/<project>/<user>/<id>/<n>.json`).
    const isEntry = /(^|\/)ledger\/\d+\.json$/.test(path) || LEDGER_PARTITION_PATH.test(path);
    let value: unknown;
    try {
      value = JSON.parse(await readFile(file, "utf8"));
    } catch {
      if (isEntry) throw new Error(`ledger ${file}: not JSON`);
      continue;
    }
    if (!isEntry && (typeof value !== "object" || value === null || !("entries" in value))) continue;
    const parsed = (
      isEntry
        ? ledgerEntrySchema.transform((entry) => [entry])
        : usageExportSchema.transform((e) => e.entries)
    ).safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0]!;
      throw new Error(`ledger ${file}: ${issue.path.join(".") || "(root)"} ${issue.message}`);
    }
    for (const entry of parsed.data) entries.set(`${jobOf(entry)}/${entry.attempt}`, entry);
  }
  return [...entries.values()];
}
