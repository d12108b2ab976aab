import type Dockerode from "dockerode";
import { LABELS, ownerLabels, thisProcess } from "../launch/sandbox";
import { createWriteStream } from "node:fs";
import { mkdir } from "node:fs/promises";
import { dirname, join, posix, resolve } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { extract } from "tar-stream";
import type { PrecachedDataset } from "../catalog/datasets";
import { datasetPathProblem, MAX_DATASET_FILES, PRECACHED_DATASETS } from "../catalog/datasets";
import type { ImageFamily } from "../catalog/image-matrix";
import { imageRef } from "../catalog/image-matrix";
import type { Logger } from "../logger";
import { isNoSuchContainer } from "../launch/docker/container-engine";
import type { PrecachedSeed } from "./dataset-cache";

/** Bytes copied out of an image at most: the pre-cached sets are small, an image's directory may not be. */
const DEFAULT_MAX_BYTES = 1024 ** 3;

export interface CopyFromImageOptions {
  readonly docker: Dockerode;
  readonly logger: Logger;
  /** An image the engine has (a node's pinned image of a job family). */
  readonly image: string;
  /** An absolute directory inside the image. */
  readonly path: string;
  /** A directory to create and fill; it must not exist or be empty. */
  readonly dest: string;
  /** Top-level entries of `path` to leave out. Defaults to none. */
  readonly exclude?: readonly string[];
  /** Refuses the copy past this many bytes. Defaults to 1 GiB. */
  readonly maxBytes?: number;
}

/**
 * Copies a directory out of an image into `dest`, as `docker cp` would: the image's files through a
 * container that is created, never started, and removed after. Only regular files and directories are
 * taken; a link or special file anywhere refuses the copy (naming it), as does an entry whose path would
 * leave `dest`, so what lands is exactly the image's data. Answers the number of files written.
 */
export async function copyDirectoryFromImage(options: CopyFromImageOptions): Promise<number> {
  const { docker, logger, image, path, dest } = options;
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_BYTES;
  const fields = { image, path };
  logger.debug(fields, "docker create (copy out)");
  const container = await docker.createContainer({
    Image: image,
    // Never started; an entrypoint is required by images that have none.
    Entrypoint: ["/bin/true"],
    Cmd: [],
    NetworkDisabled: true,
    Labels: {
      [LABELS.managed]: "true",
      [LABELS.purpose]: "copy-out",
      ...ownerLabels(thisProcess()),
    },
  });
  try {
    logger.debug({ ...fields, containerId: container.id.slice(0, 12) }, "docker get archive");
    const archive = (await container.getArchive({ path })) as Readable;
    const files = await extractDirectory(archive, dest, options.exclude ?? [], maxBytes, image, path);
    logger.info({ ...fields, dest, files }, "copied a directory out of an image");
    return files;
  } finally {
    try {
      await container.remove({ force: true, v: true });
    } catch (error) {
      if (!isNoSuchContainer(error))
        logger.warn({ ...fields, err: error }, "removing the copy-out container failed");
    }
  }
}

/**
 * Writes a `getArchive` tar of one directory (its entries named `<basename>/...`) into `dest`, refusing
 * anything but regular files and directories, and any path that is not a plain relative one.
 */
async function extractDirectory(
  archive: Readable,
  dest: string,
  exclude: readonly string[],
  maxBytes: number,
  image: string,
  path: string,
): Promise<number> {
  await mkdir(dest, { recursive: true, mode: 0o755 });
  const root = posix.basename(posix.normalize(path));
  const tar = extract();
  let files = 0;
  let bytes = 0;
  const where = (name: string) => `${image}:${posix.join(posix.dirname(path), name)}`;
  tar.on("entry", (header, stream, next) => {
    const fail = (message: string) => {
      stream.resume();
      tar.destroy(new Error(message));
    };
    const name = header.name.replace(/\/$/, "");
    if (name === root) {
      if (header.type !== "directory") return fail(`${where(name)} is not a directory`);
      stream.resume();
      return next();
    }
    if (!name.startsWith(`${root}/`)) return fail(`${where(name)} is outside the directory asked for`);
    const relative = name.slice(root.length + 1);
    const problem = datasetPathProblem(relative);
    if (problem) return fail(`${where(name)} cannot be copied: its path ${problem}`);
    if (exclude.includes(relative.split("/")[0]!)) {
      stream.resume();
      return next();
    }
    const target = join(dest, ...relative.split("/"));
    if (header.type === "directory") {
      stream.resume();
      mkdir(target, { recursive: true, mode: 0o755 }).then(() => next(), next);
      return;
    }
    if (header.type !== "file")
      return fail(
        `${where(name)} is a ${header.type ?? "special file"}: only regular files and directories are copied`,
      );
    files += 1;
    bytes += header.size ?? 0;
    if (files > MAX_DATASET_FILES) return fail(`${image}:${path} holds more than ${MAX_DATASET_FILES} files`);
    if (bytes > maxBytes) return fail(`${image}:${path} holds more than ${maxBytes} bytes`);
    mkdir(dirname(target), { recursive: true, mode: 0o755 })
      .then(() => pipeline(stream, createWriteStream(target, { flags: "wx", mode: 0o644 })))
      .then(() => next(), next);
  });
  await pipeline(archive, tar);
  return files;
}

/** The runtime package's root: the parent of `src/` (or `dist/`), /opt/crucible/runtime in the agent image. */
export const RUNTIME_PACKAGE_DIR = resolve(__dirname, "..", "..");

/**
 * Where each of the platform's pre-cached sets is on this node, for {@link DatasetCache.seedPrecached}:
 * the runtime package's own directories as they are, and each image directory copied out of the node's
 * image of its family (`images`, else the local matrix tag) into `workDir`.
 */
export async function precachedSeeds(options: {
  readonly docker: Dockerode;
  readonly logger: Logger;
  /** An empty scratch directory for what is copied out of images. */
  readonly workDir: string;
  /** The node's pinned images. Defaults to the local matrix tags (imageRef). */
  readonly images?: Partial<Record<ImageFamily, string>>;
  /** Defaults to every pre-cached set. */
  readonly datasets?: readonly PrecachedDataset[];
}): Promise<PrecachedSeed[]> {
  const seeds: PrecachedSeed[] = [];
  for (const dataset of options.datasets ?? PRECACHED_DATASETS) {
    const ref = { name: dataset.name, version: dataset.version };
    const { source } = dataset;
    if (source.kind === "package") {
      seeds.push({ dataset: ref, dir: join(RUNTIME_PACKAGE_DIR, ...source.path.split("/")) });
      continue;
    }
    const dest = join(options.workDir, dataset.name);
    await copyDirectoryFromImage({
      docker: options.docker,
      logger: options.logger,
      image: options.images?.[source.family] ?? imageRef(source.family),
      path: source.path,
      dest,
      exclude: source.exclude,
    });
    seeds.push({ dataset: ref, dir: dest });
  }
  return seeds;
}
