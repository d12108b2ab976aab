import { execFile } from "node:child_process";
import {
  chmod,
  chown,
  lstat,
  mkdir,
  readdir,
  readFile,
  rename,
  rm,
  rmdir,
  stat,
  statfs,
  writeFile,
} from "node:fs/promises";
import { release } from "node:os";
import { delimiter, dirname, join, resolve, sep } from "node:path";
import { promisify } from "node:util";
import type { SandboxUser } from "./sandbox";

/**
 * A directory with a size limit of its own: a file-backed ext4 volume (preallocated, so the node's disk
 * is reserved up front and never filled by a job) loop-mounted `nosuid,nodev` on the directory. A job
 * writing past it gets ENOSPC from its own volume; every other job and the node keep their space.
 *
 * The backing image is `<dir>.crucible-quota.img`, next to the directory: whoever finds a mount whose
 * loop device is backed by such a file (a crashed run) can tell it is ours ({@link releaseQuotaDirsUnder}).
 * Needs root (mount, losetup) and mkfs.ext4 (e2fsprogs); `scripts/ensure-docker.sh` installs them.
 */

const run = promisify(execFile);

/** Suffix of every backing image; the name is the label by which crashed runs' volumes are found. */
export const QUOTA_IMAGE_SUFFIX = ".crucible-quota.img";
/** The ext4 label of every quota volume. */
export const QUOTA_LABEL = "crucible-quota";
/** Smallest volume: below this ext4's own metadata leaves a job nothing. */
export const MIN_QUOTA_MIB = 8;
/**
 * Where a root runtime remembers that this machine can make quota volumes, so that a `crucible run`
 * does not spawn the same three checks every time. On /run (a tmpfs cleared at boot), in the root-only
 * directory of the job uid leases.
 */
export const QUOTA_SUPPORT_CACHE = "/run/crucible/quota-support.json";
/** A remembered check is trusted this long, even with nothing changed. */
const QUOTA_SUPPORT_TTL_MS = 24 * 60 * 60 * 1000;
/** The tools {@link checkQuotaSupport} runs, identified in its cache by their files. */
const QUOTA_TOOLS = ["mkfs.ext4", "losetup"] as const;

/** A mounted quota directory; `release` unmounts it, detaches its loop device and removes its image. */
export interface QuotaDir {
  readonly path: string;
  readonly image: string;
  readonly sizeMiB: number;
  /** Idempotent: a second call is a no-op. */
  release(): Promise<void>;
}

/** Why a quota directory cannot be made on this machine (not root, no loop devices, no mkfs.ext4). */
export class QuotaUnavailableError extends Error {
  override readonly name = "QuotaUnavailableError";
}

/**
 * Creates `path` (which must not exist, or be an empty directory) as a volume of `sizeMiB`, owned by
 * `owner` with mode 0700 (or by root with 0700 when no owner is given). On error nothing is left behind.
 */
export async function createQuotaDir(
  path: string,
  sizeMiB: number,
  owner: SandboxUser | undefined,
): Promise<QuotaDir> {
  const dir = resolve(path);
  const image = `${dir}${QUOTA_IMAGE_SUFFIX}`;
  if (!Number.isInteger(sizeMiB) || sizeMiB < MIN_QUOTA_MIB) {
    throw new Error(`a quota directory must be a whole number of MiB >= ${MIN_QUOTA_MIB}, got ${sizeMiB}`);
  }
  if (process.getuid?.() !== 0) {
    throw new QuotaUnavailableError(
      `cannot create a ${sizeMiB} MiB quota directory at ${dir}: mounting a volume needs root, and this runtime runs as uid ${process.getuid?.()}; run it as root, or turn disk quotas off (diskQuota: "off") where jobs may fill the disk`,
    );
  }
  await mkdir(dir, { recursive: true, mode: 0o700 });
  if ((await readdir(dir)).length > 0) throw new Error(`quota directory ${dir} must be empty`);
  let mounted = false;
  try {
    await tool("fallocate", ["-l", `${sizeMiB}MiB`, image]);
    // No discard: it would punch the preallocated blocks back out of the image.
    await tool("mkfs.ext4", ["-q", "-F", "-m", "0", "-L", QUOTA_LABEL, "-E", "nodiscard", image]);
    await tool("mount", ["-t", "ext4", "-o", "loop,nosuid,nodev", image, dir]);
    mounted = true;
    await rmdir(`${dir}/lost+found`).catch(() => undefined);
    await chown(dir, owner?.uid ?? 0, owner?.gid ?? 0);
    await chmod(dir, 0o700);
  } catch (error) {
    if (mounted) await unmount(dir).catch(() => undefined);
    await rm(image, { force: true });
    throw error;
  }
  let released = false;
  return {
    path: dir,
    image,
    sizeMiB,
    async release() {
      if (released) return;
      await releaseQuotaDir(dir);
      released = true;
    },
  };
}

