// Where things live in the workspaces bucket: the runtime writes there, the program's lifecycle rules and
// IAM statements name the same prefixes, and the policy pack checks them. No dependencies here.

/** Job files: `workspaces/<project>/<user>/jobs/<jobId>/`; they expire after the workspaces' retention. */
export const WORKSPACES_PREFIX = "workspaces/";

/**
 * Finance's copy of the cost ledger, partitioned by the UTC month an attempt ended in
 * (`ledger/2026-12/<project>/<user>/<jobId>/<attempt>.json`). It sits outside `workspaces/`, whose
 * objects expire with the jobs (14 to 30 days), so last month's chargeback and this month's budgets are
 * read complete, and reading a month lists only that month.
 */
export const LEDGER_PREFIX = "ledger/";

/**
 * GiB one project's users may hold under `workspaces/` unless `crucible:workspaces.quotaGiBPerProject`
 * says otherwise; the stack hands its value to nodes as `CRUCIBLE_QUOTA_GIB` (agent-env.ts).
 */
export const DEFAULT_QUOTA_GIB_PER_PROJECT = 100;

/** The ledger is kept at least two calendar months, so last month's report is always complete. */
export const LEDGER_MIN_RETENTION_DAYS = 62;

/**
 * Budget pause markers, one object per paused tier (`_control/paused/<tier>`, JSON: reason, budget, at).
 * The budget enforcer writes one when a tier's budget is spent and `npm run budget-resume` removes it;
 * agents read their own tier's before each receive and take no job while it exists (budget-pause.ts).
 * At the bucket root, outside `workspaces/` (no submitter reaches it, no retention expires it).
 */
export const PAUSE_MARKER_PREFIX = "_control/paused/";

/** The pause marker of one tier. */
export const pauseMarkerKey = (tier: string): string => `${PAUSE_MARKER_PREFIX}${tier}`;

/**
 * The datasets bucket (a bucket of its own, which never expires). A researcher's pushed versions live in
 * their own prefix, `users/<project>/<user>/`, which only they (and agents, reading) reach: a manifest per
 * version at `<name>/v<version>.json` and the files by content at `blobs/<sha256>`, so a file shared by
 * several versions is stored once. The platform's pre-cached sets live the same way under `precached/`,
 * written by agents (from what their images hold) and readable by every submitter.
 */
export const DATASETS_USERS_PREFIX = "users/";
export const DATASETS_PRECACHED_PREFIX = "precached/";

/**
 * Built job environments, in the datasets bucket beside the datasets: `<key>/env.tar` (the installed
 * packages), `<key>/manifest.json` and `<key>/build.log`, keyed by the hash of what they are built from
 * (catalog/environments.ts). Only agents read and write them; a researcher reaches one only through a job.
 */
export const ENVIRONMENTS_PREFIX = "environments/";

/** The prefix of one user's datasets in the datasets bucket. */
export const userDatasetsPrefix = (project: string, user: string): string =>
  `${DATASETS_USERS_PREFIX}${project}/${user}/`;
