import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { environmentPathSchema } from "../job/contract";
import type { ContainerEngine } from "../launch/docker/container-engine";
import { BoundedTail } from "../launch/output";
import { createQuotaDir, QuotaUnavailableError } from "../launch/quota-volume";
import type { QuotaDir } from "../launch/quota-volume";
import { LABELS, ownerLabels, ROOTLESS_FALLBACK_USER, thisProcess } from "../launch/sandbox";
import type { Logger } from "../logger";
import { directoryBytes } from "./environment-files";
import { startIndexProxy } from "./index-proxy";
import type { IndexProxy } from "./index-proxy";
import type { JobRequirements } from "./requirements";

/** Where the builder image's files are mounted in the build container. */
const BUILDER_MOUNT = "/opt/crucible/builder";
const SOCKET_MOUNT = "/run/crucible-index";
const SOCKET_NAME = "index.sock";
/** How much of a build's output its failure keeps to be summarised. */
const TAIL_BYTES = 64 * 1024;

/** What a build may use. Limits are the job's tier's, so a build costs no more than its job could. */
export interface BuildLimits {
  readonly memoryMiB: number;
  readonly vcpus: number;
  readonly pidsLimit: number;
  /** Seconds before the build is killed. */
  readonly seconds: number;
  /** The environment's size at most (the tier's `environmentGiB`). */
  readonly maxBytes: number;
}

/** Where a build's packages come from: the stack's index and the destinations it needs, or none. */
export interface PackageSource {
  /** The index URL pip is given (it may carry a token: never logged). */
  readonly url: string;
  /** `host:port` destinations the build may reach, the index's own. */
  readonly hosts: readonly string[];
}

export interface BuildInput {
  readonly engine: ContainerEngine;
  /** The job's image: the environment is built by the interpreter it will run with. */
  readonly image: string;
  /** A host directory holding the builder image's files (pip, build_env.py, index_bridge.py). */
  readonly builderDir: string;
  readonly requirements: JobRequirements;
  /** Undefined: no index (only what the image has can be required). */
  readonly index?: PackageSource;
  /** An empty host directory for the build: the requirements, the proxy's socket, the environment. */
  readonly workDir: string;
  readonly limits: BuildLimits;
  readonly logger: Logger;
  /** The job it is built for, in logs and labels. */
  readonly jobId: string;
  /** Aborted to stop the build (the job was cancelled, the node is going away). */
  readonly signal?: AbortSignal;
  /** Each piece of the build's output, as it comes. */
  readonly onOutput: (text: string) => void;
}

export interface BuiltEnvironment {
  /** The environment's directory: what the job mounts. */
  readonly dir: string;
  /** Directories inside it for the job's Python path. */
  readonly pythonPath: readonly string[];
  readonly packages: readonly InstalledPackage[];
  readonly bytes: number;
  /** Releases the build's volume; the caller has copied what it keeps. */
  release(): Promise<void>;
}

export interface InstalledPackage {
  readonly name: string;
  readonly version: string;
}

/** A build that failed, with pip's cause summarised: the job ends as `invalid_job` with this message. */
export class EnvironmentBuildError extends Error {
  override readonly name = "EnvironmentBuildError";
}

/** What build_env.py writes; produced next to packages' own code, so it is read as hostile too. */
const buildReportSchema = z.strictObject({
  sitePackages: z.array(environmentPathSchema).max(8),
  python: z.string().max(16),
  packages: z
    .array(z.strictObject({ name: z.string().min(1).max(200), version: z.string().min(1).max(100) }))
    .max(5000),
});

/**
 * Builds an environment: pip, from the builder image, installs the requirements under a volume of the
 * tier's environment size inside a container of the job's own image, run unprivileged, read-only, with
 * no network but the proxy to the index, and within the tier's memory, CPUs, processes and a time limit.
 * Throws {@link EnvironmentBuildError} with pip's cause for a build that fails.
 */
