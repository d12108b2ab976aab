import { constants, createWriteStream } from "node:fs";
import { chmod, copyFile, lstat, open, readdir, stat } from "node:fs/promises";
import { basename, extname, join, relative, sep } from "node:path";
import { pipeline } from "node:stream/promises";
import yauzl from "yauzl";
import yazl from "yazl";

/**
 * Job code as the user gives it: a directory holding main.py, a single .py file (it becomes main.py),
 * or a code.zip. Everything here is bounded, because the code is about to be copied into a sandbox.
 */
export type CodeKind = "directory" | "python-file" | "zip";

const MiB = 1024 * 1024;
/**
 * More than this is data, not code: pass it as a dataset directory instead. The runner applies the same
 * limits to what it extracts (`MAX_CODE_BYTES`, `MAX_CODE_FILES` in images/runner/crucible_archive.py;
 * test/runtime/job/code-source.test.ts checks they agree).
 */
export const MAX_CODE_BYTES = 256 * MiB;
export const MAX_CODE_FILES = 10_000;
/**
 * The largest code.zip: {@link MAX_CODE_BYTES} stored uncompressed plus the headers of
 * {@link MAX_CODE_FILES} entries. Refused at submit, and by the agent before it downloads one.
 */
export const MAX_CODE_ARCHIVE_BYTES = MAX_CODE_BYTES + 32 * MiB;
/** Detection reads Python sources and requirements of at most this size each... */
export const MAX_SOURCE_BYTES = MiB;
/** ...and at most this much in all; what is left unread is counted, not read. */
export const MAX_DETECTION_BYTES = 16 * MiB;
/** Directories that are never job code: VCS metadata, caches, virtual environments. */
const SKIPPED_DIRS = new Set([".git", ".hg", "__pycache__", "node_modules", ".venv", "venv", ".mypy_cache"]);

/** A problem with the job's code, phrased for the person who gave it. */
export class CodeError extends Error {
  override readonly name = "CodeError";
}

export interface CodeFile {
  /** Path inside the job's code, with `/` separators. */
  readonly name: string;
  readonly path: string;
  readonly size: number;
}

export async function codeKind(path: string): Promise<CodeKind> {
  const info = await stat(path).catch((error: NodeJS.ErrnoException) => {
    throw new CodeError(
      error.code === "ENOENT" ? `code: ${path} does not exist` : `code: cannot read ${path} (${error.code})`,
    );
  });
  if (info.isDirectory()) {
    const main = await stat(join(path, "main.py")).catch(() => undefined);
    if (!main?.isFile())
      throw new CodeError(`code: directory ${path} has no main.py; a job's entry is main.py`);
    return "directory";
  }
  if (!info.isFile()) throw new CodeError(`code: ${path} is neither a directory nor a file`);
  const ext = extname(path).toLowerCase();
  if (ext === ".py") return "python-file";
  if (ext === ".zip") return "zip";
  throw new CodeError(
    `code: ${path} must be a directory, a .py file or a .zip, got a ${ext || "file with no extension"}`,
  );
}

/** The files of a code directory, skipping caches and VCS metadata; symbolic links are refused. */
export async function listCodeFiles(dir: string): Promise<CodeFile[]> {
  const files: CodeFile[] = [];
  let bytes = 0;
  const visit = async (current: string): Promise<void> => {
    const entries = await readdir(current, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const entry of entries) {
      const path = join(current, entry.name);
      const name = relative(dir, path).split(sep).join("/");
      if (entry.isDirectory()) {
        if (!SKIPPED_DIRS.has(entry.name)) await visit(path);
      } else if (entry.isSymbolicLink()) {
        throw new CodeError(`code: ${name} is a symbolic link; copy the file into the job directory instead`);
      } else if (entry.isFile()) {
        const { size } = await lstat(path);
        bytes += size;
        files.push({ name, path, size });
        if (files.length > MAX_CODE_FILES) {
          throw new CodeError(`code: ${dir} holds more than ${MAX_CODE_FILES} files; pass data as a dataset`);
        }
        if (bytes > MAX_CODE_BYTES) {
          throw new CodeError(
            `code: ${dir} holds more than ${MAX_CODE_BYTES / 2 ** 20} MiB; pass data as a dataset directory`,
          );
        }
      }
    }
  };
  await visit(dir);
  return files;
}

