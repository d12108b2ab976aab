import { spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { lstat, mkdir, mkdtemp, readdir, rename, rm, utimes } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { finished, pipeline } from "node:stream/promises";
import type { Headers } from "tar-stream";
import { extract } from "tar-stream";
import { z } from "zod";

/**
 * A job pod's files as the agent moves them over `pods/exec`, in tar, both ways. Into the pod: a
 * directory of the agent's, packed by this machine's own tar (any file size, any name), cut into
 * length-prefixed frames the keeper unpacks ({@link UNPACK_FRAMES}), because exec's stdin has no end of
 * its own on the v4 protocol. Out of the pod: the workspace's parts as the keeper's tar writes them,
 * unpacked here as the hostile input they are (the job wrote those files) and mirrored over the agent's
 * copy, so that copy is what the job's `/workspace` holds, as a Docker job's bind mount would be.
 */

export class WorkspaceArchiveError extends Error {
  override readonly name = "WorkspaceArchiveError";
}

/** Bytes of the frame header: the frame's length, big-endian. A frame of length 0 ends the archive. */
const FRAME_HEADER_BYTES = 4;

/**
 * The keeper's unpacker: reads frames from stdin until the empty one, feeding their bytes to `tar -x` in
 * the directory given as its argument (made if need be), and exits with tar's status (1 if the frames stop
 * short). Run with
 * `python3 -I` (the job images' own interpreter, isolated from the job's environment variables).
 */
export const UNPACK_FRAMES = `
import os, subprocess, sys
os.makedirs(sys.argv[1], exist_ok=True)
tar = subprocess.Popen(["tar", "-x", "-f", "-", "--no-same-owner", "-C", sys.argv[1]], stdin=subprocess.PIPE)
source = sys.stdin.buffer
while True:
    head = source.read(${FRAME_HEADER_BYTES})
    if len(head) < ${FRAME_HEADER_BYTES}:
        sys.exit("crucible: the archive ended before its last frame")
    size = int.from_bytes(head, "big")
    if size == 0:
        break
    chunk = source.read(size)
    if len(chunk) < size:
        sys.exit("crucible: the archive ended inside a frame")
    tar.stdin.write(chunk)
tar.stdin.close()
sys.exit(tar.wait())
`.trimStart();

/** Top-level names under `dir`, in order; none when it is missing. */
export async function entriesOf(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw error;
  }
}

/** Whether `dir` holds a regular file anywhere below it: an empty tree is nothing to restore. */
export async function holdsFiles(dir: string): Promise<boolean> {
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.isFile()) return true;
    if (entry.isDirectory() && (await holdsFiles(join(dir, entry.name)))) return true;
  }
  return false;
}

/** One frame: its length, then its bytes. */
function frame(bytes: Buffer): Buffer {
  const head = Buffer.alloc(FRAME_HEADER_BYTES);
  head.writeUInt32BE(bytes.length);
  return Buffer.concat([head, bytes]);
}

/**
 * `names` under `dir` as a tar (pax format) in frames for {@link UNPACK_FRAMES}, the empty frame last and
 * only once tar has succeeded, so an archive cut short is never taken for a whole one. Stopping the
 * iteration early stops tar.
 */
export async function* packFrames(dir: string, names: readonly string[]): AsyncGenerator<Buffer> {
  const tar = spawn("tar", ["-c", "-f", "-", "--format=pax", "-C", dir, "--", ...names], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  tar.stderr.on("data", (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2048)));
  const exited = new Promise<number | null>((resolve, reject) => {
    tar.once("error", reject);
    tar.once("close", (code) => resolve(code));
  });
  exited.catch(() => undefined);
  try {
    for await (const chunk of tar.stdout as AsyncIterable<Buffer>) yield frame(chunk);
    const code = await exited;
    if (code !== 0)
      throw new WorkspaceArchiveError(`packing ${dir} failed (tar exited ${code}): ${stderr.trim()}`);
    yield Buffer.alloc(FRAME_HEADER_BYTES);
  } finally {
    if (tar.exitCode === null && tar.signalCode === null) tar.kill("SIGKILL");
  }
}

/** What one pull brought. */
export interface Unpacked {
  /** Regular files in the parts pulled. */
  readonly files: number;
  /** Their bytes. */
  readonly bytes: number;
  /** Files written because they were new or changed; the rest were already here as they are. */
  readonly written: number;
  /** Links and special files, which are never copied (the store would not sync them either). */
  readonly skipped: number;
  /**
   * Removes from each part here what the archive did not hold, making it the pod's: called only once
   * the pod's tar has said the archive is whole.
   */
  prune(): Promise<void>;
}

/** What a pull may bring, whatever the job wrote: its workspace's size (sparse files count in full). */
export interface MirrorLimits {
  readonly maxBytes: number;
  readonly maxEntries: number;
}

/** The fields of a tar header the typings leave out: pax records (GNU tar's sub-second mtime). */
const paxSchema = z.object({ pax: z.record(z.string(), z.string()).optional() });

/** A header's mtime in milliseconds: the pax record when there is one (sub-second), else the header's seconds. */
function mtimeMsOf(header: Headers): number {
  const pax = paxSchema.safeParse(header);
  const precise = pax.success ? Number(pax.data.pax?.mtime) : Number.NaN;
  if (Number.isFinite(precise)) return precise * 1000;
  return header.mtime?.getTime() ?? 0;
}

