import { spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import { mkdirSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join, posix } from "node:path";
import type { Duplex, Readable } from "node:stream";
import { PassThrough, Writable } from "node:stream";
import type { Logger } from "pino";
import { afterAll, beforeAll, beforeEach } from "vitest";
import type { KubernetesApi } from "../../runtime/src/launch/kubernetes/kubernetes-api";
import { connectKubernetes } from "../../runtime/src/launch/kubernetes/kubernetes-api";
import type { ServerWebSocket } from "./websocket-server";
import { acceptWebSocket } from "./websocket-server";

/** One API request as the client sent it. */
export interface ApiCall {
  readonly method: string;
  readonly path: string;
  readonly query: Readonly<Record<string, string>>;
  readonly body: unknown;
}

/** A Kubernetes object as plain JSON, as on the wire: the fake reads only its metadata. */
export interface KObject {
  metadata: {
    name: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    creationTimestamp?: string;
    labels?: Record<string, string>;
    ownerReferences?: unknown;
  };
  [field: string]: unknown;
}

interface Watcher {
  readonly kind: "pods" | "jobs";
  readonly matches: (object: KObject) => boolean;
  readonly res: ServerResponse;
}

interface PodLog {
  text: string;
  ended: boolean;
  readonly readers: Set<ServerResponse>;
}

/** One `pods/exec` as the client asked for it. */
export interface ExecCall {
  readonly pod: string;
  readonly container: string;
  readonly command: readonly string[];
  /** The channel protocol agreed: v5.channel.k8s.io or v4.channel.k8s.io. */
  readonly protocol: string;
}

/** The streams of an exec, as the command in the container would see them. */
export interface ExecIo {
  readonly stdin: Readable;
  readonly stdout: Writable;
  readonly stderr: Writable;
}

/** A finished exec and its exit code (a string: the failure the API server reported instead). */
export interface ExecRecord extends ExecCall {
  readonly exitCode: number | string;
}

/** A container's view of one path: where it lies on this machine, and whether its mount is read-only. */
export interface ContainerFile {
  readonly path: string;
  readonly readOnly: boolean;
}

/** The exec channels (kubernetes remotecommand): stdin, stdout, stderr, the error/status channel, v5's close. */
const CHANNEL = { stdin: 0, stdout: 1, stderr: 2, status: 3, close: 255 } as const;
/** What the fake offers, in its order of preference: the client's list has v5 first. */
export const EXEC_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"] as const;

/**
 * The few Kubernetes API endpoints the launcher uses, on loopback, for the real @kubernetes/client-node:
 * ConfigMaps and Jobs (create, patch, list, delete), pods (read), watches streamed as JSON lines,
 * followed pod logs, and `pods/exec` over WebSocket with the channel protocol (v5, or v4 when
 * `execProtocols` says so). There is no controller: a test plays the kubelet and the Job controller through
 * `onJobCreated`, `putPod`, `putJob`, `log` and `endLog`, and what runs in a container through `onExec`.
 * An exec it does not answer runs on this machine when it is the keeper's, its container paths mapped onto
 * a directory per pod and volume that stands for the pod's emptyDirs (`containerFile`). Every call is
 * recorded.
 */
export class FakeCluster extends EventEmitter<{ call: [ApiCall]; exec: [ExecRecord] }> {
  readonly calls: ApiCall[] = [];
  readonly configMaps = new Map<string, KObject>();
  readonly jobs = new Map<string, KObject>();
  readonly pods = new Map<string, KObject>();
  /** Pods that exist besides job pods: the agents `gc` asks about. */
  readonly otherPods = new Set<string>();
  /** Plays the controller and kubelet for a Job just created. */
  onJobCreated: (job: KObject) => void = () => undefined;
  /** Plays the deletion of a Job (and, for Foreground, its pod first); by default it is simply gone. */
  onJobDeleted: (job: KObject, query: Readonly<Record<string, string>>) => void = (job) =>
    this.removeJob(job.metadata.name);
  /** Plays what runs in a container: resolves with its exit code. Undefined: the default (see the class). */
  onExec: (call: ExecCall, io: ExecIo) => Promise<number> | undefined = () => undefined;
  /** The exec protocols offered, in order of preference. */
  execProtocols: readonly string[] = EXEC_PROTOCOLS;
  readonly execs: ExecRecord[] = [];
  private volumesRoot = "";
  private version = 1000;
  private readonly watchers = new Set<Watcher>();
  private readonly logs = new Map<string, PodLog>();
  private readonly server = createServer((req, res) => void this.answer(req, res));

  async start(): Promise<string> {
    this.volumesRoot = await mkdtemp(join(tmpdir(), "crucible-fake-pods-"));
    this.server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.upgrade(req, socket, head),
    );
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
    if (this.volumesRoot) await rm(this.volumesRoot, { recursive: true, force: true });
  }

  /**
   * Where a path of a container of a pod lies on this machine: in the directory standing for the volume
   * mounted there (made on first use), or undefined when no volume holds it.
   */
  containerFile(pod: string, container: string, path: string): ContainerFile | undefined {
    const spec = this.pods.get(pod)?.spec as
      | {
          containers?: {
            name: string;
            volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[];
          }[];
        }
      | undefined;
    const mounts = spec?.containers?.find((c) => c.name === container)?.volumeMounts ?? [];
    const mount = mounts
      .filter((m) => path === m.mountPath || path.startsWith(`${m.mountPath}/`))
      .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
    if (!mount) return undefined;
    const volume = join(this.volumesRoot, pod, mount.name);
    mkdirSync(volume, { recursive: true });
    const rest = posix.relative(mount.mountPath, path);
    return { path: rest ? join(volume, ...rest.split("/")) : volume, readOnly: mount.readOnly === true };
  }

  /** Resolves with the next finished exec matching (already finished ones included), or fails after `ms`. */
  nextExec(match: (exec: ExecRecord) => boolean, ms = 20_000): Promise<ExecRecord> {
    const seen = this.execs.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off("exec", listener);
        reject(new Error(`no such exec within ${ms} ms`));
      }, ms);
      const listener = (exec: ExecRecord): void => {
        if (!match(exec)) return;
        clearTimeout(timer);
        this.off("exec", listener);
        resolve(exec);
      };
      this.on("exec", listener);
    });
  }

  /** Forgets every object, call and scenario: each test starts from an empty namespace. */
  reset(): void {
    this.calls.length = 0;
    for (const map of [this.configMaps, this.jobs, this.pods]) map.clear();
    this.otherPods.clear();
    this.onJobCreated = () => undefined;
    this.onJobDeleted = (job) => this.removeJob(job.metadata.name);
    this.onExec = () => undefined;
    this.execProtocols = EXEC_PROTOCOLS;
    this.execs.length = 0;
  }

  /** Resolves with the next call matching (already made ones included), or fails after `ms`. */
  nextCall(method: string, pathPart: string, ms = 20_000): Promise<ApiCall> {
    const match = (c: ApiCall): boolean => c.method === method && c.path.includes(pathPart);
    const seen = this.calls.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off("call", listener);
        reject(new Error(`no ${method} ${pathPart} within ${ms} ms`));
      }, ms);
      const listener = (call: ApiCall): void => {
        if (!match(call)) return;
        clearTimeout(timer);
        this.off("call", listener);
        resolve(call);
      };
      this.on("call", listener);
    });
  }

  putPod(pod: KObject): void {
    this.store(this.pods, "pods", pod);
  }

  putJob(job: KObject): void {
    this.store(this.jobs, "jobs", job);
  }

  removePod(name: string): void {
    this.remove(this.pods, "pods", name);
  }

  removeJob(name: string): void {
    this.remove(this.jobs, "jobs", name);
  }

  /** Appends to a pod's log; followers get it at once. */
  log(pod: string, text: string): void {
    const log = this.podLog(pod);
    log.text += text;
    for (const res of log.readers) res.write(text);
  }

  endLog(pod: string): void {
    const log = this.podLog(pod);
    log.ended = true;
    for (const res of log.readers) res.end();
    log.readers.clear();
  }

  private podLog(pod: string): PodLog {
    let log = this.logs.get(pod);
    if (!log) this.logs.set(pod, (log = { text: "", ended: false, readers: new Set() }));
    return log;
  }

  private store(map: Map<string, KObject>, kind: "pods" | "jobs", object: KObject): void {
    const name = object.metadata.name;
    const type = map.has(name) ? "MODIFIED" : "ADDED";
    object.metadata.resourceVersion = String(++this.version);
    map.set(name, object);
    this.notify(kind, type, object);
  }

  private remove(map: Map<string, KObject>, kind: "pods" | "jobs", name: string): void {
    const object = map.get(name);
    if (!object) return;
    map.delete(name);
    object.metadata.resourceVersion = String(++this.version);
    this.notify(kind, "DELETED", object);
  }

  private notify(kind: "pods" | "jobs", type: string, object: KObject): void {
    for (const w of this.watchers) {
      if (w.kind === kind && w.matches(object)) w.res.write(`${JSON.stringify({ type, object })}\n`);
    }
  }

  private async answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const text = await new Promise<string>((resolve) => {
      let body = "";
      req.on("data", (chunk: Buffer) => (body += chunk.toString()));
      req.on("end", () => resolve(body));
    });
    const url = new URL(req.url ?? "/", "http://cluster");
    const query = Object.fromEntries(url.searchParams);
    const call: ApiCall = {
      method: req.method ?? "",
      path: url.pathname,
      query,
      body: text ? JSON.parse(text) : undefined,
    };
    this.calls.push(call);
    this.emit("call", call);
    const route =
      /^\/(?:api\/v1|apis\/batch\/v1)\/namespaces\/([^/]+)\/(configmaps|jobs|pods)(?:\/([^/]+))?(\/log)?$/.exec(
        url.pathname,
      );
    if (!route) return json(res, 404, status(404, `no route ${url.pathname}`));
    const [, namespace, kind, name, log] = route as unknown as [
      string,
      string,
      "configmaps" | "jobs" | "pods",
      string?,
      string?,
    ];
    const map = kind === "configmaps" ? this.configMaps : kind === "jobs" ? this.jobs : this.pods;
    const body = call.body as KObject;

    if (log && name) return this.followLog(name, res);
    if (req.method === "GET" && !name && query.watch === "true")
      return this.watch(kind as "pods" | "jobs", query, res);
    if (req.method === "GET" && !name) {
      const items = [...map.values()].filter(selects(query));
      return json(res, 200, {
        kind: "List",
        apiVersion: "v1",
        metadata: { resourceVersion: String(this.version) },
        items,
      });
    }
    if (req.method === "GET" && name) {
      if (kind === "pods" && this.otherPods.has(name))
        return json(res, 200, { kind: "Pod", metadata: { name, namespace } });
      const found = map.get(name);
      return found ? json(res, 200, found) : json(res, 404, status(404, `${kind} "${name}" not found`));
    }
    if (req.method === "POST") {
      if (map.has(body.metadata.name))
        return json(res, 409, status(409, `${kind} "${body.metadata.name}" already exists`));
      body.metadata.uid = `uid-${body.metadata.name}`;
      body.metadata.creationTimestamp = new Date().toISOString();
      if (kind === "jobs") {
        this.putJob(body);
        json(res, 201, body);
        this.onJobCreated(body);
        return;
      }
      body.metadata.resourceVersion = String(++this.version);
      map.set(body.metadata.name, body);
      return json(res, 201, body);
    }
    if (req.method === "PATCH" && name) {
      const found = map.get(name);
      if (!found) return json(res, 404, status(404, `${kind} "${name}" not found`));
      for (const op of call.body as { op: string; path: string; value: unknown }[]) {
        if (op.op === "add" && op.path === "/metadata/ownerReferences")
          found.metadata.ownerReferences = op.value;
      }
      return json(res, 200, found);
    }
    if (req.method === "DELETE" && name) {
      const found = map.get(name);
      if (!found) return json(res, 404, status(404, `${kind} "${name}" not found`));
      if (kind === "jobs") this.onJobDeleted(found, query);
      else map.delete(name);
      return json(res, 200, status(200, "deleted"));
    }
    json(res, 405, status(405, "method not allowed"));
  }

  /** Streams the current matching objects as ADDED, then every change, until the client or the test ends it. */
  private watch(kind: "pods" | "jobs", query: Readonly<Record<string, string>>, res: ServerResponse): void {
    res.writeHead(200, { "content-type": "application/json" });
    const matches = selects(query);
    const watcher: Watcher = { kind, matches, res };
    this.watchers.add(watcher);
    res.on("close", () => this.watchers.delete(watcher));
    for (const object of (kind === "pods" ? this.pods : this.jobs).values()) {
      if (matches(object)) res.write(`${JSON.stringify({ type: "ADDED", object })}\n`);
    }
  }

  /** `GET .../pods/NAME/exec?command=...&container=...`, upgraded to a WebSocket. */
  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? "/", "http://cluster");
    const call: ApiCall = {
      method: req.method ?? "",
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      body: undefined,
    };
    this.calls.push(call);
    this.emit("call", call);
    const route = /^\/api\/v1\/namespaces\/[^/]+\/pods\/([^/]+)\/exec$/.exec(url.pathname);
    const pod = route?.[1];
    if (!pod || !this.pods.has(pod)) {
      socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n");
      return;
    }
    const ws = acceptWebSocket(req, socket, head, this.execProtocols);
    if (!ws) return;
    const exec: ExecCall = {
      pod,
      container: url.searchParams.get("container") ?? "",
      command: url.searchParams.getAll("command"),
      protocol: ws.protocol,
    };
    void this.answerExec(ws, exec);
  }

  /** Runs an exec to its end: stdin from channel 0 (ended by v5's close or the socket's), output on 1 and 2, status on 3. */
  private async answerExec(ws: ServerWebSocket, call: ExecCall): Promise<void> {
    const stdin = new PassThrough();
    ws.on("message", (message) => {
      if (message[0] === CHANNEL.stdin) stdin.write(message.subarray(1));
      else if (message[0] === CHANNEL.close && message[1] === CHANNEL.stdin) stdin.end();
    });
    ws.on("close", () => stdin.end());
    const channel = (number: number) =>
      new Writable({
        write(chunk: Buffer, _encoding, callback) {
          ws.send(Buffer.concat([Buffer.from([number]), chunk]));
          callback();
        },
      });
    const io = { stdin, stdout: channel(CHANNEL.stdout), stderr: channel(CHANNEL.stderr) };
    let exitCode: number | string;
    try {
      const answered = this.onExec(call, io);
      exitCode = await (answered ?? this.runLocally(call, io));
    } catch (error) {
      exitCode = (error as Error).message;
    }
    const status =
      exitCode === 0
        ? { metadata: {}, status: "Success" }
        : typeof exitCode === "number"
          ? {
              metadata: {},
              status: "Failure",
              message: `command terminated with non-zero exit code: error executing command [${call.command.join(" ")}], exit code ${exitCode}`,
              reason: "NonZeroExitCode",
              details: { causes: [{ reason: "ExitCode", message: String(exitCode) }] },
            }
          : { metadata: {}, status: "Failure", message: exitCode, reason: "InternalError" };
    ws.send(Buffer.concat([Buffer.from([CHANNEL.status]), Buffer.from(JSON.stringify(status))]));
    ws.close();
    const record: ExecRecord = { ...call, exitCode };
    this.execs.push(record);
    this.emit("exec", record);
  }

  /**
   * The keeper's commands, run here: each argument that is a path in one of its mounts becomes the
   * directory standing for that volume. Any other container's must be played by the test (`onExec`).
   */
  private runLocally(call: ExecCall, io: ExecIo): Promise<number> {
    if (call.container !== "keeper")
      return Promise.reject(
        new Error(`container "${call.container}" runs nothing in this fake: answer it with onExec`),
      );
    const [program, ...args] = call.command;
    const mapped = args.map((a) =>
      a.startsWith("/") ? (this.containerFile(call.pod, call.container, a)?.path ?? a) : a,
    );
    return new Promise((resolve, reject) => {
      const child = spawn(program!, mapped, { stdio: ["pipe", "pipe", "pipe"] });
      child.once("error", reject);
      child.stdin.on("error", () => undefined);
      io.stdin.pipe(child.stdin);
      child.stdout.pipe(io.stdout, { end: false });
      child.stderr.pipe(io.stderr, { end: false });
      child.once("close", (code) => resolve(code ?? 128));
    });
  }

  private followLog(pod: string, res: ServerResponse): void {
    if (!this.pods.has(pod)) return json(res, 404, status(404, `pods "${pod}" not found`));
    const log = this.podLog(pod);
    res.writeHead(200, { "content-type": "text/plain" });
    res.write(log.text);
    if (log.ended) return void res.end();
    log.readers.add(res);
    res.on("close", () => log.readers.delete(res));
  }
}