/**
 * Writes the job's code as a zip with main.py at its root: a directory's files, a .py file as main.py, or a
 * given zip after checking it is one and holds main.py (copied, so the sandbox never sees the user's file).
 */
export async function packageCode(path: string, kind: CodeKind, zipPath: string): Promise<void> {
  if (kind === "zip") {
    checkArchiveSize(basename(path), (await stat(path)).size);
    await checkZip(path);
    await copyFile(path, zipPath);
    await chmod(zipPath, 0o644);
    return;
  }
  const zip = new yazl.ZipFile();
  if (kind === "python-file") {
    zip.addFile(path, "main.py", { mode: 0o644 });
  } else {
    for (const file of await listCodeFiles(path)) zip.addFile(file.path, file.name, { mode: 0o644 });
  }
  zip.end();
  await pipeline(zip.outputStream, createWriteStream(zipPath, { mode: 0o644 }));
  checkArchiveSize(basename(path), (await stat(zipPath)).size);
}

/** `300 MiB (314572800 bytes)`: exact, and readable. */
export function describeBytes(bytes: number): string {
  const mib = bytes / MiB;
  return `${Number.isInteger(mib) ? mib : mib.toFixed(1)} MiB (${bytes} bytes)`;
}

/** Refuses a code archive over {@link MAX_CODE_ARCHIVE_BYTES}, naming its size and the limit. */
export function checkArchiveSize(name: string, bytes: number): void {
  if (bytes > MAX_CODE_ARCHIVE_BYTES) {
    throw new CodeError(
      `code: ${name} is ${describeBytes(bytes)}, more than the ${describeBytes(MAX_CODE_ARCHIVE_BYTES)} allowed for a job's code archive; pass data as a dataset directory`,
    );
  }
}

function checkDeclaredSize(name: string, bytes: number): void {
  if (bytes > MAX_CODE_BYTES) {
    throw new CodeError(
      `code: ${name} expands to ${describeBytes(bytes)}, more than the ${describeBytes(MAX_CODE_BYTES)} allowed; pass data as a dataset directory`,
    );
  }
}

/**
 * Refuses a code.zip that could not run as a job's code: over the size or entry limits, declaring more
 * than {@link MAX_CODE_BYTES}, with an entry named to land outside the code directory (as the runner's
 * crucible_archive.py refuses it), or without main.py at its root. Reads no entry's data.
 */
export async function checkZip(path: string): Promise<void> {
  const names = await zipEntryNames(path);
  if (!names.includes("main.py")) {
    throw new CodeError(
      `code: ${basename(path)} has no main.py at its root (found: ${names.slice(0, 5).join(", ")})`,
    );
  }
}

async function zipEntryNames(path: string): Promise<string[]> {
  const zip = await openZip(path);
  try {
    const names: string[] = [];
    let declared = 0;
    for await (const entry of entriesOf(zip, basename(path))) {
      names.push(entry.fileName);
      declared += entry.uncompressedSize;
    }
    checkDeclaredSize(basename(path), declared);
    return names;
  } finally {
    zip.close();
  }
}

/**
 * Refuses an entry name that would not stay inside the code directory once extracted: the rules of the
 * runner's `_safe_parts` (images/runner/crucible_archive.py), told at submit rather than when it runs.
 */
