import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders, IncomingMessage, Server, ServerResponse } from "node:http";
import { createServer, request as httpRequest } from "node:http";
import type { AddressInfo } from "node:net";
import {
  DATASETS_PRECACHED_PREFIX,
  LEDGER_PREFIX,
  userDatasetsPrefix,
  WORKSPACES_PREFIX,
} from "../catalog/bucket-layout";
import type { Logger } from "../logger";
import type { Senders } from "../catalog/senders";

/**
 * The local platform's stand-in for IAM in front of the embedded SQS/S3 server, so the platform on one
 * machine follows the rules a stack enforces and its refusals can be tested:
 *
 * - every request must carry a valid SigV4 signature by a known local identity (the real @aws-sdk clients
 *   sign with the identity's key, exactly as against AWS);
 * - an agent identity (a node role) may do anything; a submitter identity (a project's submitter role,
 *   its session bound to one user) may read and write only objects under its own
 *   `workspaces/<project>/<user>/`, read its project's ledger partitions, in the datasets bucket read
 *   and write its own `users/<project>/<user>/` and read `precached/`, and send messages — as the
 *   stack's submitter role policy allows. A submitter's key (and list prefix, and copy source) is read
 *   from the raw request exactly as the embedded server reads it, refused if it has `.`, `..` or empty
 *   segments (once decoded), backslashes or control characters, and forwarded re-encoded from
 *   what was checked: the key checked is the key stored. A multipart upload's parts and completion must
 *   name the key the upload was started for (the embedded server goes by the upload id alone);
 * - presigned GET and HEAD links (SigV4 in the query string, as `crucible share` makes) are accepted
 *   under the same rules, until they expire;
 * - SQS stamps each message with its authenticated sender: ReceiveMessage answers carry the `SenderId`
 *   of the identity that sent it (`<role id>:<session>`), which the agent checks against the address;
 * - for a platform that keeps its state on disk, every object written or deleted and every message sent
 *   or deleted is reported before the request is answered ({@link GatewayChanges}).
 *
 * The embedded server itself ignores credentials and answers every message with a fixed SenderId; only
 * the gateway's port is handed out.
 */

/** Credentials for one local identity, as the SDK clients take them. */
export interface LocalCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

export type LocalIdentity =
  | { readonly kind: "agent"; readonly senderId: string; readonly credentials: LocalCredentials }
  | {
      readonly kind: "submitter";
      readonly project: string;
      readonly user: string;
      readonly senderId: string;
      readonly credentials: LocalCredentials;
    };

/** The gateway's identities, as a later run of the platform restores them so their keys keep working. */
export interface SavedIdentities {
  readonly agent: LocalCredentials;
  readonly submitters: readonly {
    readonly project: string;
    readonly user: string;
    readonly credentials: LocalCredentials;
  }[];
}

/**
 * What a platform that outlives its process is told, so it can keep its state on disk. `objects` and
 * `queues` are awaited before the request that made the change is answered: what a client was told is
 * done is saved. A failure answers the request with a 500, which the SDK clients retry.
 */
export interface GatewayChanges {
  /** A submitter identity was made (read {@link LocalGateway.saved}). */
  identities(): void;
  /** These keys of the bucket (the workspaces or the datasets bucket) were written or deleted. */
  objects(keys: readonly string[], bucket: string): Promise<void>;
  /** Messages were sent or deleted. */
  queues(): Promise<void>;
}

/**
 * SQS calls that change which messages a queue holds. Receives are not among them, though one may move a
 * message to its dead-letter queue: the platform's record of its queues then still has it in its queue,
 * where after a restart it is offered again up to maxReceiveCount times (see local-state.ts).
 */
const QUEUE_CHANGES = new Set([
  "SendMessage",
  "SendMessageBatch",
  "DeleteMessage",
  "DeleteMessageBatch",
  "PurgeQueue",
]);

/** The local node role's unique id (the shape of an IAM role id, which the senders schema checks). */
const AGENT_ROLE_ID = "AROALOCALAGENT00000000";
/** Bodies of SQS calls are read whole to check the signature and the sender; none is near this. */
const MAX_SQS_BODY_BYTES = 1024 * 1024;
/**
 * Senders remembered, oldest forgotten first: far more than a local queue holds at once. A message whose
 * sender was forgotten is received as sent by "unknown", which agents refuse.
 */
