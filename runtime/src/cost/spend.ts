import type { CloudWatchClient } from "@aws-sdk/client-cloudwatch";
import { PutMetricDataCommand } from "@aws-sdk/client-cloudwatch";
import { SPEND_METRICS } from "../job/contract";
import type { JobAddress, JobStore } from "../store/job-store";
import type { LedgerEntry } from "./ledger";
import { monthStart } from "./ledger";
import type { Logger } from "../logger";
import type { SchedulingPolicy } from "../catalog/scheduling";

/** One owner's monthly budget and what the ledger says is spent of it this month. */
export interface BudgetStanding {
  readonly kind: "user" | "project";
  readonly name: string;
  readonly limitUsd: number;
  readonly spentUsd: number;
}

/** How long a month's spend read from the ledger is reused before it is read again. */
const DEFAULT_CACHE_SECONDS = 30;

/**
 * Month-to-date spend of the owners that have a budget (`crucible:budgets.users|projects`), summed from
 * the ledger. Owners without a budget are never read: nothing is limited or alarmed for them. The agent
 * asks before starting a job and while it runs; `crucible submit` asks before queueing.
 */
export class SpendTracker {
  private readonly cache = new Map<string, { at: number; usd: number }>();
  /** This month's entries already read, by key: a read fetches only what was written since. */
  private readonly seen = new Map<string, LedgerEntry>();
  private seenSince: Date | undefined;

  constructor(
    private readonly store: JobStore,
    private readonly budgets: SchedulingPolicy["budgets"],
    private readonly cacheSeconds = DEFAULT_CACHE_SECONDS,
    private readonly now: () => Date = () => new Date(),
  ) {}

  /** The budgets that apply to the job's owner (its user's, its project's), with this month's spend. */
  async standings(address: JobAddress): Promise<BudgetStanding[]> {
    const standings: BudgetStanding[] = [];
    const userLimit = this.budgets.users[address.user];
    if (userLimit !== undefined)
      standings.push({
        kind: "user",
        name: address.user,
        limitUsd: userLimit,
        spentUsd: await this.spent({ project: undefined, user: address.user }),
      });
    const projectLimit = this.budgets.projects[address.project];
    if (projectLimit !== undefined)
      standings.push({
        kind: "project",
        name: address.project,
        limitUsd: projectLimit,
        spentUsd: await this.spent({ project: address.project }),
      });
    return standings;
  }

  /** Counts an entry just written without waiting for the next read of the ledger. */
  recorded(entry: LedgerEntry): void {
    for (const key of [userKey(entry.user), projectKey(entry.project)]) {
      const cached = this.cache.get(key);
      if (cached) cached.usd += entry.costUsd;
    }
  }

  /**
   * This month's spend from its ledger partition: a user's over every project they work in, a project's
   * under its prefix.
   */
  private async spent(scope: { project?: string; user?: string }): Promise<number> {
    const key = scope.user ? userKey(scope.user) : projectKey(scope.project ?? "");
    const cached = this.cache.get(key);
    const nowMs = this.now().getTime();
    if (cached && nowMs - cached.at < this.cacheSeconds * 1000) return cached.usd;
    const since = monthStart(this.now());
    if (this.seenSince?.getTime() !== since.getTime()) {
      // A new month: last month's entries are never read again.
      this.seen.clear();
      this.seenSince = since;
    }
    const entries = await this.store.ledgerEntries({ ...scope, since, until: this.now() }, this.seen);
    const usd = entries.reduce((sum, e) => sum + e.costUsd, 0);
    this.cache.set(key, { at: nowMs, usd });
    return usd;
  }
}

const userKey = (user: string): string => `user:${user}`;
const projectKey = (project: string): string => `project:${project}`;

/** The first standing that `extraUsd` more would take past its limit, if any. */
export function overBudget(
  standings: readonly BudgetStanding[],
  extraUsd: number,
): BudgetStanding | undefined {
  return standings.find((s) => s.spentUsd + extraUsd > s.limitUsd);
}

export function describeStanding(s: BudgetStanding): string {
  return `${s.kind} ${s.name} has spent $${s.spentUsd.toFixed(2)} of a $${s.limitUsd.toFixed(2)} monthly budget ($${Math.max(0, s.limitUsd - s.spentUsd).toFixed(2)} left)`;
}

/** Publishes owners' month-to-date spend as {@link SPEND_METRICS}, which the stack's budget alarms watch. */
export function cloudWatchSpend(
  cloudwatch: CloudWatchClient,
  logger: Logger,
): (standings: readonly BudgetStanding[]) => Promise<void> {
  return async (standings) => {
    await cloudwatch.send(
      new PutMetricDataCommand({
        Namespace: SPEND_METRICS.namespace,
        MetricData: standings.map((s) => ({
          MetricName: SPEND_METRICS[s.kind].metricName,
          Dimensions: [{ Name: SPEND_METRICS[s.kind].dimension, Value: s.name }],
          Unit: "None",
          Value: Math.round(s.spentUsd * 10_000) / 10_000,
        })),
      }),
    );
    logger.debug({ standings }, "month-to-date spend published");
  };
}
