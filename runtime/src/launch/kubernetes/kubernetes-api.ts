import type { V1ConfigMap, V1Job, V1OwnerReference, V1Pod, V1Status } from "@kubernetes/client-node" with {
  "resolution-mode": "import",
};
import { Readable, Writable } from "node:stream";
import { finished } from "node:stream/promises";
import type { Logger } from "../../logger";

/** One event of a watch, as the API server streams it. */
export interface WatchEvent<T> {
  readonly type: "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
  readonly object: T;
}

/** A running watch or log stream: `done` settles when the server or `abort` ends it. */
export interface Stream {
  readonly done: Promise<void>;
  abort(): void;
}

export interface WatchQuery {
  readonly labelSelector?: string;
  readonly fieldSelector?: string;
  readonly resourceVersion?: string;
  /** The server ends the watch after this long; the caller reconnects from the last resource version. */
  readonly timeoutSeconds: number;
}

/** The few Kubernetes API calls the launcher makes; `false` from a delete means it was already gone. */
export interface KubernetesApi {
  createConfigMap(namespace: string, body: V1ConfigMap): Promise<V1ConfigMap>;
  setConfigMapOwner(namespace: string, name: string, owner: V1OwnerReference): Promise<void>;
  deleteConfigMap(namespace: string, name: string): Promise<boolean>;
  listConfigMaps(namespace: string, labelSelector: string): Promise<V1ConfigMap[]>;
  createJob(namespace: string, body: V1Job): Promise<V1Job>;
  deleteJob(
    namespace: string,
    name: string,
    options: {
      readonly propagationPolicy: "Foreground" | "Background";
      readonly gracePeriodSeconds?: number;
    },
  ): Promise<boolean>;
  listJobs(namespace: string, labelSelector: string): Promise<V1Job[]>;
  podExists(namespace: string, name: string): Promise<boolean>;
  watchPods(
    namespace: string,
    query: WatchQuery,
    onEvent: (event: WatchEvent<V1Pod>) => void,
  ): Promise<Stream>;
  watchJobs(
    namespace: string,
    query: WatchQuery,
    onEvent: (event: WatchEvent<V1Job>) => void,
  ): Promise<Stream>;
  /** Follows a container's log from its start into `sink` (stdout and stderr merged, as the API gives them). */
  followLog(namespace: string, pod: string, container: string, sink: Writable): Promise<Stream>;
  /**
   * Runs `command` in a running container (`pods/exec`, the WebSocket channel protocol) and resolves with
   * its exit code once it has ended and its stdout has been written out; rejects when the exec cannot be
   * made or ends without an exit status (the pod or its node gone).
   */
  exec(
    namespace: string,
    pod: string,
    container: string,
    command: readonly string[],
    io?: ExecIo,
  ): Promise<ExecResult>;
}

/** What an exec reads and writes. */
export interface ExecIo {
  /** The command's stdin, sent chunk by chunk as the socket takes each. Never ended: see {@link ExecResult}. */
  readonly stdin?: AsyncIterable<Buffer>;
  /** Receives the command's stdout, ended with it; while it is full the socket stops reading. */
  readonly stdout?: Writable;
}

/** How an exec'd command ended. */
export interface ExecResult {
  readonly exitCode: number;
  /** The end of what it wrote to stderr. */
  readonly stderr: string;
}

/** Bytes of an exec's stderr kept for its error messages. */
const EXEC_STDERR_BYTES = 4096;

/**
 * The part of the client's WebSocket (the \`ws\` package's, which the client does not type) an exec uses,
 * checked when the client hands it over.
 */
interface ExecSocket {
  send(data: Buffer, callback: (error?: Error) => void): void;
  pause(): void;
  resume(): void;
  close(): void;
  once(event: "close", listener: () => void): unknown;
  readonly readyState: number;
}

const WEBSOCKET_OPEN = 1;

function isExecSocket(value: unknown): value is ExecSocket {
  const socket = value as Partial<Record<keyof ExecSocket, unknown>> | null;
  return (
    typeof socket === "object" &&
    socket !== null &&
    ["send", "pause", "resume", "close", "once"].every(
      (m) => typeof socket[m as keyof ExecSocket] === "function",
    )
  );
}