function checkEntryName(zipName: string, name: string): void {
  const refuse = (why: string): never => {
    throw new CodeError(`code: ${zipName} entry ${JSON.stringify(name)} ${why}`);
  };
  if (name.includes("\\") || name.includes("\0")) refuse("has a backslash or NUL in its name");
  if (name.startsWith("/") || /^[A-Za-z]:/.test(name))
    refuse("is an absolute path; entries must be relative to the archive's root");
  const parts = name.split("/").filter((part) => part !== "" && part !== ".");
  if (parts.includes("..")) refuse('climbs out of the archive with ".."; entries must stay inside it');
  if (parts.length === 0) refuse("has an empty name");
}

/** yauzl's own refusals of an entry's name (validateFileName), which name the entry after the colon. */
const YAUZL_NAME_REFUSAL = /^(?:invalid characters in fileName|absolute path|invalid relative path): (.*)$/s;

/**
 * A zip's entries, each name checked by {@link checkEntryName}; what yauzl refuses while reading the
 * directory (a name, a corrupt record) is a {@link CodeError} naming the archive.
 */
async function* entriesOf(zip: yauzl.ZipFile, zipName: string): AsyncGenerator<yauzl.Entry> {
  try {
    for await (const entry of zip.eachEntry()) {
      checkEntryName(zipName, entry.fileName);
      yield entry;
    }
  } catch (error) {
    if (error instanceof CodeError) throw error;
    const message = (error as Error).message;
    const named = YAUZL_NAME_REFUSAL.exec(message)?.[1];
    if (named !== undefined) checkEntryName(zipName, named);
    throw new CodeError(`code: ${zipName} is not a readable zip (${message})`);
  }
}

/**
 * Opens a zip whose size and entry count are within the limits; reads nothing else yet. Entries are
 * read only when asked for (`autoClose: false`: the caller closes it).
 */
async function openZip(path: string): Promise<yauzl.ZipFile> {
  checkArchiveSize(basename(path), (await stat(path)).size);
  // strictFileNames: a backslash stays one, to be refused as the runner refuses it, not read as a "/".
  const zip = await yauzl
    .openPromise(path, { autoClose: false, strictFileNames: true })
    .catch((error: Error) => {
      throw new CodeError(`code: ${path} is not a readable zip (${error.message})`);
    });
  if (zip.entryCount > MAX_CODE_FILES) {
    zip.close();
    throw new CodeError(`code: ${path} holds ${zip.entryCount} entries, more than ${MAX_CODE_FILES}`);
  }
  return zip;
}

/** A source file read for analysis. */
export interface SourceText {
  readonly name: string;
  readonly text: string;
}

/** What {@link readSources} read, and how many sources it left unread for being over its limits. */
export interface SourceReading {
  bytesRead: number;
  unread: number;
}

const isSource = (name: string): boolean => name.endsWith(".py") || basename(name) === "requirements.txt";

/**
 * The Python sources and requirements.txt of a job's code, whichever form it takes, read within bounds:
 * each at most {@link MAX_SOURCE_BYTES}, all together at most {@link MAX_DETECTION_BYTES} (the rest are
 * counted in `reading.unread`). A zip declaring more than {@link MAX_CODE_BYTES}, or an entry inflating
 * past the size its header declares, is refused with a {@link CodeError}.
 */
export async function readSources(
  path: string,
  kind?: CodeKind,
  reading: SourceReading = { bytesRead: 0, unread: 0 },
): Promise<SourceText[]> {
  const resolved = kind ?? (await codeKind(path));
  const room = (declared: number): boolean => {
    const fits = declared <= MAX_SOURCE_BYTES && reading.bytesRead + declared <= MAX_DETECTION_BYTES;
    if (!fits) reading.unread += 1;
    return fits;
  };
  const sources: SourceText[] = [];
  const readFiles = async (files: readonly { name: string; path: string }[]): Promise<SourceText[]> => {
    for (const file of files) {
      const data = await readRegularFile(file.path, room);
      if (!data) continue;
      reading.bytesRead += data.length;
      sources.push({ name: file.name, text: data.toString("utf8") });
    }
    return sources;
  };
  if (resolved === "python-file") return readFiles([{ name: "main.py", path }]);
  if (resolved === "directory") return readFiles((await listCodeFiles(path)).filter((f) => isSource(f.name)));

  const zip = await openZip(path);
  try {
    const wanted: yauzl.Entry[] = [];
    let declared = 0;
    for await (const entry of entriesOf(zip, basename(path))) {
      declared += entry.uncompressedSize;
      if (isSource(entry.fileName)) wanted.push(entry);
    }
    checkDeclaredSize(basename(path), declared);
    for (const entry of wanted) {
      if (!room(entry.uncompressedSize)) continue;
      const data = await readEntry(zip, entry, basename(path));
      reading.bytesRead += data.length;
      sources.push({ name: entry.fileName, text: data.toString("utf8") });
    }
    return sources;
  } finally {
    zip.close();
  }
}

