import { request } from "node:http";
import type { IncomingHttpHeaders } from "node:http";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Agent } from "../../../runtime/src/agent/agent";
import type { ConsoleBackend } from "../../../runtime/src/console/api";
import type {
  JobDetail,
  JobPage,
  LogEvent,
  MetricHistory,
  SessionInfo,
  Submitted,
  TemplateInfo,
  TierInfo,
  UploadInfo,
  UsageReport,
} from "../../../runtime/src/console/api-contract";
import type { RunningConsole } from "../../../runtime/src/console/server";
import { startConsole } from "../../../runtime/src/console/server";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import { localAgent, useLocalPlatform } from "../../support/local-agents";
import { consoleBackend, submitMain, zipOf } from "./console-fixture";
import { writeRepeatedZip } from "../../support/zip-bomb";

/**
 * The console's server over HTTP, against the local platform with an agent running the jobs in the
 * sandbox: as ada, whose jobs it lists, streams, charts, serves and cancels, while bob's job stays out of
 * reach; and the login, session, CSRF and header rules, on loopback and beyond it.
 */
const logger = pino({ level: process.env.CONSOLE_TEST_LOG ?? "silent" });
const TIER = "cpu-large" as const;
const ADA = { project: "lab", user: "ada" } as const;
const JOB_MS = 90_000;
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const local = useLocalPlatform(TIER, logger, { visibilityTimeoutSeconds: 30 });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
let agent: Agent;
let running: Promise<void>;
let server: RunningConsole;
let base: string;
let uiDir: string;
let cookie: string;
let session: SessionInfo;
let counter = 0;
const jobs: { trainer: string; sleeper: string; hostile: string; bob: string } = {
  trainer: "",
  sleeper: "",
  hostile: "",
  bob: "",
};

const STEPS = 20;
const CHECKPOINT = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 37 + 11) % 256));
const HOSTILE_LINE = `<script>alert("x")</script><img src=x onerror="alert(1)">`;

const TRAINER = `
import time
from crucible import checkpoint_dir, output_dir, progress

def main():
    for step in range(1, ${STEPS} + 1):
        print(f"working on step {step}", flush=True)
        progress(step=step, total=${STEPS}, loss=3.0 / step)
        if step == 10:
            (checkpoint_dir() / "step-10.bin").write_bytes(bytes((i * 37 + 11) % 256 for i in range(4096)))
        time.sleep(0.5)
    (output_dir() / "summary.txt").write_text("trained\\n")
    return {"steps": ${STEPS}}
`;
const SLEEPER = `
import time

def main():
    print("waiting to be cancelled", flush=True)
    time.sleep(600)
`;
const HOSTILE = `
def main():
    print(${JSON.stringify(HOSTILE_LINE)}, flush=True)
    return {"said": ${JSON.stringify(HOSTILE_LINE)}}
`;
const HELLO = `
def main():
    return {"hello": "bob"}
`;
/** Uploaded code: a job that checkpoints steps 10 and 20, or, resumed, says which checkpoints it found. */
const RESUMABLE = {
  "main.py": `
import os
from crucible import checkpoint_dir, progress
from helpers import MARK

def main():
    found = sorted(p.name for p in checkpoint_dir().iterdir())
    if not found:
        for step in (10, 20):
            progress(step=step, total=20)
            (checkpoint_dir() / f"step-{step}.bin").write_text(str(step))
    return {"mark": MARK, "greeting": os.environ.get("GREETING"), "resumed": found}
`,
  "helpers.py": `MARK = "from the uploaded helpers.py"\n`,
};
/** 300 MiB: over the 288 MiB a job's code archive may be. */
const OVERSIZED = 300 * 2 ** 20;
const LIMIT = "the 288 MiB (301989888 bytes) allowed for a job's code archive";

/** Submits `main` as `user` of ada's project, straight to the queue (as `crucible submit` does). */
const submit = (user: string, name: string, main: string): Promise<string> =>
  submitMain(local, { project: ADA.project, user }, TIER, {
    jobId: `api-${process.pid}-${++counter}`,
    name,
    main,
  });

/** The console's backend for ada: the local platform through her own credentials. */
const backendOf = (): ConsoleBackend => consoleBackend(local, ADA);

interface Answer {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Buffer;
  readonly text: string;
}

/**
 * One request with exactly these headers (fetch would add its own Origin and Sec-Fetch-* or refuse a
 * Host); every answer, whatever its status, must carry the console's security headers.
 */
