import type { S3Client } from "@aws-sdk/client-s3";
import { GetObjectCommand, HeadObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import picomatch from "picomatch";
import { createHash } from "node:crypto";
import { constants } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { access, lstat, mkdir, open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { dirname, isAbsolute, join, relative, resolve, sep } from "node:path";
import type { Readable } from "node:stream";
import { Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import type { JobAddress } from "../job/contract";
import type { JobStore } from "./job-store";

/**
 * A job's checkpoints and outputs as a researcher reaches them from their machine: listed, pulled
 * (verified and resumable) and shared by presigned link. Everything under the job's prefix was written
 * with the researcher's own credentials or by their job, so keys, sizes and recorded checksums are
 * treated as hostile: a key that would land outside the target directory refuses the whole pull.
 */

/**
 * The user metadata key (`x-amz-meta-sha256`) under which {@link JobStore.uploadDir} records each file's
 * SHA-256 (lowercase hex). Not the ETag: that is an MD5 only for single-part uploads without SSE-KMS,
 * and big files go up in parts. Not S3's own `ChecksumSHA256`: for a multipart upload it is a checksum of
 * the parts' checksums (S3 computes full-object checksums only for the CRC family), and the local
 * emulator (fauxqs 1.9.2) accepts `ChecksumAlgorithm` but stores and returns no checksum at all, while it
 * keeps user metadata on single and multipart uploads alike.
 */
export const SHA256_METADATA = "sha256";

export type JobFileKind = "outputs" | "checkpoints";

/** SigV4's limit on a presigned URL's lifetime: 7 days. */
export const MAX_SHARE_SECONDS = 7 * 24 * 3600;

/** One object below a job's `checkpoints/` or `outputs/`. */
export interface JobFile {
  readonly kind: JobFileKind;
  /** The path the job wrote it at, below its kind's directory: `step-1200/model.safetensors`. */
  readonly name: string;
  readonly key: string;
  readonly size: number;
  readonly lastModified: Date;
}

/** The job has nothing under its prefix: no such job for this owner. */
export class JobNotFoundError extends Error {
  override readonly name = "JobNotFoundError";
}

/** The caller's credentials may not read the job's prefix: another user's job. */
export class JobAccessError extends Error {
  override readonly name = "JobAccessError";
}

/** The directory to pull into cannot be created or written. */
export class PullDirectoryError extends Error {
  override readonly name = "PullDirectoryError";
}

/** A key whose path would land outside the pull's directory, or on a name the pull itself uses. */
export class UnsafeKeyError extends Error {
  override readonly name = "UnsafeKeyError";
}

/** A downloaded file whose SHA-256 is not the one recorded at upload, or that has none to check. */
export class ChecksumError extends Error {
  override readonly name = "ChecksumError";
}

/** The object changed (a new ETag) between the start of its download and now: the job rewrote it. */
export class ChangedDuringPullError extends Error {
  override readonly name = "ChangedDuringPullError";
}

/** A file of a pull: the object and the path it lands at below the pull's directory (`outputs/model.pt`). */
export interface PullFile extends JobFile {
  readonly path: string;
}

export interface PullResult {
  /** Files downloaded (or finished from a partial download) and verified. */
  readonly downloaded: readonly PullFile[];
  /** Files already in the directory with the recorded SHA-256: not downloaded again. */
  readonly present: readonly PullFile[];
}

/** What a pull keeps beside `<file>.part` so a later pull knows whether the partial bytes are still good. */
const partSchema = z.object({ etag: z.string(), size: z.number().int().nonnegative() });

const PART_SUFFIX = ".part";
const SIDECAR_SUFFIX = ".part.json";
const SHA256_HEX = /^[0-9a-f]{64}$/;
/** Read at a time while hashing. */
const HASH_CHUNK_BYTES = 1024 * 1024;

export class JobFiles {
  constructor(
    private readonly s3: S3Client,
    private readonly store: Pick<JobStore, "bucket" | "jobPrefix">,
  ) {}

  /**
   * The job's files of one kind, in key order; a {@link JobNotFoundError} when the job has no files at
   * all. Empty keys ending in `/` are the "folders" S3 consoles create, not files: left out.
   */
  async list(address: JobAddress, kind: JobFileKind): Promise<JobFile[]> {
    const prefix = `${this.store.jobPrefix(address)}${kind}/`;
    const files = (await this.objects(address, prefix))
      .filter((o) => !(o.key.endsWith("/") && o.size === 0))
      .map((o): JobFile => ({ kind, name: o.key.slice(prefix.length), ...o }));
    if (files.length === 0) await this.mustExist(address);
    return files;
  }

  /**
   * One of the job's files by its name as {@link list} gives it, with its bytes as a stream: only a name
   * the listing holds is fetched, so no name a caller makes up reaches outside the job's `<kind>/`.
   * Undefined when the job has no such file.
   */
  async open(
    address: JobAddress,
    kind: JobFileKind,
    name: string,
  ): Promise<{ file: JobFile; body: Readable } | undefined> {
    const file = (await this.list(address, kind)).find((f) => f.name === name);
    if (!file) return undefined;
    const out = await this.s3
      .send(new GetObjectCommand({ Bucket: this.store.bucket, Key: file.key }))
      .catch((error: unknown) => {
        // Deleted since it was listed (a job rewriting its checkpoints): as if it had never been there.
        if (isMissing(error)) return undefined;
        throw isDenied(error) ? this.denied(address) : error;
      });
    return out && { file, body: out.Body as Readable };
  }

  /**
   * The files a pull of `kinds` would write, each with its path below the directory (`<kind>/<name>`),
   * for {@link pull} (or a {@link matcher} to choose from). Every listed key is checked before anything
   * is written: a name that is absolute, has an empty, `.` or `..` segment, a backslash or a NUL, or that
   * would land on another file's `.part`/`.part.json`, refuses the whole pull with an {@link UnsafeKeyError}.
   */
  async plan(address: JobAddress, kinds: readonly JobFileKind[]): Promise<PullFile[]> {
    const files: PullFile[] = [];
    for (const kind of kinds)
      for (const file of await this.list(address, kind)) {
        checkName(file);
        files.push({ ...file, path: `${kind}/${file.name}` });
      }
    const paths = new Set(files.map((f) => f.path));
    for (const file of files)
      for (const suffix of [PART_SUFFIX, SIDECAR_SUFFIX])
        if (paths.has(file.path + suffix))
          throw new UnsafeKeyError(
            `${printable(file.path + suffix)} would overwrite the partial download of ${printable(file.path)}; not pulling job ${address.jobId}`,
          );
    return files;
  }

  /**
   * Downloads `files` into `dir` (created if missing), one at a time, each verified against the SHA-256
   * recorded at upload. A file is written to `<file>.part` beside a sidecar with the object's ETag and
   * size, and renamed into place only once complete and verified; a pull cut short leaves both, and the
   * next pull resumes from the part's size with a Range request if the object's ETag and size are still
   * those of the sidecar (and starts the file over otherwise). A file already present with the recorded
   * SHA-256 is skipped. A checksum mismatch deletes the part and fails naming the file. `onProgress`
   * is called with the bytes done so far in all (present and resumed bytes included), each time once
   * they are written; `signal` stops the pull between two writes, leaving the part to resume from.
   */
  async pull(
    files: readonly PullFile[],
    dir: string,
    {
      onProgress = () => undefined,
      signal,
    }: { onProgress?: (done: number) => void; signal?: AbortSignal } = {},
  ): Promise<PullResult> {
    const root = await prepareDirectory(dir);
    const downloaded: PullFile[] = [];
    const present: PullFile[] = [];
    let done = 0;
    for (const file of files) {
      const before = done;
      signal?.throwIfAborted();
      const fresh = await this.pullOne(file, root, (bytes) => onProgress((done = before + bytes)), signal);
      onProgress((done = before + file.size));
      (fresh ? downloaded : present).push(file);
    }
    return { downloaded, present };
  }

  /**
   * Presigned GET links to each of the job's outputs, valid for `seconds` (at most {@link MAX_SHARE_SECONDS}).
   * A link signed with temporary credentials stops working when they expire, whatever it asked for:
   * `validUntil` is the earlier of the two.
   */
  async share(
    address: JobAddress,
    seconds: number,
  ): Promise<{ links: { name: string; url: string }[]; expiresAt: Date; validUntil: Date }> {
    if (!Number.isInteger(seconds) || seconds < 1 || seconds > MAX_SHARE_SECONDS)
      throw new RangeError(`a link lasts 1 to ${MAX_SHARE_SECONDS} seconds, got ${seconds}`);
    const files = await this.list(address, "outputs");
    const expiresAt = new Date(Date.now() + seconds * 1000);
    const links = [];
    for (const file of files) {
      const command = new GetObjectCommand({ Bucket: this.store.bucket, Key: file.key });
      links.push({ name: file.name, url: await getSignedUrl(this.s3, command, { expiresIn: seconds }) });
    }
    const { expiration } = await this.s3.config.credentials();
    const validUntil = expiration && expiration < expiresAt ? expiration : expiresAt;
    return { links, expiresAt, validUntil };
  }

  /** Every object under `prefix`, refusing with a {@link JobAccessError} if the caller may not list it. */
  private async objects(
    address: JobAddress,
    prefix: string,
    limit = Infinity,
  ): Promise<Omit<JobFile, "kind" | "name">[]> {
    const found: Omit<JobFile, "kind" | "name">[] = [];
    let token: string | undefined;
    do {
      const page = await this.s3
        .send(
          new ListObjectsV2Command({
            Bucket: this.store.bucket,
            Prefix: prefix,
            ContinuationToken: token,
            ...(Number.isFinite(limit) && { MaxKeys: limit }),
          }),
        )
        .catch((error: unknown) => {
          throw isDenied(error) ? this.denied(address) : error;
        });
      for (const o of page.Contents ?? [])
        if (o.Key)
          found.push({
            key: o.Key,
            size: o.Size ?? 0,
            lastModified: o.LastModified ?? new Date(0),
          });
      token = found.length < limit ? page.NextContinuationToken : undefined;
    } while (token);
    return found;
  }

  private async mustExist(address: JobAddress): Promise<void> {
    if ((await this.objects(address, this.store.jobPrefix(address), 1)).length === 0)
      throw new JobNotFoundError(`no job ${address.jobId} in ${address.project}/${address.user}`);
  }

  private denied(address: JobAddress): JobAccessError {
    return new JobAccessError(
      `access denied to job ${address.jobId} of ${address.project}/${address.user}: your credentials reach only your own jobs (--project and --user name the job's owner)`,
    );
  }

  /** Brings one file into place; true if bytes were downloaded, false if it was already there. */
  private async pullOne(
    file: PullFile,
    root: string,
    onBytes: (bytes: number) => void,
    signal: AbortSignal | undefined,
  ): Promise<boolean> {
    const target = join(root, ...file.path.split("/"));
    // Belt and braces behind checkName: whatever the name, nothing is written outside the root.
    const inside = relative(root, target);
    if (inside === "" || inside === ".." || inside.startsWith(`..${sep}`) || isAbsolute(inside))
      throw new UnsafeKeyError(`${printable(file.path)} is outside ${root}; not pulled`);
    const head = await this.s3
      .send(new HeadObjectCommand({ Bucket: this.store.bucket, Key: file.key }))
      .catch((error: unknown) => {
        if (isMissing(error))
          throw new ChangedDuringPullError(`${printable(file.path)} was deleted while pulling; pull again`);
        throw error;
      });
    const sha256 = head.Metadata?.[SHA256_METADATA];
    if (!sha256 || !SHA256_HEX.test(sha256))
      throw new ChecksumError(
        `${printable(file.path)} has no SHA-256 recorded at upload (x-amz-meta-${SHA256_METADATA}), so it cannot be verified; the agent records one for every file it uploads, so this object was written some other way`,
      );
    const etag = head.ETag ?? "";
    const size = head.ContentLength ?? 0;
    const part = target + PART_SUFFIX;
    const sidecar = target + SIDECAR_SUFFIX;
    if (await hasContent(target, size, sha256)) {
      // A part left by a pull cut short before the file was completed some other way is no longer wanted.
      await rm(part, { force: true });
      await rm(sidecar, { force: true });
      return false;
    }
    await mkdir(dirname(target), { recursive: true });
    let offset = await resumableBytes(part, sidecar, etag, size);
    if (offset === 0) await writeFile(sidecar, JSON.stringify({ etag, size }));
    onBytes(offset);
    // A part as long as the object only needs verifying; an empty object is still fetched, to create it.
    if (offset === 0 || offset < size) {
      const out = await this.s3
        .send(
          new GetObjectCommand({
            Bucket: this.store.bucket,
            Key: file.key,
            ...(etag && { IfMatch: etag }),
            ...(offset > 0 && { Range: `bytes=${offset}-` }),
          }),
          { abortSignal: signal },
        )
        .catch(async (error: unknown) => {
          if (!isChanged(error)) throw error;
          // The partial bytes are of an object that is gone: the next pull starts the file over.
          await rm(sidecar, { force: true });
          throw new ChangedDuringPullError(
            `${printable(file.path)} changed while pulling (the job rewrote it); pull again`,
          );
        });
      // A server that ignores the range sends the whole object: write it from the start.
      if (offset > 0 && !out.ContentRange?.startsWith(`bytes ${offset}-`)) offset = 0;
      await writeBody(part, offset, size, out.Body as Readable, onBytes, signal);
    }
    const actual = await sha256OfPath(part);
    if (actual !== sha256) {
      await rm(part, { force: true });
      await rm(sidecar, { force: true });
      throw new ChecksumError(
        `${printable(file.path)}: SHA-256 ${actual} of the download is not the ${sha256} recorded at upload; the partial file was deleted, pull again`,
      );
    }
    await rename(part, target);
    await rm(sidecar, { force: true });
    return true;
  }
}

/**
 * The step of a checkpoint file, from its name:
 * 1. a number right after `step` (`step500`, `step_500`, `step-500`, `step=500`, `global_step500`), wherever
 *    it is in the path, so Lightning's `epoch=3-step=1500.ckpt` is step 1500 (several that disagree: none);
 * 2. otherwise, going from the file name out through its directories, the first path segment with exactly
 *    one number-like group (digits touching no letter or other digit: `ckpt_000500.pt` is 500,
 *    `step-1200/model.safetensors` 1200, `checkpoint-500/model-00001-of-00002.safetensors` 500, while the
 *    5 of `model.h5` or the 16 of `bf16` is no group); a segment with several is passed over;
 * 3. otherwise none (undefined).
 */
export function stepOf(name: string): number | undefined {
  const named = [...name.matchAll(/(?<![a-z])step[-_=]?(\d+)(?![a-z0-9])/gi)].map((m) => Number(m[1]));
  if (named.length > 0) return named.every((s) => s === named[0]) ? safe(named[0]!) : undefined;
  for (const segment of name.split("/").reverse()) {
    const groups = segment.match(/(?<![a-z0-9])\d+(?![a-z0-9])/gi) ?? [];
    if (groups.length === 1) return safe(Number(groups[0]));
  }
  return undefined;
}

const safe = (n: number): number | undefined => (Number.isSafeInteger(n) ? n : undefined);

/**
 * A filter on a pull's paths (`outputs/model.pt`, `checkpoints/step-1200/model.safetensors`), as in
 * `.gitignore`: a glob with a slash is matched against the whole path, one without against the file
 * name wherever it is (`*.pt`). Dot files match like any other: the glob filters files, it does not
 * expand a shell's names.
 */
export function matcher(glob: string): (path: string) => boolean {
  if (glob.trim() === "") throw new RangeError("a glob may not be empty");
  const test = picomatch(glob, { dot: true });
  return glob.includes("/") ? test : (path) => test(path.slice(path.lastIndexOf("/") + 1));
}

/** A name safe to print on a terminal: control characters (a key may hold escape sequences) as `\xNN`. */
export function printable(name: string): string {
  // eslint-disable-next-line no-control-regex
  return name.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/**
 * SHA-256 (hex) of the first `size` bytes of an open file, by positional reads: the handle stays open and
 * its position untouched. A file that shrinks meanwhile fails, as its upload would.
 */
export async function sha256Of(handle: FileHandle, size: number): Promise<string> {
  const hash = createHash("sha256");
  const buffer = Buffer.allocUnsafe(Math.min(size, HASH_CHUNK_BYTES));
  for (let at = 0; at < size;) {
    const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, size - at), at);
    if (bytesRead === 0) throw new Error(`a file of ${size} bytes ended at ${at} while it was hashed`);
    hash.update(buffer.subarray(0, bytesRead));
    at += bytesRead;
  }
  return hash.digest("hex");
}

function checkName(file: JobFile): void {
  const parts = file.name.split("/");
  if (parts.some((p) => p === "" || p === "." || p === ".." || p.includes("\\") || p.includes("\0")))
    throw new UnsafeKeyError(
      `the job's ${file.kind} hold a key that would land outside the directory: ${JSON.stringify(file.key)} (an absolute path, an empty, "." or ".." segment, a backslash or a NUL); nothing was pulled`,
    );
}

/** `dir`, created if missing, as an absolute path; a {@link PullDirectoryError} naming it if it cannot be written. */
async function prepareDirectory(dir: string): Promise<string> {
  const root = resolve(dir);
  try {
    await mkdir(root, { recursive: true });
    if (!(await stat(root)).isDirectory()) throw Object.assign(new Error(), { code: "ENOTDIR" });
    await access(root, constants.W_OK | constants.X_OK);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why =
      code === "EEXIST" || code === "ENOTDIR"
        ? "it, or a directory above it, is a file"
        : code === "EACCES" || code === "EPERM" || code === "EROFS"
          ? "permission denied"
          : (error as Error).message;
    throw new PullDirectoryError(`cannot pull into ${dir}: ${why}`);
  }
  return root;
}

/** Whether `path` is a regular file (not a link) of `size` bytes whose SHA-256 is `sha256`. */
async function hasContent(path: string, size: number, sha256: string): Promise<boolean> {
  const info = await lstat(path).catch(() => undefined);
  if (!info?.isFile() || info.size !== size) return false;
  return (await sha256OfPath(path)) === sha256;
}

/** How many bytes of `part` can be kept: its size, if the sidecar says it is of this very object. */
async function resumableBytes(part: string, sidecar: string, etag: string, size: number): Promise<number> {
  const saved = partSchema.safeParse(
    await readFile(sidecar, "utf8")
      .then((text) => JSON.parse(text) as unknown)
      .catch(() => undefined),
  );
  const info = await lstat(part).catch(() => undefined);
  const same = saved.success && saved.data.etag === etag && saved.data.size === size;
  return same && info?.isFile() && info.size <= size ? info.size : 0;
}

/**
 * Writes `body` into `part` from `offset` (cutting off anything after it), refusing more than `size` bytes
 * in all; `onBytes` hears the part's length after each write, so what it reports is in the file.
 */
async function writeBody(
  part: string,
  offset: number,
  size: number,
  body: Readable,
  onBytes: (bytes: number) => void,
  signal: AbortSignal | undefined,
): Promise<void> {
  const handle = await open(part, constants.O_WRONLY | constants.O_CREAT | constants.O_NOFOLLOW, 0o644);
  try {
    await handle.truncate(offset);
    let length = offset;
    const writer = new Writable({
      write(chunk: Buffer, _encoding, done) {
        if (length + chunk.length > size) {
          done(new Error(`${part}: the server sent more than the object's ${size} bytes`));
          return;
        }
        writeAll(handle, chunk, length).then(() => {
          length += chunk.length;
          onBytes(length);
          done();
        }, done);
      },
    });
    await pipeline(body, writer, { signal });
  } finally {
    await handle.close();
  }
}

/** Writes all of `chunk` at `position`: a write may take fewer bytes than it was given. */
async function writeAll(handle: FileHandle, chunk: Buffer, position: number): Promise<void> {
  for (let at = 0; at < chunk.length;) {
    const { bytesWritten } = await handle.write(chunk, at, chunk.length - at, position + at);
    at += bytesWritten;
  }
}

async function sha256OfPath(path: string): Promise<string> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  try {
    return await sha256Of(handle, (await handle.stat()).size);
  } finally {
    await handle.close();
  }
}

function status(error: unknown): number | undefined {
  return (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
}

const isDenied = (error: unknown): boolean =>
  (error as { name?: string }).name === "AccessDenied" || status(error) === 403;
const isMissing = (error: unknown): boolean =>
  (error as { name?: string }).name === "NotFound" || status(error) === 404;
const isChanged = (error: unknown): boolean => status(error) === 412;