/** Equality-based label and field selectors (`a=b,c=d`), as the launcher sends them. */
function selects(query: Readonly<Record<string, string>>): (object: KObject) => boolean {
  const pairs = (selector: string | undefined) =>
    (selector ? selector.split(",") : []).map((term) => term.split("=") as [string, string]);
  const labels = pairs(query.labelSelector);
  const fields = pairs(query.fieldSelector);
  return (object) =>
    labels.every(([k, v]) => object.metadata?.labels?.[k] === v) &&
    fields.every(([k, v]) => k === "metadata.name" && object.metadata?.name === v);
}

function status(code: number, message: string): Record<string, unknown> {
  return {
    kind: "Status",
    apiVersion: "v1",
    metadata: {},
    status: code < 400 ? "Success" : "Failure",
    message,
    code,
  };
}

function json(res: ServerResponse, code: number, body: unknown): void {
  res.writeHead(code, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/** A kubeconfig for the fake at `server`, written into `dir`: what `connectKubernetes` reads. */
export async function fakeKubeconfig(dir: string, server: string): Promise<string> {
  const path = join(dir, "kubeconfig");
  await writeFile(
    path,
    [
      "apiVersion: v1",
      "kind: Config",
      `clusters: [{ name: fake, cluster: { server: ${JSON.stringify(server)}, insecure-skip-tls-verify: true } }]`,
      "users: [{ name: fake, user: {} }]",
      "contexts: [{ name: fake, context: { cluster: fake, user: fake } }]",
      "current-context: fake",
    ].join("\n"),
  );
  return path;
}

/**
 * The fake cluster for one test file, with a client of it and a job's code (`main.py` returning 42) in a
 * scratch directory: started before its tests, reset before each, stopped and removed after them. Read
 * them inside tests, once started.
 */
export function useFakeCluster(
  logger: Logger,
  name: string,
): {
  readonly cluster: FakeCluster;
  readonly api: KubernetesApi;
  readonly root: string;
  readonly code: string;
} {
  const started: { cluster?: FakeCluster; api?: KubernetesApi; root?: string; code?: string } = {};
  beforeAll(async () => {
    const root = await mkdtemp(join(tmpdir(), `crucible-${name}-`));
    started.root = root;
    started.cluster = new FakeCluster();
    started.api = await connectKubernetes(logger, await fakeKubeconfig(root, await started.cluster.start()));
    started.code = join(root, "job");
    await mkdir(started.code);
    await writeFile(join(started.code, "main.py"), "def main():\n    return 42\n");
  });
  afterAll(async () => {
    await started.cluster?.stop();
    if (started.root) await rm(started.root, { recursive: true, force: true });
  });
  beforeEach(() => started.cluster?.reset());
  return {
    get cluster() {
      return started.cluster!;
    },
    get api() {
      return started.api!;
    },
    get root() {
      return started.root!;
    },
    get code() {
      return started.code!;
    },
  };
}
