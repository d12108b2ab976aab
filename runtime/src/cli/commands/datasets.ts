import type { Command } from "commander";
import { defaultDatasetsDir, listDatasets } from "../../job/datasets";
import { formatBytes } from "../../job/detect";
import { printJson, UsageError } from "./shared";

/** `crucible datasets`: what jobs find under /datasets when run with that directory. */
export function registerDatasets(program: Command): void {
  program
    .command("datasets")
    .description("list the pre-cached datasets jobs can read at /datasets")
    .option("--dir <dir>", "the datasets directory (default: $CRUCIBLE_DATASETS_DIR or ~/.crucible/datasets)")
    .option("--json", "print them as JSON")
    .action(async (opts: { dir?: string; json?: boolean }) => {
      const dir = opts.dir ?? defaultDatasetsDir();
      const datasets = await listDatasets(dir).catch((error: Error) => {
        throw new UsageError(error.message);
      });
      if (opts.json) {
        printJson(datasets);
        return;
      }
      if (datasets.length === 0) {
        process.stdout.write(`no datasets in ${dir}\n`);
        return;
      }
      const width = Math.max(...datasets.map((d) => d.name.length));
      for (const d of datasets) {
        process.stdout.write(
          `${d.name.padEnd(width)}  ${formatBytes(d.bytes).padStart(9)}  ${d.files} files\n`,
        );
      }
      process.stdout.write(`(mount with \`crucible run PATH --datasets ${dir}\`)\n`);
    });
}
