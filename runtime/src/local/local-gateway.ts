import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { createServer, request as httpRequest } from "node:http";
import type { AddressInfo } from "node:net";
import { LEDGER_PREFIX, WORKSPACES_PREFIX } from "../catalog/bucket-layout";
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
 *   `workspaces/<project>/<user>/`, read its project's ledger partitions, and send messages — as the
 *   stack's submitter role policy allows;
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
  /** These keys of the bucket were written or deleted. */
  objects(keys: readonly string[]): Promise<void>;
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
    try {
      const signed = parseAuthorization(req.headers.authorization);
      const found = this.identities.get(signed.accessKeyId);
      if (!found)
        throw new Refusal(
          403,
          "InvalidClientTokenId",
          `no local identity has access key ${signed.accessKeyId}`,
        );
      identity = found;
      if (signed.service === "sqs") body = await readBody(req, MAX_SQS_BODY_BYTES);
      const payloadHash = header(req, "x-amz-content-sha256") ?? sha256(body ?? Buffer.alloc(0));
      verifySignature(req, signed, found.credentials.secretAccessKey, payloadHash);
      if (signed.service === "sqs") {
        target = header(req, "x-amz-target")?.replace(/^AmazonSQS\./, "");
        this.authorizeSqs(identity, target);
      } else this.authorizeS3(identity, req);
    } catch (error) {
      if (!(error instanceof Refusal)) throw error;
      this.logger.warn({ code: error.code, method: req.method, url: req.url }, error.message);
      refuse(res, req, error);
      return;
    }
    this.logger.trace({ method: req.method, url: req.url, target, as: identity.senderId }, "local gateway");
    await this.forward(req, res, identity, body, target);
  }

  private authorizeS3(identity: LocalIdentity, req: IncomingMessage): void {
    if (identity.kind === "agent") return;
    const own = `${WORKSPACES_PREFIX}${identity.project}/${identity.user}/`;
    // The project's month partitions of the ledger: read-only, for the budget check before a submission.
    const ledger = new RegExp(`^${LEDGER_PREFIX}\\d{4}-\\d{2}/${identity.project}/`);
    const url = new URL(req.url ?? "/", "http://local");
    const [, bucket, ...rest] = url.pathname.split("/");
    const key = decodeURIComponent(rest.join("/"));
    const who = `${identity.project}/${identity.user}`;
    const reads = req.method === "GET" || req.method === "HEAD";
    if (bucket !== this.bucket)
      throw new Refusal(403, "AccessDenied", `${who} may not use bucket ${bucket ?? ""}`);
    if (key === "") {
      const prefix = url.searchParams.get("prefix") ?? "";
      const listing = req.method === "GET" && url.searchParams.get("list-type") === "2";
      if (listing && (prefix.startsWith(own) || ledger.test(prefix))) return;
      throw new Refusal(403, "AccessDenied", `${who} may list only under ${own}, not "${prefix}"`);
    }
    if (reads && ledger.test(key)) return;
    if (!key.startsWith(own))
      throw new Refusal(403, "AccessDenied", `${who} may not ${req.method} ${key}: only keys under ${own}`);
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
  ): Promise<void> {
    const headers = { ...req.headers, host: this.upstream.host };
    // The gateway already answered any 100-continue; the embedded server gets the body at once.
    delete headers.expect;
    const rewrites = target === "SendMessage" || target === "SendMessageBatch" || target === "ReceiveMessage";
    const upstream = await new Promise<IncomingMessage>((resolve, reject) => {
      const out = httpRequest(
        {
          host: this.upstream.hostname,
          port: this.upstream.port,
          method: req.method,
          path: req.url,
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
    const changes = status < 300 ? this.changesOf(req, target) : undefined;
    if (!(rewrites && status < 300) && !changes) {
      res.writeHead(status, upstream.headers);
      upstream.pipe(res);
      return;
    }
    // Answers to sends, receives and writes are small: read whole, to rewrite or to persist first.
    let text = await readBody(upstream, 64 * 1024 * 1024);
    if (rewrites && status < 300) text = this.rewrite(identity, target, text);
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
  ): ((answer: Buffer) => Promise<void>) | undefined {
    const { changes } = this;
    if (!changes) return undefined;
    if (target !== undefined) return QUEUE_CHANGES.has(target) ? () => changes.queues() : undefined;
    if (req.method === "GET" || req.method === "HEAD") return undefined;
    const url = new URL(req.url ?? "/", "http://local");
    const key = decodeURIComponent(url.pathname.split("/").slice(2).join("/"));
    const query = url.searchParams;
    if (key === "")
      return req.method === "POST" && query.has("delete")
        ? (answer) => changes.objects(deletedKeys(answer))
        : undefined;
    // A multipart upload's start, parts and abort leave the object as it was; its completion (a POST
    // with the uploadId) writes it.
    if (query.has("uploads") || (query.has("uploadId") && req.method !== "POST")) return undefined;
    return () => changes.objects([key]);
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
function parseAuthorization(value: string | undefined): Signed {
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
  };
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
  const amzDate = header(req, "x-amz-date") ?? "";
  const when = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(amzDate);
  if (!when || !amzDate.startsWith(signed.date))
    throw new Refusal(
      403,
      "IncompleteSignature",
      `x-amz-date must be the signature's date, got "${amzDate}"`,
    );
  const at = Date.UTC(+when[1]!, +when[2]! - 1, +when[3]!, +when[4]!, +when[5]!, +when[6]!);
  if (Math.abs(Date.now() - at) > MAX_CLOCK_SKEW_MS)
    throw new Refusal(
      403,
      "RequestTimeTooSkewed",
      `the request was signed at ${amzDate}, over 15 minutes off`,
    );
  const raw = req.url ?? "/";
  const queryAt = raw.indexOf("?");
  const path = queryAt < 0 ? raw : raw.slice(0, queryAt);
  const query = queryAt < 0 ? "" : raw.slice(queryAt + 1);
  const canonicalQuery = query
    .split("&")
    .filter((pair) => pair !== "")
    .map((pair) => {
      const eq = pair.indexOf("=");
      const name = decodeURIComponent(eq < 0 ? pair : pair.slice(0, eq));
      const value = eq < 0 ? "" : decodeURIComponent(pair.slice(eq + 1));
      return [encode(name), encode(value)] as const;
    })
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
