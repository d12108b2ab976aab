import { z } from "zod";
import { REASONS } from "../job/contract";
import { PRIORITIES } from "../catalog/scheduling";
import { TIER_NAMES } from "../catalog/tiers";

/**
 * The cost ledger: one entry per attempt of a job, written by the agent that ran it in finance's partition
 * of the month (`ledger/<yyyy-mm>/<project>/<user>/<jobId>/<attempt>.json`), so showback needs no
 * database. Only agents write it. `crucible usage` and the cost report aggregate these entries.
 */
export const ledgerEntrySchema = z.object({
  jobId: z.string(),
  project: z.string(),
  user: z.string(),
  tier: z.enum(TIER_NAMES),
  priority: z.enum(PRIORITIES),
  /** 1 for the first run of the job, counting every attempt (handed back, preempted, finished). */
  attempt: z.number().int().positive(),
  node: z.string(),
  startedAt: z.string(),
  endedAt: z.string(),
  seconds: z.number().nonnegative(),
  /** How the attempt ended: `finished` wrote the job's envelope; the others put it back on the queue. */
  outcome: z.enum(["finished", "handed-back", "preempted"]),
  /** The envelope's status and reason for this attempt. */
  status: z.enum(["success", "error"]),
  reason: z.enum(REASONS).optional(),
  /** USD per hour the attempt was charged at, and where that price came from. */
  pricePerHourUsd: z.number().nonnegative(),
  priceSource: z.enum(["on-demand", "spot"]),
  /** The `--no-preempt` surcharge applied (1 when the job could be preempted). */
  priceFactor: z.number().min(1),
  costUsd: z.number().nonnegative(),
});
export type LedgerEntry = z.infer<typeof ledgerEntrySchema>;

/**
 * What the node a job runs on costs against the on-demand price the tier catalog charges: `factor` 1 on
 * an on-demand node, spot price ÷ on-demand price of the node's instance type on a spot node.
 */
export interface NodePrice {
  readonly source: LedgerEntry["priceSource"];
  readonly factor: number;
}

export const ON_DEMAND: NodePrice = { source: "on-demand", factor: 1 };

/** Cost of `seconds` at `pricePerHourUsd` × `priceFactor`, unrounded: what budget checks compare. */
export function costOf(seconds: number, pricePerHourUsd: number, priceFactor = 1): number {
  return (seconds / 3600) * pricePerHourUsd * priceFactor;
}

/** {@link costOf} rounded to a hundredth of a cent: what the ledger records, so sums are exact. */
export function attemptCost(seconds: number, pricePerHourUsd: number, priceFactor = 1): number {
  return Math.round(costOf(seconds, pricePerHourUsd, priceFactor) * 10_000) / 10_000;
}

/** The month partition an entry is filed under: the UTC month its attempt ended in, `2026-12`. */
export function ledgerMonth(at: Date): string {
  return at.toISOString().slice(0, 7);
}

/**
 * Where an entry is filed in finance's partitions, below LEDGER_PREFIX:
 * `<yyyy-mm>/<project>/<user>/<jobId>/<attempt>.json`, the month being the one its attempt ended in.
 */
export function ledgerPartitionPath(entry: LedgerEntry): string {
  return `${ledgerMonth(new Date(entry.endedAt))}/${entry.project}/${entry.user}/${entry.jobId}/${entry.attempt}.json`;
}

/**
 * A path ending in a partition path (a key, or a file of a synced copy), with its month, project and user
 * captured.
 */
export const LEDGER_PARTITION_PATH = /(?:^|\/)(\d{4}-\d{2})\/([^/]+)\/([^/]+)\/[^/]+\/\d+\.json$/;

/** Every month partition from the one holding `since` to the one holding `until`, oldest first. */
export function ledgerMonths(since: Date, until: Date): string[] {
  const months: string[] = [];
  for (
    let at = monthStart(since);
    at <= until;
    at = new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth() + 1, 1))
  )
    months.push(ledgerMonth(at));
  return months;
}

/** The first instant of the UTC calendar month holding `at`: budgets are monthly, as AWS Budgets are. */
export function monthStart(at: Date): Date {
  return new Date(Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), 1));
}
