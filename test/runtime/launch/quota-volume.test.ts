import Dockerode from "dockerode";
import { spawnSync } from "node:child_process";
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { imageRef } from "../../../runtime/src/catalog/image-matrix";
import { SCRATCH_PREFIX } from "../../../runtime/src/job/job-spec";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import {
  checkQuotaSupport,
  MIN_QUOTA_MIB,
  QuotaUnavailableError,
} from "../../../runtime/src/launch/quota-volume";
import { LABELS } from "../../../runtime/src/launch/sandbox";

/**
 * checkQuotaSupport's memory of a success (quota-volume.ts): what `crucible run` as root spares itself
 * on every run, and what makes it check again. The tools are stand-ins on PATH that log each call, so
 * the test sees which runs spawned them. Root only (the check refuses anyone else first).
 */
const root = process.getuid?.() === 0;
const IMAGE = process.env.CRUCIBLE_TEST_JOB_IMAGE ?? imageRef("cpu");

describe.skipIf(!root)("the quota support check's cache", () => {
  let dir: string;
  let cacheFile: string;
  let calls: string;
  let path: string | undefined;

  /** A stand-in for `name` that logs its arguments and answers like the real one (or fails). */
  const tool = (name: string, body = "exit 0") =>
    writeFile(join(dir, "bin", name), `#!/bin/sh\necho "${name} $*" >> "${calls}"\n${body}\n`, {
      mode: 0o755,
    });
  const spawned = async () => (await readFile(calls, "utf8").catch(() => "")).split("\n").filter(Boolean);

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "crucible-quota-support-"));
    cacheFile = join(dir, "cache", "quota-support.json");
    calls = join(dir, "calls.log");
    await mkdir(join(dir, "bin"));
    await tool("mkfs.ext4");
    await tool("losetup", 'if [ "$1" = --find ]; then echo /dev/loop7; fi');
    path = process.env.PATH;
    process.env.PATH = [join(dir, "bin"), path].join(delimiter);
  });
  afterEach(async () => {
    process.env.PATH = path;
    await rm(dir, { recursive: true, force: true });
  });

  it("checks once, then trusts the remembered success until a tool changes", async () => {
    await checkQuotaSupport({ cacheFile });
    expect(await spawned()).toEqual(["mkfs.ext4 -V", "losetup --version", "losetup --find"]);
    await checkQuotaSupport({ cacheFile });
    expect(await spawned()).toHaveLength(3);
    // An upgraded mkfs.ext4 (another file) is checked again, and the new answer remembered.
    await tool("mkfs.ext4", "# upgraded\nexit 0");
    await checkQuotaSupport({ cacheFile });
    expect(await spawned()).toHaveLength(6);
    await checkQuotaSupport({ cacheFile });
    expect(await spawned()).toHaveLength(6);
  });

  it("remembers no failure, and a failing tool after a change is reported", async () => {
    await tool("losetup", 'echo "losetup: cannot find an unused loop device" >&2; exit 1');
    await expect(checkQuotaSupport({ cacheFile })).rejects.toThrow(QuotaUnavailableError);
    await expect(readFile(cacheFile)).rejects.toThrow(/ENOENT/);
    await tool("losetup", 'if [ "$1" = --find ]; then echo /dev/loop7; fi');
    await checkQuotaSupport({ cacheFile });
    await tool("losetup", "exit 1");
    await expect(checkQuotaSupport({ cacheFile })).rejects.toThrow(/disk quotas need losetup/);
  });

  it("ignores a cache that others may write, or that is for another kernel", async () => {
    await checkQuotaSupport({ cacheFile });
    const saved = await readFile(cacheFile, "utf8");
    await chmod(cacheFile, 0o666);
    await checkQuotaSupport({ cacheFile });
    expect(await spawned()).toHaveLength(6);
    const other = JSON.parse(saved) as { key: string; at: number };
    const key = JSON.parse(other.key) as { kernel: string };
    await writeFile(
      cacheFile,
      JSON.stringify({ ...other, key: JSON.stringify({ ...key, kernel: "0.0.1" }) }),
      {
        mode: 0o600,
      },
    );
    await checkQuotaSupport({ cacheFile });
    expect(await spawned()).toHaveLength(9);
    // A day-old success is checked again.
    await writeFile(cacheFile, JSON.stringify({ ...other, at: Date.now() - 25 * 60 * 60 * 1000 }), {
      mode: 0o600,
    });
    await checkQuotaSupport({ cacheFile });
    expect(await spawned()).toHaveLength(12);
  });
});

/**
 * The launcher makes a job's workspace volume while Docker creates its container (docker-launcher.ts):
 * the job starts only on its volume, and a volume that cannot be made leaves nothing behind.
 */
describe.skipIf(!root)("the launcher's workspace volume", () => {
  const docker = new Dockerode();
  const launcher = (workspaceMiB: number) =>
    new DockerLauncher({
      docker,
      logger: pino({ level: "silent" }),
      graceSeconds: 1,
      tierOverrides: { "cpu-small": { workspaceMiB } },
    });
  let dir: string;
  let scratchBefore: string[];
  const scratch = async () =>
    (await readdir(tmpdir())).filter((name) => name.startsWith(`${SCRATCH_PREFIX}qv-`));

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "crucible-quota-launch-"));
    await writeFile(
      join(dir, "main.py"),
      "import os\ndef main():\n    s = os.statvfs('/workspace')\n    return s.f_blocks * s.f_frsize\n",
    );
    scratchBefore = await scratch();
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("runs the job on a volume of the tier's size, and removes it after", async () => {
    const jobId = `qv-${process.pid}-ok`;
    const envelope = await launcher(16).run({ jobId, code: dir, tier: "cpu-small", image: IMAGE });
    expect(envelope).toMatchObject({ status: "success" });
    // ext4 keeps a little of the 16 MiB for itself; a plain directory would show the host's disk.
    expect(envelope.result).toBeGreaterThan(8 * 1024 * 1024);
    expect(envelope.result).toBeLessThanOrEqual(16 * 1024 * 1024);
    expect(await scratch()).toEqual(scratchBefore);
    expect(spawnSync("losetup", ["-a"], { encoding: "utf8" }).stdout).not.toContain(jobId);
  }, 120_000);

  it("removes the created container and the job's files when the volume cannot be made", async () => {
    const jobId = `qv-${process.pid}-too-small`;
    await expect(
      launcher(MIN_QUOTA_MIB - 1).run({ jobId, code: dir, tier: "cpu-small", image: IMAGE }),
    ).rejects.toThrow(/quota directory must be a whole number of MiB >= 8/);
    const left = await docker.listContainers({ all: true, filters: { label: [`${LABELS.jobId}=${jobId}`] } });
    expect(left).toEqual([]);
    expect(await scratch()).toEqual(scratchBefore);
  }, 120_000);
});
