import { createReadStream, createWriteStream } from "node:fs";
import { chmod, lstat, mkdir, readdir } from "node:fs/promises";
import { dirname, join, posix, relative, resolve, sep } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { extract, pack } from "tar-stream";

/**
 * An environment as one file: a tar of regular files and directories only. Packing refuses links and
 * special files (a package that installs one is refused, naming it), and unpacking refuses anything else
 * too, and any path that would leave the destination: what is stored and what lands are the same files.
 */
export class EnvironmentArchiveError extends Error {
  override readonly name = "EnvironmentArchiveError";
}

/** Files and directories an environment may hold. */
export const MAX_ENVIRONMENT_FILES = 200_000;

/** Bytes of the regular files under `dir`. */
export async function directoryBytes(dir: string): Promise<number> {
  let total = 0;
  for await (const entry of walk(dir)) if (entry.kind === "file") total += entry.size;
  return total;
}

/** Writes `dir` as a tar to `file`; answers its file count. */
export async function packEnvironment(dir: string, file: string): Promise<number> {
  const archive = pack();
  const writing = pipeline(archive, createWriteStream(file));
  let files = 0;
  try {
    for await (const entry of walk(dir)) {
      const name = relative(dir, entry.path).split(sep).join(posix.sep);
      if (entry.kind === "dir") {
        archive.entry({ name: `${name}/`, type: "directory", mode: 0o755 });
        continue;
      }
      files += 1;
      const header = { name, type: "file" as const, size: entry.size, mode: 0o644 };
      await new Promise<void>((done, fail) => {
        const sink = archive.entry(header, (error) => (error ? fail(error) : done()));
        createReadStream(entry.path).on("error", fail).pipe(sink);
      });
    }
    archive.finalize();
  } catch (error) {
    archive.destroy(error as Error);
    await writing.catch(() => undefined);
    throw error;
  }
  await writing;
  return files;
}

/**
 * Unpacks an environment tar into `dest` (created), read-only for everyone: files 0444, directories
 * 0555 once filled, so jobs of any uid read it and none can change it.
 */
export async function unpackEnvironment(archive: Readable, dest: string): Promise<number> {
  const root = resolve(dest);
  await mkdir(root, { recursive: true });
  const dirs = new Set<string>([root]);
  let entries = 0;
  const unpacking = extract();
  unpacking.on("entry", (header, stream, next) => {
    const fail = (message: string) => {
      stream.resume();
      unpacking.destroy(new EnvironmentArchiveError(message));
    };
    entries += 1;
    if (entries > MAX_ENVIRONMENT_FILES)
      return fail(`the environment holds more than ${MAX_ENVIRONMENT_FILES} entries`);
    const name = header.name.replace(/\/+$/, "");
    const target = resolve(root, name);
    if (name === "" || name.startsWith("/") || !target.startsWith(root + sep))
      return fail(
        `the environment archive has an entry outside it: ${JSON.stringify(header.name.slice(0, 200))}`,
      );
    if (header.type === "directory") {
      mkdir(target, { recursive: true }).then(
        () => {
          dirs.add(target);
          stream.resume();
          next();
        },
        (error: Error) => unpacking.destroy(error),
      );
      return;
    }
    if (header.type !== "file")
      return fail(
        `the environment archive has a ${header.type ?? "special"} entry (${JSON.stringify(name.slice(0, 200))}); only files and directories are allowed`,
      );
    mkdir(dirname(target), { recursive: true })
      .then(() => pipeline(stream, createWriteStream(target, { mode: 0o444 })))
      .then(
        () => next(),
        (error: Error) => unpacking.destroy(error),
      );
  });
  await pipeline(archive, unpacking);
  // Deepest first: a directory made read-only first would refuse its own children's mode change.
  for (const dir of [...dirs].sort((a, b) => b.length - a.length)) await chmod(dir, 0o555);
  return entries;
}

type Walked = { path: string; kind: "dir" } | { path: string; kind: "file"; size: number };

async function* walk(dir: string): AsyncGenerator<Walked> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const info = await lstat(path);
    if (info.isDirectory()) {
      yield { path, kind: "dir" };
      yield* walk(path);
    } else if (info.isFile()) yield { path, kind: "file", size: info.size };
    else
      throw new EnvironmentArchiveError(
        `the environment holds ${info.isSymbolicLink() ? "a link" : "a special file"} at ${relative(dir, path) || path}; only files and directories can be shipped`,
      );
  }
}
