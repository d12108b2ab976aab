import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { execFile } from "node:child_process";
import { createReadStream, existsSync } from "node:fs";
import {
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readlink,
  rm,
  symlink,
  truncate,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { CodeError, MAX_CODE_ARCHIVE_BYTES } from "../../../runtime/src/job/code-source";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { filesUnder, openRegularFile, partBytes } from "../../../runtime/src/store/job-store";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";

const run = promisify(execFile);
const MiB = 2 ** 20;
const GiB = 2 ** 30;
let platform: LocalPlatform;
let dir: string;
let outside: string;
let jobs = 0;
const nextJob = (): JobAddress => ({ project: "vision", user: "ada", jobId: `store-${++jobs}` });

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: ["cpu-small"], logger: pino({ level: "silent" }) });
  dir = await mkdtemp(join(tmpdir(), "crucible-job-store-"));
  outside = join(dir, "outside");
  await mkdir(outside);
  await writeFile(join(outside, "secret"), "another job's secret");
});
afterAll(async () => {
  await platform?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function keysOf(job: JobAddress): Promise<string[]> {
  const prefix = platform.store.jobPrefix(job);
  const page = await platform.s3.send(new ListObjectsV2Command({ Bucket: platform.bucket, Prefix: prefix }));
  return (page.Contents ?? []).map((o) => o.Key!.slice(prefix.length)).sort();
}

async function sparseFile(path: string, bytes: number): Promise<string> {
  await writeFile(path, "");
  await truncate(path, bytes);
  return path;
}

describe("code.zip", () => {
  it("goes up and comes back byte for byte", async () => {
    const job = nextJob();
    const zip = join(dir, "small.zip");
    await writeFile(zip, Buffer.from("PK not really a zip, but bytes are bytes"));
    await platform.store.putCode(job, zip);
    const back = join(dir, "small-back.zip");
    expect(await platform.store.getCode(job, back)).toBe(true);
    expect(await readFile(back)).toEqual(await readFile(zip));
    expect(await platform.store.getCode(nextJob(), join(dir, "none.zip"))).toBe(false);
  });

  it("over the archive limit is not uploaded", async () => {
    const job = nextJob();
    const zip = await sparseFile(join(dir, "code.zip"), MAX_CODE_ARCHIVE_BYTES + 1);
    await expect(platform.store.putCode(job, zip)).rejects.toThrow(CodeError);
    expect(await keysOf(job)).toEqual([]);
  });

  it("over the archive limit, written by a hostile submitter, is refused before download and nothing written", async () => {
    const job = nextJob();
    const size = 300 * MiB;
    const planted = await sparseFile(join(dir, "planted.zip"), size);
    await new Upload({
      client: platform.as(job.project, job.user).s3,
      params: {
        Bucket: platform.bucket,
        Key: `${platform.store.jobPrefix(job)}code.zip`,
        Body: createReadStream(planted),
      },
      partSize: 10 * MiB,
    }).done();
    const target = join(dir, "agent-code.zip");
    const started = performance.now();
    await expect(platform.store.getCode(job, target)).rejects.toThrow(
      new CodeError(
        "code: code.zip is 300 MiB (314572800 bytes), more than the 288 MiB (301989888 bytes) allowed for a job's code archive; pass data as a dataset directory",
      ),
    );
    // Reading 300 MiB over loopback takes seconds; refusing on the header takes milliseconds.
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(existsSync(target)).toBe(false);
  });
});

describe("sync of a directory the job controls", () => {
  async function jobDir(name: string): Promise<string> {
    const root = join(dir, name);
    await mkdir(join(root, "sub"), { recursive: true });
    await writeFile(join(root, "model.pt"), "weights");
    await writeFile(join(root, "sub", "step-1.pt"), "step 1");
    return root;
  }

  it("takes only regular files: links to files and directories, FIFOs are skipped", async () => {
    const root = await jobDir("planted");
    await symlink("/etc/hostname", join(root, "hostname"));
    await symlink(join(outside, "secret"), join(root, "sub", "secret"));
    await symlink(outside, join(root, "other-job"));
    await run("mkfifo", [join(root, "pipe")]);
    const job = nextJob();
    expect(await platform.store.uploadDir(job, "checkpoints", root, new Map())).toBe(2);
    expect(await keysOf(job)).toEqual(["checkpoints/model.pt", "checkpoints/sub/step-1.pt"]);
  });

  it("refuses a directory that is itself a link", async () => {
    const link = join(dir, "linked-checkpoints");
    await symlink(outside, link);
    const job = nextJob();
    expect(await platform.store.uploadDir(job, "outputs", link, new Map())).toBe(0);
    expect(await keysOf(job)).toEqual([]);
  });

  it("opens nothing swapped in after listing: a file for a link, a directory for a link, a file for a FIFO", async () => {
    const root = await jobDir("swapped");
    await writeFile(join(root, "fifo.pt"), "x");
    const listed = (await filesUnder(root)).sort();
    expect(listed).toEqual([join(root, "fifo.pt"), join(root, "model.pt"), join(root, "sub", "step-1.pt")]);
    // What a job can do between the listing and the open.
    await rm(join(root, "model.pt"));
    await symlink(join(outside, "secret"), join(root, "model.pt"));
    await rm(join(root, "sub"), { recursive: true });
    await mkdir(join(outside, "sub"));
    await writeFile(join(outside, "sub", "step-1.pt"), "another job's step");
    await symlink(join(outside, "sub"), join(root, "sub"));
    await rm(join(root, "fifo.pt"));
    await run("mkfifo", [join(root, "fifo.pt")]);
    for (const file of listed) expect(await openRegularFile(root, file)).toBeUndefined();
    // The same files, unswapped, are opened.
    const intact = await jobDir("intact");
    const opened = await openRegularFile(intact, join(intact, "sub", "step-1.pt"));
    expect(opened?.size).toBe(6);
    await opened?.handle.close();
    // And the sync of the swapped directory uploads nothing from outside it.
    const job = nextJob();
    expect(await platform.store.uploadDir(job, "checkpoints", root, new Map())).toBe(0);
    expect(await keysOf(job)).toEqual([]);
  });
});

describe("downloadCheckpoints", () => {
  it("never writes through a link the job planted", async () => {
    const from = nextJob();
    const source = join(dir, "source-checkpoints");
    await mkdir(join(source, "sub"), { recursive: true });
    await writeFile(join(source, "model.pt"), "restored weights");
    await writeFile(join(source, "sub", "step-1.pt"), "restored step");
    await writeFile(join(source, "latest.pt"), "latest");
    expect(await platform.store.uploadDir(from, "checkpoints", source, new Map())).toBe(3);

    const target = join(dir, "restore-into");
    await mkdir(target);
    await writeFile(join(outside, "victim"), "untouched");
    await symlink(join(outside, "victim"), join(target, "model.pt"));
    await symlink(outside, join(target, "sub"));
    await symlink(join(outside, "absent"), join(target, "latest.pt"));

    expect(await platform.store.downloadCheckpoints(from, target)).toBe(2);
    expect(await readFile(join(outside, "victim"), "utf8")).toBe("untouched");
    expect(existsSync(join(outside, "step-1.pt"))).toBe(false);
    expect(existsSync(join(outside, "absent"))).toBe(false);
    expect((await lstat(join(target, "model.pt"))).isFile()).toBe(true);
    expect(await readFile(join(target, "model.pt"), "utf8")).toBe("restored weights");
    expect(await readFile(join(target, "latest.pt"), "utf8")).toBe("latest");
    expect(await readlink(join(target, "sub"))).toBe(outside);
  });
});

describe("uploads of large files", () => {
  it("sizes parts so a file of S3's 5 TiB limit fits in 10,000 parts", () => {
    expect(partBytes(0)).toBe(8 * MiB);
    expect(partBytes(2 * GiB + 1)).toBe(8 * MiB);
    expect(partBytes(6 * GiB)).toBe(8 * MiB);
    expect(Math.ceil((5 * 2 ** 40) / partBytes(5 * 2 ** 40))).toBeLessThanOrEqual(10_000);
  });

  it(
    "streams a file over 2 GiB in parts, from a process whose memory stays far below the file's size",
    { timeout: 300_000 },
    async () => {
      const job = nextJob();
      const root = join(dir, "big");
      await mkdir(root);
      const size = 2 * GiB + MiB + 1;
      await sparseFile(join(root, "model.pt"), size);
      const { stdout } = await run(
        process.execPath,
        ["--import", "tsx", "test/support/upload-dir.ts", `${job.project}/${job.user}/${job.jobId}`, root],
        { maxBuffer: MiB, env: { ...process.env, ...platform.env() } },
      );
      const child = JSON.parse(stdout) as { uploaded: number; maxRssBytes: number };
      expect(child.uploaded).toBe(1);
      const key = `${platform.store.jobPrefix(job)}checkpoints/model.pt`;
      const head = await platform.s3.send(new HeadObjectCommand({ Bucket: platform.bucket, Key: key }));
      expect(head.ContentLength).toBe(size);
      expect(head.ETag).toBe(
        `"${head.ETag!.slice(1, -1).split("-")[0]}-${Math.ceil(size / partBytes(size))}"`,
      );
      // Holding the file would take more than its size (readFile refuses it outright); measured peaks are
      // about 100 MiB for 1 MiB, 540 MiB for 1 GiB and 690 MiB for 2 GiB: garbage the GC takes lazily.
      expect(child.maxRssBytes).toBeLessThan(size / 2);
      const tail = await platform.s3.send(
        new GetObjectCommand({ Bucket: platform.bucket, Key: key, Range: `bytes=${size - 4}-${size - 1}` }),
      );
      expect(Buffer.from(await tail.Body!.transformToByteArray())).toEqual(Buffer.alloc(4));
      process.stderr.write(
        `job-store: ${size} bytes uploaded; uploader max RSS ${child.maxRssBytes} bytes\n`,
      );
    },
  );
});