/**
 * Runs `fn` with a quota directory at `path`, then removes it (contents included) whatever happens.
 * The agent's job workspace: `withQuotaDir(dir, tier.workspaceMiB, undefined, () => restore, run, upload)`.
 */
export async function withQuotaDir<T>(
  path: string,
  sizeMiB: number,
  owner: SandboxUser | undefined,
  fn: (dir: QuotaDir) => Promise<T>,
): Promise<T> {
  const dir = await createQuotaDir(path, sizeMiB, owner);
  try {
    return await fn(dir);
  } finally {
    await dir.release();
  }
}

/**
 * Unmounts the quota directory at `path` (its loop device goes with it: `mount -o loop` sets autoclear)
 * and removes the directory and its image. A path that is not mounted is only cleaned up.
 */
export async function releaseQuotaDir(path: string): Promise<void> {
  const dir = resolve(path);
  if ((await quotaMounts()).some((m) => m.mountPoint === dir)) await unmount(dir);
  await rm(dir, { recursive: true, force: true, maxRetries: 2 });
  await rm(`${dir}${QUOTA_IMAGE_SUFFIX}`, { force: true });
}

/** Releases every quota directory mounted under `root` (a crashed run's scratch directory). */
export async function releaseQuotaDirsUnder(root: string): Promise<number> {
  const base = resolve(root);
  const inside = (await quotaMounts()).filter(
    (m) => m.mountPoint === base || m.mountPoint.startsWith(base + sep),
  );
  for (const m of inside) await releaseQuotaDir(m.mountPoint);
  return inside.length;
}

/** Whether `path` is the mount point of a quota volume. */
export async function isQuotaDir(path: string): Promise<boolean> {
  const dir = resolve(path);
  return (await quotaMounts()).some((m) => m.mountPoint === dir);
}

/** How full a quota directory is; `full` when a further write would (or did) fail with ENOSPC. */
export interface QuotaUsage {
  readonly sizeBytes: number;
  readonly freeBytes: number;
  readonly full: boolean;
}

/**
 * Measured from outside the job, after it ended: full means less than 1 MiB (or 1 %) of blocks or no
 * inodes left, which is what a job that ran into ENOSPC leaves behind (ext4 keeps a few blocks for itself).
 */
export async function quotaUsage(path: string): Promise<QuotaUsage> {
  const s = await statfs(path);
  const sizeBytes = s.blocks * s.bsize;
  const freeBytes = s.bavail * s.bsize;
  const full = freeBytes < Math.max(1024 * 1024, sizeBytes / 100) || s.ffree === 0;
  return { sizeBytes, freeBytes, full };
}

/**
 * Checks that this machine can make quota directories, with what to do if it cannot. A success is
 * remembered in `cacheFile` (root's, not writable by anyone else), keyed by the kernel release and the
 * identity (path, size, mtime, inode) of mkfs.ext4 and losetup: an upgrade of either, a new kernel or a
 * day passing makes the next call check again. A remembered success still needs /dev/loop-control (from
 * which `mount -o loop` takes a free loop device). Only successes are remembered; a cache that cannot
 * be read or written only costs the full check.
 */
