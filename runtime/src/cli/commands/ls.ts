import type { Command } from "commander";
import { z } from "zod";
import type { Priority } from "../../catalog/scheduling";
import type { IndexedJob } from "../../store/job-index";
import { JobIndex } from "../../store/job-index";
import type { JobState } from "../../store/job-store";
import { JOB_STATUSES, jobAddressSchema } from "../../store/job-store";
import { ownerOf, ownerOptions, platformFromEnv } from "./platform-access";
import { cliLogger, printJson, UsageError } from "./shared";

type JobStatus = JobState["status"];

/** What `crucible ls` was asked, validated. */
export interface LsRequest {
  readonly project: string;
  /** The caller's user, or the one `--user` names; unused with `allUsers`. */
  readonly user: string;
  readonly allUsers: boolean;
  readonly statuses?: ReadonlySet<JobStatus>;
  readonly since?: Date;
  readonly limit: number;
  readonly reindex: boolean;
  readonly json: boolean;
}

export interface LsFlags {
  readonly project?: string;
  readonly user?: string;
  readonly state: readonly string[];
  readonly since?: string;
  readonly allUsers?: boolean;
  readonly limit?: string;
  readonly reindex?: boolean;
  readonly json?: boolean;
}

export const DEFAULT_LIMIT = 50;

/** One listed job as `ls` prints it; `--json` prints these. */
export interface JobRow {
  readonly project: string;
  readonly user: string;
  readonly jobId: string;
  readonly name?: string;
  readonly status: JobStatus;
  readonly tier: string;
  readonly priority: Priority;
  readonly attempts: number;
  readonly submittedAt: string;
  readonly startedAt?: string;
  readonly finishedAt?: string;
  /** From its start to its end, or to now while it runs. */
  readonly durationSeconds?: number;
  /** Its finished attempts' cost, plus the running attempt's so far at its charged rate. */
  readonly costUsd?: number;
  /** Its latest reported `loss`, else the first metric it reported. */
  readonly metric?: { readonly name: string; readonly value: number };
  readonly note?: string;
}

const SINCE_FORMS =
  "a date (2026-03-01, UTC), a date and time (2026-03-01T09:00:00Z) or a duration back from now (30m, 24h, 7d, 2w)";
