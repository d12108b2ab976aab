import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import yauzl from "yauzl";
import yazl from "yazl";
import type { JobSpecInput } from "../../../runtime/src/job/contract";
import {
  checkJobSpec,
  disposeJob,
  InvalidJobError,
  parseJobSpec,
  prepareJob,
} from "../../../runtime/src/job/job-spec";

const user = { uid: 1000, gid: 1000 };

async function zipNames(path: string): Promise<string[]> {
  const zip = await yauzl.openPromise(path);
  const names: string[] = [];
  for await (const entry of zip.eachEntry()) names.push(entry.fileName);
  zip.close();
  return names.sort();
}

function fieldError(action: () => unknown): InvalidJobError {
  try {
    action();
  } catch (error) {
    if (error instanceof InvalidJobError) return error;
    throw error;
  }
  throw new Error("expected an InvalidJobError");
}

describe("parseJobSpec", () => {
  const ok = { jobId: "job-1", code: "x", tier: "cpu-small" };

  it.each([
    [
      { ...ok, jobId: "Bad_ID" },
      "jobId",
      'jobId must be 3-63 lowercase letters, digits and dashes, got "Bad_ID"',
    ],
    [
      { ...ok, tier: "huge" },
      "tier",
      'tier must be one of cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large, got "huge"',
    ],
    [{ ...ok, env: { PATH: "/x" } }, "env.PATH", 'env name "PATH" is reserved for the runtime'],
    [
      { ...ok, env: { CRUCIBLE_TIER: "x" } },
      "env.CRUCIBLE_TIER",
      'env name "CRUCIBLE_TIER" is reserved for the runtime',
    ],
    [{ ...ok, env: { "1X": "x" } }, "env.1X", 'env name "1X" must be a valid environment variable name'],
    [
      { ...ok, timeoutSeconds: -1 },
      "timeoutSeconds",
      "timeoutSeconds Too small: expected number to be >0, got -1",
    ],
    [
      { ...ok, gpus: 2 },
      "gpus",
      "job spec has unknown field(s) gpus; known: jobId, code, tier, image, imageFamily, timeoutSeconds, env, workspaceDir, datasetsDir, datasetDirs, environment, priority, preemptible",
    ],
  ])("names the bad field of %j", (spec, field, message) => {
    const error = fieldError(() => parseJobSpec(spec));
    expect(error.field).toBe(field);
    expect(error.message).toBe(message);
  });

  it("limits the timeout to the tier's maximum, after overrides", () => {
    expect(fieldError(() => checkJobSpec({ ...ok, timeoutSeconds: 31 })).message).toBe(
      "timeoutSeconds must be at most 30 for tier cpu-small, got 31",
    );
    expect(checkJobSpec(ok, { "cpu-small": { maxRuntimeSeconds: 5 } }).timeoutSeconds).toBe(5);
    expect(
      checkJobSpec({ ...ok, timeoutSeconds: 100 }, { "cpu-small": { maxRuntimeSeconds: 120 } })
        .timeoutSeconds,
    ).toBe(100);
  });
});