function raw(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {},
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? "GET", headers: options.headers ?? {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        try {
          expect(res.headers["content-security-policy"], `${options.method ?? "GET"} ${url}`).toBe(CSP);
          expect(res.headers["x-content-type-options"]).toBe("nosniff");
          expect(res.headers["referrer-policy"]).toBe("no-referrer");
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
          return;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString("utf8") });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

/** A GET of the API as ada's browser, JSON expected. */
async function get<T>(path: string): Promise<T> {
  const answer = await raw(`${base}${path}`, { headers: { cookie } });
  expect(answer.status, answer.text).toBe(200);
  expect(answer.headers["cache-control"]).toBe("no-store");
  return JSON.parse(answer.text) as T;
}

/** A POST as ada's page sends it: JSON, the CSRF token, from the console's own origin; `headers` override. */
function post(
  path: string,
  body: unknown,
  headers: Record<string, string | undefined> = {},
): Promise<Answer> {
  const all: Record<string, string | undefined> = {
    cookie,
    "content-type": "application/json",
    "x-crucible-csrf": session.csrfToken,
    origin: base,
    ...headers,
  };
  return raw(`${base}${path}`, {
    method: "POST",
    headers: Object.fromEntries(Object.entries(all).filter(([, v]) => v !== undefined)) as Record<
      string,
      string
    >,
    body: JSON.stringify(body),
  });
}

const errorOf = (answer: Answer): string => (JSON.parse(answer.text) as { error: string }).error;

/** An upload as ada's page sends it: the file's bytes, its type, the CSRF token, from the console's origin. */
function upload(
  name: string,
  body: Buffer,
  type = "application/zip",
  headers: Record<string, string> = {},
  at = base,
): Promise<Answer> {
  return raw(`${at}/api/uploads?name=${encodeURIComponent(name)}`, {
    method: "POST",
    headers: { cookie, "content-type": type, "x-crucible-csrf": session.csrfToken, origin: at, ...headers },
    body,
  });
}

/**
 * An upload of `bytes` zeros, sent 1 MiB at a time as the server takes them, that stops sending once
 * the server answers: an oversized upload's refusal comes before it has all been sent.
 */
function uploadUntilAnswered(bytes: number, headers: Record<string, string>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    let answered = false;
    const req = request(
      `${base}/api/uploads?name=big.zip`,
      {
        method: "POST",
        headers: {
          cookie,
          "content-type": "application/zip",
          "x-crucible-csrf": session.csrfToken,
          origin: base,
          ...headers,
        },
      },
      (res) => {
        answered = true;
        const chunks: Buffer[] = [];
        res.on("data", (chunk: Buffer) => chunks.push(chunk));
        res.on("end", () => {
          const body = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, text: body.toString("utf8") });
          req.destroy();
        });
        res.on("error", reject);
      },
    );
    // Once answered, the server closes the connection: what is still being sent then fails, as it should.
    req.on("error", (error) => {
      if (!answered) reject(error);
    });
    const chunk = Buffer.alloc(2 ** 20);
    let sent = 0;
    const send = (): void => {
      while (!answered && sent < bytes) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once("drain", send);
      }
      if (!answered) req.end();
    };
    send();
  });
}

/** The private directory a console keeps the upload `id` in, and the upload's own directory there. */
async function uploadDirOf(id: string): Promise<{ root: string; dir: string } | undefined> {
  for (const name of await readdir(tmpdir())) {
    if (!name.startsWith("crucible-console-uploads-")) continue;
    const root = join(tmpdir(), name);
    const dir = join(root, id);
    if (await stat(dir).catch(() => undefined)) return { root, dir };
  }
  return undefined;
}

interface ServerEvent {
  readonly event: string;
  readonly data: string;
  readonly receivedAt: number;
}

/** A log stream's events until the server ends it, as a browser's EventSource reads them. */
async function logEvents(jobId: string, query = ""): Promise<ServerEvent[]> {
  const response = await fetch(`${base}/api/jobs/${jobId}/log/events${query}`, {
    headers: { cookie },
    signal: AbortSignal.timeout(JOB_MS),
  });
  expect(response.status).toBe(200);
  expect(response.headers.get("content-type")).toMatch(/^text\/event-stream/);
  expect(response.headers.get("content-security-policy")).toBe(CSP);
  const events: ServerEvent[] = [];
  const decoder = new TextDecoder();
  let buffer = "";
  const reader = response.body!.getReader();
  for (let read = await reader.read(); !read.done; read = await reader.read()) {
    buffer += decoder.decode(read.value, { stream: true });
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data: string[] = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) event = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length > 0) events.push({ event, data: data.join("\n"), receivedAt: Date.now() });
    }
  }
  return events;
}

async function until<T>(what: string, probe: () => Promise<T | undefined>, waitMs = JOB_MS): Promise<T> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const found = await probe();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${waitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** A job's detail once it has finished: its envelope stored and then (the agent's next write) its final state. */
const finished = (jobId: string): Promise<JobDetail> =>
  until(`job ${jobId} to finish`, async () => {
    const detail = await get<JobDetail>(`/api/jobs/${jobId}`);
    return detail.envelope && ["succeeded", "failed", "cancelled"].includes(detail.job.status)
      ? detail
      : undefined;
  });