/**
 * The top-level files `names` of a job's code zip (as the agent stages it), each read only when at most
 * `maxBytes`; a larger one is a {@link CodeError} naming it. Absent names are left out.
 */
export async function readZipTopLevel(
  path: string,
  names: readonly string[],
  maxBytes: number,
): Promise<Record<string, string>> {
  const zip = await openZip(path);
  try {
    const wanted: yauzl.Entry[] = [];
    for await (const entry of entriesOf(zip, basename(path)))
      if (names.includes(entry.fileName)) wanted.push(entry);
    const found: Record<string, string> = {};
    for (const entry of wanted) {
      if (entry.uncompressedSize > maxBytes)
        throw new CodeError(
          `code: ${entry.fileName} is ${entry.uncompressedSize} bytes; at most ${maxBytes} are read`,
        );
      found[entry.fileName] = (await readEntry(zip, entry, basename(path))).toString("utf8");
    }
    return found;
  } finally {
    zip.close();
  }
}

/**
 * An entry's bytes, never more than its header declares: an entry that inflates past that is refused
 * as the zip bomb it is, after reading at most one chunk more.
 */
async function readEntry(zip: yauzl.ZipFile, entry: yauzl.Entry, zipName: string): Promise<Buffer> {
  const declared = entry.uncompressedSize;
  const bomb = (): CodeError =>
    new CodeError(
      `code: ${zipName} entry ${entry.fileName} inflates past the ${declared} bytes its header declares; refusing it as a zip bomb`,
    );
  const stream = await zip.openReadStreamPromise(entry).catch((error: Error) => {
    throw new CodeError(`code: ${zipName} entry ${entry.fileName} cannot be read (${error.message})`);
  });
  const chunks: Buffer[] = [];
  let count = 0;
  try {
    for await (const chunk of stream) {
      count += (chunk as Buffer).length;
      if (count > declared) throw bomb();
      chunks.push(chunk as Buffer);
    }
  } catch (error) {
    stream.destroy();
    if (error instanceof CodeError) throw error;
    // yauzl checks the declared size itself, and may say so first.
    if (/too many bytes/.test((error as Error).message)) throw bomb();
    throw new CodeError(`code: ${zipName} entry ${entry.fileName} is corrupt (${(error as Error).message})`);
  }
  return Buffer.concat(chunks, count);
}

/**
 * A regular file's bytes, when `wanted(size)` says so: opened without following a link and without
 * blocking on a FIFO, and read no further than the size it had when opened.
 */
async function readRegularFile(path: string, wanted: (size: number) => boolean): Promise<Buffer | undefined> {
  const handle = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK).catch(
    () => undefined,
  );
  if (!handle) return undefined;
  try {
    const info = await handle.stat();
    if (!info.isFile() || !wanted(info.size)) return undefined;
    const buffer = Buffer.alloc(info.size);
    let offset = 0;
    while (offset < info.size) {
      const { bytesRead } = await handle.read(buffer, offset, info.size - offset, offset);
      if (bytesRead === 0) break;
      offset += bytesRead;
    }
    return buffer.subarray(0, offset);
  } finally {
    await handle.close();
  }
}
