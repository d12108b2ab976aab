import { PassThrough } from "node:stream";
import { CONTAINER_PATHS } from "../../job/contract";
import type { WorkspacePart, WorkspaceSync } from "../../job/contract";
import type { Logger } from "../../logger";
import type { KubernetesApi } from "./kubernetes-api";
import type { MirrorLimits } from "./workspace-archive";
import { entriesOf, mirrorArchive, packFrames, UNPACK_FRAMES } from "./workspace-archive";
import { JOB_CONTAINER, KEEPER_CONTAINER, MARKERS } from "./pod-layout";

/**
 * How the agent reaches a job pod's files without giving the pod a network: a second container in the
 * pod, the keeper, shares the job's `/workspace` (and the datasets and environment volumes, which only it
 * may write) and idles as the job's uid; the agent runs tar in it over `pods/exec`. Nothing listens in the
 * pod, the default-deny NetworkPolicy stays whole, and the agent needs `pods/exec` on its own namespace's
 * pods and nothing more.
 */

/**
 * The keeper's tar of the workspace's `parts`. pax keeps any size, any name and sub-second mtimes; a part
 * the job never made is left out rather than failing the rest.
 */
export function packCommand(parts: readonly WorkspacePart[]): string[] {
  return [
    "tar",
    "-c",
    "-f",
    "-",
    "--format=pax",
    "--ignore-failed-read",
    "-C",
    CONTAINER_PATHS.workspace,
    "--",
    ...parts,
  ];
}

/** GNU tar's "some files changed while being read": the archive is whole, those files as they were. */
const TAR_FILES_CHANGED = 1;

/** One job pod's files, through its keeper. Every call logs before and after, with the pod. */
export class PodFiles {
  constructor(
    private readonly api: KubernetesApi,
    private readonly namespace: string,
    readonly pod: string,
    private readonly log: Logger,
  ) {}

  /** Copies the contents of the agent's `dir` into `target`, a directory the keeper mounts. */
  async restore(dir: string, target: string): Promise<void> {
    const names = await entriesOf(dir);
    if (names.length === 0) return;
    this.log.debug({ pod: this.pod, target, entries: names.length }, "restoring files into the pod");
    const { exitCode, stderr } = await this.api.exec(
      this.namespace,
      this.pod,
      KEEPER_CONTAINER,
      ["python3", "-I", "-c", UNPACK_FRAMES, target],
      { stdin: packFrames(dir, names) },
    );
    if (exitCode !== 0)
      throw new Error(`restoring ${target} in pod ${this.pod} failed (exit ${exitCode}): ${stderr.trim()}`);
    this.log.debug({ pod: this.pod, target }, "restored files into the pod");
  }

  /**
   * Makes each of `parts` under `root` what it is in the pod's `/workspace` now; answers the files and
   * bytes it holds. Nothing here is removed unless the pod's archive was whole.
   */
  async pull(
    parts: readonly WorkspacePart[],
    root: string,
    limits: MirrorLimits,
  ): Promise<{ files: number; bytes: number }> {
    const archive = new PassThrough({ highWaterMark: 1024 * 1024 });
    const [unpacked, packed] = await Promise.allSettled([
      mirrorArchive(archive, root, parts, limits),
      this.api.exec(this.namespace, this.pod, KEEPER_CONTAINER, packCommand(parts), { stdout: archive }),
    ]);
    // The archive's own problem first: it is why the exec was cut short.
    if (unpacked.status === "rejected") throw unpacked.reason;
    if (packed.status === "rejected") throw packed.reason;
    const { exitCode, stderr } = packed.value;
    if (exitCode !== 0 && exitCode !== TAR_FILES_CHANGED)
      throw new Error(`reading the workspace of pod ${this.pod} failed (exit ${exitCode}): ${stderr.trim()}`);
    if (stderr.trim()) this.log.info({ pod: this.pod, tar: stderr.trim() }, "the pod's tar warned");
    await unpacked.value.prune();
    const { files, bytes, written } = unpacked.value;
    this.log.debug({ pod: this.pod, parts, files, bytes, written }, "pulled the pod's workspace");
    return { files, bytes };
  }

  /** Leaves a marker for the pod ({@link MARKERS}). */
  async mark(marker: keyof typeof MARKERS): Promise<void> {
    const { exitCode, stderr } = await this.api.exec(this.namespace, this.pod, KEEPER_CONTAINER, [
      "touch",
      MARKERS[marker],
    ]);
    if (exitCode !== 0)
      throw new Error(`marking pod ${this.pod} ${marker} failed (exit ${exitCode}): ${stderr.trim()}`);
  }

  /**
   * A signal to the job's container alone, as Docker's stop sends it: SIGTERM to its first process (the
   * runner, which forwards it to the job), so the keeper stays to collect what the job checkpoints; or
   * SIGKILL to every process there but the first (which cannot be killed from inside its namespace, and
   * ends once its job has). Same uid as the job, so no capability is needed. Resolves whether it was sent.
   */
  async signalJob(signal: "TERM" | "KILL"): Promise<boolean> {
    const [pid, name] = signal === "TERM" ? ["1", "SIGTERM"] : ["-1", "SIGKILL"];
    try {
      const { exitCode, stderr } = await this.api.exec(this.namespace, this.pod, JOB_CONTAINER, [
        "python3",
        "-I",
        "-c",
        "import os, signal, sys; os.kill(int(sys.argv[1]), getattr(signal, sys.argv[2]))",
        pid,
        name,
      ]);
      if (exitCode !== 0)
        this.log.debug({ pod: this.pod, signal, stderr }, "the signal found nothing to stop");
      return exitCode === 0;
    } catch (error) {
      this.log.warn({ err: error, pod: this.pod, signal }, "could not signal the job's container");
      return false;
    }
  }
}

/**
 * A job's workspace parts kept in the agent's directory by pulls through its keeper, one at a time: the
 * agent's checkpoint sync pulls before each upload ({@link WorkspaceSync}), and the launcher collects
 * once the job has ended, after which pulls are no-ops.
 */
export class WorkspaceMirror implements WorkspaceSync {
  private queue: Promise<void> = Promise.resolve();
  /** A pull waiting for the one in flight: a later ask joins it rather than queue another behind. */
  private waiting: Promise<void> | undefined;
  private collected = false;

  constructor(
    private readonly files: PodFiles,
    private readonly root: string,
    private readonly limits: MirrorLimits,
    private readonly log: Logger,
  ) {}

  pull(parts: readonly WorkspacePart[]): Promise<void> {
    if (this.waiting) return this.waiting;
    const next = this.queue.then(async () => {
      this.waiting = undefined;
      if (this.collected) return;
      await this.files
        .pull(parts, this.root, this.limits)
        .catch((error: unknown) =>
          this.log.warn(
            { err: error, pod: this.files.pod },
            "pulling the job's workspace failed; the next pull catches up",
          ),
        );
    });
    this.waiting = next;
    this.queue = next;
    return next;
  }

  /** The last pull, after any in flight: rejects when it fails, and ends the pulls either way. */
  collect(parts: readonly WorkspacePart[]): Promise<{ files: number; bytes: number }> {
    const last = this.queue.then(() => {
      this.collected = true;
      return this.files.pull(parts, this.root, this.limits);
    });
    this.queue = last.then(
      () => undefined,
      () => undefined,
    );
    return last;
  }
}