/** The path segments of an entry under one of `parts`, or why it is refused. */
function entryPath(name: string, parts: readonly string[]): string[] | string {
  const clean = name.replace(/^(\.\/)+/, "").replace(/\/+$/, "");
  const segments = clean.split("/");
  if (clean === "" || clean.startsWith("/"))
    return `an entry outside the workspace: ${JSON.stringify(name.slice(0, 200))}`;
  if (segments.some((s) => s === "" || s === "." || s === ".." || s.includes("\0")))
    return `an entry that leaves its directory: ${JSON.stringify(name.slice(0, 200))}`;
  if (!parts.includes(segments[0]!))
    return `an entry outside ${parts.join(" and ")}: ${JSON.stringify(name.slice(0, 200))}`;
  return segments;
}

/**
 * Unpacks the keeper's tar of `parts` of the pod's workspace into `root`; its `prune` then removes from
 * each part here what the pod no longer holds, so `root/<part>` is the pod's. Only regular files and
 * directories land, each file written aside and renamed into place (a sync reading the directory meanwhile
 * sees the old file or the new one), with the pod's mtime, so a file the job has not touched keeps the
 * signature the store's sync already knows. An entry outside the parts, a path that leaves them, or more
 * than `limits` allow fails the pull before anything is removed.
 */
export async function mirrorArchive(
  archive: Readable,
  root: string,
  parts: readonly string[],
  limits: MirrorLimits,
): Promise<Unpacked> {
  // Read from the first moment: a stream that ends meanwhile (a finished process's stdout) is not lost.
  const unpacking = extract();
  const unpacked = pipeline(archive, unpacking);
  unpacked.catch(() => undefined);
  const staged = mkdir(root, { recursive: true }).then(() => mkdtemp(join(root, ".incoming-")));
  staged.catch(() => undefined);
  const seen = new Set<string>();
  let entries = 0;
  let files = 0;
  let bytes = 0;
  let written = 0;
  let skipped = 0;

  const place = async (header: Headers, body: Readable): Promise<void> => {
    const staging = await staged;
    entries += 1;
    if (entries > limits.maxEntries)
      throw new WorkspaceArchiveError(`the workspace holds more than ${limits.maxEntries} entries`);
    const segments = entryPath(header.name, parts);
    if (typeof segments === "string") throw new WorkspaceArchiveError(`the pod's archive has ${segments}`);
    const target = join(root, ...segments);
    if (header.type === "directory") {
      body.resume();
      await finished(body);
      markSeen(seen, segments);
      await ensureDirectory(root, segments);
      return;
    }
    if (header.type !== "file" && header.type !== "contiguous-file") {
      body.resume();
      await finished(body);
      skipped += 1;
      return;
    }
    const size = header.size ?? 0;
    files += 1;
    bytes += size;
    if (bytes > limits.maxBytes)
      throw new WorkspaceArchiveError(
        `the workspace's ${parts.join(" and ")} hold more than ${limits.maxBytes} bytes`,
      );
    markSeen(seen, segments);
    const mtimeMs = mtimeMsOf(header);
    const here = await lstat(target).catch(() => undefined);
    if (here?.isFile() && here.size === size && Math.abs(here.mtimeMs - mtimeMs) < 1) {
      body.resume();
      await finished(body);
      return;
    }
    await ensureDirectory(root, segments.slice(0, -1));
    const aside = join(staging, String(written));
    await pipeline(body, createWriteStream(aside, { mode: 0o600 }));
    await utimes(aside, mtimeMs / 1000, mtimeMs / 1000);
    if (here?.isDirectory() || here?.isSymbolicLink()) await rm(target, { recursive: true, force: true });
    await rename(aside, target);
    written += 1;
  };

  try {
    unpacking.on("entry", (header, body, next) => {
      place(header, body).then(
        () => next(),
        (error: unknown) => {
          body.resume();
          unpacking.destroy(error instanceof Error ? error : new Error(String(error)));
        },
      );
    });
    await staged;
    await unpacked;
    return {
      files,
      bytes,
      written,
      skipped,
      prune: async () => {
        for (const part of parts) await prune(root, [part], seen);
      },
    };
  } finally {
    const staging = await staged.catch(() => undefined);
    if (staging) await rm(staging, { recursive: true, force: true });
  }
}

/** Records an entry and the directories above it as present in the pod. */
function markSeen(seen: Set<string>, segments: readonly string[]): void {
  for (let i = 1; i <= segments.length; i++) seen.add(segments.slice(0, i).join("/"));
}

/** Makes `root/<segments>` a directory, replacing a file or link of the agent's copy in the way. */
async function ensureDirectory(root: string, segments: readonly string[]): Promise<void> {
  let path = root;
  for (const segment of segments) {
    path = join(path, segment);
    const here = await lstat(path).catch(() => undefined);
    if (here?.isDirectory()) continue;
    if (here) await rm(path, { force: true });
    await mkdir(path);
  }
}

/** Removes under `root/<segments>` what the pod's archive did not hold. */
async function prune(root: string, segments: readonly string[], seen: ReadonlySet<string>): Promise<void> {
  const path = join(root, ...segments);
  if (!seen.has(segments.join("/"))) {
    await rm(path, { recursive: true, force: true });
    return;
  }
  const here = await lstat(path).catch(() => undefined);
  if (!here?.isDirectory()) return;
  for (const name of await readdir(path)) await prune(root, [...segments, name], seen);
}
