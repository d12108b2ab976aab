import type { ComponentChildren } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import type {
  Accepted,
  JobDetail,
  JobFileInfo,
  MetricHistory,
  ResubmitRequest,
  Submitted,
  TierInfo,
} from "../../api-contract.js";
import { describeError, getJson, postJson } from "../api.js";
import type { ChartOption } from "../components/chart.js";
import { ACCENT, BASE_OPTION, Chart, GRID_LINE, MUTED } from "../components/chart.js";
import { ConfirmDialog, ErrorNote, isFinal, ProgressBar, StatusBadge } from "../components/common.js";
import { LogTail } from "../components/log-tail.js";
import { formatBytes, formatDuration, formatMemory, formatMetric, formatTime, formatUsd } from "../format.js";
import { jobHref, usePoll, useTitle } from "../hooks.js";

const POLL_MS = 3000;
/** After a job ends, how long to keep asking for its envelope if it has not shown yet. */
const ENVELOPE_GRACE_MS = 60_000;

/** One job: what it is and does now, its log, its metrics, its files and its result. */
export function JobPage({ jobId }: { jobId: string }) {
  useTitle(`Job ${jobId}`);
  const path = `/api/jobs/${encodeURIComponent(jobId)}`;
  const [settled, setSettled] = useState(false);
  const detail = usePoll(jobId, (signal) => getJson<JobDetail>(path, signal), POLL_MS, !settled);
  const job = detail.data?.job;
  const running = job !== undefined && !isFinal(job.status);
  const nowSettled =
    detail.data !== undefined &&
    !running &&
    (detail.data.envelope !== undefined ||
      Date.now() - new Date(job?.finishedAt ?? 0).getTime() > ENVELOPE_GRACE_MS);
  useEffect(() => setSettled(nowSettled), [nowSettled]);
  const metrics = usePoll(
    jobId,
    (signal) => getJson<MetricHistory>(`${path}/metrics`, signal),
    POLL_MS,
    job === undefined || running,
  );

  if (detail.data === undefined) {
    return (
      <section aria-labelledby="job-heading">
        <h1 id="job-heading" tabIndex={-1}>
          Job {jobId}
        </h1>
        {detail.error !== undefined ? (
          <ErrorNote>Could not load the job: {describeError(detail.error)}</ErrorNote>
        ) : (
          <p class="muted">Loading…</p>
        )}
        <p>
          <a href="#/jobs">All jobs</a>
        </p>
      </section>
    );
  }
  const { job: row, envelope, files, checkpointSteps, note, node } = detail.data;
  return (
    <section aria-labelledby="job-heading" class="job-page">
      <nav aria-label="Breadcrumb" class="breadcrumb">
        <a href="#/jobs">Jobs</a> <span aria-hidden="true">/</span> {row.jobId}
      </nav>
      <div class="page-head">
        <h1 id="job-heading" tabIndex={-1}>
          {row.name ?? row.jobId} <StatusBadge status={row.status} />
        </h1>
        <div class="actions">
          {running && <CancelButton path={path} onDone={detail.reload} />}
          {checkpointSteps.length > 0 && <ResubmitButton detail={detail.data} />}
        </div>
      </div>
      {detail.error !== undefined && (
        <ErrorNote>Could not refresh the job: {describeError(detail.error)}</ErrorNote>
      )}
      <dl class="facts">
        <Fact term="Job id">{row.jobId}</Fact>
        <Fact term="Tier">{row.tier}</Fact>
        <Fact term="Priority">{row.priority}</Fact>
        <Fact term="Attempts">{row.attempts}</Fact>
        {node && <Fact term="Node">{node}</Fact>}
        <Fact term="Submitted">{formatTime(row.submittedAt)}</Fact>
        {row.startedAt && <Fact term="Started">{formatTime(row.startedAt)}</Fact>}
        {row.finishedAt && <Fact term="Finished">{formatTime(row.finishedAt)}</Fact>}
        <Fact term="Cost so far">{formatUsd(row.costUsd)}</Fact>
        {row.loss !== undefined && <Fact term="Latest loss">{formatMetric(row.loss)}</Fact>}
        <Fact term="Progress">
          <ProgressBar progress={row.progress} status={row.status} />
        </Fact>
      </dl>
      {note && <p class="note">{note}</p>}
      {envelope && <EnvelopeView envelope={envelope} />}
      <LogTail key={jobId} jobId={jobId} />
      <MetricCharts history={metrics.data} error={metrics.error} />
      {metrics.data && <ResourceCharts history={metrics.data} />}
      <Files files={files} />
    </section>
  );
}

