import { lstat, readdir } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";

/** The variable naming the local datasets directory (mounted read-only at /datasets). */
export const DATASETS_DIR_ENV = "CRUCIBLE_DATASETS_DIR";

/** The local datasets directory: the environment's choice, else ~/.crucible/datasets. */
export function defaultDatasetsDir(): string {
  return process.env[DATASETS_DIR_ENV] ?? join(homedir(), ".crucible", "datasets");
}

export interface Dataset {
  readonly name: string;
  readonly files: number;
  readonly bytes: number;
}

/** The datasets under `root`: each entry at its top level, with its file count and size (links not followed). */
export async function listDatasets(root: string): Promise<Dataset[]> {
  const entries = await readdir(root, { withFileTypes: true }).catch((error: NodeJS.ErrnoException) => {
    throw new Error(
      error.code === "ENOENT"
        ? `the datasets directory ${root} does not exist; create it, or name another with --dir or ${DATASETS_DIR_ENV}`
        : `cannot read the datasets directory ${root} (${error.code})`,
    );
  });
  const datasets = await Promise.all(
    entries.map(async (entry) => ({ name: entry.name, ...(await usage(join(root, entry.name))) })),
  );
  return datasets.sort((a, b) => a.name.localeCompare(b.name));
}

async function usage(path: string): Promise<{ files: number; bytes: number }> {
  const info = await lstat(path);
  if (!info.isDirectory()) return { files: 1, bytes: info.size };
  const parts = await Promise.all((await readdir(path)).map((name) => usage(join(path, name))));
  return parts.reduce((a, b) => ({ files: a.files + b.files, bytes: a.bytes + b.bytes }), {
    files: 0,
    bytes: 0,
  });
}
