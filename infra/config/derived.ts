import { TIER_NAMES, type TierName, type Priority, type SchedulingPolicy } from "@crucible/runtime/catalog";
import { DEFAULT_SUBMITTER_PRIORITIES, type CrucibleSettings } from "./schema";

/**
 * What components read off a validated config beyond its own keys: settings joined from two sections
 * (the scheduling policy and its budgets) or defaulted from the rest of the config (a project's tiers are
 * the enabled ones), so every component and the agents see them the same way.
 */

/**
 * The policy every agent and the CLI read as `CRUCIBLE_SCHEDULING`: `crucible:scheduling` with the user
 * and project budgets of `crucible:budgets`.
 */
export function schedulingPolicy(config: CrucibleSettings): SchedulingPolicy {
  const { users, projects } = config.budgets;
  return { ...config.scheduling, budgets: { users, projects } };
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