beforeAll(async () => {
  uiDir = await mkdtemp(join(tmpdir(), "crucible-console-api-"));
  await writeFile(
    join(uiDir, "index.html"),
    '<!doctype html><title>Crucible</title><script src="/app.js"></script>\n',
  );
  await writeFile(join(uiDir, "app.js"), 'document.title = "Crucible";\n');
  agent = localAgent(local.platform, TIER, launcher, logger, { concurrency: 3, logFlushSeconds: 1 });
  running = agent.run();
  jobs.bob = await submit("bob", "hello", HELLO);
  jobs.trainer = await submit("ada", "trainer", TRAINER);
  jobs.sleeper = await submit("ada", "sleeper", SLEEPER);
  jobs.hostile = await submit("ada", "hostile", HOSTILE);
  server = await startConsole({ backend: backendOf(), logger, port: 0, uiDir });
  base = server.url.replace(/\/$/, "");
}, 600_000);

afterAll(async () => {
  await server?.close();
  agent?.stop("interrupted", 0);
  await running;
  if (uiDir) await rm(uiDir, { recursive: true, force: true });
});

describe("the console's API on loopback, as ada", () => {
  it("serves the page with a new session, answers only its own host, and refuses the API without a session", async () => {
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    expect(server.loginUrl).toBeUndefined();
    const page = await raw(`${base}/`);
    expect(page.status).toBe(200);
    expect(page.headers["content-type"]).toBe("text/html; charset=utf-8");
    const set = page.headers["set-cookie"]?.[0] ?? "";
    expect(set).toMatch(/^crucible_session=[\w-]{43}; HttpOnly; SameSite=Strict; Path=\//);
    cookie = set.split(";")[0]!;
    // Hash routing: any other path is the page too; its script is served as script.
    expect((await raw(`${base}/jobs/anything`, { headers: { cookie } })).text).toBe(page.text);
    expect((await raw(`${base}/app.js`)).headers["content-type"]).toBe("text/javascript; charset=utf-8");

    const none = await raw(`${base}/api/session`);
    expect(none.status).toBe(401);
    expect(JSON.parse(none.text)).toEqual({ error: expect.stringContaining("no session") as string });
    session = await get<SessionInfo>("/api/session");
    expect(session).toEqual({
      project: "lab",
      user: "ada",
      platform: "local",
      csrfToken: expect.stringMatching(/^[\w-]{43}$/) as string,
      costWarningUsd: 5,
      maxUploadBytes: 288 * 2 ** 20,
    });
    // A page elsewhere whose name was rebound to 127.0.0.1 is not this console.
    const rebound = await raw(`${base}/api/session`, { headers: { cookie, host: "attacker.example" } });
    expect(rebound.status).toBe(403);
    expect(rebound.text).toContain("this console answers only at http://127.0.0.1:");
  });

  it("lists ada's jobs newest first, a page at a time, filtered by state or text, and never bob's", async () => {
    const first = await get<JobPage>("/api/jobs?limit=2");
    expect(first.jobs.map((j) => j.jobId)).toEqual([jobs.hostile, jobs.sleeper]);
    expect(first.jobs[0]).toMatchObject({
      name: "ada-hostile",
      tier: TIER,
      priority: "normal",
      attempts: expect.any(Number) as number,
    });
    expect(first.next).toEqual(expect.any(String));
    const second = await get<JobPage>(`/api/jobs?limit=2&cursor=${encodeURIComponent(first.next!)}`);
    expect(second.jobs.map((j) => j.jobId)).toEqual([jobs.trainer]);
    expect(second.next).toBeUndefined();
    const named = await get<JobPage>("/api/jobs?q=SLEEP");
    expect(named.jobs.map((j) => j.jobId)).toEqual([jobs.sleeper]);
    const none = await get<JobPage>("/api/jobs?status=cancelled");
    expect(none.jobs).toEqual([]);
    const all = await get<JobPage>("/api/jobs");
    expect(all.jobs.map((j) => j.jobId)).not.toContain(jobs.bob);

    const bad = await raw(`${base}/api/jobs?limit=0&status=done`, { headers: { cookie } });
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.text)).toEqual({ error: 'limit: must be from 1 to 200, got "0"' });
    const state = await raw(`${base}/api/jobs?status=running,done`, { headers: { cookie } });
    expect(errorOf(state)).toMatch(/^status\.1: must list states among queued, running/);
  });

  it(
    "streams a job's log lines while it runs, each line once, and ends after it has finished",
    async () => {
      const events = await logEvents(jobs.trainer);
      const detail = await finished(jobs.trainer);
      const lines = events.filter((e) => e.event === "line").map((e) => JSON.parse(e.data) as LogEvent);
      expect(lines.map((l) => l.text)).toEqual(
        Array.from({ length: STEPS }, (_, i) => `working on step ${i + 1}`),
      );
      expect(lines[0]).toMatchObject({ attempt: 1, stream: "stdout", at: expect.any(Number) as number });
      expect(events.at(-1)?.event).toBe("end");
      expect(events.filter((e) => e.event === "end")).toHaveLength(1);
      // The first line came while the job ran, not all at once at its end.
      expect(events[0]!.receivedAt).toBeLessThan(Date.parse(detail.job.finishedAt!));
      // A stream of a finished job sends its log, then ends at once; --stderr-like filtering holds.
      const errors = await logEvents(jobs.trainer, "?stream=stderr");
      expect(errors.map((e) => e.event)).toEqual(["end"]);
    },
    JOB_MS * 2,
  );

  it("shows a finished job's envelope, files, checkpoint steps, metric history and whole log", async () => {
    const detail = await finished(jobs.trainer);
    expect(detail.job).toMatchObject({
      jobId: jobs.trainer,
      name: "ada-trainer",
      status: "succeeded",
      attempts: 1,
      progress: { step: STEPS, total: STEPS, fraction: 1 },
      loss: 3 / STEPS,
    });
    expect(detail.envelope).toMatchObject({ status: "success", result: { steps: STEPS }, exitCode: 0 });
    expect(detail.files.map((f) => [f.kind, f.name, f.size, f.href])).toEqual(
      expect.arrayContaining([
        ["outputs", "summary.txt", 8, `/api/jobs/${jobs.trainer}/files/outputs/summary.txt`],
        ["checkpoints", "step-10.bin", 4096, `/api/jobs/${jobs.trainer}/files/checkpoints/step-10.bin`],
      ]),
    );
    expect(detail.checkpointSteps).toEqual([10]);

    const history = await get<MetricHistory>(`/api/jobs/${jobs.trainer}/metrics`);
    const loss = history.series.loss!;
    expect([...new Set(loss.map((p) => p.step))]).toEqual(Array.from({ length: STEPS }, (_, i) => i + 1));
    for (const point of loss) expect(point.value).toBeCloseTo(3 / point.step, 6);
    expect(history.resumes).toEqual([]);

    const log = await raw(`${base}/api/jobs/${jobs.trainer}/log.txt`, { headers: { cookie } });
    expect(log.headers["content-type"]).toBe("text/plain; charset=utf-8");
    expect(log.headers["content-disposition"]).toBe(`attachment; filename="${jobs.trainer}.log"`);
    expect(log.text).toBe(Array.from({ length: STEPS }, (_, i) => `working on step ${i + 1}\n`).join(""));
  });

  it("downloads a checkpoint's exact bytes, and nothing outside the job's files", async () => {
    const { files } = await finished(jobs.trainer);
    const checkpoint = files.find((f) => f.kind === "checkpoints")!;
    const download = await raw(`${base}${checkpoint.href}`, { headers: { cookie } });
    expect(download.status).toBe(200);
    expect(download.headers["content-disposition"]).toMatch(/^attachment; filename="step-10.bin"/);
    expect(download.body.equals(CHECKPOINT)).toBe(true);
    for (const path of [
      `files/checkpoints/..%2Fspec.json`,
      `files/outputs/..%2F..%2F..%2F${jobs.sleeper}%2Fspec.json`,
      `files/code/code.zip`,
      `files/outputs/missing.txt`,
    ]) {
      const refused = await raw(`${base}/api/jobs/${jobs.trainer}/${path}`, { headers: { cookie } });
      expect(refused.status, path).toBe(404);
    }
  });

  it("sends what a job printed as JSON data, never as markup", async () => {
    await finished(jobs.hostile);
    const events = await logEvents(jobs.hostile);
    const line = events.find((e) => e.event === "line")!;
    // As JSON text: the markup's angle brackets unchanged, only its quotes escaped as JSON escapes them.
    expect(line.data).toContain(JSON.stringify(HOSTILE_LINE));
    expect((JSON.parse(line.data) as LogEvent).text).toBe(HOSTILE_LINE);
    const detail = await get<JobDetail>(`/api/jobs/${jobs.hostile}`);
    expect(detail.envelope?.result).toEqual({ said: HOSTILE_LINE });
  });

  it("answers bob's job id exactly as a job that does not exist", async () => {
    for (const [id, what] of [
      [jobs.bob, ""],
      [jobs.bob, "/metrics"],
      [jobs.bob, "/log/events"],
      [jobs.bob, "/log.txt"],
      [jobs.bob, "/files/outputs/x"],
      ["no-such-job", ""],
      ["../../bob", ""],
    ] as const) {
      const answer = await raw(`${base}/api/jobs/${encodeURIComponent(id)}${what}`, { headers: { cookie } });
      expect(answer.status, `${id}${what}`).toBe(404);
      expect(JSON.parse(answer.text)).toEqual({ error: `no job ${id} among your jobs` });
    }
    const cancel = await post(`/api/jobs/${jobs.bob}/cancel`, {});
    expect(cancel.status).toBe(404);
  });

  it(
    "cancels a running job only with the CSRF token and from the console's own origin",
    async () => {
      const path = `/api/jobs/${jobs.sleeper}/cancel`;
      const refusals: [Record<string, string | undefined>, string][] = [
        [{ "x-crucible-csrf": undefined }, "CSRF token in the x-crucible-csrf header"],
        [{ "x-crucible-csrf": "not-the-token" }, "CSRF token in the x-crucible-csrf header"],
        [{ origin: "http://attacker.example" }, `must come from ${base}, not from http://attacker.example`],
        [{ origin: undefined }, "no Origin header and no Sec-Fetch-Site of same-origin"],
        [{ origin: undefined, "sec-fetch-site": "cross-site" }, "no Sec-Fetch-Site of same-origin"],
      ];
      for (const [headers, message] of refusals) {
        const refused = await post(path, {}, headers);
        expect(refused.status, JSON.stringify(headers)).toBe(403);
        expect(errorOf(refused)).toContain(message);
      }
      expect((await get<JobDetail>(`/api/jobs/${jobs.sleeper}`)).job.status).not.toBe("cancelled");
      // Without an Origin, a same-origin fetch's Sec-Fetch-Site is enough.
      const accepted = await post(path, {}, { origin: undefined, "sec-fetch-site": "same-origin" });
      expect(accepted.status, accepted.text).toBe(200);
      expect(JSON.parse(accepted.text)).toEqual({ ok: true });
      const detail = await finished(jobs.sleeper);
      expect(detail.job.status).toBe("cancelled");
      const again = await post(path, {});
      expect(again.status).toBe(409);
      expect(JSON.parse(again.text)).toEqual({
        error: `job ${jobs.sleeper} has already cancelled; nothing to cancel`,
      });
    },
    JOB_MS * 2,
  );

  it("lists templates with their recommendation, the tiers, and ada's project's usage as JSON and CSV", async () => {
    const templates = await get<TemplateInfo[]>("/api/templates");
    expect(templates.find((t) => t.name === "nanogpt")).toMatchObject({
      recommendation: {
        // What `crucible detect` says of its code: it can use CUDA, and imports torch.
        tier: "gpu-small",
        family: "ml-cuda",
        reasons: expect.arrayContaining([expect.stringContaining("imports torch")]) as string[],
      },
    });
    const tiers = await get<TierInfo[]>("/api/tiers");
    expect(tiers.find((t) => t.name === "gpu-small")).toMatchObject({
      gpu: true,
      vcpus: expect.any(Number) as number,
    });
    // The agent writes an attempt's ledger entry as it finishes the job.
    const usage = await until("ada's spend in the ledger", async () => {
      const report = await get<UsageReport>("/api/usage?period=month&by=user");
      return report.rows.some((r) => r.key === "ada") ? report : undefined;
    });
    expect(usage.by).toBe("user");
    expect(usage.rows.find((r) => r.key === "ada")!.jobs).toBeGreaterThanOrEqual(1);
    const csv = await raw(`${base}/api/usage.csv?by=tier`, { headers: { cookie } });
    expect(csv.headers["content-type"]).toBe("text/csv; charset=utf-8");
    expect(csv.text.split("\n")[0]).toBe("tier,jobs,seconds,cost_usd,budget_usd");
    expect(csv.text).toContain(`${TIER},`);
    const bad = await raw(`${base}/api/usage?period=year`, { headers: { cookie } });
    expect(bad.status).toBe(400);
    expect(errorOf(bad)).toMatch(/^period: .*got "year"$/);
  });

  it(
    "submits a template as a new job, validating the body first",
    async () => {
      for (const [body, message] of [
        [{ template: "hello", tier: "cpu-huge" }, /^tier: .*got "cpu-huge"$/],
        [{ template: "nope", tier: TIER }, /^template: must be one of .*hello.*got "nope"$/],
        [{ template: "hello", tier: TIER, env: { "BAD NAME": "x" } }, /^env\.BAD NAME: /],
        [{ template: "hello", tier: TIER, resumeStep: 3 }, /^resumeStep: resumeStep needs resumeFrom/],
        [{ template: "hello", tier: TIER, extra: 1 }, /^body: Unrecognized key/],
        [{ template: "hello", tier: TIER, resumeFrom: jobs.bob }, /--resume-from/],
      ] as const) {
        const refused = await post("/api/jobs", body);
        expect(refused.status, JSON.stringify(body)).toBe(400);
        expect(errorOf(refused)).toMatch(message);
      }
      const big = await post("/api/jobs", {
        template: "hello",
        tier: TIER,
        env: { PAD: "x".repeat(70_000) },
      });
      expect(big.status).toBe(413);
      const notJson = await raw(`${base}/api/jobs`, {
        method: "POST",
        headers: { cookie, origin: base, "x-crucible-csrf": session.csrfToken, "content-type": "text/plain" },
        body: "template=hello",
      });
      expect(notJson.status).toBe(415);

      const submitted = await post("/api/jobs", {
        template: "hello",
        tier: TIER,
        priority: "high",
        env: { GREETING: "hi" },
      });
      expect(submitted.status, submitted.text).toBe(200);
      const { jobId } = JSON.parse(submitted.text) as { jobId: string };
      const detail = await finished(jobId);
      expect(detail.job).toMatchObject({ jobId, name: "hello", priority: "high", status: "succeeded" });
      expect((await get<JobPage>("/api/jobs?limit=1")).jobs[0]!.jobId).toBe(jobId);
    },
    JOB_MS * 2,
  );
});