export async function buildEnvironment(input: BuildInput): Promise<BuiltEnvironment> {
  const { engine, limits, workDir, logger, jobId } = input;
  const envDir = join(workDir, "env");
  const socketDir = join(workDir, "socket");
  await mkdir(socketDir);
  await writeFile(join(workDir, "requirements.txt"), `${input.requirements.lines.join("\n")}\n`);
  const volume = await environmentVolume(envDir, limits.maxBytes);
  const tail = new BoundedTail(TAIL_BYTES);
  let proxy: IndexProxy | undefined;
  let containerId: string | undefined;
  try {
    await mkdir(join(envDir, ".tmp"), { recursive: true });
    if (input.index)
      proxy = await startIndexProxy({
        socketPath: join(socketDir, SOCKET_NAME),
        allowed: input.index.hosts,
        logger,
        onRefused: (destination) =>
          input.onOutput(`crucible: refused ${destination}: builds reach only the stack's package index\n`),
      });
    containerId = await engine.create(containerOptions(input, envDir, socketDir), { jobId });
    const attached = await engine.attach(containerId, { jobId }, (_stream, chunk) => {
      tail.push(chunk);
      input.onOutput(chunk.toString("utf8"));
    });
    const started = performance.now();
    await engine.start(containerId, { jobId });
    const { exitCode, stoppedBy } = await waitWithin(
      engine,
      containerId,
      jobId,
      limits.seconds,
      input.signal,
    );
    await attached.ended;
    logger.info(
      { jobId, exitCode, stoppedBy, seconds: Math.round((performance.now() - started) / 100) / 10 },
      "environment build ended",
    );
    if (stoppedBy === "signal") throw new EnvironmentBuildError("the environment build was stopped");
    if (stoppedBy === "timeout")
      throw new EnvironmentBuildError(
        `the environment build took longer than its ${limits.seconds} s limit; pin versions that have wheels, or fewer packages`,
      );
    if (exitCode !== 0)
      throw new EnvironmentBuildError(summarisePipFailure(tail.toString(), proxy?.refused ?? [], exitCode));
    await rm(join(envDir, ".tmp"), { recursive: true, force: true });
    const report = await readReport(envDir);
    const bytes = await directoryBytes(envDir);
    if (bytes > limits.maxBytes)
      throw new EnvironmentBuildError(
        `the environment is ${formatGiB(bytes)}, more than this tier's ${formatGiB(limits.maxBytes)} limit for environments; drop packages or use a larger tier`,
      );
    return {
      dir: envDir,
      pythonPath: report.sitePackages,
      packages: report.packages,
      bytes,
      release: () => volume.release(),
    };
  } catch (error) {
    await volume.release();
    throw error;
  } finally {
    if (containerId) await engine.remove(containerId, { jobId }).catch(() => undefined);
    await proxy?.close();
  }
}

function containerOptions(input: BuildInput, envDir: string, socketDir: string) {
  const { limits } = input;
  const user = ROOTLESS_FALLBACK_USER;
  const args = ["/build/requirements.txt", "/env", ...(input.index ? [input.index.url] : [])];
  return {
    Image: input.image,
    User: `${user.uid}:${user.gid}`,
    Entrypoint: ["/usr/bin/python3", `${BUILDER_MOUNT}/build_env.py`],
    Cmd: args,
    Env: [
      `PYTHONPATH=${BUILDER_MOUNT}/pip`,
      "HOME=/tmp",
      "TMPDIR=/env/.tmp",
      // Job images forbid pip an index (PIP_NO_INDEX=1): here the index is the point.
      "PIP_NO_INDEX=false",
      "NO_PROXY=",
      `CRUCIBLE_INDEX_SOCKET=${SOCKET_MOUNT}/${SOCKET_NAME}`,
    ],
    Labels: {
      [LABELS.managed]: "true",
      [LABELS.jobId]: input.jobId,
      [LABELS.purpose]: "environment-build",
      ...ownerLabels(thisProcess()),
    },
    AttachStdout: true,
    AttachStderr: true,
    Tty: false,
    NetworkDisabled: true,
    HostConfig: {
      NetworkMode: "none",
      ReadonlyRootfs: true,
      Tmpfs: { "/tmp": "rw,nosuid,nodev,size=256m,mode=1777" },
      Mounts: [
        { Type: "bind" as const, Source: input.builderDir, Target: BUILDER_MOUNT, ReadOnly: true },
        {
          Type: "bind" as const,
          Source: join(input.workDir, "requirements.txt"),
          Target: "/build/requirements.txt",
          ReadOnly: true,
        },
        { Type: "bind" as const, Source: envDir, Target: "/env", ReadOnly: false },
        { Type: "bind" as const, Source: socketDir, Target: SOCKET_MOUNT, ReadOnly: true },
      ],
      Memory: limits.memoryMiB * 2 ** 20,
      MemorySwap: limits.memoryMiB * 2 ** 20,
      NanoCpus: Math.round(limits.vcpus * 1e9),
      PidsLimit: limits.pidsLimit,
      CapDrop: ["ALL"],
      SecurityOpt: ["no-new-privileges:true"],
      Privileged: false,
      Init: true,
      IpcMode: "private",
      AutoRemove: false,
    },
  };
}