function Fact({ term, children }: { term: string; children: ComponentChildren }) {
  return (
    <div>
      <dt>{term}</dt>
      <dd>{children}</dd>
    </div>
  );
}

function EnvelopeView({ envelope }: { envelope: NonNullable<JobDetail["envelope"]> }) {
  return (
    <section class={`envelope ${envelope.status}`} aria-labelledby="envelope-heading">
      <h2 id="envelope-heading">{envelope.status === "success" ? "Result" : "Error"}</h2>
      <p class="muted">
        {envelope.reason ? `${envelope.reason} · ` : ""}exit code {envelope.exitCode ?? "none"} · ran{" "}
        {formatDuration(envelope.executionTime)}
      </p>
      {envelope.status === "success" && (
        <pre class="result" data-testid="result">
          {envelope.result === undefined ? "(no result)" : JSON.stringify(envelope.result, null, 2)}
        </pre>
      )}
      {envelope.error && (
        <>
          <p class="error-title">
            <strong>{envelope.error.type}</strong>: {envelope.error.message}
          </p>
          {envelope.error.traceback && <pre class="traceback">{envelope.error.traceback}</pre>}
        </>
      )}
    </section>
  );
}

/** Each metric (loss first) against step, one chart each, with resumes marked. */
function MetricCharts({ history, error }: { history?: MetricHistory; error: unknown }) {
  const names = useMemo(
    () =>
      Object.keys(history?.series ?? {})
        .filter((name) => (history?.series[name]?.length ?? 0) > 0)
        .sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b))),
    [history],
  );
  return (
    <section aria-labelledby="metrics-heading" class="metrics">
      <h2 id="metrics-heading">Metrics</h2>
      {error !== undefined && <ErrorNote>Could not load the metrics: {describeError(error)}</ErrorNote>}
      {history !== undefined && names.length === 0 && (
        <p class="muted">
          No metrics reported yet (a job reports them with crucible.progress(step=…, loss=…)).
        </p>
      )}
      <div class="chart-grid">
        {history && names.map((name) => <MetricChart key={name} name={name} history={history} />)}
      </div>
    </section>
  );
}

function MetricChart({ name, history }: { name: string; history: MetricHistory }) {
  const points = history.series[name] ?? [];
  const last = points[points.length - 1];
  const option = useMemo(
    (): ChartOption => ({
      ...BASE_OPTION,
      xAxis: {
        type: "value",
        name: "step",
        nameLocation: "middle",
        nameGap: 24,
        scale: true,
        axisLine: { lineStyle: { color: MUTED } },
        splitLine: { lineStyle: { color: GRID_LINE } },
      },
      yAxis: { type: "value", scale: true, splitLine: { lineStyle: { color: GRID_LINE } } },
      series: [
        {
          type: "line",
          name,
          data: points.map((p) => [p.step, p.value]),
          showSymbol: points.length < 60,
          symbolSize: 4,
          lineStyle: { color: ACCENT, width: 2 },
          itemStyle: { color: ACCENT },
          markLine: {
            silent: true,
            symbol: "none",
            lineStyle: { color: MUTED, type: "dashed" },
            label: { formatter: "resumed", color: MUTED },
            data: history.resumes.map((r) => ({ xAxis: r.step, name: `attempt ${r.attempt}` })),
          },
        },
      ],
    }),
    [name, points, history.resumes],
  );
  const resumes = history.resumes.length;
  return (
    <figure class="metric" data-metric={name} data-points={points.length}>
      <figcaption>
        <strong>{name}</strong>{" "}
        <span class="muted">
          {points.length} points
          {last ? ` · latest ${formatMetric(last.value)} at step ${last.step}` : ""}
          {resumes > 0 ? ` · resumed ${resumes === 1 ? "once" : `${resumes} times`}` : ""}
        </span>
      </figcaption>
      <Chart
        option={option}
        label={`${name} against step: ${points.length} points${last ? `, latest ${formatMetric(last.value)} at step ${last.step}` : ""}`}
      />
    </figure>
  );
}