describe("code uploaded to the console, as ada", () => {
  const resumable: { upload?: UploadInfo; jobId?: string } = {};
  let uploadsRoot: string;

  it(
    "detects an uploaded zip, submits it once with its settings, and its job runs all of its code",
    async () => {
      const zip = await zipOf(RESUMABLE);
      const uploaded = await upload("my resumable.zip", zip);
      expect(uploaded.status, uploaded.text).toBe(200);
      const info = JSON.parse(uploaded.text) as UploadInfo;
      expect(info).toEqual({
        upload: expect.stringMatching(/^[\w-]{43}$/) as string,
        name: "my-resumable.zip",
        size: zip.length,
        expiresAt: expect.any(String) as string,
        recommendation: {
          tier: "cpu-small",
          family: "cpu",
          image: "crucible/cpu:py3.13",
          reasons: ["no GPU, PyTorch or large-memory use found: the smallest tier fits"],
          warnings: [],
        },
      });
      expect(Date.parse(info.expiresAt) - Date.now()).toBeGreaterThan(3590_000);
      expect(Date.parse(info.expiresAt) - Date.now()).toBeLessThanOrEqual(3600_000);
      // Kept privately: only the console's user reads the directory, only it the file.
      const kept = (await uploadDirOf(info.upload))!;
      uploadsRoot = kept.root;
      expect((await stat(kept.root)).mode & 0o777).toBe(0o700);
      expect((await stat(kept.dir)).mode & 0o777).toBe(0o700);
      expect((await stat(join(kept.dir, info.name))).mode & 0o777).toBe(0o600);
      expect((await readFile(join(kept.dir, info.name))).equals(zip)).toBe(true);

      const submitted = await post("/api/jobs", {
        upload: info.upload,
        tier: TIER,
        priority: "high",
        env: { GREETING: "hi" },
        timeoutSeconds: 300,
      });
      expect(submitted.status, submitted.text).toBe(200);
      const { jobId } = JSON.parse(submitted.text) as Submitted;
      // Submitted once, then gone.
      expect(await uploadDirOf(info.upload)).toBeUndefined();
      const again = await post("/api/jobs", { upload: info.upload, tier: TIER });
      expect(again.status).toBe(400);
      expect(errorOf(again)).toBe(
        `upload: no upload ${JSON.stringify(info.upload)} of this session: an upload lasts 60 minutes and is submitted once; upload the code again`,
      );

      const detail = await finished(jobId);
      expect(detail.job).toMatchObject({
        jobId,
        name: "my-resumable",
        priority: "high",
        status: "succeeded",
      });
      expect(detail.envelope?.result).toEqual({
        mark: "from the uploaded helpers.py",
        greeting: "hi",
        resumed: [],
      });
      expect(detail.checkpointSteps).toEqual([10, 20]);
      Object.assign(resumable, { upload: info, jobId });
    },
    JOB_MS * 2,
  );

  it(
    "resubmits a job of uploaded code with its own code and settings, from the checkpoint step asked for",
    async () => {
      const original = resumable.jobId!;
      for (const [body, status, message] of [
        [{ tier: "cpu-huge" }, 400, /^tier: .*got "cpu-huge"$/],
        [{ template: "hello" }, 400, /^body: Unrecognized key: "template"/],
        [{ resumeStep: 15 }, 400, new RegExp(`no checkpoint at step 15; it has steps 10, 20$`)],
      ] as const) {
        const refused = await post(`/api/jobs/${original}/resubmit`, body);
        expect(refused.status, JSON.stringify(body)).toBe(status);
        expect(errorOf(refused)).toMatch(message);
      }
      for (const id of [jobs.bob, "no-such-job"]) {
        const refused = await post(`/api/jobs/${id}/resubmit`, {});
        expect(refused.status, id).toBe(404);
        expect(errorOf(refused)).toBe(`no job ${id} among your jobs`);
      }

      const resubmitted = await post(`/api/jobs/${original}/resubmit`, { resumeStep: 10 });
      expect(resubmitted.status, resubmitted.text).toBe(200);
      const { jobId } = JSON.parse(resubmitted.text) as Submitted;
      expect(jobId).not.toBe(original);
      const detail = await finished(jobId);
      expect(detail.job).toMatchObject({
        name: "my-resumable",
        tier: TIER,
        priority: "high",
        status: "succeeded",
      });
      // Its own code (helpers.py too) and environment, from step 10's checkpoint only.
      expect(detail.envelope?.result).toEqual({
        mark: "from the uploaded helpers.py",
        greeting: "hi",
        resumed: ["step-10.bin"],
      });
      const ada = local.platform.as(ADA.project, ADA.user);
      expect(await ada.store.getSpec({ ...ADA, jobId })).toEqual({
        jobId,
        tier: TIER,
        priority: "high",
        env: { GREETING: "hi" },
        timeoutSeconds: 300,
        resumeFrom: original,
        resumeStep: 10,
      });
    },
    JOB_MS * 2,
  );

  it("refuses an upload over the code archive limit with 413, whether declared or streamed, keeping none of it", async () => {
    const declared = await uploadUntilAnswered(OVERSIZED, { "content-length": String(OVERSIZED) });
    expect(declared.status).toBe(413);
    expect(errorOf(declared)).toBe(
      `the upload is 300 MiB (314572800 bytes), more than ${LIMIT}; pass data as a dataset instead`,
    );
    // Chunked, with no length to refuse it by: refused once past the limit.
    const streamed = await uploadUntilAnswered(OVERSIZED, {});
    expect(streamed.status).toBe(413);
    expect(errorOf(streamed)).toBe(`the upload is over ${LIMIT}; pass data as a dataset instead`);
    expect(await readdir(uploadsRoot)).toEqual([]);
  });

  it("refuses a hostile or broken upload, saying what is wrong with it, and keeps none of it", async () => {
    const dir = await mkdtemp(join(tmpdir(), "crucible-console-zips-"));
    try {
      const climbing = join(dir, "climbing.zip");
      await writeRepeatedZip(
        climbing,
        { count: 1, name: () => "main.py", data: Buffer.from("def main():\n    return 1\n") },
        { count: 1, name: () => "../x.py", data: Buffer.from("x = 1\n") },
      );
      const cases: [string, Buffer, string, number, string | RegExp][] = [
        [
          "climbing.zip",
          await readFile(climbing),
          "application/zip",
          400,
          'code: climbing.zip entry "../x.py" climbs out of the archive with ".."; entries must stay inside it',
        ],
        [
          "nomain.zip",
          await zipOf({ "train.py": "x = 1\n" }),
          "application/zip",
          400,
          "code: nomain.zip has no main.py at its root (found: train.py)",
        ],
        [
          "notzip.zip",
          Buffer.from("not a zip"),
          "application/zip",
          400,
          /^code: notzip\.zip is not a readable zip \(End of central directory record signature not found/,
        ],
        ["empty.py", Buffer.alloc(0), "text/x-python", 400, "code: empty.py is empty"],
        [
          "code.tar",
          Buffer.from("x"),
          "application/x-tar",
          415,
          'an upload must be application/zip (a .zip of your code, main.py at its root) or text/x-python (a single .py file), got "application/x-tar"',
        ],
      ];
      for (const [name, body, type, status, message] of cases) {
        const refused = await upload(name, body, type);
        expect(refused.status, name).toBe(status);
        if (typeof message === "string") expect(errorOf(refused), name).toBe(message);
        else expect(errorOf(refused), name).toMatch(message);
      }
      // Behind the same CSRF and origin rules as every other POST.
      const forged = await upload("main.py", Buffer.from("x = 1\n"), "text/x-python", {
        origin: "http://attacker.example",
      });
      expect(forged.status).toBe(403);
      expect(await readdir(uploadsRoot)).toEqual([]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("submits an upload only for the session that made it, and takes exactly one of template and upload", async () => {
    // Another browser's session on the same console: its upload is its own.
    const other = (await raw(`${base}/`)).headers["set-cookie"]![0]!.split(";")[0]!;
    const otherSession = JSON.parse(
      (await raw(`${base}/api/session`, { headers: { cookie: other } })).text,
    ) as SessionInfo;
    const theirs = await upload("theirs.py", Buffer.from("def main():\n    return 1\n"), "text/x-python", {
      cookie: other,
      "x-crucible-csrf": otherSession.csrfToken,
    });
    expect(theirs.status, theirs.text).toBe(200);
    const { upload: id, name, recommendation } = JSON.parse(theirs.text) as UploadInfo;
    expect([name, recommendation.tier]).toEqual(["theirs.py", "cpu-small"]);
    const unknown = "A".repeat(43);
    for (const [body, message] of [
      [
        { upload: id, tier: TIER },
        `upload: no upload ${JSON.stringify(id)} of this session: an upload lasts 60 minutes and is submitted once; upload the code again`,
      ],
      [
        { upload: unknown, tier: TIER },
        `upload: no upload ${JSON.stringify(unknown)} of this session: an upload lasts 60 minutes and is submitted once; upload the code again`,
      ],
      [
        { upload: "x", tier: TIER },
        'upload: must be the `upload` id that POST /api/uploads answered, got "x"',
      ],
      [
        { template: "hello", upload: id, tier: TIER },
        `upload: give either template or upload, not both, got ${JSON.stringify(id)}`,
      ],
      [
        { tier: TIER },
        "template: give the code to run: template (a name from GET /api/templates) or upload (an id from POST /api/uploads)",
      ],
    ] as const) {
      const refused = await post("/api/jobs", body);
      expect(refused.status, JSON.stringify(body)).toBe(400);
      expect(errorOf(refused)).toBe(message);
    }
    // Still there for the session that made it.
    expect(await uploadDirOf(id)).toBeDefined();
  });
});

describe("a console beyond loopback", () => {
  let open: RunningConsole;
  let at: string;

  beforeAll(async () => {
    open = await startConsole({ backend: backendOf(), logger, host: "0.0.0.0", port: 0, uiDir });
    at = `http://127.0.0.1:${new URL(open.url).port}`;
  });
  afterAll(() => open?.close());

  it("refuses page and API until the printed login URL makes a session, and refuses a wrong token", async () => {
    expect(open.loginUrl).toMatch(/^http:\/\/[^/]+:\d+\/login\?token=[\w-]{43}$/);
    const token = new URL(open.loginUrl!).searchParams.get("token")!;
    const page = await raw(`${at}/`);
    expect(page.status).toBe(401);
    expect(page.text).toContain("open the login URL that `crucible console` printed");
    expect(page.headers["set-cookie"]).toBeUndefined();
    expect((await raw(`${at}/app.js`)).status).toBe(401);
    expect((await raw(`${at}/api/session`)).status).toBe(401);

    for (const wrong of ["", "?token=", `?token=${token.slice(0, -1)}x`, `?token=${token}x`]) {
      const refused = await raw(`${at}/login${wrong}`);
      expect(refused.status, wrong).toBe(401);
      expect(refused.headers["set-cookie"]).toBeUndefined();
    }
    const login = await raw(`${at}/login?token=${token}`);
    expect(login.status).toBe(303);
    expect(login.headers.location).toBe("/");
    const set = login.headers["set-cookie"]?.[0] ?? "";
    expect(set).toMatch(/^crucible_session=[\w-]{43}; HttpOnly; SameSite=Strict; Path=\//);
    const mine = set.split(";")[0]!;
    expect((await raw(`${at}/`, { headers: { cookie: mine } })).status).toBe(200);
    const who = await raw(`${at}/api/session`, { headers: { cookie: mine } });
    expect(who.status).toBe(200);
    expect(JSON.parse(who.text)).toMatchObject({ user: "ada" });
    // Another session's cookie (from the loopback console) means nothing here.
    expect((await raw(`${at}/api/session`, { headers: { cookie } })).status).toBe(401);
  });

  it("removes what was uploaded and not submitted when it closes", async () => {
    const closing = await startConsole({ backend: backendOf(), logger, port: 0, uiDir });
    const at = closing.url.replace(/\/$/, "");
    const mine = (await raw(`${at}/`)).headers["set-cookie"]![0]!.split(";")[0]!;
    const { csrfToken } = JSON.parse(
      (await raw(`${at}/api/session`, { headers: { cookie: mine } })).text,
    ) as SessionInfo;
    const answer = await upload(
      "kept.py",
      Buffer.from("def main():\n    return 1\n"),
      "text/x-python",
      { cookie: mine, "x-crucible-csrf": csrfToken },
      at,
    );
    expect(answer.status, answer.text).toBe(200);
    const kept = (await uploadDirOf((JSON.parse(answer.text) as UploadInfo).upload))!;
    expect(kept).toBeDefined();
    await closing.close();
    expect(await stat(kept.root).catch(() => undefined)).toBeUndefined();
  });

  it("says the page is not built when its directory has no index.html", async () => {
    const empty = await mkdtemp(join(tmpdir(), "crucible-console-empty-"));
    const bare = await startConsole({ backend: backendOf(), logger, port: 0, uiDir: empty });
    try {
      const answer = await raw(bare.url);
      expect(answer.status).toBe(500);
      expect(answer.text).toContain("the console's page is not built");
      expect(answer.text).toContain("npm run build");
    } finally {
      await bare.close();
      await rm(empty, { recursive: true, force: true });
    }
  });
});