export async function checkQuotaSupport({ cacheFile = QUOTA_SUPPORT_CACHE } = {}): Promise<void> {
  if (process.getuid?.() !== 0) {
    throw new QuotaUnavailableError(
      `disk quotas need a root runtime (mount, losetup); this one runs as uid ${process.getuid?.()}. Run it as root, or pass diskQuota: "off" (the local CLI as a normal user)`,
    );
  }
  const key = await quotaSupportKey();
  if (key !== undefined && (await rememberedSupport(cacheFile, key))) return;
  for (const [command, args] of [
    ["mkfs.ext4", ["-V"]],
    ["losetup", ["--version"]],
  ] as const) {
    await tool(command, [...args]).catch((error: unknown) => {
      throw new QuotaUnavailableError(
        `disk quotas need ${command} (${command === "mkfs.ext4" ? "e2fsprogs" : "util-linux"}): ${(error as Error).message}; run scripts/ensure-docker.sh`,
      );
    });
  }
  const free = await tool("losetup", ["--find"]).catch((error: unknown) => {
    throw new QuotaUnavailableError(
      `disk quotas need loop devices, and none is free or loop-control is missing: ${(error as Error).message}`,
    );
  });
  if (!free.trim().startsWith("/dev/loop")) {
    throw new QuotaUnavailableError(`disk quotas need loop devices; losetup --find said ${free.trim()}`);
  }
  if (key !== undefined) await rememberSupport(cacheFile, key);
}

/** What a remembered check depends on; undefined when a tool is not on PATH (the full check says so). */
async function quotaSupportKey(): Promise<string | undefined> {
  const tools: Record<string, string> = {};
  for (const name of QUOTA_TOOLS) {
    const found = await onPath(name);
    if (!found) return undefined;
    tools[name] = found;
  }
  return JSON.stringify({ kernel: release(), tools });
}

/** `path:size:mtime:inode` of the first executable file named `name` on PATH. */
async function onPath(name: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    const path = join(dir, name);
    const info = await stat(path).catch(() => undefined);
    if (info?.isFile() && info.mode & 0o111) return `${path}:${info.size}:${info.mtimeMs}:${info.ino}`;
  }
  return undefined;
}

async function rememberedSupport(cacheFile: string, key: string): Promise<boolean> {
  try {
    const info = await lstat(cacheFile);
    // Root's own, written by no one else: anyone else's word is not taken.
    if (!info.isFile() || info.uid !== 0 || (info.mode & 0o022) !== 0) return false;
    const saved = JSON.parse(await readFile(cacheFile, "utf8")) as { key?: unknown; at?: unknown };
    const age = Date.now() - Number(saved.at);
    if (saved.key !== key || !(age >= 0 && age < QUOTA_SUPPORT_TTL_MS)) return false;
    return (await stat("/dev/loop-control")).isCharacterDevice();
  } catch {
    return false;
  }
}

async function rememberSupport(cacheFile: string, key: string): Promise<void> {
  const temporary = `${cacheFile}.${process.pid}.tmp`;
  try {
    await mkdir(dirname(cacheFile), { recursive: true, mode: 0o700 });
    await writeFile(temporary, JSON.stringify({ key, at: Date.now() }), { mode: 0o600 });
    await rename(temporary, cacheFile);
  } catch {
    await rm(temporary, { force: true }).catch(() => undefined);
  }
}

interface QuotaMount {
  readonly mountPoint: string;
  readonly device: string;
}

/** Mounts of loop devices backed by one of our images, from the kernel's own tables. */
async function quotaMounts(): Promise<QuotaMount[]> {
  const table = await readFile("/proc/self/mountinfo", "utf8").catch(() => "");
  const found: QuotaMount[] = [];
  for (const line of table.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!left || !right) continue;
    const mountPoint = unescapeMount(left.split(" ")[4] ?? "");
    const [fsType, device] = right.split(" ");
    if (fsType !== "ext4" || !device?.startsWith("/dev/loop")) continue;
    const backing = await readFile(`/sys/block/${device.slice("/dev/".length)}/loop/backing_file`, "utf8")
      .then((text) => text.trim())
      .catch(() => "");
    // The kernel names a deleted backing file "<path> (deleted)".
    if (backing.replace(/ \(deleted\)$/, "").endsWith(QUOTA_IMAGE_SUFFIX)) {
      found.push({ mountPoint, device });
    }
  }
  return found;
}

/** /proc/self/mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMount(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

async function unmount(dir: string): Promise<void> {
  await tool("umount", [dir]);
}

async function tool(command: string, args: string[]): Promise<string> {
  try {
    const { stdout } = await run(command, args, { timeout: 60_000 });
    return stdout;
  } catch (error) {
    const e = error as NodeJS.ErrnoException & { stderr?: string };
    const detail = e.code === "ENOENT" ? "not installed" : (e.stderr?.trim() ?? e.message);
    throw new Error(`${command} ${args.join(" ")} failed: ${detail}`);
  }
}
