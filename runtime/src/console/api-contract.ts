/**
 * The web console's HTTP API: the one contract between its server (server.ts, api.ts) and its page
 * (ui/). Types only, so the page's bundle takes nothing of the runtime; the server builds each answer
 * from the store and the page reads it. Every route is under `/api/`, answers JSON (or a server-sent
 * event stream, or a file), and names the caller's jobs only: another user's job id is a 404.
 *
 * | method | path | answer |
 * | --- | --- | --- |
 * | GET | `/api/session` | {@link SessionInfo} |
 * | GET | `/api/jobs?limit=&cursor=&status=a,b&q=` | {@link JobPage} (newest first) |
 * | GET | `/api/jobs/:id` | {@link JobDetail} |
 * | GET | `/api/jobs/:id/log/events?stream=stdout|stderr` | `text/event-stream` of {@link LogEvent}s: `line` events, then one `end` once the job has finished and its log is all sent |
 * | GET | `/api/jobs/:id/log.txt?stream=` | the whole log as text (a download) |
 * | GET | `/api/jobs/:id/metrics` | {@link MetricHistory} |
 * | GET | `/api/jobs/:id/files/:kind/:path` | the file's bytes (`kind` outputs or checkpoints), as an attachment |
 * | POST | `/api/jobs/:id/cancel` | {@link Accepted} |
 * | POST | `/api/jobs/:id/resubmit` ({@link ResubmitRequest}) | {@link Submitted} |
 * | POST | `/api/jobs` ({@link SubmitRequest}) | {@link Submitted} |
 * | POST | `/api/uploads?name=` (the code's bytes: see {@link UploadInfo}) | {@link UploadInfo} |
 * | GET | `/api/templates` | {@link TemplateInfo}[] |
 * | GET | `/api/tiers` | {@link TierInfo}[] |
 * | GET | `/api/usage?period=day|week|month&by=user|project|tier` | {@link UsageReport} |
 * | GET | `/api/usage.csv?period=&by=` | the same as CSV (a download) |
 *
 * `GET /login?token=` (the URL `crucible console` prints when it listens beyond loopback) makes the
 * session and redirects to the page; on loopback, loading the page makes one. A log stream's events
 * carry ids, so a browser that reconnects (Last-Event-ID) goes on where it was.
 *
 * State-changing requests (POST) must carry the session's {@link SessionInfo.csrfToken} in the
 * {@link CSRF_HEADER} header and come from the console's own origin; anything else is refused (403).
 * Their bodies are JSON of at most 64 KiB, but for an upload's: the code itself.
 */

/** The header a state-changing request carries the session's CSRF token in. */
export const CSRF_HEADER = "x-crucible-csrf";
/** The cookie the console's session lives in (HttpOnly, SameSite=Strict). */
export const SESSION_COOKIE = "crucible_session";

export type JobStatus = "queued" | "running" | "succeeded" | "failed" | "cancelled";

export interface SessionInfo {
  readonly project: string;
  readonly user: string;
  /** Where the console reads from: `local` or the stack's name. */
  readonly platform: string;
  readonly csrfToken: string;
  /** Estimates above this many USD ask for confirmation on the new-job page. */
  readonly costWarningUsd: number;
  /** The largest upload `POST /api/uploads` takes: a job's code archive's limit. */
  readonly maxUploadBytes: number;
}

export interface JobProgress {
  readonly step?: number;
  readonly total?: number;
  /** 0..1 when the total is known. */
  readonly fraction?: number;
  /** Seconds left at the recent rate, when it can be told. */
  readonly etaSeconds?: number;
  readonly metrics: Readonly<Record<string, number>>;
  readonly at: string;
}

/** A job as the jobs page lists it. */
export interface JobRow {
  readonly jobId: string;
  readonly name?: string;
  readonly tier: string;
  readonly priority: "high" | "normal" | "low";
  readonly status: JobStatus;
  readonly submittedAt: string;
  readonly startedAt?: string;
  readonly finishedAt?: string;
  readonly attempts: number;
  readonly progress?: JobProgress;
  /** USD so far: finished attempts plus the running one's elapsed time at its rate. */
  readonly costUsd?: number;
  /** The newest `loss` the job reported, when it reports one. */
  readonly loss?: number;
}

export interface JobPage {
  readonly jobs: readonly JobRow[];
  /** Pass as `cursor` for the next (older) page; absent on the last. */
  readonly next?: string;
}

export interface JobFileInfo {
  readonly kind: "outputs" | "checkpoints";
  readonly name: string;
  readonly size: number;
  readonly lastModified: string;
  /** Where the page downloads it: `/api/jobs/:id/files/:kind/:name`. */
  readonly href: string;
}

