import type { Command } from "commander";
import type { JobAddress, JobState, JobStore } from "../../store/job-store";
import type { MetricRecord } from "../../store/job-metrics";
import { progressRate, readMetricHistory, reportedByJob } from "../../store/job-metrics";
import { cliLogger, printJson, UsageError } from "./shared";
import type { Owner } from "./platform-access";
import { address, ownerOf, ownerOptions, platformFromEnv } from "./platform-access";
import { summarize } from "./submit";

/** One of the caller's jobs, found: its store, address and state. */
export interface FoundJob {
  readonly store: JobStore;
  readonly target: JobAddress;
  readonly state: JobState;
}

/**
 * The caller's job `jobId`, or a usage error naming it: unknown in their prefix, or (AccessDenied) in a
 * prefix their credentials may not read — another user's.
 */
export async function findJob(jobId: string, flags: Owner): Promise<FoundJob> {
  const { store } = platformFromEnv(cliLogger());
  const target = address(ownerOf(flags), jobId);
  const state = await store.getState(target).catch((error: unknown) => {
    if ((error as { name?: string }).name !== "AccessDenied") throw error;
    throw new UsageError(
      `job ${jobId}: your credentials may not read jobs of ${target.project}/${target.user}; you can see only your own jobs`,
    );
  });
  if (!state)
    throw new UsageError(
      `no job ${jobId} in ${target.project}/${target.user} (see \`crucible ls\` for your jobs)`,
    );
  return { store, target, state };
}

const FINAL: readonly JobState["status"][] = ["succeeded", "failed", "cancelled"];
export const isFinal = (state: JobState): boolean => FINAL.includes(state.status);

/** status, result and cancel: one of the caller's jobs. */
export function registerJobs(program: Command): void {
  ownerOptions(
    program
      .command("status")
      .description("a job's state, progress with ETA, latest metrics, time and cost so far")
      .argument("<job>", "job id"),
  )
    .option("--json", "print the state and progress as JSON")
    .action(async (jobId: string, flags: Owner & { json?: boolean }) => {
      const { store, target, state } = await findJob(jobId, flags);
      const history =
        state.attempts > 0 ? (await readMetricHistory(store.metricSeries(target))).filter(reportedByJob) : [];
      const view = statusView(jobId, state, history);
      if (flags.json) printJson(view);
      else process.stdout.write(formatStatus(view));
    });

  ownerOptions(program.command("result").description("a finished job's envelope").argument("<job>", "job id"))
    .option("--json", "print the whole envelope")
    .action(async (jobId: string, flags: Owner & { json?: boolean }) => {
      const { store, target } = await findJob(jobId, flags);
      const envelope = await store.getEnvelope(target);
      if (!envelope)
        throw new UsageError(`job ${jobId} has no result yet (see \`crucible status ${jobId}\`)`);
      summarize(envelope, flags.json);
    });

  ownerOptions(
    program.command("cancel").description("cancel a queued or running job").argument("<job>", "job id"),
  ).action(async (jobId: string, flags: Owner) => {
    const { store, target, state } = await findJob(jobId, flags);
    if (isFinal(state)) throw new UsageError(`job ${jobId} has already ${state.status}; nothing to cancel`);
    await store.requestCancel(target);
    process.stdout.write(`cancel requested for ${jobId}; the agent stops it within seconds\n`);
  });
}

/** What `status` shows, computed once for the text and the JSON. */
export interface StatusView {
  readonly jobId: string;
  readonly state: JobState;
  readonly progress?: {
    readonly step?: number;
    readonly total?: number;
    readonly percent?: number;
    readonly stepsPerSecond?: number;
    readonly etaSeconds?: number;
  };
  readonly metrics: Readonly<Record<string, number>>;
  /** Seconds from the first start to the end, or to now while it runs. */
  readonly elapsedSeconds?: number;
  /** Finished attempts' cost plus the running attempt's so far. */
  readonly costUsd: number;
}

export function statusView(
  jobId: string,
  state: JobState,
  history: readonly MetricRecord[],
  now = Date.now(),
): StatusView {
  const running = state.status === "running";
  const rate = running ? progressRate(history, state.attempts, now) : undefined;
  const { step, total } = state.progress ?? {};
  const started = state.startedAt ? Date.parse(state.startedAt) : undefined;
  const ended = state.finishedAt ? Date.parse(state.finishedAt) : now;
  const runningCost =
    running && started !== undefined && state.chargedHourlyUsd !== undefined
      ? ((now - started) / 3_600_000) * state.chargedHourlyUsd
      : 0;
  return {
    jobId,
    state,
    ...((step !== undefined || total !== undefined) && {
      progress: {
        ...(step !== undefined && { step }),
        ...(total !== undefined && { total }),
        ...(step !== undefined && total ? { percent: Math.min(100, (100 * step) / total) } : {}),
        ...(rate && { stepsPerSecond: rate.stepsPerSecond }),
        ...(rate?.etaSeconds !== undefined && { etaSeconds: rate.etaSeconds }),
      },
    }),
    metrics: state.progress?.metrics ?? {},
    ...(started !== undefined && { elapsedSeconds: Math.max(0, (ended - started) / 1000) }),
    costUsd: Math.round(((state.costUsd ?? 0) + runningCost) * 1e6) / 1e6,
  };
}

export function formatStatus(view: StatusView): string {
  const { state, progress } = view;
  const rows: [string, string][] = [];
  const attempt = state.attempts > 1 ? `, attempt ${state.attempts}` : "";
  const resumed = state.resumedFromCheckpoint ? ", resumed from its checkpoints" : "";
  rows.push(["state", `${state.status}${attempt}${resumed}`]);
  rows.push(["tier", state.node ? `${state.tier} on ${state.node}` : state.tier]);
  if (progress) {
    const of = progress.total !== undefined ? `/${progress.total}` : "";
    const percent = progress.percent !== undefined ? ` (${progress.percent.toFixed(0)}%)` : "";
    const speed =
      progress.stepsPerSecond !== undefined ? `, ${progress.stepsPerSecond.toPrecision(3)} steps/s` : "";
    const eta = progress.etaSeconds !== undefined ? `, ETA ${duration(progress.etaSeconds)}` : "";
    rows.push(["progress", `step ${progress.step ?? "-"}${of}${percent}${speed}${eta}`]);
  }
  const metrics = Object.entries(view.metrics);
  if (metrics.length > 0)
    rows.push(["metrics", metrics.map(([k, v]) => `${k} ${formatNumber(v)}`).join("  ")]);
  rows.push(["submitted", state.submittedAt]);
  if (view.elapsedSeconds !== undefined) rows.push(["elapsed", duration(view.elapsedSeconds)]);
  rows.push(["cost", `$${view.costUsd.toFixed(4)}${state.status === "running" ? " so far" : ""}`]);
  if (state.note) rows.push(["note", state.note]);
  return `${view.jobId}\n${rows.map(([k, v]) => `  ${k.padEnd(10)}${v}`).join("\n")}\n`;
}

/** `1h 02m`, `4m 05s`, `12s`. */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export const formatNumber = (value: number): string =>
  Number.isInteger(value)
    ? String(value)
    : Math.abs(value) >= 1e-3
      ? value.toPrecision(4)
      : value.toExponential(2);