/**
 * An exec's exit code from the status the API server sends on the error channel when the command has
 * ended: `Success`, or `NonZeroExitCode` with the code as the cause; any other failure (no such container,
 * the kubelet unreachable) is no exit, and throws.
 */
export function execExitCode(status: V1Status): number {
  if (status.status === "Success") return 0;
  const code = status.details?.causes?.find((c) => c.reason === "ExitCode")?.message;
  if (status.reason === "NonZeroExitCode" && code !== undefined && /^\d+$/.test(code)) return Number(code);
  throw new Error(`exec failed: ${status.message ?? status.reason ?? "no reason given"}`);
}

/** Not found: a delete of something already gone, or a pod that no longer exists. */
function isNotFound(error: unknown): boolean {
  return (error as { code?: unknown }).code === 404 || (error as { statusCode?: unknown }).statusCode === 404;
}

/**
 * {@link KubernetesApi} over @kubernetes/client-node, configured like kubectl: in a pod its service
 * account, elsewhere ~/.kube/config or $KUBECONFIG. The client is ESM and heavy, so it is loaded here,
 * only when a Kubernetes launcher is made.
 */
export async function connectKubernetes(
  logger: Logger,
  kubeconfig?: string,
): Promise<KubernetesApi & { readonly server: string }> {
  const k8s = await import("@kubernetes/client-node");
  const config = new k8s.KubeConfig();
  if (kubeconfig) config.loadFromFile(kubeconfig);
  else config.loadFromDefault();
  const server = config.getCurrentCluster()?.server;
  if (!server) throw new Error("no Kubernetes cluster configured: set KUBECONFIG or run in a pod");
  const core = config.makeApiClient(k8s.CoreV1Api);
  const batch = config.makeApiClient(k8s.BatchV1Api);
  const watcher = new k8s.Watch(config);
  const logs = new k8s.Log(config);
  const execs = new k8s.Exec(config);

  /** Logs around every call, and turns "not found" into false where the caller allows it. */
  const call = async <T>(what: string, ctx: object, action: () => Promise<T>): Promise<T> => {
    logger.debug(ctx, `kubernetes: ${what}`);
    try {
      const result = await action();
      logger.debug(ctx, `kubernetes: ${what} done`);
      return result;
    } catch (error) {
      logger.debug({ ...ctx, err: error }, `kubernetes: ${what} failed`);
      throw error;
    }
  };
  const gone = (error: unknown): false => {
    if (isNotFound(error)) return false;
    throw error;
  };
  const watch = async <T>(
    path: string,
    query: WatchQuery,
    onEvent: (event: WatchEvent<T>) => void,
  ): Promise<Stream> => {
    let settle!: (error?: unknown) => void;
    const done = new Promise<void>((resolve, reject) => {
      // The client ends a watch with null (closed) or whatever its HTTP stack threw.
      settle = (error) =>
        error ? reject(error instanceof Error ? error : new Error(JSON.stringify(error))) : resolve();
    });
    const controller = await call("watch", { path, ...query }, () =>
      watcher.watch(
        path,
        { ...query, allowWatchBookmarks: true },
        (type, object) => onEvent({ type: type as WatchEvent<T>["type"], object: object as T }),
        (error: unknown) => settle(error),
      ),
    );
    return { done, abort: () => controller.abort() };
  };

  return {
    server,
    createConfigMap: (namespace, body) =>
      call("create configmap", { namespace, name: body.metadata?.name }, () =>
        core.createNamespacedConfigMap({ namespace, body }),
      ),
    setConfigMapOwner: async (namespace, name, owner) => {
      await call("set configmap owner", { namespace, name, owner: owner.name }, () =>
        core.patchNamespacedConfigMap({
          namespace,
          name,
          body: [{ op: "add", path: "/metadata/ownerReferences", value: [owner] }],
        }),
      );
    },
    deleteConfigMap: (namespace, name) =>
      call("delete configmap", { namespace, name }, () =>
        core.deleteNamespacedConfigMap({ namespace, name }).then(() => true, gone),
      ),
    listConfigMaps: (namespace, labelSelector) =>
      call("list configmaps", { namespace, labelSelector }, async () => {
        return (await core.listNamespacedConfigMap({ namespace, labelSelector })).items;
      }),
    createJob: (namespace, body) =>
      call("create job", { namespace, name: body.metadata?.name }, () =>
        batch.createNamespacedJob({ namespace, body }),
      ),
    deleteJob: (namespace, name, options) =>
      call("delete job", { namespace, name, ...options }, () =>
        batch.deleteNamespacedJob({ namespace, name, ...options }).then(() => true, gone),
      ),
    listJobs: (namespace, labelSelector) =>
      call("list jobs", { namespace, labelSelector }, async () => {
        return (await batch.listNamespacedJob({ namespace, labelSelector })).items;
      }),
    podExists: (namespace, name) =>
      call("read pod", { namespace, name }, () =>
        core.readNamespacedPod({ namespace, name }).then(() => true, gone),
      ),
    watchPods: (namespace, query, onEvent) => watch(`/api/v1/namespaces/${namespace}/pods`, query, onEvent),
    watchJobs: (namespace, query, onEvent) =>
      watch(`/apis/batch/v1/namespaces/${namespace}/jobs`, query, onEvent),
    followLog: async (namespace, pod, container, sink) => {
      const done = new Promise<void>((resolve, reject) => {
        sink.once("finish", resolve);
        sink.once("error", reject);
      });
      const controller = await call("follow log", { namespace, pod, container }, () =>
        logs.log(namespace, pod, container, sink, { follow: true }),
      );
      return { done, abort: () => controller.abort() };
    },
    exec: (namespace, pod, container, command, io = {}) =>
      call("exec", { namespace, pod, container, command: command[0] }, () =>
        endingOutput(io, async () => {
          let stderr = "";
          const errors = new Writable({
            write(chunk: Buffer, _encoding, callback) {
              stderr = (stderr + chunk.toString()).slice(-EXEC_STDERR_BYTES);
              callback();
            },
          });
          let status: V1Status | undefined;
          // Known once the client hands it over, which is before the first message can arrive.
          const socket: { current?: ExecSocket } = {};
          let paused = false;
          const { stdout: sink } = io;
          // The client writes each chunk and ignores the answer: the socket stops reading while `sink` is full.
          const stdout =
            sink &&
            new Writable({
              write(chunk: Buffer, _encoding, callback) {
                if (!sink.write(chunk) && !paused) {
                  paused = true;
                  socket.current?.pause();
                  sink.once("drain", () => {
                    paused = false;
                    socket.current?.resume();
                  });
                }
                callback();
              },
              final(callback) {
                sink.end(callback);
              },
            });
          // Asks the server for stdin; the bytes go out below, each after the socket took the last. Never
          // ended: on the v4 protocol the client would close the whole socket, losing the exit status.
          const stdin = io.stdin ? new Readable({ read: () => undefined }) : null;
          const raw: unknown = await execs.exec(
            namespace,
            pod,
            container,
            [...command],
            stdout ?? null,
            errors,
            stdin,
            false,
            (ended) => (status = ended),
          );
          if (!isExecSocket(raw)) throw new Error("the Kubernetes client's exec gave no WebSocket");
          socket.current = raw;
          const closed = new Promise<void>((resolve) => raw.once("close", resolve));
          // A reader that gave up (a refused archive) reads no more: the exec is abandoned, not left paused.
          sink?.once("close", () => {
            if (!status) raw.close();
          });
          try {
            if (io.stdin) {
              for await (const chunk of io.stdin) {
                // Ended early (the command exited or failed): what is left is not wanted.
                if (raw.readyState !== WEBSOCKET_OPEN) break;
                const message = Buffer.concat([Buffer.from([0]), chunk]);
                await new Promise<void>((resolve, reject) =>
                  raw.send(message, (error) => (error ? reject(error) : resolve())),
                );
              }
            }
            await closed;
          } catch (error) {
            raw.close();
            throw error;
          } finally {
            stdin?.destroy();
          }
          if (!status)
            throw new Error(`exec of ${command[0]} in ${pod}/${container} ended without an exit status`);
          // The client ends stdout when the status arrives; its last bytes are written out before it resolves.
          if (sink) await finished(sink, { readable: false });
          return { exitCode: execExitCode(status), stderr };
        }),
      ),
  };
}

/** Runs an exec; when it fails, whoever reads its stdout is told so: no more is coming. */
async function endingOutput<T>(io: ExecIo, run: () => Promise<T>): Promise<T> {
  try {
    return await run();
  } catch (error) {
    io.stdout?.destroy(error instanceof Error ? error : new Error(String(error)));
    throw error;
  }
}
