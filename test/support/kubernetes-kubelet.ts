import { mkdir, readFile, readdir, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import type { ExecCall, FakeCluster, KObject } from "./kubernetes-cluster";

/**
 * The Job controller and kubelet of a {@link FakeCluster}, for tests that run whole jobs: each Job gets a
 * pod whose keeper runs at once and whose job container runs a {@link JobProgram} once the agent's ready
 * marker is there (when the runner's argument asks for one), reading and writing through the job
 * container's own mounts (a read-only one refuses writes, as the kernel would). SIGTERM and SIGKILL
 * exec'd into the job container reach the program; the keeper's execs run for real on the pod's
 * directories; the keeper ends when the agent marks the pod collected.
 */

/** What a simulated job sees in its pod. */
export interface PodJob {
  readonly pod: string;
  read(path: string): Promise<Buffer>;
  /** Writes as the job would: EROFS on a read-only mount. Makes the parent directories. */
  write(path: string, data: string | Buffer): Promise<void>;
  /** Names in a directory, none when it is missing. */
  list(path: string): Promise<string[]>;
  /** A line on the job's log (stdout). */
  print(line: string): void;
  /** Aborted with "TERM" or "KILL" when the launcher signals the job's container. */
  readonly signal: AbortSignal;
}

/** How a simulated job ended: its exit code and the runner's record (the termination message). */
export interface JobExit {
  readonly exitCode: number;
  readonly runner?: Record<string, unknown>;
  readonly reason?: string;
}

export type JobProgram = (job: PodJob) => Promise<JobExit>;

/** The pod's name for a Job (the controller adds a suffix). */
export const podNameOf = (job: string): string => `${job}-p0d`;

interface PodSpecShape {
  containers: { name: string; command?: string[] }[];
  terminationGracePeriodSeconds?: number;
}

/** A pod as the API serves it, with both containers in the given states. */
function podObject(
  job: KObject,
  states: { job: Record<string, unknown>; keeper: Record<string, unknown> },
  extra: { phase?: string; metadata?: Record<string, unknown>; status?: Record<string, unknown> } = {},
): KObject {
  const template = (job.spec as { template: { metadata: { labels: Record<string, string> }; spec: unknown } })
    .template;
  return {
    kind: "Pod",
    apiVersion: "v1",
    metadata: {
      name: podNameOf(job.metadata.name),
      namespace: job.metadata.namespace ?? "",
      labels: { ...template.metadata.labels, "job-name": job.metadata.name },
      ...extra.metadata,
    },
    spec: template.spec,
    status: {
      phase: extra.phase ?? "Running",
      containerStatuses: [
        {
          name: "job",
          state: states.job,
          ready: states.job.running !== undefined,
          restartCount: 0,
          image: "crucible/cpu:py3.13",
          imageID: `crucible/cpu@sha256:${"ab".repeat(32)}`,
        },
        { name: "keeper", state: states.keeper, ready: states.keeper.running !== undefined, restartCount: 0 },
      ],
      ...extra.status,
    },
  };
}

export class FakeKubelet {
  /** Per pod: its Job, the program's abort controller, and the containers' states. */
  private readonly running = new Map<
    string,
    {
      job: KObject;
      /** TERM (or KILL) reaches the program's signal; KILL also abandons it. */
      stop: AbortController;
      kill: AbortController;
      states: { job: Record<string, unknown>; keeper: Record<string, unknown> };
      extra: Parameters<typeof podObject>[2];
      ended: Promise<void>;
    }
  >();

  constructor(
    private readonly cluster: FakeCluster,
    private readonly program: JobProgram,
  ) {}

  /** Takes over the cluster's Job controller, kubelet and job-container execs. */
  install(): this {
    this.cluster.onJobCreated = (job) => this.start(job);
    this.cluster.onJobDeleted = (job) => {
      const name = podNameOf(job.metadata.name);
      this.signal(name, "KILL");
      this.cluster.removePod(name);
      this.cluster.removeJob(job.metadata.name);
    };
    this.cluster.onExec = (call) => this.answer(call);
    return this;
  }

  /** The pod's containers' states, as last put. */
  pod(name: string): KObject | undefined {
    return this.cluster.pods.get(name);
  }

  /**
   * The cluster takes a running pod away, as a node going away does: the pod is marked for deletion
   * with a `DisruptionTarget` condition; `lost`: its node is gone, nothing runs there any more and the
   * pod disappears; else the kubelet TERMs the job (its keeper ignores it) and removes the pod once the
   * job has ended and the agent has collected, or `graceMs` has passed.
   */
  async disrupt(name: string, how: { readonly lost: boolean; readonly reason: string }): Promise<void> {
    const pod = this.running.get(name);
    if (!pod) throw new Error(`no running pod ${name}`);
    pod.extra = {
      metadata: { deletionTimestamp: new Date().toISOString(), deletionGracePeriodSeconds: 5 },
      status: {
        conditions: [{ type: "DisruptionTarget", status: "True", reason: how.reason, message: "node gone" }],
      },
    };
    this.put(name);
    if (how.lost) {
      this.signal(name, "KILL");
      this.cluster.endLog(name);
      this.cluster.removePod(name);
      return;
    }
    this.signal(name, "TERM");
    await pod.ended;
    await this.cluster
      .nextExec((e) => e.pod === name && e.command.at(-1)?.endsWith("/collected") === true, 10_000)
      .catch(() => undefined);
    this.cluster.removePod(name);
  }

  /** The kubelet evicts a running pod (a volume over its size limit, node pressure): every container killed. */
  async evict(name: string, message: string): Promise<void> {
    const pod = this.running.get(name);
    if (!pod) throw new Error(`no running pod ${name}`);
    pod.extra = { phase: "Failed", status: { reason: "Evicted", message } };
    pod.states.keeper = { terminated: { exitCode: 137, reason: "Error" } };
    this.signal(name, "KILL");
    await pod.ended;
  }

  private signal(name: string, signal: "TERM" | "KILL"): void {
    const pod = this.running.get(name);
    pod?.stop.abort(signal);
    if (signal === "KILL") pod?.kill.abort();
  }

  private put(name: string): void {
    const pod = this.running.get(name);
    if (pod) this.cluster.putPod(podObject(pod.job, pod.states, pod.extra));
  }

  private start(job: KObject): void {
    const name = podNameOf(job.metadata.name);
    const spec = (job.spec as { template: { spec: PodSpecShape } }).template.spec;
    const config = JSON.parse(spec.containers.find((c) => c.name === "job")?.command?.[3] ?? "{}") as {
      waitFor?: string;
    };
    const startedAt = new Date().toISOString();
    const stop = new AbortController();
    const kill = new AbortController();
    let finish!: () => void;
    const ended = new Promise<void>((resolve) => (finish = resolve));
    this.running.set(name, {
      job,
      stop,
      kill,
      states: { job: { running: { startedAt } }, keeper: { running: { startedAt } } },
      extra: {},
      ended,
    });
    this.put(name);
    void this.runJob(name, config.waitFor, stop.signal, kill.signal, startedAt).finally(finish);
  }

  private async runJob(
    name: string,
    waitFor: string | undefined,
    signal: AbortSignal,
    killed: AbortSignal,
    startedAt: string,
  ): Promise<void> {
    const collected = this.cluster.nextExec(
      (e) => e.pod === name && e.container === "keeper" && e.command.at(-1)?.endsWith("/collected") === true,
      600_000,
    );
    collected.catch(() => undefined);
    let exit: JobExit;
    const ready =
      waitFor === undefined
        ? Promise.resolve()
        : this.cluster
            .nextExec((e) => e.pod === name && e.command[0] === "touch" && e.command[1] === waitFor, 600_000)
            .then(() => undefined);
    const stopped = new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve()));
    await Promise.race([ready, stopped]);
    if (signal.aborted) exit = { exitCode: 143 };
    else {
      try {
        const dead = new Promise<JobExit>((resolve) =>
          killed.addEventListener("abort", () => resolve({ exitCode: 137 })),
        );
        exit = await Promise.race([this.program(this.podJob(name, signal)), dead]);
      } catch (error) {
        exit = {
          exitCode: 1,
          runner: { status: "error", reason: "exception", error: { type: "Error", message: String(error) } },
        };
      }
    }
    const pod = this.running.get(name);
    if (!pod || !this.cluster.pods.has(name)) return;
    this.cluster.endLog(name);
    pod.states.job = {
      terminated: {
        exitCode: exit.exitCode,
        reason: exit.reason ?? (exit.exitCode === 0 ? "Completed" : "Error"),
        startedAt,
        finishedAt: new Date().toISOString(),
        ...(exit.runner && { message: JSON.stringify(exit.runner) }),
      },
    };
    this.put(name);
    await collected.catch(() => undefined);
    if (!this.cluster.pods.has(name)) return;
    pod.states.keeper = { terminated: { exitCode: 0, reason: "Completed" } };
    pod.extra = { ...pod.extra, phase: exit.exitCode === 0 ? "Succeeded" : "Failed" };
    this.put(name);
  }

  private podJob(name: string, signal: AbortSignal): PodJob {
    const file = (path: string) => {
      const found = this.cluster.containerFile(name, "job", path);
      if (!found) throw new Error(`${path} is on the job container's read-only root`);
      return found;
    };
    return {
      pod: name,
      signal,
      read: (path) => readFile(file(path).path),
      write: async (path, data) => {
        const target = file(path);
        if (target.readOnly)
          throw Object.assign(new Error(`EROFS: read-only file system, open '${path}'`), { code: "EROFS" });
        await mkdir(dirname(target.path), { recursive: true });
        await writeFile(target.path, data);
      },
      list: (path) => readdir(file(path).path).catch(() => []),
      print: (line) => this.cluster.log(name, `${line}\n`),
    };
  }

  /** SIGTERM and SIGKILL into the job's container reach its program; the keeper's execs run for real. */
  private answer(call: ExecCall): Promise<number> | undefined {
    if (call.container !== "job") return undefined;
    const pod = this.running.get(call.pod);
    const signal = call.command.at(-1);
    if (!pod || (signal !== "SIGTERM" && signal !== "SIGKILL")) return Promise.resolve(1);
    this.signal(call.pod, signal === "SIGTERM" ? "TERM" : "KILL");
    return Promise.resolve(0);
  }
}
