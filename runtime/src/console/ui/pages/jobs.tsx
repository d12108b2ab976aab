import { useState } from "preact/hooks";
import type { JobPage, JobRow, JobStatus } from "../../api-contract.js";
import { describeError, getJson, query } from "../api.js";
import { ErrorNote, ProgressBar, StatusBadge } from "../components/common.js";
import { formatAgo, formatMetric, formatUsd } from "../format.js";
import { jobHref, useDebounced, usePoll, useTitle } from "../hooks.js";

const STATUSES: readonly JobStatus[] = ["queued", "running", "succeeded", "failed", "cancelled"];
const POLL_MS = 3000;
const PAGE_SIZE = 50;

/** The caller's jobs, newest first, refreshed every few seconds; older pages on demand. */
export function JobsPage() {
  useTitle("Jobs");
  const [statuses, setStatuses] = useState<readonly JobStatus[]>([]);
  const [search, setSearch] = useState("");
  const q = useDebounced(search.trim(), 300);
  const filter = query({ status: statuses.join(","), q, limit: PAGE_SIZE });
  const first = usePoll(filter, (signal) => getJson<JobPage>(`/api/jobs${filter}`, signal), POLL_MS);
  const [older, setOlder] = useState<{ filter: string; rows: JobRow[]; next?: string; loading?: boolean }>({
    filter,
    rows: [],
  });
  const [olderError, setOlderError] = useState<string>();

  // Older pages belong to one filter; a new filter starts from its first page.
  const olderRows = older.filter === filter ? older.rows : [];
  const next = older.filter === filter && older.rows.length > 0 ? older.next : first.data?.next;
  const firstIds = new Set(first.data?.jobs.map((j) => j.jobId));
  const rows = [...(first.data?.jobs ?? []), ...olderRows.filter((j) => !firstIds.has(j.jobId))];

  const loadOlder = async (): Promise<void> => {
    if (!next) return;
    setOlder({ filter, rows: olderRows, next, loading: true });
    setOlderError(undefined);
    try {
      const page = await getJson<JobPage>(
        `/api/jobs${query({ status: statuses.join(","), q, limit: PAGE_SIZE, cursor: next })}`,
      );
      setOlder({ filter, rows: [...olderRows, ...page.jobs], next: page.next });
    } catch (error) {
      setOlder({ filter, rows: olderRows, next });
      setOlderError(describeError(error));
    }
  };

  const toggle = (status: JobStatus, on: boolean): void =>
    setStatuses((current) => STATUSES.filter((s) => (s === status ? on : current.includes(s))));

  return (
    <section aria-labelledby="jobs-heading">
      <div class="page-head">
        <h1 id="jobs-heading" tabIndex={-1}>
          Jobs
        </h1>
        <a class="button-link primary" href="#/new">
          New job
        </a>
      </div>
      <div class="toolbar" role="search">
        <label class="field grow">
          <span>Search jobs</span>
          <input
            type="search"
            value={search}
            placeholder="id, name or tier"
            onInput={(e) => setSearch(e.currentTarget.value)}
          />
        </label>
        <fieldset class="chips">
          <legend>Status</legend>
          {STATUSES.map((status) => (
            <label key={status}>
              <input
                type="checkbox"
                name="status"
                value={status}
                checked={statuses.includes(status)}
                onChange={(e) => toggle(status, e.currentTarget.checked)}
              />
              <span>{status}</span>
            </label>
          ))}
        </fieldset>
      </div>
      {first.error !== undefined && (
        <ErrorNote>Could not load the jobs: {describeError(first.error)}</ErrorNote>
      )}
      {first.data === undefined && first.error === undefined && <p class="muted">Loading jobs…</p>}
      {first.data !== undefined && rows.length === 0 && (
        <p class="empty">
          {statuses.length > 0 || q ? "No job matches." : "No jobs yet."} <a href="#/new">Submit one</a>.
        </p>
      )}
      {rows.length > 0 && (
        <div class="table-wrap">
          <table class="jobs-table responsive">
            <caption class="visually-hidden">Your jobs, newest first; updates every few seconds</caption>
            <thead>
              <tr>
                <th scope="col">Job</th>
                <th scope="col">Status</th>
                <th scope="col">Tier</th>
                <th scope="col">Priority</th>
                <th scope="col">Progress</th>
                <th scope="col" class="num">
                  Cost so far
                </th>
                <th scope="col" class="num">
                  Loss
                </th>
                <th scope="col">Submitted</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((job) => (
                <JobRowView key={job.jobId} job={job} />
              ))}
            </tbody>
          </table>
        </div>
      )}
      {olderError && <ErrorNote>Could not load older jobs: {olderError}</ErrorNote>}
      {next && (
        <p class="more">
          <button type="button" class="secondary" disabled={older.loading} onClick={() => void loadOlder()}>
            {older.loading ? "Loading…" : "Older jobs"}
          </button>
        </p>
      )}
    </section>
  );
}

function JobRowView({ job }: { job: JobRow }) {
  return (
    <tr data-job-id={job.jobId} data-status={job.status}>
      <th scope="row" data-label="Job">
        <a href={jobHref(job.jobId)}>{job.name ?? job.jobId}</a>
        {job.name && <span class="sub muted">{job.jobId}</span>}
      </th>
      <td data-label="Status">
        <StatusBadge status={job.status} />
        {job.attempts > 1 && <span class="sub muted">attempt {job.attempts}</span>}
      </td>
      <td data-label="Tier">{job.tier}</td>
      <td data-label="Priority">{job.priority}</td>
      <td data-label="Progress">
        <ProgressBar progress={job.progress} status={job.status} />
      </td>
      <td data-label="Cost so far" class="num">
        {formatUsd(job.costUsd)}
      </td>
      <td data-label="Loss" class="num">
        {formatMetric(job.loss)}
      </td>
      <td data-label="Submitted">
        <time dateTime={job.submittedAt} title={new Date(job.submittedAt).toLocaleString()}>
          {formatAgo(job.submittedAt)}
        </time>
      </td>
    </tr>
  );
}
