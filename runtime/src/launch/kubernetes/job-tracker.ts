import type { V1Job, V1Pod } from "@kubernetes/client-node" with { "resolution-mode": "import" };
import { EventEmitter } from "node:events";
import type { Logger } from "../../logger";
import type { KubernetesApi, Stream, WatchEvent } from "./kubernetes-api";

/** Watch reconnects after an error back off up to this. */
const MAX_BACKOFF_MS = 30_000;

/** The latest state of one Job and its pod, from two watches that reconnect until closed. */
export class Tracker extends EventEmitter<{ change: [] }> {
  pod: V1Pod | undefined;
  job: V1Job | undefined;
  podGone = false;
  jobGone = false;
  private closed = false;
  private readonly streams = new Set<Stream>();

  constructor(
    private readonly api: KubernetesApi,
    private readonly namespace: string,
    private readonly name: string,
    private readonly watchTimeoutSeconds: number,
    private readonly log: Logger,
  ) {
    super();
  }

  start(): void {
    void this.follow("pods", `job-name=${this.name}`, undefined, (event: WatchEvent<V1Pod>) => {
      this.pod = event.object;
      this.podGone = event.type === "DELETED";
    });
    void this.follow("jobs", undefined, `metadata.name=${this.name}`, (event: WatchEvent<V1Job>) => {
      this.job = event.object;
      this.jobGone = event.type === "DELETED";
    });
  }

  /** Bumped on every change, so a waiter knows whether it missed one. */
  version = 0;

  /** Resolves once the state is newer than `seen`, or after `ms` (for the caller's own deadlines). */
  next(seen: number, ms: number): Promise<void> {
    if (this.version !== seen) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.off("change", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.on("change", done);
    });
  }

  changed(): void {
    this.version++;
    this.emit("change");
  }

  close(): void {
    this.closed = true;
    for (const stream of this.streams) stream.abort();
  }

  /** One watch, renewed when the server ends it, from the last version seen (from now after a 410). */
  private async follow<T extends { metadata?: { resourceVersion?: string } }>(
    kind: "pods" | "jobs",
    labelSelector: string | undefined,
    fieldSelector: string | undefined,
    apply: (event: WatchEvent<T>) => void,
  ): Promise<void> {
    let resourceVersion: string | undefined;
    let backoff = 0;
    while (!this.closed) {
      const began = Date.now();
      let events = 0;
      try {
        const query = {
          ...(labelSelector && { labelSelector }),
          ...(fieldSelector && { fieldSelector }),
          ...(resourceVersion && { resourceVersion }),
          timeoutSeconds: this.watchTimeoutSeconds,
        };
        const onEvent = (event: WatchEvent<T>): void => {
          events++;
          if (event.type === "ERROR") {
            // 410 Gone: the version is too old; start over with the current state.
            resourceVersion = undefined;
            return;
          }
          resourceVersion = event.object.metadata?.resourceVersion ?? resourceVersion;
          if (event.type === "BOOKMARK") return;
          apply(event);
          this.changed();
        };
        const stream =
          kind === "pods"
            ? await this.api.watchPods(this.namespace, query, onEvent as (e: WatchEvent<V1Pod>) => void)
            : await this.api.watchJobs(this.namespace, query, onEvent as (e: WatchEvent<V1Job>) => void);
        this.streams.add(stream);
        await stream.done.finally(() => this.streams.delete(stream));
        // A watch the server ended at once, with nothing in it, is a failing one: back off as after an error.
        backoff =
          events === 0 && Date.now() - began < 1000 ? Math.min(MAX_BACKOFF_MS, backoff * 2 || 500) : 0;
      } catch (error) {
        if (this.closed) return;
        backoff = Math.min(MAX_BACKOFF_MS, backoff * 2 || 500);
        this.log.warn({ err: error, kind, backoffMs: backoff }, "watch failed; reconnecting");
      }
      if (backoff > 0 && !this.closed) await new Promise((resolve) => setTimeout(resolve, backoff));
    }
  }
}
