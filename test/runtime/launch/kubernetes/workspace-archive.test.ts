import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  symlink,
  utimes,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { Readable } from "node:stream";
import { pack } from "tar-stream";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import {
  entriesOf,
  holdsFiles,
  mirrorArchive,
  packFrames,
  UNPACK_FRAMES,
  WorkspaceArchiveError,
} from "../../../../runtime/src/launch/kubernetes/workspace-archive";

const LIMITS = { maxBytes: 64 * 1024 * 1024, maxEntries: 1000 };

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "crucible-archive-"));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Every file under `root` and its bytes, by relative path; directories as `<path>/`. */
async function tree(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (path: string): Promise<void> => {
    for (const entry of await readdir(path, { withFileTypes: true })) {
      const full = join(path, entry.name);
      if (entry.isDirectory()) {
        out[`${relative(root, full)}/`] = "";
        await walk(full);
      } else out[relative(root, full)] = (await readFile(full)).toString("base64");
    }
  };
  await walk(root);
  return out;
}

/** Runs a command with `input` on stdin: its exit code and stderr. */
function run(command: string, args: readonly string[], input: AsyncIterable<Buffer>) {
  const child = spawn(command, args, { stdio: ["pipe", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("close", resolve));
  Readable.from(input).pipe(child.stdin);
  return exited.then((code) => ({ code, stderr }));
}

/** The keeper's tar of `parts` of `root`, as the pod would send it. */
function keeperTar(root: string, parts: readonly string[]): Readable {
  const tar = spawn(
    "tar",
    ["-c", "-f", "-", "--format=pax", "--ignore-failed-read", "-C", root, "--", ...parts],
    {
      stdio: ["ignore", "pipe", "ignore"],
    },
  );
  return tar.stdout;
}

describe("into the pod: frames the keeper unpacks", () => {
  it("restores a directory exactly: nested, large, long and non-ASCII names, empty directories", async () => {
    const source = join(dir, "source");
    const long = "l".repeat(150);
    await mkdir(join(source, "checkpoints", long), { recursive: true });
    await mkdir(join(source, "empty"));
    await writeFile(join(source, "checkpoints", "step"), "3");
    await writeFile(join(source, "checkpoints", "model.bin"), randomBytes(2_500_000));
    await writeFile(join(source, "checkpoints", long, "données.txt"), "é");
    const target = join(dir, "pod", "workspace");
    const { code, stderr } = await run(
      "python3",
      ["-I", "-c", UNPACK_FRAMES, target],
      packFrames(source, await entriesOf(source)),
    );
    expect(stderr).toBe("");
    expect(code).toBe(0);
    expect(await tree(target)).toEqual(await tree(source));
  });

  it("never takes an archive cut short for a whole one", async () => {
    const source = join(dir, "source");
    await mkdir(source);
    await writeFile(join(source, "step"), "3");
    async function* cut(): AsyncGenerator<Buffer> {
      for await (const frame of packFrames(source, ["step"])) if (frame.length > 4) yield frame;
    }
    const { code, stderr } = await run("python3", ["-I", "-c", UNPACK_FRAMES, join(dir, "target")], cut());
    expect(code).toBe(1);
    expect(stderr).toBe("crucible: the archive ended before its last frame\n");
  });

  it("fails naming what tar said when a name cannot be packed", async () => {
    const frames = packFrames(dir, ["missing"]);
    await expect(async () => {
      for await (const _ of frames) void _;
    }).rejects.toThrow(/^packing .* failed \(tar exited 2\): tar: missing: Cannot stat/);
  });

  it("knows an empty tree from one with files", async () => {
    await mkdir(join(dir, "a", "b"), { recursive: true });
    expect(await holdsFiles(dir)).toBe(false);
    await writeFile(join(dir, "a", "b", "f"), "");
    expect(await holdsFiles(dir)).toBe(true);
    expect(await entriesOf(join(dir, "none"))).toEqual([]);
  });
});

describe("out of the pod: the keeper's tar mirrored over the agent's copy", () => {
  it("makes each part the pod's: new and changed files written, unchanged ones left, the rest removed", async () => {
    const pod = join(dir, "pod");
    const here = join(dir, "here");
    await mkdir(join(pod, "checkpoints"), { recursive: true });
    await mkdir(join(pod, "outputs", "plots"), { recursive: true });
    await writeFile(join(pod, "checkpoints", "step"), "6");
    await writeFile(join(pod, "checkpoints", "same.bin"), "unchanged");
    await writeFile(join(pod, "outputs", "plots", "loss.svg"), randomBytes(300_000));
    await mkdir(join(here, "checkpoints"), { recursive: true });
    await mkdir(join(here, "outputs", "old"), { recursive: true });
    await writeFile(join(here, "checkpoints", "step"), "3");
    await writeFile(join(here, "checkpoints", "stale"), "gone in the pod");
    await writeFile(join(here, "outputs", "old", "x"), "gone too");
    // An earlier pull's copy of a file the job has not touched since: same size and mtime.
    await writeFile(join(here, "checkpoints", "same.bin"), "unchanged");
    const { mtime } = await stat(join(pod, "checkpoints", "same.bin"));
    await utimes(join(here, "checkpoints", "same.bin"), mtime, mtime);
    const before = await stat(join(here, "checkpoints", "same.bin"));
    // Outside the parts pulled: never touched.
    await writeFile(join(here, "scratch"), "mine");

    const unpacked = await mirrorArchive(
      keeperTar(pod, ["checkpoints", "outputs"]),
      here,
      ["checkpoints", "outputs"],
      LIMITS,
    );
    expect(await tree(join(here, "checkpoints"))).not.toEqual(await tree(join(pod, "checkpoints")));
    await unpacked.prune();

    expect(unpacked).toMatchObject({ files: 3, bytes: 1 + 9 + 300_000, written: 2, skipped: 0 });
    for (const part of ["checkpoints", "outputs"])
      expect(await tree(join(here, part))).toEqual(await tree(join(pod, part)));
    const after = await stat(join(here, "checkpoints", "same.bin"));
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    expect(
      Math.abs(
        (await stat(join(here, "checkpoints", "step"))).mtimeMs -
          (await stat(join(pod, "checkpoints", "step"))).mtimeMs,
      ),
    ).toBeLessThan(1);
    expect(await readFile(join(here, "scratch"), "utf8")).toBe("mine");
    expect((await readdir(here)).sort()).toEqual(["checkpoints", "outputs", "scratch"]);
  });

  it("removes a part the pod no longer has", async () => {
    const pod = join(dir, "pod");
    const here = join(dir, "here");
    await mkdir(join(pod, "checkpoints"), { recursive: true });
    await writeFile(join(pod, "checkpoints", "step"), "1");
    await mkdir(join(here, "outputs"), { recursive: true });
    await writeFile(join(here, "outputs", "old"), "x");
    const unpacked = await mirrorArchive(
      keeperTar(pod, ["checkpoints", "outputs"]),
      here,
      ["checkpoints", "outputs"],
      LIMITS,
    );
    await unpacked.prune();
    expect(await tree(here)).toEqual({
      "checkpoints/": "",
      "checkpoints/step": Buffer.from("1").toString("base64"),
    });
  });

  it("copies no link or special file the job made", async () => {
    const pod = join(dir, "pod");
    const here = join(dir, "here");
    await mkdir(join(pod, "checkpoints"), { recursive: true });
    await writeFile(join(pod, "checkpoints", "step"), "1");
    await symlink("/etc/passwd", join(pod, "checkpoints", "passwd"));
    const unpacked = await mirrorArchive(keeperTar(pod, ["checkpoints"]), here, ["checkpoints"], LIMITS);
    await unpacked.prune();
    expect(unpacked).toMatchObject({ files: 1, skipped: 1 });
    expect(await readdir(join(here, "checkpoints"))).toEqual(["step"]);
    await expect(lstat(join(here, "checkpoints", "passwd"))).rejects.toThrow(/ENOENT/);
  });

  it.each([
    ["outputs/../../escape", "an entry that leaves its directory"],
    ["/etc/cron.d/x", "an entry outside the workspace"],
    ["etc/passwd", "an entry outside checkpoints and outputs"],
  ])("refuses %s, removing nothing", async (name, why) => {
    const here = join(dir, "here");
    await mkdir(join(here, "checkpoints"), { recursive: true });
    await writeFile(join(here, "checkpoints", "step"), "3");
    const archive = pack();
    archive.entry({ name: "checkpoints/step", type: "file" }, "4");
    archive.entry({ name, type: "file" }, "x");
    archive.finalize();
    const mirrored = mirrorArchive(archive, here, ["checkpoints", "outputs"], LIMITS);
    await expect(mirrored).rejects.toThrow(WorkspaceArchiveError);
    await expect(mirrored).rejects.toThrow(`the pod's archive has ${why}: ${JSON.stringify(name)}`);
    expect(await readdir(here)).toEqual(["checkpoints"]);
    await expect(lstat(join(dir, "escape"))).rejects.toThrow(/ENOENT/);
  });

  it("stops at the workspace's size, whatever the files claim to be", async () => {
    const pod = join(dir, "pod");
    await mkdir(join(pod, "checkpoints"), { recursive: true });
    await writeFile(join(pod, "checkpoints", "big"), randomBytes(4096));
    await expect(
      mirrorArchive(keeperTar(pod, ["checkpoints"]), join(dir, "here"), ["checkpoints"], {
        maxBytes: 4095,
        maxEntries: 10,
      }),
    ).rejects.toThrow("the workspace's checkpoints hold more than 4095 bytes");
  });
});