const MAX_REMEMBERED_SENDERS = 100_000;
/** As AWS: a signature more than 15 minutes off the server's clock is refused. */
const MAX_CLOCK_SKEW_MS = 15 * 60 * 1000;
/** As AWS: a presigned link lasts at most 7 days. */
const MAX_PRESIGNED_SECONDS = 7 * 24 * 60 * 60;
/** Multipart uploads remembered with their keys, oldest forgotten first. */
const MAX_REMEMBERED_UPLOADS = 10_000;

/** The local submitter role id of a project: stable, so senders handed to another process stay valid. */
export function localSubmitterRoleId(project: string): string {
  return `AROALOCAL${createHash("sha256").update(project).digest("hex").slice(0, 20).toUpperCase()}`;
}

interface Signed {
  readonly accessKeyId: string;
  readonly date: string;
  readonly region: string;
  readonly service: string;
  readonly signedHeaders: readonly string[];
  readonly signature: string;
  /** X-Amz-Date, from the header or the query. */
  readonly amzDate: string;
  /** A presigned link's lifetime in seconds (X-Amz-Expires); undefined for a signed Authorization header. */
  readonly expires?: number;
}

/** A query string's pairs, decoded, in order; a name without `=` has no value. */
type QueryPairs = readonly (readonly [name: string, value: string | undefined])[];

/** An S3 request as the embedded server reads it: the path's bucket and key, each segment decoded once. */
interface S3Target {
  readonly bucket: string;
  readonly key: string;
  /** Whether the path ends with `/` after the bucket (`/bucket/`) when there is no key. */
  readonly slash: boolean;
  readonly query: QueryPairs;
}

/** What is forwarded instead of what the client sent: rebuilt from what was checked. */
interface Rewritten {
  readonly url: string;
  readonly copySource?: string;
}

class Refusal extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class LocalGateway {
  private readonly identities = new Map<string, LocalIdentity>();
  /** SQS message id → the sender SQS would report for it. */
  private readonly sentBy = new Map<string, string>();
  /** Multipart upload id → the `bucket/key` it was started for. */
  private readonly uploads = new Map<string, string>();
  readonly agent: LocalIdentity & { kind: "agent" };
  /** The senders agents accept; submitters are added as their identities are made. */
  readonly senders: Senders = { agents: [AGENT_ROLE_ID], submitters: {} };

  private constructor(
    private readonly server: Server,
    private readonly upstream: URL,
    private readonly bucket: string,
    private readonly logger: Logger,
    private readonly changes: GatewayChanges | undefined,
    restored: SavedIdentities | undefined,
    private readonly datasetsBucket: string | undefined,
  ) {
    this.agent = {
      kind: "agent",
      senderId: `${AGENT_ROLE_ID}:local-agent`,
      credentials: restored?.agent ?? newCredentials(),
    };
    this.identities.set(this.agent.credentials.accessKeyId, this.agent);
    for (const { project, user, credentials } of restored?.submitters ?? [])
      this.addSubmitter(project, user, credentials);
  }

