import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import type { Logger } from "../../runtime/src/logger";
import type { ImageFamily } from "../../runtime/src/catalog/image-matrix";
import { buildArgs, buildOrder, IMAGE_MATRIX, imageRef } from "../../runtime/src/catalog/image-matrix";

/** The build context of every family: the repository root, trimmed by its .dockerignore. */
export const CONTEXT = path.resolve(__dirname, "..", "..");
/** Held while building: test runs started side by side then wait and reuse the first one's layers. */
const BUILD_LOCK = path.join(tmpdir(), "crucible-image-build.lock");
/** How much of a failed build's output its error keeps. */
const ERROR_TAIL_CHARS = 8000;

export interface BuiltImage {
  readonly family: ImageFamily;
  readonly ref: string;
  /** The image id: the sha256 of its config, what the engine runs it by until a registry digest exists. */
  readonly id: string;
  readonly sizeBytes: number;
  readonly seconds: number;
}

export interface BuildOptions {
  readonly logger: Logger;
  /** Written to `org.opencontainers.image.version`. Defaults to "dev". */
  readonly version?: string;
  /** Receives the engine's build output as it comes, e.g. to show it with --verbose. */
  readonly onOutput?: (text: string) => void;
}

/**
 * Builds families (and the families they are built on, first) on the local engine with the Docker CLI,
 * which honours .dockerignore. The engine's layer cache makes an unchanged family a matter of seconds,
 * so callers build rather than guess whether an existing image is stale.
 */
export async function buildImages(
  families: readonly ImageFamily[],
  options: BuildOptions,
): Promise<BuiltImage[]> {
  const built: BuiltImage[] = [];
  for (const family of buildOrder(families)) built.push(await buildImage(family, options));
  return built;
}

async function buildImage(family: ImageFamily, options: BuildOptions): Promise<BuiltImage> {
  const spec = IMAGE_MATRIX[family];
  const ref = imageRef(family);
  const dockerfile = path.join(CONTEXT, spec.dockerfile);
  const extraCa = readFileSync(dockerfile, "utf8").includes("ARG EXTRA_CA_CERTS") ? hostExtraCaCerts() : "";
  const args = {
    ...buildArgs(family),
    VERSION: options.version ?? "dev",
    ...(extraCa && { EXTRA_CA_CERTS: extraCa }),
  };
  const log = options.logger.child({ family, ref });
  const started = performance.now();
  log.info({ args: { ...args, ...(extraCa && { EXTRA_CA_CERTS: "(host's local CAs)" }) } }, "building image");
  const output = await docker(
    [
      "build",
      "--file",
      dockerfile,
      "--tag",
      ref,
      ...Object.entries(args).flatMap(([k, v]) => ["--build-arg", `${k}=${v}`]),
      CONTEXT,
    ],
    options.onOutput,
  );
  if (output.code !== 0) {
    log.error({ code: output.code }, "image build failed");
    throw new Error(
      `building ${ref} from ${spec.dockerfile} failed (docker build exited ${output.code}):\n${output.text.slice(-ERROR_TAIL_CHARS)}`,
    );
  }
  const inspected = await docker(["image", "inspect", "--format", "{{.Id}} {{.Size}}", ref]);
  const [id = "", size = "0"] = inspected.text.trim().split(" ");
  const image = { family, ref, id, sizeBytes: Number(size), seconds: (performance.now() - started) / 1000 };
  log.info({ id, sizeBytes: image.sizeBytes, seconds: image.seconds }, "image built");
  return image;
}

/**
 * The certificates this host added to its trust store (Debian's /usr/local/share/ca-certificates): where
 * an egress proxy intercepts TLS, a build stage that fetches from the npm registry must trust them too.
 */
function hostExtraCaCerts(dir = "/usr/local/share/ca-certificates"): string {
  if (!existsSync(dir)) return "";
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((name) => name.endsWith(".crt"))
    .sort()
    .map((name) => readFileSync(path.join(dir, name), "utf8").trim())
    .join("\n");
}

/**
 * Runs the Docker CLI (a build under util-linux's `flock`, so concurrent builds of the matrix queue up);
 * resolves with its exit code and combined output (the last part of it).
 */
function docker(args: string[], onOutput?: (text: string) => void): Promise<{ code: number; text: string }> {
  const command = args[0] === "build" ? ["flock", BUILD_LOCK, "docker", ...args] : ["docker", ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(command[0]!, command.slice(1), { stdio: ["ignore", "pipe", "pipe"] });
    let text = "";
    const collect = (chunk: Buffer): void => {
      const part = chunk.toString();
      onOutput?.(part);
      text = (text + part).slice(-4 * ERROR_TAIL_CHARS);
    };
    child.stdout.on("data", collect);
    child.stderr.on("data", collect);
    child.on("error", (error) =>
      reject(new Error(`cannot run ${command[0]} (${error.message}); run scripts/ensure-docker.sh`)),
    );
    child.on("close", (code) => resolve({ code: code ?? 1, text }));
  });
}
