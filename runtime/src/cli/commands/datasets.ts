import type { Command } from "commander";
import { byteProgressBar } from "../byte-progress";
import { formatDatasetBytes, formatDatasetRef } from "../../catalog/datasets";
import { defaultDatasetsDir, listDatasets } from "../../job/datasets";
import { formatBytes } from "../../job/detect";
import { DatasetInputError, DatasetManifestError, DatasetNotFoundError } from "../../store/dataset-store";
import type { DatasetStore } from "../../store/dataset-store";
import type { Owner } from "./platform-access";
import { ownerOf, ownerOptions, platformFromEnv } from "./platform-access";
import { asUsage, cliLogger, printJson, UsageError } from "./shared";

/** The caller's datasets through their own credentials. */
function datasetStore(): DatasetStore {
  const { datasets } = platformFromEnv(cliLogger());
  if (!datasets)
    throw new UsageError(
      "CRUCIBLE_DATASETS_BUCKET is not set: name the datasets bucket (stack output storage.datasetsBucketName); " +
        "a local platform started before datasets existed needs `crucible local down` and `crucible local up`",
    );
  return datasets;
}

/** What the caller named wrongly (the name, the directory, a file in it) is bad usage; the rest a failure. */
const DATASET_USAGE = [DatasetInputError, DatasetNotFoundError, DatasetManifestError];

/** `crucible datasets push|ls|local`: versioned datasets in the platform's store, and the local directory. */
export function registerDatasets(program: Command): void {
  const datasets = program
    .command("datasets")
    .description(
      "push and list the datasets jobs name (submit --dataset NAME@VERSION), mounted read-only at /datasets/NAME",
    );

  ownerOptions(
    datasets
      .command("push")
      .description(
        "upload DIR as the next immutable version of NAME (files already in the store are not sent again); " +
          "nothing new when the newest version holds the same content",
      )
      .argument("<name>", "dataset name: lowercase letters, digits, '-', '_' and '.'")
      .argument("<dir>", "directory of regular files (links and special files are refused)")
      .option("--json", "print the version as JSON"),
  ).action(async (name: string, dir: string, flags: Owner & { json?: boolean }) => {
    const store = datasetStore();
    const bar = process.stderr.isTTY && !flags.json ? byteProgressBar() : undefined;
    let result;
    try {
      result = await asUsage(
        store.push(ownerOf(flags), name, dir, {
          onProgress: (sent, total) => {
            if (!bar) return;
            bar.setTotal(total);
            bar.update(sent, { done: formatBytes(sent), size: formatBytes(total) });
          },
        }),
        DATASET_USAGE,
      );
    } finally {
      bar?.stop();
    }
    const { manifest, created } = result;
    if (flags.json) {
      const { files, ...version } = manifest;
      printJson({ ...version, fileCount: files.length, created });
      return;
    }
    const ref = formatDatasetRef(manifest);
    process.stdout.write(
      created
        ? `pushed ${ref} (${count(manifest.files.length)}, ${formatDatasetBytes(manifest.totalBytes)}, ${manifest.digest})\n`
        : `${ref} already holds this content\n`,
    );
  });

  ownerOptions(
    datasets
      .command("ls")
      .description("list your datasets' versions and the platform's pre-cached ones")
      .option("--json", "print them as JSON"),
  ).action(async (flags: Owner & { json?: boolean }) => {
    const versions = await asUsage(datasetStore().list(ownerOf(flags)), DATASET_USAGE);
    if (flags.json) {
      printJson(versions);
      return;
    }
    if (versions.length === 0) {
      process.stdout.write("no datasets yet: push one with `crucible datasets push NAME DIR`\n");
      return;
    }
    const rows = [
      ["DATASET", "FILES", "SIZE", "CREATED", "SOURCE"],
      ...versions.map((v) => [
        formatDatasetRef(v),
        String(v.fileCount),
        formatDatasetBytes(v.totalBytes),
        v.createdAt.replace(/\.\d{3}Z$/, "Z"),
        v.source,
      ]),
    ];
    const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const row of rows)
      process.stdout.write(
        `${row
          .map((cell, i) => cell.padEnd(widths[i]!))
          .join("  ")
          .trimEnd()}\n`,
      );
  });

  datasets
    .command("local")
    .description("list the local datasets directory `crucible run --datasets DIR` mounts at /datasets")
    .option("--dir <dir>", "the datasets directory (default: $CRUCIBLE_DATASETS_DIR or ~/.crucible/datasets)")
    .option("--json", "print them as JSON")
    .action(async (opts: { dir?: string; json?: boolean }) => {
      const dir = opts.dir ?? defaultDatasetsDir();
      const found = await listDatasets(dir).catch((error: Error) => {
        throw new UsageError(error.message);
      });
      if (opts.json) {
        printJson(found);
        return;
      }
      if (found.length === 0) {
        process.stdout.write(`no datasets in ${dir}\n`);
        return;
      }
      const width = Math.max(...found.map((d) => d.name.length));
      for (const d of found) {
        process.stdout.write(
          `${d.name.padEnd(width)}  ${formatBytes(d.bytes).padStart(9)}  ${d.files} files\n`,
        );
      }
      process.stdout.write(`(mount with \`crucible run PATH --datasets ${dir}\`)\n`);
    });
}

const count = (files: number): string => `${files} file${files === 1 ? "" : "s"}`;