/** What a resource chart plots: one number of each sample, with how to say it. */
interface ResourceView {
  readonly key: "memoryMiB" | "cpuCores" | "gpuUtilPercent";
  readonly title: string;
  readonly format: (value: number) => string;
}

const RESOURCE_VIEWS: readonly ResourceView[] = [
  { key: "memoryMiB", title: "Memory", format: formatMemory },
  { key: "cpuCores", title: "CPU", format: (v) => `${formatMetric(v)} cores` },
  { key: "gpuUtilPercent", title: "GPU utilisation", format: (v) => `${Math.round(v)}%` },
];

/** Memory (against the tier's limit), CPU and, where measured, GPU use over time, as the launcher sampled them. */
function ResourceCharts({ history }: { history: MetricHistory }) {
  const shown = RESOURCE_VIEWS.filter((view) => history.resources.some((p) => p[view.key] !== undefined));
  return (
    <section aria-labelledby="resources-heading" class="metrics">
      <h2 id="resources-heading">Resources</h2>
      {shown.length === 0 && (
        <p class="muted">No samples yet: they are taken every few seconds while the job runs.</p>
      )}
      <div class="chart-grid">
        {shown.map((view) => (
          <ResourceChart key={view.key} view={view} history={history} />
        ))}
      </div>
    </section>
  );
}

function ResourceChart({ view, history }: { view: ResourceView; history: MetricHistory }) {
  const points = history.resources.flatMap((p) => {
    const value = p[view.key];
    return value === undefined ? [] : [[p.at, value] as [number, number]];
  });
  const last = points[points.length - 1];
  const limit = view.key === "memoryMiB" ? history.memoryLimitMiB : undefined;
  const option = useMemo(
    (): ChartOption => ({
      ...BASE_OPTION,
      xAxis: {
        type: "time",
        splitNumber: 4,
        axisLabel: { hideOverlap: true, formatter: "{HH}:{mm}:{ss}" },
        axisLine: { lineStyle: { color: MUTED } },
        splitLine: { lineStyle: { color: GRID_LINE } },
      },
      yAxis: {
        type: "value",
        min: 0,
        ...(limit !== undefined && { max: limit }),
        splitLine: { lineStyle: { color: GRID_LINE } },
      },
      series: [
        {
          type: "line",
          name: view.title,
          data: points,
          showSymbol: points.length < 60,
          symbolSize: 4,
          lineStyle: { color: ACCENT, width: 2 },
          itemStyle: { color: ACCENT },
          ...(limit !== undefined && {
            markLine: {
              silent: true,
              symbol: "none",
              lineStyle: { color: MUTED, type: "dashed" },
              label: { formatter: "limit", color: MUTED, position: "insideEndTop" },
              data: [{ yAxis: limit }],
            },
          }),
        },
      ],
    }),
    [view, points.length, last?.[0], limit],
  );
  const summary = `${points.length} samples${last ? ` · latest ${view.format(last[1])}` : ""}${limit !== undefined ? ` of ${view.format(limit)}` : ""}`;
  return (
    <figure class="metric" data-resource={view.key} data-points={points.length}>
      <figcaption>
        <strong>{view.title}</strong> <span class="muted">{summary}</span>
      </figcaption>
      <Chart option={option} label={`${view.title} over time: ${summary}`} />
    </figure>
  );
}