const DURATION = /^(\d+)([mhdw])$/;
const UNIT_MS = { m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/** `--since`: the time it names, checked against `now`. */
export function parseSince(value: string, now: Date): Date {
  const duration = DURATION.exec(value);
  let since: Date;
  if (duration && Number(duration[1]) > 0) {
    const back = Number(duration[1]) * UNIT_MS[duration[2] as keyof typeof UNIT_MS];
    // No job is older than the epoch: a longer duration means every job, not an invalid date.
    since = new Date(Math.max(0, now.getTime() - back));
  }
  // A bare date is midnight UTC, as `crucible usage` reads one.
  else if (z.iso.date().safeParse(value).success) since = new Date(`${value}T00:00:00Z`);
  else if (z.iso.datetime({ offset: true }).safeParse(value).success) since = new Date(value);
  else throw new UsageError(`--since must be ${SINCE_FORMS}, got "${value}"`);
  if (since.getTime() > now.getTime())
    throw new UsageError(`--since must not be in the future (now ${now.toISOString()}), got "${value}"`);
  return since;
}

/** A commander collector: `--state` repeated, each a state or a comma-separated list of them. */
export function collectStates(value: string, previous: readonly string[]): string[] {
  return [...previous, ...value.split(",").map((s) => s.trim())];
}

/** Validates the flags against `now`; every message names the flag, what is allowed and what was given. */
export function parseLsFlags(flags: LsFlags, now: Date): LsRequest {
  const { project, user } = ownerOf(flags);
  for (const [flag, value, given, schema] of [
    ["--project", project, flags.project, jobAddressSchema.shape.project],
    ["--user", user, flags.user, jobAddressSchema.shape.user],
  ] as const) {
    const issue = schema.safeParse(value).error?.issues[0];
    if (issue) throw new UsageError(`${flag} ${issue.message}, got "${given ?? value}"`);
  }
  if (flags.allUsers && flags.user !== undefined)
    throw new UsageError(
      `--all-users and --user exclude each other: --all-users lists every user of the project, --user one of them`,
    );
  for (const state of flags.state)
    if (!(JOB_STATUSES as readonly string[]).includes(state))
      throw new UsageError(`--state must be one of ${JOB_STATUSES.join(", ")}, got "${state}"`);
  const limit = flags.limit ?? String(DEFAULT_LIMIT);
  if (!/^\d+$/.test(limit) || !Number.isSafeInteger(Number(limit)) || Number(limit) < 1)
    throw new UsageError(`--limit must be a whole number of jobs, 1 or more, got "${limit}"`);
  return {
    project,
    user,
    allUsers: flags.allUsers === true,
    ...(flags.state.length > 0 && { statuses: new Set(flags.state as JobStatus[]) }),
    ...(flags.since !== undefined && { since: parseSince(flags.since, now) }),
    limit: Number(limit),
    reindex: flags.reindex === true,
    json: flags.json === true,
  };
}

/** A listed job's row at `now`: how long it has run, what it has cost, its latest metric. */
export function jobRow({ address, priority, name, state }: Omit<IndexedJob, "cursor">, now: Date): JobRow {
  const started = timeOf(state.startedAt);
  const ended = state.finishedAt === undefined ? now.getTime() : timeOf(state.finishedAt);
  const running =
    state.status === "running" && started !== undefined && state.chargedHourlyUsd !== undefined
      ? (Math.max(0, now.getTime() - started) / 3_600_000) * state.chargedHourlyUsd
      : undefined;
  const cost =
    state.costUsd === undefined && running === undefined ? undefined : (state.costUsd ?? 0) + (running ?? 0);
  const metrics = Object.entries(state.progress?.metrics ?? {});
  const metric = metrics.find(([name]) => name === "loss") ?? metrics[0];
  return {
    ...address,
    ...(name !== undefined && { name }),
    status: state.status,
    tier: state.tier,
    priority,
    attempts: state.attempts,
    submittedAt: state.submittedAt,
    ...(state.startedAt !== undefined && { startedAt: state.startedAt }),
    ...(state.finishedAt !== undefined && { finishedAt: state.finishedAt }),
    ...(started !== undefined &&
      ended !== undefined && { durationSeconds: Math.max(0, Math.round((ended - started) / 1000)) }),
    ...(cost !== undefined && { costUsd: Math.round(cost * 1e6) / 1e6 }),
    ...(metric && { metric: { name: metric[0], value: metric[1] } }),
    ...(state.note !== undefined && { note: state.note }),
  };
}

/** Epoch ms of a state's time; undefined when absent, or not a time (the submitter can write anything). */
function timeOf(iso: string | undefined): number | undefined {
  const ms = iso === undefined ? NaN : Date.parse(iso);
  return Number.isNaN(ms) ? undefined : ms;
}

/** `42s`, `12m05s`, `3h02m`, `2d03h`. */
export function formatDuration(seconds: number): string {
  const pad = (n: number) => String(n).padStart(2, "0");
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${pad(seconds % 60)}s`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h${pad(Math.floor((seconds % 3600) / 60))}m`;
  return `${Math.floor(seconds / 86_400)}d${pad(Math.floor((seconds % 86_400) / 3600))}h`;
}

/** States and progress are the submitter's to write: their control characters are shown as `\xNN`, never sent. */
const printable = (text: string): string =>
  // eslint-disable-next-line no-control-regex
  text.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);

/** A submission time to the second, UTC; as written when it is not a time. */
function submitted(iso: string): string {
  const ms = timeOf(iso);
  return ms === undefined ? printable(iso) : new Date(ms).toISOString().slice(0, 19).replace("T", " ");
}

