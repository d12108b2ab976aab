import {
  ENVIRONMENT_CACHE_FACTOR,
  TIER_NAMES,
  TIERS,
  getInstanceType,
  jobsPerNode,
  type TierName,
  type Priority,
  type SchedulingPolicy,
} from "@crucible/runtime/catalog";
import { DEFAULT_SUBMITTER_PRIORITIES, type CrucibleSettings, type TierConfig } from "./schema";

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

/** Root volume a node keeps for the OS, the Docker engine and the images it pulls (agent, job images, builder). */
export const NODE_SYSTEM_GIB = 30;

/** What a tier's node keeps on its root volume, in GiB, part by part: {@link nodeDiskGiB}. */
export interface NodeDisk {
  /** The OS, the Docker engine and the images ({@link NODE_SYSTEM_GIB}). */
  readonly system: number;
  /** One preallocated workspace volume per job the node runs at once (the tier's `workspaceMiB` each). */
  readonly workspaces: number;
  /** The dataset cache (the tier's `datasetCacheGiB`). */
  readonly datasets: number;
  /** The environment cache: `ENVIRONMENT_CACHE_FACTOR` × the tier's `environmentGiB`. */
  readonly environments: number;
  readonly total: number;
}

/**
 * The root volume a tier's node needs with these instance types: the system, a workspace volume for each job
 * it runs at once on the largest of them (as the agent counts its slots, `jobsPerNode`), the dataset cache
 * and the environment cache (runtime/src/catalog/tiers.ts).
 */
export function nodeDiskGiB(name: TierName, tier: Pick<TierConfig, "instanceTypes">): NodeDisk {
  const catalog = TIERS[name];
  const jobs = Math.max(...tier.instanceTypes.map((t) => jobsPerNode(catalog, getInstanceType(t).vcpus)));
  const workspaces = Math.ceil((jobs * catalog.workspaceMiB) / 1024);
  const datasets = catalog.datasetCacheGiB;
  const environments = ENVIRONMENT_CACHE_FACTOR * catalog.environmentGiB;
  return {
    system: NODE_SYSTEM_GIB,
    workspaces,
    datasets,
    environments,
    total: NODE_SYSTEM_GIB + workspaces + datasets + environments,
  };
}