function Files({ files }: { files: readonly JobFileInfo[] }) {
  const groups = [
    { kind: "checkpoints", title: "Checkpoints" },
    { kind: "outputs", title: "Outputs" },
  ] as const;
  return (
    <section aria-labelledby="files-heading" class="files">
      <h2 id="files-heading">Checkpoints and outputs</h2>
      {files.length === 0 && <p class="muted">None yet.</p>}
      {groups.map(({ kind, title }) => {
        const ofKind = files.filter((f) => f.kind === kind);
        if (ofKind.length === 0) return null;
        return (
          <div key={kind} class="table-wrap">
            <table class="files-table">
              <caption>{title}</caption>
              <thead>
                <tr>
                  <th scope="col">File</th>
                  <th scope="col" class="num">
                    Size
                  </th>
                  <th scope="col">Written</th>
                </tr>
              </thead>
              <tbody>
                {ofKind.map((file) => (
                  <tr key={file.href}>
                    <td>
                      <a href={file.href} download data-kind={file.kind} data-name={file.name}>
                        {file.name}
                      </a>
                    </td>
                    <td class="num">{formatBytes(file.size)}</td>
                    <td>{formatTime(file.lastModified)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        );
      })}
    </section>
  );
}

function CancelButton({ path, onDone }: { path: string; onDone: () => void }) {
  const [open, setOpen] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const cancel = async (): Promise<void> => {
    setBusy(true);
    setError(undefined);
    try {
      await postJson<Accepted>(`${path}/cancel`);
      setOpen(false);
      onDone();
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" class="danger" onClick={() => setOpen(true)}>
        Cancel job
      </button>
      <ConfirmDialog
        open={open}
        title="Cancel this job?"
        confirmLabel="Cancel the job"
        danger
        busy={busy}
        error={error}
        onConfirm={() => void cancel()}
        onClose={() => {
          setOpen(false);
          setError(undefined);
        }}
      >
        <p>The job stops within a few seconds. Its checkpoints and the log so far are kept.</p>
      </ConfirmDialog>
    </>
  );
}

/**
 * A new job from one of this job's checkpoints, running this job's own code with its settings: the step
 * and the tier, confirmed in a dialog.
 */
function ResubmitButton({ detail }: { detail: JobDetail }) {
  const { job, checkpointSteps } = detail;
  const steps = useMemo(() => [...checkpointSteps].sort((a, b) => b - a), [checkpointSteps]);
  const [open, setOpen] = useState(false);
  const [tiers, setTiers] = useState<TierInfo[]>();
  const [step, setStep] = useState(steps[0]!);
  const [tier, setTier] = useState(job.tier);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();

  const start = async (): Promise<void> => {
    setOpen(true);
    setError(undefined);
    if (tiers) return;
    try {
      setTiers(await getJson<TierInfo[]>("/api/tiers"));
    } catch (e) {
      setError(`Could not load the tiers: ${describeError(e)}`);
    }
  };
  const submit = async (): Promise<void> => {
    setBusy(true);
    setError(undefined);
    try {
      const request: ResubmitRequest = { tier, resumeStep: step };
      const { jobId } = await postJson<Submitted>(
        `/api/jobs/${encodeURIComponent(job.jobId)}/resubmit`,
        request,
      );
      setOpen(false);
      location.hash = jobHref(jobId);
    } catch (e) {
      setError(describeError(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <button type="button" class="secondary" onClick={() => void start()}>
        Resubmit from checkpoint
      </button>
      <ConfirmDialog
        open={open}
        title="Resubmit from a checkpoint"
        confirmLabel="Submit"
        busy={busy || tiers === undefined}
        error={error}
        onConfirm={() => void submit()}
        onClose={() => setOpen(false)}
      >
        <p>A new job runs this job's code and settings again, from its checkpoint at the step you pick.</p>
        <div class="form-grid">
          <label class="field">
            <span>Checkpoint step</span>
            <select value={step} onChange={(e) => setStep(Number(e.currentTarget.value))}>
              {steps.map((s) => (
                <option key={s} value={s}>
                  {s}
                </option>
              ))}
            </select>
          </label>
          <label class="field">
            <span>Tier</span>
            <select value={tier} onChange={(e) => setTier(e.currentTarget.value)}>
              {(tiers?.map((t) => t.name) ?? [job.tier]).map((name) => (
                <option key={name} value={name}>
                  {name}
                </option>
              ))}
            </select>
          </label>
        </div>
      </ConfirmDialog>
    </>
  );
}