  /** Starts the gateway on a loopback port in front of `upstream` (the embedded server's endpoint). */
  static async start(options: {
    readonly upstream: string;
    readonly bucket: string;
    /** The datasets bucket: submitters reach their own prefix and the pre-cached sets in it. Defaults to none. */
    readonly datasetsBucket?: string;
    readonly logger: Logger;
    /** The identities of an earlier run of the platform: their keys, and their projects as senders, still hold. */
    readonly identities?: SavedIdentities;
    readonly changes?: GatewayChanges;
  }): Promise<LocalGateway> {
    const server = createServer();
    const gateway = new LocalGateway(
      server,
      new URL(options.upstream),
      options.bucket,
      options.logger,
      options.changes,
      options.identities,
      options.datasetsBucket,
    );
    server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      gateway.handle(req, res).catch((error: unknown) => {
        options.logger.error({ err: error }, "local gateway request failed");
        if (!res.headersSent) res.writeHead(502);
        res.end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    return gateway;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** The identity of `user` in `project` (made on first use), with its project's submitter role accepted by agents. */
  submitter(project: string, user: string): LocalIdentity & { kind: "submitter" } {
    const existing = [...this.identities.values()].find(
      (i) => i.kind === "submitter" && i.project === project && i.user === user,
    );
    if (existing) return existing as LocalIdentity & { kind: "submitter" };
    const identity = this.addSubmitter(project, user, newCredentials());
    this.changes?.identities();
    return identity;
  }

  /** Every identity, to be restored by a later run ({@link start}'s `identities`). */
  saved(): SavedIdentities {
    // The key alone: SDK clients add their own marks to the credentials objects they are given.
    const key = ({ accessKeyId, secretAccessKey }: LocalCredentials): LocalCredentials => ({
      accessKeyId,
      secretAccessKey,
    });
    return {
      agent: key(this.agent.credentials),
      submitters: [...this.identities.values()].flatMap((i) =>
        i.kind === "submitter" ? [{ project: i.project, user: i.user, credentials: key(i.credentials) }] : [],
      ),
    };
  }

  /** Who sent a message, as its receivers are told; undefined when it was not sent through the gateway. */
  senderOf(messageId: string): string | undefined {
    return this.sentBy.get(messageId);
  }

  /**
   * Records `senderId` as the sender of a message sent to the embedded server directly: one a restarted
   * platform sends again on behalf of its original sender.
   */
  stamp(messageId: string, senderId: string): void {
    this.sentBy.set(messageId, senderId);
    this.forgetOldestSenders();
  }

  private addSubmitter(
    project: string,
    user: string,
    credentials: LocalCredentials,
  ): LocalIdentity & { kind: "submitter" } {
    const roleId = localSubmitterRoleId(project);
    const identity = {
      kind: "submitter" as const,
      project,
      user,
      senderId: `${roleId}:${user}`,
      credentials,
    };
    this.identities.set(credentials.accessKeyId, identity);
    this.senders.submitters[roleId] = project;
    return identity;
  }

  private forgetOldestSenders(): void {
    for (const oldest of this.sentBy.keys()) {
      if (this.sentBy.size <= MAX_REMEMBERED_SENDERS) break;
      this.sentBy.delete(oldest);
    }
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let identity: LocalIdentity;
    let body: Buffer | undefined;
    let target: string | undefined;
    let s3: S3Target | undefined;
    let rewritten: Rewritten | undefined;
    try {
      const signed = parseQueryAuthorization(req) ?? parseAuthorization(req);
      const found = this.identities.get(signed.accessKeyId);
      if (!found)
        throw new Refusal(
          403,
          "InvalidClientTokenId",
          `no local identity has access key ${signed.accessKeyId}`,
        );
      identity = found;
      if (signed.service === "sqs") body = await readBody(req, MAX_SQS_BODY_BYTES);
      const payloadHash =
        signed.expires !== undefined
          ? "UNSIGNED-PAYLOAD"
          : (header(req, "x-amz-content-sha256") ?? sha256(body ?? Buffer.alloc(0)));
      checkSignatureTime(req, signed);
      verifySignature(req, signed, found.credentials.secretAccessKey, payloadHash);
      if (signed.service === "sqs") {
        target = header(req, "x-amz-target")?.replace(/^AmazonSQS\./, "");
        this.authorizeSqs(identity, target);
      } else {
        s3 = parseS3Target(req.url ?? "/");
        rewritten = this.authorizeS3(identity, req, s3);
      }
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      this.logger.warn({ code: error.code, method: req.method, url: req.url }, error.message);
      refuse(res, req, error);
      return;
    }
    this.logger.trace({ method: req.method, url: req.url, target, as: identity.senderId }, "local gateway");
    await this.forward(req, res, identity, body, target, s3, rewritten);
  }

  /**
   * Refuses what a submitter may not do; for a submitter, answers the path (and copy source) to forward,
   * rebuilt from the key that was checked. Agents' requests are forwarded as they came.
   */
  private authorizeS3(identity: LocalIdentity, req: IncomingMessage, s3: S3Target): Rewritten | undefined {
    if (identity.kind === "agent") return undefined;
    const { bucket, key, query } = s3;
    const who = `${identity.project}/${identity.user}`;
    const reads = req.method === "GET" || req.method === "HEAD";
    const { own, readable } = this.submitterRules(identity, bucket, who);
    const names = query.map(([name]) => name);
    const twice = names.find((name, i) => names.indexOf(name) !== i);
    if (twice !== undefined)
      throw new Refusal(400, "InvalidArgument", `the query names "${twice}" more than once`);
    const param = (name: string) => query.find(([n]) => n === name)?.[1];
    if (key === "") {
      const prefix = param("prefix") ?? "";
      const listing = req.method === "GET" && param("list-type") === "2";
      checkKey(who, "list", prefix, true);
      if (listing && readable(prefix)) return { url: rebuild(s3) };
      throw new Refusal(403, "AccessDenied", `${who} may list only under ${own}, not "${prefix}"`);
    }
    checkKey(who, req.method ?? "GET", key, false);
    if (!(reads ? readable(key) : key.startsWith(own)))
      throw new Refusal(403, "AccessDenied", `${who} may not ${req.method} ${key}: only keys under ${own}`);
    const uploadId = param("uploadId");
    if (uploadId !== undefined && this.uploads.get(uploadId) !== `${bucket}/${key}`)
      throw new Refusal(
        403,
        "AccessDenied",
        `${who} may not use multipart upload ${uploadId} for ${key}: it was not started for that key`,
      );
    const source = header(req, "x-amz-copy-source");
    if (source === undefined) return { url: rebuild(s3) };
    const from = parseCopySource(source);
    if (from.bucket !== bucket)
      throw new Refusal(403, "AccessDenied", `${who} may not copy from bucket ${from.bucket}`);
    checkKey(who, "copy", from.key, false);
    if (!readable(from.key))
      throw new Refusal(403, "AccessDenied", `${who} may not copy ${from.key}: only keys under ${own}`);
    return { url: rebuild(s3), copySource: `/${encode(from.bucket)}/${encodeKey(from.key)}` };
  }

  /**
   * What a submitter reaches in a bucket: its own prefix, to read and write, and what it may only read
   * and list: its project's ledger partitions in the workspaces bucket (for the budget check before a
   * submission), the platform's pre-cached sets in the datasets bucket. No other bucket.
   */
  private submitterRules(
    identity: { readonly project: string; readonly user: string },
    bucket: string,
    who: string,
  ): { own: string; readable: (key: string) => boolean } {
    if (bucket === this.bucket) {
      const own = `${WORKSPACES_PREFIX}${identity.project}/${identity.user}/`;
      const ledger = new RegExp(`^${LEDGER_PREFIX}\\d{4}-\\d{2}/${identity.project}/`);
      return { own, readable: (k) => k.startsWith(own) || ledger.test(k) };
    }
    if (this.datasetsBucket !== undefined && bucket === this.datasetsBucket) {
      const own = userDatasetsPrefix(identity.project, identity.user);
      return { own, readable: (k) => k.startsWith(own) || k.startsWith(DATASETS_PRECACHED_PREFIX) };
    }
    throw new Refusal(403, "AccessDenied", `${who} may not use bucket ${bucket}`);
  }

  private authorizeSqs(identity: LocalIdentity, target: string | undefined): void {
    if (identity.kind === "agent") return;
    if (target === "SendMessage" || target === "GetQueueUrl" || target === "GetQueueAttributes") return;
    throw new Refusal(
      403,
      "AccessDenied",
      `${identity.project}/${identity.user} may not call sqs:${target ?? "(none)"}; submitters may only send`,
    );
  }

  private async forward(
    req: IncomingMessage,
    res: ServerResponse,
    identity: LocalIdentity,
    body: Buffer | undefined,
    target: string | undefined,
    s3: S3Target | undefined,
    rewritten: Rewritten | undefined,
  ): Promise<void> {
    const headers: IncomingHttpHeaders = { ...req.headers, host: this.upstream.host };
    // The gateway already answered any 100-continue; the embedded server gets the body at once.
    delete headers.expect;
    if (rewritten?.copySource !== undefined) headers["x-amz-copy-source"] = rewritten.copySource;
    const rewrites = target === "SendMessage" || target === "SendMessageBatch" || target === "ReceiveMessage";
    const upstream = await new Promise<IncomingMessage>((resolve, reject) => {
      const out = httpRequest(
        {
          host: this.upstream.hostname,
          port: this.upstream.port,
          method: req.method,
          path: rewritten?.url ?? req.url,
          headers,
          // A fresh connection per request: a pooled one the embedded server closed while idle would
          // fail the next request forwarded on it.
          agent: false,
        },
        resolve,
      );
      out.on("error", reject);
      if (body) out.end(body);
      else req.pipe(out);
    });
    const status = upstream.statusCode ?? 502;
    const changes = status < 300 ? this.changesOf(req, target, s3) : undefined;
    const starts = status < 300 && req.method === "POST" && s3?.query.some(([name]) => name === "uploads");
    if (!(rewrites && status < 300) && !changes && !starts) {
      res.writeHead(status, upstream.headers);
      upstream.pipe(res);
      return;
    }
    // Answers to sends, receives and writes are small: read whole, to rewrite or to persist first.
    let text = await readBody(upstream, 64 * 1024 * 1024);
    if (rewrites && status < 300) text = this.rewrite(identity, target, text);
    if (starts && s3) this.rememberUpload(s3, text);
    try {
      await changes?.(text);
    } catch (error) {
      this.logger.error({ err: error, method: req.method, url: req.url, target }, "saving a change failed");
      refuse(res, req, new Refusal(500, "InternalError", "the local platform could not save the change"));
      return;
    }
    // Sent whole, so with its length rather than in chunks.
    const { "content-length": _length, "transfer-encoding": _encoding, ...rest } = upstream.headers;
    res.writeHead(status, { ...rest, "content-length": String(text.length) });
    res.end(text);
  }

  /** Remembers which key a multipart upload was started for, from CreateMultipartUpload's answer. */
  private rememberUpload(s3: S3Target, answer: Buffer): void {
    const id = /<UploadId>([^<]+)<\/UploadId>/.exec(answer.toString("utf8"))?.[1];
    if (id === undefined) return;
    this.uploads.set(id, `${s3.bucket}/${s3.key}`);
    for (const oldest of this.uploads.keys()) {
      if (this.uploads.size <= MAX_REMEMBERED_UPLOADS) break;
      this.uploads.delete(oldest);
    }
  }

  /** Stamps received messages with their senders, and remembers the senders of messages sent. */
  private rewrite(identity: LocalIdentity, target: string | undefined, body: Buffer): Buffer {
    const answer = JSON.parse(body.toString("utf8")) as SqsAnswer;
    if (target === "ReceiveMessage") {
      for (const message of answer.Messages ?? []) {
        message.Attributes = {
          ...message.Attributes,
          SenderId: this.sentBy.get(message.MessageId ?? "") ?? "unknown",
        };
      }
    } else {
      const ids =
        target === "SendMessage" ? [answer.MessageId] : (answer.Successful ?? []).map((s) => s.MessageId);
      for (const id of ids) if (id) this.sentBy.set(id, identity.senderId);
      this.forgetOldestSenders();
    }
    return Buffer.from(JSON.stringify(answer));
  }

  /**
   * What a successful request changed, as a function of its answer that reports it to {@link changes};
   * undefined for reads, and when nobody listens.
   */
  private changesOf(
    req: IncomingMessage,
    target: string | undefined,
    s3: S3Target | undefined,
  ): ((answer: Buffer) => Promise<void>) | undefined {
    const { changes } = this;
    if (!changes) return undefined;
    if (target !== undefined) return QUEUE_CHANGES.has(target) ? () => changes.queues() : undefined;
    if (req.method === "GET" || req.method === "HEAD" || !s3) return undefined;
    const { key } = s3;
    const names = new Set(s3.query.map(([name]) => name));
    const query = { has: (name: string) => names.has(name) };
    if (key === "")
      return req.method === "POST" && query.has("delete")
        ? (answer) => changes.objects(deletedKeys(answer), s3.bucket)
        : undefined;
    // A multipart upload's start, parts and abort leave the object as it was; its completion (a POST
    // with the uploadId) writes it.
    if (query.has("uploads") || (query.has("uploadId") && req.method !== "POST")) return undefined;
    return () => changes.objects([key], s3.bucket);
  }
}

/** The keys a DeleteObjects answer reports deleted. */
function deletedKeys(answer: Buffer): string[] {
  const xml = answer.toString("utf8");
  return [...xml.matchAll(/<Deleted>\s*<Key>([^<]*)<\/Key>/g)].map(([, key]) =>
    key!.replace(/&(lt|gt|quot|apos|amp);/g, (_, name: string) => XML_ENTITIES[name]!),
  );
}

const XML_ENTITIES: Record<string, string> = { lt: "<", gt: ">", quot: '"', apos: "'", amp: "&" };

interface SqsAnswer {
  MessageId?: string;
  Successful?: { MessageId?: string }[];
  Messages?: { MessageId?: string; Attributes?: Record<string, string> }[];
}

function newCredentials(): LocalCredentials {
  return {
    accessKeyId: `LOCAL${randomBytes(8).toString("hex").toUpperCase()}`,
    secretAccessKey: randomBytes(30).toString("base64"),
  };
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(",") : value;
}

const sha256 = (data: Buffer | string): string => createHash("sha256").update(data).digest("hex");
const hmac = (key: Buffer | string, data: string): Buffer => createHmac("sha256", key).update(data).digest();

/** `AWS4-HMAC-SHA256 Credential=AKID/20261203/us-east-1/s3/aws4_request, SignedHeaders=a;b, Signature=hex`. */
function parseAuthorization(req: IncomingMessage): Signed {
  const value = req.headers.authorization;
  const match =
    /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, ?SignedHeaders=([^,]+), ?Signature=([0-9a-f]{64})$/.exec(
      value ?? "",
    );
  if (!match)
    throw new Refusal(
      403,
      "MissingAuthenticationToken",
      "the request is not signed with SigV4 (Authorization header)",
    );
  const [, accessKeyId, date, region, service, headers, signature] = match;
  return {
    accessKeyId: accessKeyId!,
    date: date!,
    region: region!,
    service: service!,
    signedHeaders: headers!.split(";"),
    signature: signature!,
    amzDate: header(req, "x-amz-date") ?? "",
  };
}

/**
 * A presigned link's signature (`?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=…&X-Amz-Signature=…`),
 * accepted for S3 GET and HEAD only; undefined when the query carries no signature.
 */
function parseQueryAuthorization(req: IncomingMessage): Signed | undefined {
  const raw = req.url ?? "/";
  const query = raw.includes("?") ? parseQuery(raw.slice(raw.indexOf("?") + 1)) : [];
  const param = (name: string) => query.find(([n]) => n === name)?.[1];
  if (param("X-Amz-Signature") === undefined) return undefined;
  if (req.headers.authorization !== undefined)
    throw new Refusal(400, "InvalidArgument", "only one auth mechanism allowed: the header or the query");
  if (req.method !== "GET" && req.method !== "HEAD")
    throw new Refusal(403, "AccessDenied", `a presigned link may only GET or HEAD, not ${req.method}`);
  const credential = /^([^/]+)\/(\d{8})\/([^/]+)\/(s3)\/aws4_request$/.exec(param("X-Amz-Credential") ?? "");
  const expires = param("X-Amz-Expires") ?? "";
  const signature = param("X-Amz-Signature") ?? "";
  if (
    param("X-Amz-Algorithm") !== "AWS4-HMAC-SHA256" ||
    !credential ||
    !/^[0-9a-f]{64}$/.test(signature) ||
    !param("X-Amz-SignedHeaders")
  )
    throw new Refusal(
      403,
      "AuthorizationQueryParametersError",
      "the presigned link's SigV4 parameters are malformed",
    );
  if (!/^\d{1,6}$/.test(expires) || +expires < 1 || +expires > MAX_PRESIGNED_SECONDS)
    throw new Refusal(
      403,
      "AuthorizationQueryParametersError",
      `X-Amz-Expires must be 1 to ${MAX_PRESIGNED_SECONDS} seconds, got "${expires}"`,
    );
  const [, accessKeyId, date, region, service] = credential;
  return {
    accessKeyId: accessKeyId!,
    date: date!,
    region: region!,
    service: service!,
    signedHeaders: param("X-Amz-SignedHeaders")!.split(";"),
    signature,
    amzDate: param("X-Amz-Date") ?? "",
    expires: +expires,
  };
}

/** Refuses a signature from another day than its date, over 15 minutes off, or a presigned link past its expiry. */
function checkSignatureTime(req: IncomingMessage, signed: Signed): void {
  const { amzDate } = signed;
  const when = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
  if (!when || !amzDate.startsWith(signed.date))
    throw new Refusal(
      403,
      "IncompleteSignature",
      `x-amz-date must be the signature's date, got "${amzDate}"`,
    );
  const at = Date.UTC(+when[1]!, +when[2]! - 1, +when[3]!, +when[4]!, +when[5]!, +when[6]!);
  const now = Date.now();
  if (signed.expires === undefined ? Math.abs(now - at) > MAX_CLOCK_SKEW_MS : at - now > MAX_CLOCK_SKEW_MS)
    throw new Refusal(
      403,
      "RequestTimeTooSkewed",
      `the request was signed at ${amzDate}, over 15 minutes off`,
    );
  if (signed.expires !== undefined && now > at + signed.expires * 1000)
    throw new Refusal(
      403,
      "AccessDenied",
      `the presigned link expired at ${new Date(at + signed.expires * 1000).toISOString()}`,
    );
}

/** A raw query string's pairs, each name and value decoded once (`+` is not a space, as in SigV4). */
function parseQuery(query: string): QueryPairs {
  return query
    .split("&")
    .filter((pair) => pair !== "")
    .map((pair) => {
      const eq = pair.indexOf("=");
      const name = decode(eq < 0 ? pair : pair.slice(0, eq));
      return [name, eq < 0 ? undefined : decode(pair.slice(eq + 1))] as const;
    });
}

/** One decoding, refusing a malformed escape. */
function decode(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new Refusal(400, "InvalidURI", `the request has a malformed escape in "${text}"`);
  }
}

/**
 * A path-style S3 request's bucket and key, read from the raw path without any normalisation: each
 * `/`-separated segment decoded once, as the embedded server's router reads it.
 */
function parseS3Target(raw: string): S3Target {
  if (!raw.startsWith("/"))
    throw new Refusal(400, "InvalidURI", `the request target must be a path, got "${raw}"`);
  const queryAt = raw.indexOf("?");
  const [, bucket = "", ...rest] = (queryAt < 0 ? raw : raw.slice(0, queryAt)).split("/").map(decode);
  return {
    bucket,
    key: rest.join("/"),
    slash: rest.length > 0,
    query: queryAt < 0 ? [] : parseQuery(raw.slice(queryAt + 1)),
  };
}

/** `x-amz-copy-source`: `[/]bucket/key`, URL-encoded; the local platform keeps no versions. */
function parseCopySource(value: string): { bucket: string; key: string } {
  const raw = value.startsWith("/") ? value.slice(1) : value;
  if (raw.includes("?"))
    throw new Refusal(400, "InvalidArgument", `the copy source may not name a version: "${value}"`);
  const [bucket = "", ...rest] = raw.split("/").map(decode);
  return { bucket, key: rest.join("/") };
}

/**
 * Refuses a key (or a list prefix, which may end with `/`) whose meaning could differ between the
 * gateway and whatever reads it next: `.`, `..` or empty segments (once decoded, so `%2e%2e` too),
 * backslashes and control characters. What is left is forwarded encoded afresh, so it is decoded once
 * more by nobody: a key spelled `%2e%2e` is that literal name.
 */
function checkKey(who: string, action: string, key: string, prefix: boolean): void {
  const segments = key.split("/");
  if (prefix && segments.at(-1) === "") segments.pop();
  const why = [...key].some((c) => c === "\\" || c < " " || c === "\u007f")
    ? "it holds a backslash or a control character"
    : segments.includes(".") || segments.includes("..")
      ? 'it has a "." or ".." segment'
      : segments.includes("")
        ? "it has an empty segment"
        : undefined;
  if (why !== undefined) throw new Refusal(403, "AccessDenied", `${who} may not ${action} "${key}": ${why}`);
}

/** A key encoded segment by segment, `/` kept as the separator. */
const encodeKey = (key: string): string => key.split("/").map(encode).join("/");

/** The path and query to forward: encoded afresh from what was read and checked. */
function rebuild({ bucket, key, slash, query }: S3Target): string {
  const path = `/${encode(bucket)}${slash ? "/" : ""}${encodeKey(key)}`;
  const pairs = query.map(([name, value]) =>
    value === undefined ? encode(name) : `${encode(name)}=${encode(value)}`,
  );
  return pairs.length === 0 ? path : `${path}?${pairs.join("&")}`;
}

/** RFC 3986 encoding, as SigV4's canonical query string wants it. */
function encode(text: string): string {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** Recomputes the request's SigV4 signature with the identity's secret and compares it in constant time. */
function verifySignature(req: IncomingMessage, signed: Signed, secret: string, payloadHash: string): void {
  const { amzDate } = signed;
  const raw = req.url ?? "/";
  const queryAt = raw.indexOf("?");
  const path = queryAt < 0 ? raw : raw.slice(0, queryAt);
  const query = queryAt < 0 ? "" : raw.slice(queryAt + 1);
  // A presigned link's query holds its signature, which it does not sign.
  const canonicalQuery = parseQuery(query)
    .filter(([name]) => signed.expires === undefined || name !== "X-Amz-Signature")
    .map(([name, value]) => [encode(name), encode(value ?? "")] as const)
    .sort(([a, av], [b, bv]) => (a < b ? -1 : a > b ? 1 : av < bv ? -1 : av > bv ? 1 : 0))
    .map(([name, value]) => `${name}=${value}`)
    .join("&");
  const canonicalHeaders = signed.signedHeaders
    .map((name) => `${name}:${(header(req, name) ?? "").trim().replace(/\s+/g, " ")}\n`)
    .join("");
  const canonicalRequest = [
    req.method ?? "GET",
    path,
    canonicalQuery,
    canonicalHeaders,
    signed.signedHeaders.join(";"),
    payloadHash,
  ].join("\n");
  const scope = `${signed.date}/${signed.region}/${signed.service}/aws4_request`;
  const stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, sha256(canonicalRequest)].join("\n");
  const key = ["aws4_request"].reduce(
    (k, part) => hmac(k, part),
    hmac(hmac(hmac(`AWS4${secret}`, signed.date), signed.region), signed.service),
  );
  const expected = Buffer.from(hmac(key, stringToSign).toString("hex"));
  const given = Buffer.from(signed.signature);
  if (expected.length !== given.length || !timingSafeEqual(expected, given))
    throw new Refusal(
      403,
      "SignatureDoesNotMatch",
      `the signature of access key ${signed.accessKeyId} does not match`,
    );
}

async function readBody(stream: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new Refusal(413, "RequestTooLarge", `the request body is over ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** An error in the protocol the caller speaks: S3's XML, or SQS's JSON with the query-compatible code. */
function refuse(res: ServerResponse, req: IncomingMessage, refusal: Refusal): void {
  // The rest of a streamed upload is not wanted; drain it so the connection can answer.
  req.resume();
  if (header(req, "x-amz-target")) {
    const text = JSON.stringify({ __type: `com.amazonaws.sqs#${refusal.code}`, message: refusal.message });
    res.writeHead(refusal.status, {
      "content-type": "application/x-amz-json-1.0",
      "x-amzn-query-error": `${refusal.code};Sender`,
    });
    res.end(text);
    return;
  }
  const escaped = refusal.message.replace(/[<>&]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;" })[c]!);
  res.writeHead(refusal.status, { "content-type": "application/xml" });
  res.end(
    `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${refusal.code}</Code><Message>${escaped}</Message></Error>`,
  );
}
