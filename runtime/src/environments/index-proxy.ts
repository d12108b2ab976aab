import { chmod } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer, request } from "node:http";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import type { Logger } from "../logger";

/**
 * The one way out of an environment build: an HTTP proxy on a Unix socket that is mounted into the
 * builder's container (which has no network of its own), forwarding only to the stack's package index.
 * pip speaks to it as its `--proxy`: `CONNECT host:443` for an https index, absolute-form requests for an
 * http one. Any other destination is answered 403, and the refusal is reported, so a build that tried to
 * reach elsewhere fails saying where.
 */
export interface IndexProxy {
  /** Destinations refused so far, as `host:port`. */
  readonly refused: readonly string[];
  close(): Promise<void>;
}

export interface IndexProxyOptions {
  /** The Unix socket to listen on (made reachable by any user: the builder runs unprivileged). */
  readonly socketPath: string;
  /** Destinations let through, as `host:port`. */
  readonly allowed: readonly string[];
  readonly logger: Logger;
  /** Told of each refused destination, e.g. to put it in the build's log. */
  readonly onRefused?: (destination: string) => void;
}

export async function startIndexProxy(options: IndexProxyOptions): Promise<IndexProxy> {
  const { socketPath, logger } = options;
  const allowed = new Set(options.allowed.map((d) => d.toLowerCase()));
  const refused: string[] = [];
  const sockets = new Set<Duplex>();
  const refuse = (destination: string): void => {
    refused.push(destination);
    logger.warn({ destination }, "environment build refused a destination that is not the package index");
    options.onRefused?.(destination);
  };

  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const target = absoluteTarget(req.url);
    if (!target || !allowed.has(target.destination)) {
      refuse(target?.destination ?? String(req.url).slice(0, 200));
      res.writeHead(403, { "content-type": "text/plain", connection: "close" });
      res.end(
        `crucible: builds reach only the stack's package index, not ${target?.destination ?? "that"}\n`,
      );
      return;
    }
    const send = target.url.protocol === "https:" ? httpsRequest : request;
    const upstream = send(
      target.url,
      { method: req.method, headers: withoutHopHeaders(req.headers) },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, withoutHopHeaders(answer.headers));
        answer.pipe(res);
      },
    );
    upstream.on("error", (error) => {
      logger.warn({ err: error, destination: target.destination }, "package index request failed");
      if (!res.headersSent) res.writeHead(502, { "content-type": "text/plain" });
      res.end();
    });
    req.pipe(upstream);
  });

  server.on("connect", (req: IncomingMessage, client: Duplex, head: Buffer) => {
    sockets.add(client);
    client.on("close", () => sockets.delete(client));
    client.on("error", () => client.destroy());
    const destination = String(req.url).toLowerCase();
    const [host, port] = splitHostPort(destination);
    if (!host || !port || !allowed.has(destination)) {
      refuse(destination.slice(0, 200));
      client.end(
        "HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n" +
          `crucible: builds reach only the stack's package index, not ${destination.slice(0, 200)}\n`,
      );
      return;
    }
    const upstream: Socket = connect(port, host, () => {
      client.write("HTTP/1.1 200 Connection Established\r\n\r\n");
      if (head.length > 0) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on("close", () => sockets.delete(upstream));
    upstream.on("error", (error) => {
      logger.warn({ err: error, destination }, "package index connection failed");
      client.destroy();
    });
  });
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(socketPath, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // The builder's user is not the agent's: the socket must be connectable by anyone who can reach it,
  // which is only the builder container it is mounted into.
  await chmod(socketPath, 0o666);
  return {
    refused,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** `host:port` of an absolute-form request target, with the URL; undefined for origin-form ones. */
function absoluteTarget(url: string | undefined): { url: URL; destination: string } | undefined {
  if (!url || !/^https?:\/\//i.test(url)) return undefined;
  try {
    const parsed = new URL(url);
    const port = parsed.port || (parsed.protocol === "https:" ? "443" : "80");
    return { url: parsed, destination: `${parsed.hostname.toLowerCase()}:${port}` };
  } catch {
    return undefined;
  }
}

function splitHostPort(destination: string): [string | undefined, number | undefined] {
  const at = destination.lastIndexOf(":");
  if (at <= 0) return [undefined, undefined];
  const port = Number(destination.slice(at + 1));
  return [
    destination.slice(0, at).replace(/^\[|\]$/g, ""),
    Number.isInteger(port) && port > 0 ? port : undefined,
  ];
}

const HOP_HEADERS = new Set([
  "connection",
  "keep-alive",
  "proxy-authorization",
  "proxy-authenticate",
  "proxy-connection",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
]);

function withoutHopHeaders(headers: IncomingMessage["headers"]): Record<string, string | string[]> {
  const kept: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers))
    if (value !== undefined && !HOP_HEADERS.has(name.toLowerCase())) kept[name] = value;
  return kept;
}
