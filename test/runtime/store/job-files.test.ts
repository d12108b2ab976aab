import type { S3Client } from "@aws-sdk/client-s3";
import { HeadObjectCommand, PutObjectCommand, S3Client as Client } from "@aws-sdk/client-s3";
import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import type { JobFileKind } from "../../../runtime/src/store/job-files";
import {
  ChecksumError,
  JobAccessError,
  JobFiles,
  JobNotFoundError,
  matcher,
  printable,
  PullDirectoryError,
  SHA256_METADATA,
  stepOf,
  UnsafeKeyError,
} from "../../../runtime/src/store/job-files";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { JobStore } from "../../../runtime/src/store/job-store";

const MiB = 2 ** 20;
const logger = pino({ level: "silent" });
let platform: LocalPlatform;
let dir: string;
let jobs = 0;
const nextJob = (): JobAddress => ({ project: "lab", user: "ada", jobId: `files-${++jobs}` });
const sha256 = (data: Buffer | string): string => createHash("sha256").update(data).digest("hex");

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: ["cpu-small"], logger });
  dir = await mkdtemp(join(tmpdir(), "crucible-job-files-"));
});
afterAll(async () => {
  await platform?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** ada's own S3 client, recording the GetObject requests it sends (key and range). */
function adaClient(): { s3: S3Client; gets: { key: string; range?: string }[] } {
  const { credentials } = platform.as("lab", "ada");
  const s3 = new Client({
    endpoint: platform.endpoint,
    region: platform.region,
    credentials,
    forcePathStyle: true,
  });
  const gets: { key: string; range?: string }[] = [];
  s3.middlewareStack.add(
    (next, context) => (args) => {
      const input = args.input as { Key: string; Range?: string };
      if (context.commandName === "GetObjectCommand") gets.push({ key: input.Key, range: input.Range });
      return next(args);
    },
    { step: "initialize" },
  );
  return { s3, gets };
}

/** Uploads `files` (name → content) as the job's `kind`, as the agent does: through JobStore.uploadDir. */
async function upload(
  job: JobAddress,
  kind: JobFileKind,
  files: Record<string, Buffer | string>,
): Promise<void> {
  const source = await mkdtemp(join(dir, "source-"));
  for (const [name, content] of Object.entries(files)) {
    await mkdir(join(source, name, ".."), { recursive: true });
    await writeFile(join(source, name), content);
  }
  await platform.as("lab", "ada").store.uploadDir(job, kind, source, new Map());
}

/**
 * Writes an object straight under the job's prefix, as a researcher with their credentials can on a
 * stack (S3 keys are opaque there: `..` or an empty segment is just text). Written with the platform's
 * own client, as the local gateway refuses such keys from submitters (the emulator behind it would not
 * keep them as they are).
 */
async function put(
  job: JobAddress,
  name: string,
  body: string | Buffer,
  metadata: Record<string, string> = {},
) {
  const key = platform.store.jobPrefix(job) + name;
  await platform.s3.send(
    new PutObjectCommand({ Bucket: platform.bucket, Key: key, Body: body, Metadata: metadata }),
  );
}

const filesOf = (s3: S3Client = platform.as("lab", "ada").s3): JobFiles =>
  new JobFiles(s3, platform.as("lab", "ada").store);

/** Every entry below `root`, as paths relative to it. */
const tree = async (root: string): Promise<string[]> =>
  (await readdir(root, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name).slice(root.length + 1))
    .sort();

describe("the checksum recorded at upload", () => {
  it("is each file's SHA-256 in x-amz-meta-sha256, for single-part and multipart uploads alike", async () => {
    const job = nextJob();
    const big = randomBytes(9 * MiB);
    await upload(job, "outputs", { "small.txt": "hello", "big.bin": big });
    const head = async (name: string) =>
      platform.s3.send(
        new HeadObjectCommand({
          Bucket: platform.bucket,
          Key: `${platform.store.jobPrefix(job)}outputs/${name}`,
        }),
      );
    const small = await head("small.txt");
    expect(small.Metadata).toEqual({ [SHA256_METADATA]: sha256("hello") });
    const multipart = await head("big.bin");
    // Two 8 MiB parts: the ETag is no MD5 of the file, the recorded SHA-256 is the file's.
    expect(multipart.ETag).toMatch(/-2"$/);
    expect(multipart.Metadata).toEqual({ [SHA256_METADATA]: sha256(big) });
  });
});

describe("stepOf", () => {
  it.each([
    ["ckpt_000500.pt", 500],
    ["step-1200/model.safetensors", 1200],
    ["epoch=3-step=1500.ckpt", 1500],
    ["global_step500/mp_rank_00_model_states.pt", 500],
    ["checkpoint-500/model-00001-of-00002.safetensors", 500],
    ["run-3/ckpt_000500.pt", 500],
    ["model.ckpt-1500.index", 1500],
    ["model.h5", undefined],
    ["weights_bf16.safetensors", undefined],
    ["ckpt_100_of_200.pt", undefined],
    ["step-100/step-200.pt", undefined],
    ["latest.pt", undefined],
    ["ckpt_99999999999999999999.pt", undefined],
  ])("%s: %s", (name, step) => {
    expect(stepOf(name)).toBe(step);
  });
});

describe("matcher", () => {
  it.each([
    ["*.pt", "outputs/model.pt", true],
    ["*.pt", "checkpoints/step-1/model.pt", true],
    ["*.pt", "outputs/.hidden.pt", true],
    ["*.pt", "outputs/model.pt.json", false],
    ["outputs/**", "outputs/a/b.txt", true],
    ["outputs/**", "checkpoints/a.txt", false],
    ["checkpoints/step-1200/*", "checkpoints/step-1200/model.safetensors", true],
    ["outputs/*.pt", "outputs/sub/model.pt", false],
  ])("%s against %s: %s", (glob, path, matches) => {
    expect(matcher(glob)(path)).toBe(matches);
  });

  it("refuses an empty glob", () => {
    expect(() => matcher(" ")).toThrow("a glob may not be empty");
  });
});

describe("listing", () => {
  it("lists a kind's files with name, size and time, leaving out S3 consoles' folder markers", async () => {
    const job = nextJob();
    await upload(job, "checkpoints", {
      "ckpt_000500.pt": "five hundred",
      "step-1200/model.safetensors": "x",
    });
    await put(job, "checkpoints/empty-folder/", Buffer.alloc(0));
    const listed = await filesOf().list(job, "checkpoints");
    expect(listed.map(({ name, size, kind }) => ({ name, size, kind }))).toEqual([
      { name: "ckpt_000500.pt", size: 12, kind: "checkpoints" },
      { name: "step-1200/model.safetensors", size: 1, kind: "checkpoints" },
    ]);
    expect(listed.every((f) => f.lastModified.getTime() > Date.now() - 60_000)).toBe(true);
    expect(await filesOf().list(job, "outputs")).toEqual([]);
  });

  it("names an unknown job, and another user's job as access denied", async () => {
    await expect(filesOf().list({ project: "lab", user: "ada", jobId: "nope" }, "outputs")).rejects.toThrow(
      new JobNotFoundError("no job nope in lab/ada"),
    );
    const bobs = { project: "lab", user: "bob", jobId: "files-bob" };
    await platform.as("lab", "bob").store.updateState(bobs, { status: "succeeded", tier: "cpu-small" });
    await expect(filesOf().list(bobs, "outputs")).rejects.toThrow(
      new JobAccessError(
        "access denied to job files-bob of lab/bob: your credentials reach only your own jobs (--project and --user name the job's owner)",
      ),
    );
  });
});

describe("pull", () => {
  it("downloads outputs and checkpoints under DIR/<kind>/, verified, and skips them once present", async () => {
    const job = nextJob();
    await upload(job, "outputs", { "metrics.json": '{"loss": 0.1}', "plots/loss.png": "png" });
    await upload(job, "checkpoints", { "ckpt_000500.pt": "weights" });
    const files = filesOf();
    const plan = await files.plan(job, ["outputs", "checkpoints"]);
    expect(plan.map((f) => f.path)).toEqual([
      "outputs/metrics.json",
      "outputs/plots/loss.png",
      "checkpoints/ckpt_000500.pt",
    ]);
    const into = join(dir, "pulled", "deeper");
    const progress: number[] = [];
    const first = await files.pull(plan, into, { onProgress: (done) => progress.push(done) });
    expect(first.downloaded.map((f) => f.path)).toEqual(plan.map((f) => f.path));
    expect(first.present).toEqual([]);
    expect(progress.at(-1)).toBe(13 + 3 + 7);
    expect(await tree(into)).toEqual([
      "checkpoints/ckpt_000500.pt",
      "outputs/metrics.json",
      "outputs/plots/loss.png",
    ]);
    expect(await readFile(join(into, "outputs/metrics.json"), "utf8")).toBe('{"loss": 0.1}');

    const again = await files.pull(plan, into);
    expect(again.downloaded).toEqual([]);
    expect(again.present.map((f) => f.path)).toEqual(plan.map((f) => f.path));
  });

  it("resumes a cut download from its .part with a Range request, and starts over when the object changed", async () => {
    const job = nextJob();
    const content = randomBytes(3 * MiB);
    await upload(job, "outputs", { "model.bin": content });
    const { s3, gets } = adaClient();
    const files = filesOf(s3);
    const plan = await files.plan(job, ["outputs"]);
    const into = join(dir, "cut");
    const part = join(into, "outputs", "model.bin.part");
    const sidecar = `${part}.json`;

    // The cut: stopped after the first write, as Ctrl-C does.
    const cut = new AbortController();
    let cutAt = 0;
    const stopped = files.pull(plan, into, {
      onProgress: (done) => {
        if (done > 0 && cutAt === 0) {
          cutAt = done;
          cut.abort();
        }
      },
      signal: cut.signal,
    });
    await expect(stopped).rejects.toMatchObject({ name: "AbortError" });
    expect(cutAt).toBeGreaterThan(0);
    expect(cutAt).toBeLessThan(content.length);
    expect(sha256(await readFile(part))).toBe(sha256(content.subarray(0, cutAt)));
    expect(existsSync(join(into, "outputs", "model.bin"))).toBe(false);

    const resumed = await files.pull(plan, into);
    expect(resumed.downloaded.map((f) => f.path)).toEqual(["outputs/model.bin"]);
    expect(gets.at(-1)).toEqual({ key: plan[0]!.key, range: `bytes=${cutAt}-` });
    expect(sha256(await readFile(join(into, "outputs", "model.bin")))).toBe(sha256(content));
    expect(existsSync(part)).toBe(false);
    expect(existsSync(sidecar)).toBe(false);

    // A part left from an earlier version of the object: its sidecar's ETag is not the object's.
    await writeFile(part, "stale bytes");
    await writeFile(sidecar, JSON.stringify({ etag: '"an-earlier-etag"', size: content.length }));
    await rm(join(into, "outputs", "model.bin"));
    await files.pull(plan, into);
    expect(gets.at(-1)).toEqual({ key: plan[0]!.key, range: undefined });
    expect(sha256(await readFile(join(into, "outputs", "model.bin")))).toBe(sha256(content));
  });

  it("fails naming a file whose bytes are not the SHA-256 recorded, and deletes its part", async () => {
    const job = nextJob();
    await put(job, "outputs/tampered.txt", "these bytes", { [SHA256_METADATA]: sha256("other bytes") });
    const files = filesOf();
    const into = join(dir, "mismatch");
    await expect(files.pull(await files.plan(job, ["outputs"]), into)).rejects.toThrow(
      new ChecksumError(
        `outputs/tampered.txt: SHA-256 ${sha256("these bytes")} of the download is not the ${sha256("other bytes")} recorded at upload; the partial file was deleted, pull again`,
      ),
    );
    expect(await tree(into)).toEqual([]);
  });

  it("refuses a file with no SHA-256 recorded, since it cannot be verified", async () => {
    const job = nextJob();
    await put(job, "outputs/unverifiable.txt", "bytes");
    const files = filesOf();
    const into = join(dir, "unverifiable");
    await expect(files.pull(await files.plan(job, ["outputs"]), into)).rejects.toThrow(
      new ChecksumError(
        "outputs/unverifiable.txt has no SHA-256 recorded at upload (x-amz-meta-sha256), so it cannot be verified; the agent records one for every file it uploads, so this object was written some other way",
      ),
    );
    expect(await tree(into)).toEqual([]);
  });

  it.each([
    "outputs/../../../escape",
    "outputs//etc/passwd",
    "outputs/a/./b",
    "outputs/a\\..\\..\\b",
    "outputs/x/..",
  ])("refuses the whole pull for a key that escapes DIR: %s", async (name) => {
    const job = nextJob();
    await upload(job, "outputs", { "fine.txt": "fine" });
    await put(job, name, "hostile", { [SHA256_METADATA]: sha256("hostile") });
    const key = platform.store.jobPrefix(job) + name;
    await expect(filesOf().plan(job, ["outputs"])).rejects.toThrow(
      new UnsafeKeyError(
        `the job's outputs hold a key that would land outside the directory: ${JSON.stringify(key)} (an absolute path, an empty, "." or ".." segment, a backslash or a NUL); nothing was pulled`,
      ),
    );
  });

  it("refuses a key that would overwrite another file's partial download", async () => {
    const job = nextJob();
    await upload(job, "outputs", { "model.pt": "weights", "model.pt.part": "not ours" });
    await expect(filesOf().plan(job, ["outputs"])).rejects.toThrow(
      new UnsafeKeyError(
        `outputs/model.pt.part would overwrite the partial download of outputs/model.pt; not pulling job ${job.jobId}`,
      ),
    );
  });

  it("names a DIR it cannot write: a file, or below one", async () => {
    const job = nextJob();
    await upload(job, "outputs", { "a.txt": "a" });
    const files = filesOf();
    const plan = await files.plan(job, ["outputs"]);
    const file = join(dir, "a-file");
    await writeFile(file, "");
    for (const into of [file, join(file, "below")])
      await expect(files.pull(plan, into)).rejects.toThrow(
        new PullDirectoryError(`cannot pull into ${into}: it, or a directory above it, is a file`),
      );
    expect(await readFile(file, "utf8")).toBe("");
  });
});

describe("share", () => {
  it("signs a GET link to each output for the time asked, cut short by credentials that expire sooner", async () => {
    const job = nextJob();
    await upload(job, "outputs", { "model.pt": "weights", "report/sp ace.txt": "text" });
    const { links, expiresAt, validUntil } = await filesOf().share(job, 3600);
    expect(links.map((l) => l.name)).toEqual(["model.pt", "report/sp ace.txt"]);
    const url = new URL(links[0]!.url);
    expect(url.pathname).toBe(`/${platform.bucket}/${platform.store.jobPrefix(job)}outputs/model.pt`);
    expect(url.searchParams.get("X-Amz-Expires")).toBe("3600");
    expect(url.searchParams.get("X-Amz-Credential")).toMatch(
      new RegExp(`^${platform.as("lab", "ada").credentials.accessKeyId}/\\d{8}/us-east-1/s3/aws4_request$`),
    );
    expect(new URL(links[1]!.url).pathname).toMatch(/\/outputs\/report\/sp%20ace\.txt$/);
    expect(validUntil).toEqual(expiresAt);
    expect(expiresAt.getTime() - Date.now()).toBeGreaterThan(3590_000);

    const expiration = new Date(Date.now() + 600_000);
    const temporary = new Client({
      endpoint: platform.endpoint,
      region: platform.region,
      forcePathStyle: true,
      credentials: { ...platform.as("lab", "ada").credentials, sessionToken: "session", expiration },
    });
    const short = await filesOf(temporary).share(job, 3600);
    expect(short.validUntil).toEqual(expiration);
    expect(new URL(short.links[0]!.url).searchParams.get("X-Amz-Security-Token")).toBe("session");
  });

  it("links that download the object from an S3 that takes presigned URLs", async () => {
    // The local gateway authenticates only Authorization headers; fauxqs itself serves the link.
    const { startFauxqs } = await import("fauxqs");
    const server = await startFauxqs({
      port: 0,
      host: "127.0.0.1",
      logger: false,
      defaultRegion: "us-east-1",
    });
    try {
      server.createBucket("bare");
      const s3 = new Client({
        endpoint: `http://127.0.0.1:${server.port}`,
        region: "us-east-1",
        forcePathStyle: true,
        credentials: { accessKeyId: "bare", secretAccessKey: "bare" },
      });
      onTestFinished(() => s3.destroy());
      const store = new JobStore(s3, "bare", logger);
      const job = nextJob();
      const source = await mkdtemp(join(dir, "bare-"));
      await writeFile(join(source, "résumé ü.txt"), "shared bytes");
      await store.uploadDir(job, "outputs", source, new Map());
      const { links } = await new JobFiles(s3, store).share(job, 60);
      const response = await fetch(links[0]!.url);
      expect(response.status).toBe(200);
      expect(await response.text()).toBe("shared bytes");
    } finally {
      await server.stop();
    }
  });
});

describe("printable", () => {
  it("escapes control characters a key may hold, so a listing cannot drive the terminal", () => {
    expect(printable("model\x1b[2J.pt\n")).toBe("model\\x1b[2J.pt\\x0a");
    expect(printable("plain/ünï.pt")).toBe("plain/ünï.pt");
  });
});