/** The rows as an aligned table, with a user column when they are several users'. */
export function renderTable(rows: readonly JobRow[], withUser: boolean): string {
  const header = [
    "ID",
    ...(withUser ? ["USER"] : []),
    ...["NAME", "STATE", "TIER", "PRIORITY", "SUBMITTED (UTC)", "DURATION", "COST", "METRIC"],
  ];
  const cells = rows.map((r) => [
    r.jobId,
    ...(withUser ? [r.user] : []),
    r.name ?? "-",
    r.status,
    printable(r.tier),
    r.priority,
    submitted(r.submittedAt),
    r.durationSeconds === undefined ? "-" : formatDuration(r.durationSeconds),
    r.costUsd === undefined ? "-" : `$${r.costUsd.toFixed(4)}`,
    r.metric ? `${printable(r.metric.name)}=${Number(r.metric.value.toPrecision(4))}` : "-",
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (row: readonly string[]): string =>
    `${row
      .map((cell, i) => cell.padEnd(widths[i]!))
      .join("  ")
      .trimEnd()}\n`;
  return [header, ...cells].map(line).join("");
}

/** An S3 refusal, said in terms of what was asked and the credentials it needs. */
function refused(request: LsRequest, error: Error): Error {
  const why = `(${error.name}: ${error.message})`;
  if (request.allUsers)
    return new Error(
      `--all-users: your credentials may not list the users of project ${request.project} ${why}; ` +
        `that needs read access to the whole project (an operator's role), and a project's submitter role ` +
        `reads only its own user's jobs: drop --all-users to list yours`,
      { cause: error },
    );
  return new Error(
    `your credentials may not read ${request.project}/${request.user}'s jobs ${why}; ` +
      `a project's submitter role reads only the jobs of the user it was assumed as`,
    { cause: error },
  );
}

/** `ls` (alias `jobs`): the caller's jobs, newest first, from the jobs index (job-index.ts). */
export function registerLs(program: Command): void {
  ownerOptions(program.command("ls").alias("jobs").description("your jobs, newest first"))
    .option(
      "--state <state>",
      `only jobs in this state (${JOB_STATUSES.join(", ")}); repeatable, or a comma-separated list`,
      collectStates,
      [],
    )
    .option("--since <when>", `only jobs submitted since: ${SINCE_FORMS}`)
    .option("--all-users", "every user's jobs in the project (needs credentials that may read them all)")
    .option("--limit <n>", `at most this many jobs (default: ${DEFAULT_LIMIT})`)
    .option("--reindex", "first index the jobs submitted before the index existed (reads each one once)")
    .option("--json", "print JSON")
    .action(async (flags: LsFlags) => {
      const request = parseLsFlags(flags, new Date());
      const logger = cliLogger();
      const platform = platformFromEnv(logger);
      const index = new JobIndex(platform.s3, platform.store, logger);
      const { project, user } = request;
      let jobs: IndexedJob[];
      try {
        if (request.reindex) {
          const users = request.allUsers ? await index.users(project) : [user];
          let added = 0;
          for (const u of users) added += await index.reindex({ project, user: u });
          process.stderr.write(`indexed ${added} job${added === 1 ? "" : "s"} that had no index entry\n`);
        }
        jobs = await index.list({
          project,
          users: request.allUsers ? "all" : { user },
          limit: request.limit,
          ...(request.statuses && { statuses: request.statuses }),
          ...(request.since && { since: request.since }),
        });
        const unfiltered = !request.statuses && !request.since && !request.allUsers;
        if (jobs.length === 0 && unfiltered && (await index.hasJobs({ project, user })))
          process.stderr.write(
            `none of ${project}/${user}'s jobs is indexed: jobs submitted before \`crucible ls\` existed ` +
              "are listed once indexed by `crucible ls --reindex`\n",
          );
      } catch (error) {
        if ((error as Error).name === "AccessDenied") throw refused(request, error as Error);
        throw error;
      }
      const now = new Date();
      const rows = jobs.map((job) => jobRow(job, now));
      if (request.json) printJson(rows);
      else if (rows.length === 0)
        process.stdout.write(
          `no jobs in ${request.allUsers ? `project ${project}` : `${project}/${user}`}\n`,
        );
      else process.stdout.write(renderTable(rows, request.allUsers));
    });
}
