import { createWriteStream } from "node:fs";
import { chmod, copyFile, lstat, readdir, readFile, stat } from "node:fs/promises";
import { basename, extname, join, relative, sep } from "node:path";
import { pipeline } from "node:stream/promises";
import yauzl from "yauzl";
import yazl from "yazl";

/**
 * Job code as the user gives it: a directory holding main.py, a single .py file (it becomes main.py),
 * or a code.zip. Everything here is bounded, because the code is about to be copied into a sandbox.
 */
export type CodeKind = "directory" | "python-file" | "zip";

/** More than this is data, not code: pass it as a dataset directory instead. */
export const MAX_CODE_BYTES = 256 * 1024 * 1024;
export const MAX_CODE_FILES = 10_000;
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
}

async function checkZip(path: string): Promise<void> {
  const names = await zipEntryNames(path);
  if (!names.includes("main.py")) {
    throw new CodeError(
      `code: ${basename(path)} has no main.py at its root (found: ${names.slice(0, 5).join(", ")})`,
    );
  }
}

async function zipEntryNames(path: string): Promise<string[]> {
  const zip = await yauzl.openPromise(path).catch((error: Error) => {
    throw new CodeError(`code: ${path} is not a readable zip (${error.message})`);
  });
  try {
    if (zip.entryCount > MAX_CODE_FILES) {
      throw new CodeError(`code: ${path} holds ${zip.entryCount} entries, more than ${MAX_CODE_FILES}`);
    }
    const names: string[] = [];
    for await (const entry of zip.eachEntry()) names.push(entry.fileName);
    return names;
  } finally {
    zip.close();
  }
}

/** A source file read for analysis. */
export interface SourceText {
  readonly name: string;
  readonly text: string;
}

/** Only what an analysis of the code needs: Python sources and requirements, each at most this big. */
const MAX_SOURCE_BYTES = 1024 * 1024;
const isSource = (name: string): boolean => name.endsWith(".py") || basename(name) === "requirements.txt";

/** The Python sources and requirements.txt of a job's code, whichever form it takes. */
export async function readSources(path: string, kind?: CodeKind): Promise<SourceText[]> {
  const resolved = kind ?? (await codeKind(path));
  if (resolved === "python-file") return [{ name: "main.py", text: await readFile(path, "utf8") }];
  if (resolved === "directory") {
    const files = (await listCodeFiles(path)).filter((f) => isSource(f.name) && f.size <= MAX_SOURCE_BYTES);
    return Promise.all(files.map(async (f) => ({ name: f.name, text: await readFile(f.path, "utf8") })));
  }
  const zip = await yauzl.openPromise(path).catch((error: Error) => {
    throw new CodeError(`code: ${path} is not a readable zip (${error.message})`);
  });
  try {
    const sources: SourceText[] = [];
    for await (const entry of zip.eachEntry()) {
      if (!isSource(entry.fileName) || entry.uncompressedSize > MAX_SOURCE_BYTES) continue;
      const chunks: Buffer[] = [];
      for await (const chunk of await zip.openReadStreamPromise(entry)) chunks.push(chunk as Buffer);
      sources.push({ name: entry.fileName, text: Buffer.concat(chunks).toString("utf8") });
      if (sources.length >= MAX_CODE_FILES) break;
    }
    return sources;
  } finally {
    zip.close();
  }
}