/** A volume of the environment's size limit, owned by the builder's user; a plain directory without root. */
async function environmentVolume(dir: string, maxBytes: number): Promise<Pick<QuotaDir, "release">> {
  const user = ROOTLESS_FALLBACK_USER;
  try {
    return await createQuotaDir(dir, Math.ceil(maxBytes / 2 ** 20), user);
  } catch (error) {
    if (!(error instanceof QuotaUnavailableError)) throw error;
    // Checked after the build instead (directoryBytes): the disk it fills is the agent's scratch.
    await mkdir(dir, { mode: 0o777 });
    return { release: () => rm(dir, { recursive: true, force: true }) };
  }
}

async function waitWithin(
  engine: ContainerEngine,
  id: string,
  jobId: string,
  seconds: number,
  signal: AbortSignal | undefined,
): Promise<{ exitCode: number; stoppedBy?: "timeout" | "signal" }> {
  let stoppedBy: "timeout" | "signal" | undefined;
  const kill = (why: "timeout" | "signal") => {
    stoppedBy ??= why;
    void engine.kill(id, "SIGKILL", { jobId }).catch(() => undefined);
  };
  const timer = setTimeout(() => kill("timeout"), seconds * 1000);
  const onAbort = () => kill("signal");
  signal?.addEventListener("abort", onAbort, { once: true });
  if (signal?.aborted) onAbort();
  try {
    const exitCode = await engine.wait(id, { jobId });
    return { exitCode, ...(stoppedBy && { stoppedBy }) };
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

async function readReport(envDir: string): Promise<z.infer<typeof buildReportSchema>> {
  const text = await readFile(join(envDir, "environment.json"), "utf8").catch(() => undefined);
  const parsed = text === undefined ? undefined : buildReportSchema.safeParse(safeJson(text));
  if (!parsed?.success)
    throw new EnvironmentBuildError(
      "the environment build left no valid report (environment.json) of what it installed",
    );
  return parsed.data;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * pip's cause, in a sentence a researcher can act on: the requirement it could not satisfy, the conflict,
 * the missing compiler, or the destination the proxy refused; else pip's last error lines.
 */
export function summarisePipFailure(output: string, refused: readonly string[], exitCode: number): string {
  const lines = output.split(/\r?\n/).map((l) => l.trim());
  const find = (pattern: RegExp) => lines.map((l) => pattern.exec(l)).find((m) => m !== null);
  const notFound = find(/No matching distribution found for (\S+)/);
  if (refused.length > 0)
    return `the environment build tried to reach ${refused.join(", ")}, which is not the stack's package index; builds reach only the index${notFound ? ` (pip: no matching distribution found for ${notFound[1]})` : ""}`;
  if (notFound) {
    const versions = find(
      /Could not find a version that satisfies the requirement (\S+) \(from versions: ([^)]*)\)/,
    );
    const available = versions?.[2]?.trim().replace(/^none$/, "");
    return `requirement ${notFound[1]} cannot be satisfied from the stack's package index: ${available ? `the versions it has are ${available}` : "it has no such package"}`;
  }
  const conflict = find(/Cannot install (.+) because these package versions have conflicting dependencies/);
  if (conflict) {
    const cause = lines
      .filter((l) => /depends on|The user requested/.test(l))
      .slice(0, 6)
      .join("; ");
    return `the requirements conflict: pip cannot install ${conflict[1]} together${cause ? ` (${cause})` : ""}`;
  }
  const compiler = find(
    /(?:command '([^']+)' failed|error: (?:command )?'?(gcc|cc|c\+\+|g\+\+|rustc|cargo)'?.*not found|No such file or directory: '(gcc|cc|x86_64-linux-gnu-gcc)')/,
  );
  if (compiler) {
    const building = find(/(?:Building wheel for|Failed to build) (\S+)/);
    return `${building ? `${building[1]} has no wheel for this image and ` : "a package "}needs a compiler to build from source, which the builder does not have; pin a version that publishes a wheel`;
  }
  const hashes = find(/THESE PACKAGES DO NOT MATCH THE HASHES|Hashes are required in --require-hashes mode/);
  if (hashes)
    return `a download did not match its --hash pin: ${
      lines
        .filter((l) => /Expected sha|Got /.test(l))
        .slice(0, 4)
        .join("; ") || hashes[0]
    }`;
  const noSpace = find(/No space left on device|Disk quota exceeded/);
  if (noSpace)
    return "the environment outgrew this tier's size limit for environments while it was installed";
  const errors = lines.filter((l) => l.startsWith("ERROR:")).slice(-3);
  return errors.length > 0
    ? errors.join(" ")
    : `pip exited with status ${exitCode}: ${lines.filter(Boolean).slice(-3).join(" ")}`;
}

function formatGiB(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(bytes < 2 ** 30 ? 2 : 1)} GiB`;
}
