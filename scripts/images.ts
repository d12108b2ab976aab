import { Command, Option } from "commander";
import { createLogger } from "../runtime/src/logger";
import type { ImageFamily } from "../runtime/src/catalog/image-matrix";
import { IMAGE_FAMILIES, IMAGE_MATRIX } from "../runtime/src/catalog/image-matrix";
import { buildImages } from "./lib/images";

const MB = 1000 * 1000;

async function main(): Promise<void> {
  const program = new Command("images").description("The image matrix on the local Docker engine");
  program
    .command("build")
    .description("build families of the matrix (default: every one that builds from Debian's archive alone)")
    .addOption(new Option("--family <family...>", "families to build").choices(IMAGE_FAMILIES))
    .option("--version <version>", "value of the org.opencontainers.image.version label", "dev")
    .option("--verbose", "show the engine's build output", false)
    .action(async (opts: { family?: ImageFamily[]; version: string; verbose: boolean }) => {
      const families = opts.family ?? IMAGE_FAMILIES.filter((f) => IMAGE_MATRIX[f].buildsOffline);
      const built = await buildImages(families, {
        logger: createLogger({ defaultLevel: "warn" }),
        version: opts.version,
        ...(opts.verbose && { onOutput: (text: string) => process.stderr.write(text) }),
      });
      const rows = built.map((b) => [
        b.ref,
        b.id.slice(0, 19),
        `${(b.sizeBytes / MB).toFixed(0)} MB`,
        `${b.seconds.toFixed(1)} s`,
      ]);
      const header = ["image", "id", "size", "build"];
      const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
      for (const row of [header, ...rows]) {
        process.stdout.write(
          `${row
            .map((cell, i) => cell.padEnd(widths[i]!))
            .join("  ")
            .trimEnd()}\n`,
        );
      }
    });
  await program.parseAsync();
}

main().catch((error: unknown) => {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(1);
});