export interface JobDetail {
  readonly job: JobRow;
  readonly note?: string;
  readonly node?: string;
  /** The final envelope, once there is one: its result, or its error with the traceback. */
  readonly envelope?: {
    readonly status: "success" | "error";
    readonly reason?: string;
    readonly result?: unknown;
    readonly error?: { readonly type: string; readonly message: string; readonly traceback?: string };
    readonly exitCode: number | null;
    readonly executionTime: number;
  };
  readonly files: readonly JobFileInfo[];
  /** Checkpoint steps a new job may start from (`resumeFrom` with `resumeStep`). */
  readonly checkpointSteps: readonly number[];
}

/** One line of a job's log, as a `line` event carries it. */
export interface LogEvent {
  readonly attempt: number;
  readonly stream: "stdout" | "stderr";
  readonly text: string;
  /** Milliseconds since the epoch. */
  readonly at: number;
  /** Written by the platform, not printed by the job. */
  readonly platform?: boolean;
}

export interface MetricPoint {
  readonly step: number;
  readonly value: number;
  readonly attempt: number;
  readonly at: number;
}

export interface MetricHistory {
  /** Each metric's points against step, in order. */
  readonly series: Readonly<Record<string, readonly MetricPoint[]>>;
  /** Where an attempt after the first started: a resume, marked on the charts. */
  readonly resumes: readonly { readonly attempt: number; readonly step: number }[];
  /** What the job used over time, as its launcher sampled it (every few seconds while it ran). */
  readonly resources: readonly ResourcePoint[];
  /** The tier's memory limit, the line the memory chart is drawn against. */
  readonly memoryLimitMiB?: number;
}

/** One sample of a job's resources: memory always, CPU from the second sample, GPUs where measured. */
export interface ResourcePoint {
  readonly at: number;
  readonly attempt: number;
  readonly memoryMiB: number;
  readonly cpuCores?: number;
  readonly gpuUtilPercent?: number;
  readonly gpuMemoryMiB?: number;
}

export interface Accepted {
  readonly ok: true;
}

/**
 * What every refusal or failure (any status but 200) answers, as JSON: 400 a bad field (the message
 * names it), 401 no session, 403 a state-changing request without the CSRF token or from another
 * origin, 404 no such job of the caller's (another user's job alike), 409 nothing to cancel or nothing
 * to resubmit, 413 a JSON body over 64 KiB or an upload over {@link SessionInfo.maxUploadBytes}, 415 a
 * body of another type, 429 too many uploads at once, 500 the server's own failure. A log stream's or a
 * download's failure after its start just ends it.
 */
export interface ErrorAnswer {
  readonly error: string;
}

/** A new job's code: exactly one of a template and an upload. */
export interface SubmitRequest {
  /** A template's name (`/api/templates`). */
  readonly template?: string;
  /** An upload's id ({@link UploadInfo.upload}): submitted once, then removed. */
  readonly upload?: string;
  readonly tier: string;
  readonly priority?: "high" | "normal" | "low";
  readonly env?: Readonly<Record<string, string>>;
  readonly timeoutSeconds?: number;
  /** One of the caller's jobs, and maybe a step, to start from. */
  readonly resumeFrom?: string;
  readonly resumeStep?: number;
}

/**
 * A new job from one of the caller's jobs: its own stored code and spec (environment, timeout, datasets,
 * priority, and its image family on the same tier), started from its checkpoints: those of `resumeStep`,
 * else its latest. `tier` and `priority` override the job's.
 */
export interface ResubmitRequest {
  readonly tier?: string;
  readonly priority?: "high" | "normal" | "low";
  readonly resumeStep?: number;
}

export interface Submitted {
  readonly jobId: string;
}

/** The tier and image detection recommends for some code, with its reasons. */
export interface Recommendation {
  readonly tier: string;
  readonly family: string;
  readonly reasons: readonly string[];
}

export interface TemplateInfo {
  readonly name: string;
  readonly summary: string;
  readonly recommendation: Recommendation;
}

/**
 * Code uploaded for a new job (`POST /api/uploads?name=<file name>`): a `.zip` with main.py at its root
 * (content-type `application/zip`) or a single `.py` file (`text/x-python`), at most
 * {@link SessionInfo.maxUploadBytes}, checked as `crucible submit` checks code and detected as
 * `crucible detect` does. Only the session that uploaded it may submit it ({@link SubmitRequest.upload}),
 * once, before {@link expiresAt}.
 */
export interface UploadInfo {
  readonly upload: string;
  /** The file name it is kept as: the new job is listed by it, without its extension. */
  readonly name: string;
  readonly size: number;
  readonly expiresAt: string;
  readonly recommendation: Recommendation & {
    readonly image: string;
    /** What will likely fail whatever the tier. */
    readonly warnings: readonly string[];
  };
}

export interface TierInfo {
  readonly name: string;
  readonly gpu: boolean;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly maxRuntimeSeconds: number;
  readonly onDemandHourlyUsd: number;
}

export interface UsageRow {
  readonly key: string;
  readonly costUsd: number;
  readonly seconds: number;
  readonly jobs: number;
  readonly budgetUsd?: number;
}

export interface UsageReport {
  readonly from: string;
  readonly to: string;
  readonly by: "user" | "project" | "tier";
  readonly rows: readonly UsageRow[];
}