describe("prepareJob", () => {
  let dir: string;
  const spec = (code: string, extra: Partial<JobSpecInput> = {}): JobSpecInput => ({
    jobId: "job-1",
    code: join(dir, code),
    tier: "cpu-small",
    ...extra,
  });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "crucible-spec-"));
    await mkdir(join(dir, "job/__pycache__"), { recursive: true });
    await mkdir(join(dir, "job/lib"));
    await writeFile(join(dir, "job/main.py"), "import torch\ndef main(): return 1\n");
    await writeFile(join(dir, "job/lib/util.py"), "X = 1\n");
    await writeFile(join(dir, "job/__pycache__/main.cpython-313.pyc"), "junk");
    await writeFile(join(dir, "single.py"), "def main(): return 2\n");
    await mkdir(join(dir, "nomain"));
    await writeFile(join(dir, "nomain/run.py"), "");
    for (const [name, entry] of [
      ["good.zip", "main.py"],
      ["bad.zip", "src/main.py"],
    ]) {
      const zip = new yazl.ZipFile();
      zip.addBuffer(Buffer.from("def main(): return 3\n"), entry!);
      zip.end();
      await pipeline(zip.outputStream, createWriteStream(join(dir, name!)));
    }
    await writeFile(join(dir, "notes.txt"), "");
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("zips a directory without its caches, picks the matrix image from the code, and cleans up", async () => {
    const job = await prepareJob(spec("job"), { user });
    try {
      expect(await zipNames(job.codeZip)).toEqual(["lib/util.py", "main.py"]);
      expect(job).toMatchObject({
        image: "crucible/ml-cpu:torch2.6-py3.13",
        defaultImage: true,
        timeoutSeconds: 30,
      });
      expect(job.detection?.needs.torch).toBe(true);
      expect((await stat(job.outputDir)).isDirectory()).toBe(true);
      expect(job.workspaceDir.startsWith(job.scratchDir)).toBe(true);
    } finally {
      await disposeJob(job);
    }
    await expect(stat(job.scratchDir)).rejects.toThrow(/ENOENT/);
  });

  it("makes a .py file the job's main.py, and keeps a given image", async () => {
    const job = await prepareJob(spec("single.py", { image: "my/image:1" }), { user });
    await disposeJob(job);
    expect(job).toMatchObject({ image: "my/image:1", defaultImage: false });
    expect(job.detection).toBeUndefined();
  });

  it("accepts a zip holding main.py, and creates a missing workspace directory", async () => {
    const workspace = join(dir, "ws/new");
    const job = await prepareJob(spec("good.zip", { workspaceDir: workspace }), { user });
    await disposeJob(job);
    expect(await zipNames(job.codeZip).catch(() => "removed")).toBe("removed");
    expect(job.workspaceDir).toBe(workspace);
    expect((await stat(workspace)).isDirectory()).toBe(true);
  });

  it.each([
    ["nope", `code: ${"<dir>"}/nope does not exist`],
    ["nomain", `code: directory <dir>/nomain has no main.py; a job's entry is main.py`],
    ["bad.zip", "code: bad.zip has no main.py at its root (found: src/main.py)"],
    ["notes.txt", "code: <dir>/notes.txt must be a directory, a .py file or a .zip, got a .txt"],
  ])("refuses code %s with a clear error", async (code, message) => {
    const error = await prepareJob(spec(code), { user }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidJobError);
    expect((error as InvalidJobError).field).toBe("code");
    expect((error as Error).message).toBe(message.replace("<dir>", dir));
  });

  it("refuses a datasets directory that does not exist", async () => {
    const error = await prepareJob(spec("job", { datasetsDir: join(dir, "none") }), { user }).catch(
      (e: unknown) => e,
    );
    expect((error as InvalidJobError).message).toBe(
      `datasetsDir must be an existing directory, got ${join(dir, "none")}`,
    );
  });

  it("refuses a named dataset's directory that does not exist, a bad name, and both kinds of datasets", async () => {
    const missing = await prepareJob(spec("job", { datasetDirs: { iris: join(dir, "none") } }), {
      user,
    }).catch((e: unknown) => e);
    expect(missing).toMatchObject({
      field: "datasetDirs.iris",
      message: `datasetDirs.iris must be an existing directory, got ${join(dir, "none")}`,
    });
    expect(fieldError(() => parseJobSpec(spec("job", { datasetDirs: { "../etc": dir } })))).toMatchObject({
      field: "datasetDirs.../etc",
    });
    expect(
      fieldError(() => checkJobSpec(spec("job", { datasetsDir: dir, datasetDirs: { iris: dir } }))),
    ).toMatchObject({
      field: "datasetDirs",
      message:
        "datasetDirs mounts datasets at /datasets/<name>, and datasetsDir takes all of /datasets: give one of them",
    });
  });
});
