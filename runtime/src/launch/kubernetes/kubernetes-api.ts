import type { V1ConfigMap, V1Job, V1OwnerReference, V1Pod } from "@kubernetes/client-node" with {
  "resolution-mode": "import",
};
import type { Writable } from "node:stream";
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
  };
}
