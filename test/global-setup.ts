import { createLogger } from "../runtime/src/logger";
import { buildImages } from "../scripts/lib/images";

/**
 * Builds the images the Docker-backed suites run (cpu, ml-cpu, agent) before any test file starts, so
 * every suite runs against images made from the Dockerfiles in this checkout. The engine's layer cache
 * makes this seconds when nothing changed; on a fresh machine it is the full offline build.
 */
export default async function setup(): Promise<void> {
  const started = performance.now();
  const built = await buildImages(["cpu", "ml-cpu", "agent", "builder"], {
    logger: createLogger({ defaultLevel: "warn" }),
  });
  const summary = built.map((b) => `${b.ref} ${(b.sizeBytes / 1e6).toFixed(0)} MB`).join(", ");
  process.stderr.write(
    `global setup: images ready in ${((performance.now() - started) / 1000).toFixed(0)} s: ${summary}\n`,
  );
}
