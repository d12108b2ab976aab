import type { S3Client } from "@aws-sdk/client-s3";
import { once } from "node:events";
import { mkdtemp, rm, stat } from "node:fs/promises";
import type { ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { setTimeout as sleep } from "node:timers/promises";
import { z } from "zod";
import { PRIORITIES } from "../catalog/scheduling";
import type { SchedulingPolicy } from "../catalog/scheduling";
import { isTierName, TIER_NAMES, TIERS } from "../catalog/tiers";
import { isFinal } from "../cli/commands/jobs";
import { jobRow as listedRow } from "../cli/commands/ls";
import type { Owner, Platform } from "../cli/commands/platform-access";
import { UsageError } from "../cli/commands/shared";
import { submitFrom } from "../cli/commands/submit";
import { formatDatasetRef } from "../catalog/datasets";
import { budgetsFor, buildUsage, formatUsd, periodWindow, toCsv, USAGE_PERIODS } from "../cost/usage";
import { checkZip, CodeError, describeBytes, MAX_CODE_ARCHIVE_BYTES } from "../job/code-source";
import { ENV_NAME, jobIdSchema } from "../job/contract";
import type { Detection } from "../job/detect";
import { detect } from "../job/detect";
import { submittedSpecSchema } from "../job/job-request";
import { SubmitError } from "../job/submit";
import type { Template } from "../job/templates";
import { listTemplates } from "../job/templates";
import type { Logger } from "../logger";
import { JobAccessError, JobFiles, stepOf } from "../store/job-files";
import type { IndexedJob } from "../store/job-index";
import { isIndexCursor, JobIndex, jobNameOf } from "../store/job-index";
import type { LogRecord } from "../store/job-log";
import { readLogRecords, logText } from "../store/job-log";
import type { MetricRecord } from "../store/job-metrics";
import {
  progressRate,
  readAttemptEnds,
  readMetricHistory,
  RESOURCE_METRICS,
  reportedByJob,
} from "../store/job-metrics";
import type { JobAddress, JobState } from "../store/job-store";
import { JOB_STATUSES } from "../store/job-store";
import { mapBounded } from "../store/map-bounded";
import type {
  Accepted,
  JobDetail,
  JobFileInfo,
  JobPage,
  JobRow,
  LogEvent,
  MetricHistory,
  MetricPoint,
  ResourcePoint,
  SessionInfo,
  Submitted,
  TemplateInfo,
  TierInfo,
  UploadInfo,
  UsageReport,
  UsageRow,
} from "./api-contract";
import { UPLOAD_ID, UploadError, UploadStore } from "./uploads";

/** How often a log stream looks for new chunks: the agent ships every 2 s, as `crucible logs -f` polls. */
const LOG_POLL_MS = 1000;
/** A comment this often keeps proxies and the browser from closing a quiet log stream. */
const HEARTBEAT_MS = 15_000;
const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 200;
/** Running jobs of a page whose ETA is worked out at once: each reads two chunks of its metrics. */
const ETA_CONCURRENCY = 8;

/** What the console serves: the caller's platform through their own credentials, and who they are. */
export interface ConsoleBackend {
  readonly platform: Platform & { readonly s3: S3Client };
  readonly owner: Owner;
  /** `local`, or the stack's workspaces bucket. */
  readonly name: string;
  /** The budgets usage is measured against. */
  readonly policy: SchedulingPolicy;
  readonly costWarningUsd: number;
}

/** One API request, as the server has checked and read it. */
export interface ApiRequest {
  readonly method: string;
  /** The path below `/api/`, its segments decoded. */
  readonly segments: readonly string[];
  readonly query: URLSearchParams;
  /** The parsed JSON body of a POST. */
  readonly body?: unknown;
  /** The body of an upload, unread (the server reads no other POST's body this way). */
  readonly upload?: {
    readonly body: Readable;
    readonly contentType: string;
    /** Its Content-Length, when it has one. */
    readonly declaredBytes?: number;
  };
  readonly lastEventId?: string;
  /** The session's id: uploads are its alone. */
  readonly sessionId: string;
  readonly csrfToken: string;
  /** Aborted once the client has gone. */
  readonly closed: AbortSignal;
}

/** An answer other than 200, with the message the page shows: `{ "error": message }`. */
export class ApiError extends Error {
  override readonly name = "ApiError";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** Another user's job and no job at all answer alike: nothing says which. */
const notFound = (jobId: string): ApiError => new ApiError(404, `no job ${jobId} among your jobs`);

const isDenied = (error: unknown): boolean =>
  (error as { name?: string }).name === "AccessDenied" ||
  (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 403;

/** A request's input, checked: the message names the field, what is allowed and what was given. */
function parsed<S extends z.ZodType>(schema: S, input: unknown, where: string): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const field = issue.path.length > 0 ? issue.path.join(".") : where;
  const given = valueAt(input, issue.path);
  const got = given === undefined ? "" : `, got ${JSON.stringify(given)?.slice(0, 200)}`;
  throw new ApiError(400, `${field}: ${issue.message}${got}`);
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let value = input;
  for (const key of path) {
    if (typeof value !== "object" || value === null || !Object.hasOwn(value, key)) return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

const listQuerySchema = z.strictObject({
  limit: z
    .string()
    .regex(/^\d{1,4}$/, { error: `must be a whole number from 1 to ${MAX_PAGE_SIZE}` })
    .transform(Number)
    .refine((n) => n >= 1 && n <= MAX_PAGE_SIZE, { error: `must be from 1 to ${MAX_PAGE_SIZE}` })
    .optional(),
  cursor: z.string().refine(isIndexCursor, { error: "must be the `next` of an earlier page" }).optional(),
  status: z
    .string()
    .transform((s) => s.split(",").filter(Boolean))
    .pipe(z.array(z.enum(JOB_STATUSES, { error: `must list states among ${JOB_STATUSES.join(", ")}` })))
    .optional(),
  q: z.string().max(64, { error: "must be at most 64 characters" }).optional(),
});

const streamQuerySchema = z.strictObject({ stream: z.enum(["stdout", "stderr"]).optional() });

const usageQuerySchema = z.strictObject({
  period: z.enum(USAGE_PERIODS).default("month"),
  by: z.enum(["user", "project", "tier"]).default("user"),
});

const MAX_ENV = 64;
const submitSchema = z
  .strictObject({
    template: z.string().min(1).max(64).optional(),
    upload: z
      .string()
      .regex(UPLOAD_ID, { error: "must be the `upload` id that POST /api/uploads answered" })
      .optional(),
    tier: z.enum(TIER_NAMES),
    priority: z.enum(PRIORITIES).optional(),
    env: z
      .record(
        z.string().regex(ENV_NAME, { error: "names must be like MY_VAR" }).max(128),
        z.string().max(4096, { error: "values must be at most 4096 characters" }),
      )
      .refine((env) => Object.keys(env).length <= MAX_ENV, { error: `at most ${MAX_ENV} variables` })
      .optional(),
    timeoutSeconds: z.number().int().positive().optional(),
    resumeFrom: jobIdSchema.optional(),
    resumeStep: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
  })
  .refine((r) => r.template === undefined || r.upload === undefined, {
    error: "give either template or upload, not both",
    path: ["upload"],
  })
  .refine((r) => r.template !== undefined || r.upload !== undefined, {
    error:
      "give the code to run: template (a name from GET /api/templates) or upload (an id from POST /api/uploads)",
    path: ["template"],
  })
  .refine((r) => r.resumeStep === undefined || r.resumeFrom !== undefined, {
    error: "resumeStep needs resumeFrom: the job whose checkpoints of that step to start from",
    path: ["resumeStep"],
  });
type SubmitBody = z.output<typeof submitSchema>;

const resubmitSchema = z.strictObject({
  tier: z.enum(TIER_NAMES).optional(),
  priority: z.enum(PRIORITIES).optional(),
  resumeStep: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER).optional(),
});

const uploadQuerySchema = z.strictObject({
  name: z.string().max(255, { error: "must be at most 255 characters" }).optional(),
});

/** What an upload's content type says it is. */
const UPLOAD_TYPES: Readonly<Record<string, "zip" | "python-file">> = {
  "application/zip": "zip",
  "text/x-python": "python-file",
};

const tooLargeUpload = (bytes?: number): string =>
  `the upload is ${bytes === undefined ? "over" : `${describeBytes(bytes)}, more than`} the ${describeBytes(MAX_CODE_ARCHIVE_BYTES)} allowed for a job's code archive; pass data as a dataset instead`;

const queryObject = (query: URLSearchParams): Record<string, string> => Object.fromEntries(query);

/** A job the caller owns, found. */
interface Found {
  readonly address: JobAddress;
  readonly state: JobState;
}

/** The console's API (api-contract.ts) over the caller's jobs, through the caller's own credentials. */
export class ConsoleApi {
  private readonly index: JobIndex;
  private readonly files: JobFiles;
  private readonly uploads: UploadStore<Detection>;
  private templates: Promise<readonly (Template & { readonly reasons: readonly string[] })[]> | undefined;

  constructor(
    private readonly backend: ConsoleBackend,
    private readonly logger: Logger,
  ) {
    const { s3, store } = backend.platform;
    this.index = new JobIndex(s3, store, logger);
    this.files = new JobFiles(s3, store);
    this.uploads = new UploadStore(logger);
  }

  /** Removes every upload not submitted yet; later uploads are refused. */
  close(): Promise<void> {
    return this.uploads.close();
  }

  /** Answers one request: JSON, an event stream or a file; an {@link ApiError} for anything refused. */
  async handle(request: ApiRequest, res: ServerResponse): Promise<void> {
    const { method, segments } = request;
    const [first, id, what, ...rest] = segments;
    if (method === "GET" && segments.length === 1) {
      if (first === "session") return json(res, this.session(request.csrfToken));
      if (first === "jobs") return json(res, await this.jobs(request.query));
      if (first === "templates") return json(res, await this.templateInfos());
      if (first === "tiers") return json(res, tiers());
      if (first === "usage") return json(res, await this.usage(request.query));
      if (first === "usage.csv") return this.usageCsv(request.query, res);
    }
    if (method === "POST" && segments.length === 1 && first === "jobs")
      return json(res, await this.submit(request.body, request.sessionId));
    if (method === "POST" && segments.length === 1 && first === "uploads")
      return json(res, await this.upload(request));
    if (first === "jobs" && id !== undefined) {
      if (method === "GET" && segments.length === 2) return json(res, await this.detail(id));
      if (method === "GET" && what === "log" && rest.length === 1 && rest[0] === "events")
        return this.logEvents(id, request, res);
      if (method === "GET" && what === "log.txt" && rest.length === 0)
        return this.logFile(id, request.query, res);
      if (method === "GET" && what === "metrics" && rest.length === 0)
        return json(res, await this.metrics(id));
      if (method === "GET" && what === "files" && rest.length >= 2)
        return this.download(id, rest[0]!, rest.slice(1).join("/"), res);
      if (method === "POST" && what === "cancel" && rest.length === 0)
        return json(res, await this.cancel(id));
      if (method === "POST" && what === "resubmit" && rest.length === 0)
        return json(res, await this.resubmit(id, request.body));
    }
    throw new ApiError(
      method === "GET" || method === "POST" ? 404 : 405,
      `no such API: ${method} /api/${segments.join("/")}`,
    );
  }

  private session(csrfToken: string): SessionInfo {
    const { owner, name, costWarningUsd } = this.backend;
    return { ...owner, platform: name, csrfToken, costWarningUsd, maxUploadBytes: MAX_CODE_ARCHIVE_BYTES };
  }

  private async find(jobId: string): Promise<Found> {
    if (!jobIdSchema.safeParse(jobId).success) throw notFound(jobId);
    const address = { ...this.backend.owner, jobId };
    const state = await this.backend.platform.store.getState(address).catch((error: unknown) => {
      // Another user's prefix: the caller's credentials may not read it, and they are told no more than
      // that they have no such job.
      if (isDenied(error)) return undefined;
      throw error;
    });
    if (!state) throw notFound(jobId);
    return { address, state };
  }

  private async jobs(query: URLSearchParams): Promise<JobPage> {
    const {
      limit = DEFAULT_PAGE_SIZE,
      cursor,
      status,
      q,
    } = parsed(listQuerySchema, queryObject(query), "query");
    const { project, user } = this.backend.owner;
    // One more than asked for: whether it exists says whether there is a next page.
    const listed = await this.index.list({
      project,
      users: { user },
      limit: limit + 1,
      ...(status && status.length > 0 && { statuses: new Set(status) }),
      ...(q && { text: q }),
      ...(cursor && { after: cursor }),
    });
    const page = listed.slice(0, limit);
    const now = new Date();
    const jobs = await mapBounded(page, ETA_CONCURRENCY, (job) => this.row(job, now));
    return { jobs, ...(listed.length > limit && { next: page.at(-1)!.cursor }) };
  }

  /** A job as the pages show it; a running one's ETA from its current attempt's rate. */
  private async row(job: Omit<IndexedJob, "cursor">, now: Date): Promise<JobRow> {
    const { state } = job;
    const listed = listedRow(job, now);
    const progress = state.progress;
    let etaSeconds: number | undefined;
    if (state.status === "running" && progress?.total !== undefined && state.attempts > 0) {
      const records = await readAttemptEnds(
        this.backend.platform.store.metricSeries(job.address),
        state.attempts,
      );
      etaSeconds = progressRate(records, state.attempts, now.getTime())?.etaSeconds;
    }
    const loss = progress?.metrics.loss;
    return {
      jobId: job.address.jobId,
      ...(job.name !== undefined && { name: job.name }),
      tier: state.tier,
      priority: job.priority,
      status: state.status,
      submittedAt: state.submittedAt,
      ...(state.startedAt !== undefined && { startedAt: state.startedAt }),
      ...(state.finishedAt !== undefined && { finishedAt: state.finishedAt }),
      attempts: state.attempts,
      ...(progress && {
        progress: {
          ...(progress.step !== undefined && { step: progress.step }),
          ...(progress.total !== undefined && { total: progress.total }),
          ...(progress.step !== undefined &&
            progress.total && { fraction: Math.min(1, progress.step / progress.total) }),
          ...(etaSeconds !== undefined && { etaSeconds: Math.round(etaSeconds) }),
          metrics: progress.metrics,
          at: progress.at,
        },
      }),
      ...(listed.costUsd !== undefined && { costUsd: listed.costUsd }),
      ...(loss !== undefined && { loss }),
    };
  }

  private async detail(jobId: string): Promise<JobDetail> {
    const { address, state } = await this.find(jobId);
    const store = this.backend.platform.store;
    const [entry, envelope, outputs, checkpoints] = await Promise.all([
      this.index.find(address, state.submittedAt),
      store.getEnvelope(address),
      this.files.list(address, "outputs"),
      this.files.list(address, "checkpoints"),
    ]);
    const job = await this.row(
      {
        address,
        // A job submitted before the index existed has none: the class every job then had.
        priority: entry?.priority ?? "normal",
        ...(entry?.name !== undefined && { name: entry.name }),
        state,
      },
      new Date(),
    );
    const steps = new Set(checkpoints.flatMap((f) => stepOf(f.name) ?? []));
    const files: JobFileInfo[] = [...outputs, ...checkpoints].map((f) => ({
      kind: f.kind,
      name: f.name,
      size: f.size,
      lastModified: f.lastModified.toISOString(),
      href: `/api/jobs/${jobId}/files/${f.kind}/${f.name.split("/").map(encodeURIComponent).join("/")}`,
    }));
    return {
      job,
      ...(state.note !== undefined && { note: state.note }),
      ...(state.node !== undefined && { node: state.node }),
      ...(envelope && {
        envelope: {
          status: envelope.status,
          ...(envelope.reason !== undefined && { reason: envelope.reason }),
          ...(envelope.result !== undefined && { result: envelope.result }),
          ...(envelope.error !== undefined && { error: envelope.error }),
          exitCode: envelope.exitCode,
          executionTime: envelope.executionTime,
        },
      }),
      files,
      checkpointSteps: [...steps].sort((a, b) => a - b),
    };
  }

  private async metrics(jobId: string): Promise<MetricHistory> {
    const { address, state } = await this.find(jobId);
    const records = await readMetricHistory(this.backend.platform.store.metricSeries(address));
    // A stored state's tier is checked when it is read; one this runtime does not know has no limit to draw.
    const memoryLimitMiB = isTierName(state.tier) ? TIERS[state.tier].memoryMiB : undefined;
    return { ...metricHistory(records), ...(memoryLimitMiB !== undefined && { memoryLimitMiB }) };
  }

  private async cancel(jobId: string): Promise<Accepted> {
    const { address, state } = await this.find(jobId);
    if (isFinal(state))
      throw new ApiError(409, `job ${jobId} has already ${state.status}; nothing to cancel`);
    await this.backend.platform.store.requestCancel(address);
    this.logger.info({ jobId }, "cancel requested from the console");
    return { ok: true };
  }

  private async submit(body: unknown, sessionId: string): Promise<Submitted> {
    const request = parsed(submitSchema, body, "body");
    if (request.upload !== undefined) {
      const id = request.upload;
      try {
        return await this.uploads.consume(sessionId, id, (path) =>
          this.submitCode(path, request, { upload: id.slice(0, 8) }),
        );
      } catch (error) {
        if (error instanceof UploadError) throw new ApiError(error.status, error.message);
        throw error;
      }
    }
    const templates = await this.templateList();
    const template = templates.find((t) => t.name === request.template);
    if (!template)
      throw new ApiError(
        400,
        `template: must be one of ${templates.map((t) => t.name).join(", ")}, got ${JSON.stringify(request.template)}`,
      );
    return this.submitCode(template.path, request, { template: template.name });
  }

  /** Submits the code at `path` as `crucible submit` does; what the submission refuses is a 400. */
  private async submitCode(
    path: string,
    request: Omit<SubmitBody, "template" | "upload"> & {
      readonly dataset?: readonly string[];
      readonly imageFamily?: string;
      readonly preempt?: false;
    },
    from: Readonly<Record<string, string>>,
  ): Promise<Submitted> {
    const { resumeFrom, resumeStep } = request;
    try {
      const queued = await submitFrom(this.backend.platform, path, {
        ...this.backend.owner,
        tier: request.tier,
        env: request.env ?? {},
        dataset: request.dataset ?? [],
        json: true,
        ...(request.priority && { priority: request.priority }),
        ...(request.timeoutSeconds !== undefined && { timeout: request.timeoutSeconds }),
        ...(request.imageFamily !== undefined && { imageFamily: request.imageFamily }),
        ...(request.preempt === false && { preempt: false }),
        ...(resumeFrom && {
          resumeFrom: resumeStep === undefined ? resumeFrom : `${resumeFrom}@${resumeStep}`,
        }),
      });
      this.logger.info(
        { jobId: queued.jobId, ...from, tier: request.tier },
        "job submitted from the console",
      );
      return { jobId: queued.jobId };
    } catch (error) {
      // What the submission refused (a tier this platform does not serve, a budget, a missing checkpoint,
      // code that cannot run).
      if (error instanceof UsageError || error instanceof SubmitError || error instanceof CodeError)
        throw new ApiError(400, error.message);
      throw error;
    }
  }

  /**
   * Receives code for a new job into the upload store, checks it as `crucible submit` would (a zip's
   * size, entries, names and main.py) and detects what it needs.
   */
  private async upload(request: ApiRequest): Promise<UploadInfo> {
    const { name } = parsed(uploadQuerySchema, queryObject(request.query), "query");
    const upload = request.upload;
    if (!upload) throw new ApiError(400, "an upload's body is the code itself");
    const type = upload.contentType.split(";")[0]!.trim().toLowerCase();
    const kind = UPLOAD_TYPES[type];
    if (!kind)
      throw new ApiError(
        415,
        `an upload must be application/zip (a .zip of your code, main.py at its root) or text/x-python (a single .py file), got ${JSON.stringify(upload.contentType)}`,
      );
    if (upload.declaredBytes !== undefined && upload.declaredBytes > MAX_CODE_ARCHIVE_BYTES)
      throw new ApiError(413, tooLargeUpload(upload.declaredBytes));
    const fileName = `${jobNameOf(name ?? "") ?? "upload"}${kind === "zip" ? ".zip" : ".py"}`;
    try {
      const received = await this.uploads.receive(
        request.sessionId,
        fileName,
        upload.body,
        MAX_CODE_ARCHIVE_BYTES,
        () => tooLargeUpload(),
        (path) => checkUpload(path, kind, fileName),
      );
      const { tier, family, image, reasons, warnings } = received.info;
      return {
        upload: received.id,
        name: fileName,
        size: received.size,
        expiresAt: new Date(received.expiresAt).toISOString(),
        recommendation: { tier, family, image, reasons, warnings },
      };
    } catch (error) {
      if (error instanceof UploadError) throw new ApiError(error.status, error.message);
      if (error instanceof CodeError) throw new ApiError(400, error.message);
      throw error;
    }
  }

  /**
   * A new job from one of the caller's jobs: its own code and spec as stored (read through the caller's
   * credentials, as every job route reads), from its checkpoints, on the tier and priority asked for.
   */
  private async resubmit(jobId: string, body: unknown): Promise<Submitted> {
    const request = parsed(resubmitSchema, body ?? {}, "body");
    const { address, state } = await this.find(jobId);
    const store = this.backend.platform.store;
    const [stored, entry] = await Promise.all([
      store.getSpec(address),
      this.index.find(address, state.submittedAt),
    ]);
    const spec = submittedSpecSchema.safeParse(stored);
    if (!spec.success)
      throw new ApiError(
        409,
        `job ${jobId} has ${stored === undefined ? "no stored spec" : "a stored spec that cannot be read"}; submit its code anew instead`,
      );
    const original = spec.data;
    const tier = request.tier ?? original.tier ?? (isTierName(state.tier) ? state.tier : undefined);
    if (tier === undefined)
      throw new ApiError(
        400,
        `tier: job ${jobId} ran on no tier of ${TIER_NAMES.join(", ")}; pick one of them`,
      );
    const scratch = await mkdtemp(join(tmpdir(), "crucible-console-resubmit-"));
    try {
      // Named as the job was, so that it is listed by the same name.
      const zip = join(scratch, `${entry?.name ?? jobId}.zip`);
      if (!(await store.getCode(address, zip)))
        throw new ApiError(409, `job ${jobId} has no stored code to resubmit`);
      return await this.submitCode(
        zip,
        {
          tier,
          priority: request.priority ?? original.priority ?? entry?.priority ?? "normal",
          env: original.env,
          ...(original.timeoutSeconds !== undefined && { timeoutSeconds: original.timeoutSeconds }),
          ...(original.datasets && { dataset: original.datasets.map(formatDatasetRef) }),
          // The image family it chose holds on its own tier; another tier picks its own.
          ...(original.imageFamily !== undefined &&
            tier === state.tier && { imageFamily: original.imageFamily }),
          ...(original.preemptible === false && { preempt: false as const }),
          resumeFrom: jobId,
          ...(request.resumeStep !== undefined && { resumeStep: request.resumeStep }),
        },
        { resubmitOf: jobId },
      );
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
  }

  /** The templates, read and detected once: they ship with the console and do not change while it runs. */
  private templateList(): Promise<readonly (Template & { readonly reasons: readonly string[] })[]> {
    this.templates ??= listTemplates().then((all) =>
      Promise.all(all.map(async (t) => ({ ...t, reasons: (await detect(t.path)).reasons }))),
    );
    return this.templates;
  }

  private async templateInfos(): Promise<TemplateInfo[]> {
    return (await this.templateList()).map((t) => ({
      name: t.name,
      summary: t.summary,
      recommendation: { tier: t.needs.tier, family: t.needs.family, reasons: t.reasons },
    }));
  }

  private async usage(query: URLSearchParams): Promise<UsageReport> {
    const { period, by } = parsed(usageQuerySchema, queryObject(query), "query");
    const now = new Date();
    const window = periodWindow(period, now);
    const { project } = this.backend.owner;
    const entries = await this.backend.platform.store
      .ledgerEntries({
        // The caller's credentials read their own project's ledger partitions only.
        project,
        since: window.from,
        ...(window.to && { until: new Date(window.to.getTime() - 1) }),
      })
      .catch((error: unknown) => {
        if (!isDenied(error)) throw error;
        throw new ApiError(403, `your credentials may not read the cost ledger of project ${project}`);
      });
    const budgets = budgetsFor(this.backend.policy, { by, month: period === "month", project });
    const report = buildUsage(entries, { by, window, ...(budgets && { budgets }) });
    const rows: UsageRow[] = report.rows.map((r) => ({
      key: r.key,
      costUsd: r.costUsd,
      seconds: r.seconds,
      jobs: r.jobs,
      ...(budgets?.[r.key] !== undefined && { budgetUsd: budgets[r.key] }),
    }));
    // A budget with nothing spent against it yet is still a row: how much is left is what it shows.
    for (const [key, budgetUsd] of Object.entries(budgets ?? {}))
      if (!rows.some((r) => r.key === key)) rows.push({ key, costUsd: 0, seconds: 0, jobs: 0, budgetUsd });
    return { from: report.window.from, to: report.window.to ?? now.toISOString(), by, rows };
  }

  private async usageCsv(query: URLSearchParams, res: ServerResponse): Promise<void> {
    const report = await this.usage(query);
    const csv = toCsv([
      [report.by, "jobs", "seconds", "cost_usd", "budget_usd"],
      ...report.rows.map((r) => [
        r.key,
        r.jobs,
        r.seconds,
        formatUsd(r.costUsd),
        r.budgetUsd === undefined ? "" : r.budgetUsd.toFixed(2),
      ]),
    ]);
    res.writeHead(200, {
      "content-type": "text/csv; charset=utf-8",
      "content-disposition": `attachment; filename="usage-${report.by}-${report.from.slice(0, 10)}.csv"`,
    });
    res.end(csv);
  }

  /** The job's log as text: every chunk in order, written as it is read (a log may be a gibibyte). */
  private async logFile(jobId: string, query: URLSearchParams, res: ServerResponse): Promise<void> {
    const { stream } = parsed(streamQuerySchema, queryObject(query), "query");
    const { address } = await this.find(jobId);
    const store = this.backend.platform.store;
    const series = store.logSeries(address);
    const chunks = await series.list();
    res.writeHead(200, {
      "content-type": "text/plain; charset=utf-8",
      "content-disposition": `attachment; filename="${jobId}${stream ? `-${stream}` : ""}.log"`,
    });
    if (chunks.length === 0) {
      // Jobs finished before logs were streamed kept only the tails their envelopes hold.
      for (const s of stream ? [stream] : (["stdout", "stderr"] as const))
        res.write((await store.getLog(address, s)) ?? "");
    }
    for (const chunk of chunks) {
      if (res.destroyed) return;
      const text = logText(await readLogRecords(series, [chunk], stream ? { stream } : {}));
      if (!res.write(text)) await once(res, "drain");
    }
    res.end();
  }

  /**
   * The job's log as server-sent events: every line so far, then new ones as the agent ships them (the
   * series polled every {@link LOG_POLL_MS}), then `end` once the job is final and all is sent. A line
   * the agent flushed unfinished is sent once it is whole. Each chunk sent is the stream's event id, so
   * a browser that reconnects (Last-Event-ID) goes on after it.
   */
  private async logEvents(jobId: string, request: ApiRequest, res: ServerResponse): Promise<void> {
    const { stream } = parsed(streamQuerySchema, queryObject(request.query), "query");
    const { address, state } = await this.find(jobId);
    const store = this.backend.platform.store;
    const series = store.logSeries(address);
    const { closed } = request;
    res.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "x-accel-buffering": "no" });
    res.flushHeaders();
    const send = async (text: string): Promise<void> => {
      if (closed.aborted) return;
      if (!res.write(text)) await once(res, "drain", { signal: closed }).catch(() => undefined);
    };
    const heartbeat = setInterval(() => void send(": keep-alive\n\n"), HEARTBEAT_MS);
    const pending = new Map<string, LogRecord>();
    const line = (record: LogRecord, text: string): Promise<void> => {
      const event: LogEvent = {
        attempt: record.a,
        stream: record.s,
        text,
        at: record.t,
        ...(record.x && { platform: true }),
      };
      return send(`event: line\ndata: ${JSON.stringify(event)}\n\n`);
    };
    let last =
      request.lastEventId?.startsWith(series.prefix) && /^[\w./-]+$/.test(request.lastEventId)
        ? request.lastEventId
        : undefined;
    let sentAny = last !== undefined;
    try {
      for (;;) {
        // The job's end is read before the listing: the agent ships its final lines before it ends it.
        const ended = isFinal((await store.getState(address)) ?? state);
        const fresh = await series.list(last);
        for (const chunk of fresh) {
          for (const record of await readLogRecords(series, [chunk], stream ? { stream } : {})) {
            const key = `${record.a}/${record.s}`;
            const before = pending.get(key);
            const whole = before ? { ...before, l: before.l + record.l, p: record.p } : record;
            if (whole.p) pending.set(key, whole);
            else {
              pending.delete(key);
              await line(whole, whole.l);
            }
          }
          last = chunk.key;
          sentAny = true;
          // Only between whole lines: a browser that comes back there misses no part of one.
          if (pending.size === 0) await send(`id: ${last}\n\n`);
          if (closed.aborted) return;
        }
        if (ended) {
          for (const record of pending.values()) await line(record, record.l);
          if (!sentAny) await this.sendTails(address, stream, line);
          await send(`event: end\ndata: {}\n\n`);
          res.end();
          return;
        }
        await sleep(LOG_POLL_MS, undefined, { signal: closed }).catch(() => undefined);
        if (closed.aborted) return;
      }
    } catch (error) {
      // The headers are sent: the stream just ends, and the browser reconnects after its last id.
      this.logger.warn({ err: error, jobId }, "log stream failed");
      res.destroy();
    } finally {
      clearInterval(heartbeat);
    }
  }

  /** A job finished before logs were streamed kept only its envelope's tails: sent as lines. */
  private async sendTails(
    address: JobAddress,
    stream: "stdout" | "stderr" | undefined,
    line: (record: LogRecord, text: string) => Promise<void>,
  ): Promise<void> {
    for (const s of stream ? [stream] : (["stdout", "stderr"] as const)) {
      const tail = await this.backend.platform.store.getLog(address, s);
      for (const text of tail?.replace(/\n$/, "").split("\n") ?? [])
        await line({ a: 1, s, l: text, t: 0 }, text);
    }
  }

  private async download(jobId: string, kind: string, name: string, res: ServerResponse): Promise<void> {
    const { address } = await this.find(jobId);
    if (kind !== "outputs" && kind !== "checkpoints")
      throw new ApiError(404, `no such kind of file: ${JSON.stringify(kind)} (outputs or checkpoints)`);
    const opened = await this.files.open(address, kind, name).catch((error: unknown) => {
      if (error instanceof JobAccessError) throw notFound(jobId);
      throw error;
    });
    if (!opened) throw new ApiError(404, `job ${jobId} has no ${kind} file ${JSON.stringify(name)}`);
    const base = name.slice(name.lastIndexOf("/") + 1);
    res.writeHead(200, {
      "content-type": "application/octet-stream",
      "content-length": String(opened.file.size),
      "content-disposition": `attachment; filename="${base.replace(/[^\w.-]/g, "_")}"; filename*=UTF-8''${encodeURIComponent(base)}`,
    });
    opened.body.pipe(res);
    await once(res, "close");
  }
}

/** Each metric's points against step, and where each later attempt (a resume) started. */
function metricHistory(records: readonly MetricRecord[]): Omit<MetricHistory, "memoryLimitMiB"> {
  const series = new Map<string, MetricPoint[]>();
  const resumes: { attempt: number; step: number }[] = [];
  const resources: ResourcePoint[] = [];
  for (const r of records) {
    if (!reportedByJob(r)) {
      const point = resourcePoint(r);
      if (point) resources.push(point);
      continue;
    }
    // A point without a step has no place on a chart against step.
    if (r.step === undefined) continue;
    if (r.a > 1 && !resumes.some((s) => s.attempt === r.a)) resumes.push({ attempt: r.a, step: r.step });
    for (const [name, value] of Object.entries(r.m)) {
      const points = series.get(name) ?? [];
      series.set(name, points);
      points.push({ step: r.step, value, attempt: r.a, at: r.t });
    }
  }
  // fromEntries defines each name as an own property: a metric named __proto__ stays a metric.
  return { series: Object.fromEntries(series), resumes, resources };
}

function resourcePoint(r: MetricRecord): ResourcePoint | undefined {
  const value = (name: string): number | undefined => (Object.hasOwn(r.m, name) ? r.m[name] : undefined);
  const memoryMiB = value(RESOURCE_METRICS.memoryMiB);
  if (memoryMiB === undefined) return undefined;
  const cpuCores = value(RESOURCE_METRICS.cpuCores);
  const gpuUtilPercent = value(RESOURCE_METRICS.gpuUtilPercent);
  const gpuMemoryMiB = value(RESOURCE_METRICS.gpuMemoryMiB);
  return {
    at: r.t,
    attempt: r.a,
    memoryMiB,
    ...(cpuCores !== undefined && { cpuCores }),
    ...(gpuUtilPercent !== undefined && { gpuUtilPercent }),
    ...(gpuMemoryMiB !== undefined && { gpuMemoryMiB }),
  };
}

function tiers(): TierInfo[] {
  return TIER_NAMES.map((name) => {
    const t = TIERS[name];
    return {
      name,
      gpu: t.gpu !== undefined,
      vcpus: t.vcpus,
      memoryMiB: t.memoryMiB,
      maxRuntimeSeconds: t.maxRuntimeSeconds,
      onDemandHourlyUsd: t.onDemandHourlyUsd,
    };
  });
}

/**
 * Checks uploaded code as a submission will (a zip's size, entry count, names and main.py) and detects
 * what it needs; a {@link CodeError} names the upload by `fileName`, not by where it is kept.
 */
async function checkUpload(path: string, kind: "zip" | "python-file", fileName: string): Promise<Detection> {
  try {
    if ((await stat(path)).size === 0) throw new CodeError(`code: ${fileName} is empty`);
    if (kind === "zip") await checkZip(path);
    return await detect(path);
  } catch (error) {
    if (error instanceof CodeError) throw new CodeError(error.message.replaceAll(path, fileName));
    throw error;
  }
}

function json(res: ServerResponse, body: unknown): void {
  res.writeHead(200, { "content-type": "application/json; charset=utf-8" });
  res.end(JSON.stringify(body));
}
