import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { isIP } from "node:net";
import { hostname, networkInterfaces } from "node:os";
import { readFile, stat } from "node:fs/promises";
import { extname, isAbsolute, join, relative, resolve, sep } from "node:path";
import type { Logger } from "../logger";
import { CSRF_HEADER } from "./api-contract";
import type { ApiRequest, ConsoleBackend } from "./api";
import { ApiError, ConsoleApi } from "./api";
import type { ConsoleSession } from "./auth";
import { ConsoleAuth, csrfRefusal, isLoopback, newSecret, sessionCookie } from "./auth";

/** `crucible console`'s port unless told otherwise. */
export const DEFAULT_CONSOLE_PORT = 8321;
export const DEFAULT_CONSOLE_HOST = "127.0.0.1";
/** The largest JSON body a state-changing request may carry (an upload's body is the code: api.ts bounds it). */
const MAX_BODY_BYTES = 64 * 1024;
/** The one route whose body is not JSON but the code uploaded. */
const UPLOAD_PATH = "/api/uploads";

/**
 * Where the built page is: the UI build writes it into the runtime's `dist/console/ui/`. This module sits
 * two folders below the runtime both as source (`src/console/`, under tsx) and built (`dist/console/`).
 */
export const DEFAULT_UI_DIR = resolve(__dirname, "..", "..", "dist", "console", "ui");

/**
 * What every answer carries: the page runs only its own script and style, loads nothing from elsewhere,
 * cannot be framed, and the browser sniffs no type and sends no referrer (the login URL holds a secret).
 */
const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
} as const;

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".json": "application/json; charset=utf-8",
  ".map": "application/json; charset=utf-8",
  ".woff2": "font/woff2",
};

export interface ConsoleOptions {
  readonly backend: ConsoleBackend;
  readonly logger: Logger;
  /** The address to listen on; anything but loopback needs the login URL. Defaults to 127.0.0.1. */
  readonly host?: string;
  /** 0 for any free port. Defaults to {@link DEFAULT_CONSOLE_PORT}. */
  readonly port?: number;
  /** The built page (index.html, app.js, app.css). Defaults to {@link DEFAULT_UI_DIR}. */
  readonly uiDir?: string;
}

export interface RunningConsole {
  readonly url: string;
  /**
   * Beyond loopback: the URL that logs a browser in, with the token made at start. Print it once; the
   * console keeps only the token's hash.
   */
  readonly loginUrl?: string;
  close(): Promise<void>;
}

/**
 * Serves the console: its API (api.ts) under `/api/` and the page's files from `uiDir`, any other path
 * answering with the page (it routes by the URL's hash). Loopback by default, where the first page load
 * makes a session; elsewhere only the login URL does.
 */
export async function startConsole(options: ConsoleOptions): Promise<RunningConsole> {
  const { logger } = options;
  const host = options.host ?? DEFAULT_CONSOLE_HOST;
  const loopback = isLoopback(host);
  const loginToken = loopback ? undefined : newSecret();
  const auth = new ConsoleAuth(loopback, loginToken);
  const api = new ConsoleApi(options.backend, logger);
  const uiDir = resolve(options.uiDir ?? DEFAULT_UI_DIR);
  let hosts: ReadonlySet<string> = new Set();
  const server = createServer((req, res) => {
    const started = performance.now();
    res.on("finish", () =>
      logger.debug(
        // The path only: the login URL's query holds the token.
        {
          method: req.method,
          path: req.url?.split("?")[0],
          status: res.statusCode,
          ms: Math.round(performance.now() - started),
        },
        "console request",
      ),
    );
    for (const [name, value] of Object.entries(SECURITY_HEADERS)) res.setHeader(name, value);
    serve(req, res, { auth, api, uiDir, hosts, logger }).catch((error: unknown) => {
      logger.error(
        { err: error, method: req.method, path: req.url?.split("?")[0] },
        "console request failed",
      );
      if (!res.headersSent) sendJson(res, 500, { error: "the console failed to answer; its log says why" });
      else res.destroy();
    });
  });
  await listen(server, options.port ?? DEFAULT_CONSOLE_PORT, host);
  const { port } = server.address() as AddressInfo;
  // On loopback the Host header must name loopback: a page elsewhere that rebinds its own name to
  // 127.0.0.1 (DNS rebinding) gets no session and no answer.
  if (loopback)
    hosts = new Set([host, "127.0.0.1", "localhost", "[::1]"].map((h) => `${bracketed(h)}:${port}`));
  const url = `http://${bracketed(publicHost(host))}:${port}/`;
  logger.info({ url, host, port, loopback }, "console listening");
  return {
    url,
    ...(loginToken && { loginUrl: `${url}login?token=${loginToken}` }),
    close: async () => {
      await new Promise<void>((done) => {
        server.close(() => done());
        // Log streams stay open until their jobs end: they are cut, not waited for.
        server.closeAllConnections();
      });
      // Nothing uploaded outlives the console.
      await api.close();
    },
  };
}

interface Serving {
  readonly auth: ConsoleAuth;
  readonly api: ConsoleApi;
  readonly uiDir: string;
  readonly hosts: ReadonlySet<string>;
  readonly logger: Logger;
}

async function serve(req: IncomingMessage, res: ServerResponse, ctx: Serving): Promise<void> {
  const { auth } = ctx;
  const method = req.method ?? "GET";
  if (auth.loopback && !ctx.hosts.has(req.headers.host ?? "")) {
    sendText(
      res,
      403,
      `this console answers only at ${[...ctx.hosts].map((h) => `http://${h}/`).join(", ")}\n`,
    );
    return;
  }
  const url = new URL(req.url ?? "/", "http://console.invalid");
  if (url.pathname === "/login") return login(req, res, url, auth);
  const session = auth.sessionOf(req);
  if (url.pathname === "/api" || url.pathname.startsWith("/api/")) {
    res.setHeader("cache-control", "no-store");
    try {
      await serveApi(req, res, url, session, ctx);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      if (res.headersSent) res.destroy();
      else {
        // A body refused before its end is left unread: the connection closes once this is sent.
        if (!req.complete) res.setHeader("connection", "close");
        sendJson(res, error.status, { error: error.message });
      }
    }
    return;
  }
  if (method !== "GET" && method !== "HEAD") {
    res.setHeader("allow", "GET, HEAD");
    sendText(res, 405, `the console's page answers GET, not ${method}\n`);
    return;
  }
  if (!session && !auth.loopback) {
    sendText(
      res,
      401,
      "not logged in: open the login URL that `crucible console` printed when it started (it holds a one-time token)\n",
    );
    return;
  }
  await serveStatic(res, url.pathname, method === "HEAD", session, ctx);
}

function login(req: IncomingMessage, res: ServerResponse, url: URL, auth: ConsoleAuth): void {
  if (req.method !== "GET") {
    res.setHeader("allow", "GET");
    sendText(res, 405, "log in with GET /login?token=...\n");
    return;
  }
  const token = url.searchParams.get("token");
  if (!auth.loopback && (token === null || !auth.checkLoginToken(token))) {
    sendText(
      res,
      401,
      "wrong or missing login token: open the exact login URL that `crucible console` printed when it started\n",
    );
    return;
  }
  // 303 to the page: the token leaves the address bar and the history.
  res.writeHead(303, {
    location: "/",
    "set-cookie": sessionCookie(auth.createSession()),
    "cache-control": "no-store",
  });
  res.end();
}

async function serveApi(
  req: IncomingMessage,
  res: ServerResponse,
  url: URL,
  session: ConsoleSession | undefined,
  ctx: Serving,
): Promise<void> {
  if (!session)
    throw new ApiError(
      401,
      ctx.auth.loopback
        ? "no session: load the console's page first"
        : "not logged in: open the login URL that `crucible console` printed when it started",
    );
  const method = req.method ?? "GET";
  let body: unknown;
  let upload: ApiRequest["upload"];
  if (method === "POST") {
    const refusal = csrfRefusal(req, session, `http://${req.headers.host ?? ""}`, CSRF_HEADER);
    if (refusal) throw new ApiError(403, refusal);
    if (url.pathname === UPLOAD_PATH) {
      const length = req.headers["content-length"];
      upload = {
        body: req,
        contentType: req.headers["content-type"] ?? "",
        ...(length !== undefined && { declaredBytes: Number(length) }),
      };
    } else body = await readJsonBody(req);
  } else if (method !== "GET") {
    res.setHeader("allow", "GET, POST");
    throw new ApiError(405, `the console's API answers GET and POST, not ${method}`);
  }
  let segments: string[];
  try {
    segments = url.pathname.slice("/api/".length).split("/").map(decodeURIComponent);
  } catch {
    throw new ApiError(400, `the path ${JSON.stringify(url.pathname)} is not valid percent-encoding`);
  }
  const closed = new AbortController();
  res.on("close", () => closed.abort());
  const lastEventId = req.headers["last-event-id"];
  await ctx.api.handle(
    {
      method,
      segments,
      query: url.searchParams,
      body,
      ...(upload && { upload }),
      sessionId: session.id,
      csrfToken: session.csrfToken,
      closed: closed.signal,
      ...(typeof lastEventId === "string" && { lastEventId }),
    },
    res,
  );
}

/** A POST's JSON body, at most {@link MAX_BODY_BYTES}; none at all is undefined. */
async function readJsonBody(req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers["content-length"] ?? 0);
  if (declared > MAX_BODY_BYTES)
    throw new ApiError(413, `the body is ${declared} bytes; the console takes at most ${MAX_BODY_BYTES}`);
  const chunks: Buffer[] = [];
  let size = 0;
  // Past the limit the rest is left unread, not destroyed: the refusal goes out, then the connection closes.
  for await (const chunk of req.iterator({ destroyOnReturn: false }) as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES)
      throw new ApiError(413, `the body is over ${MAX_BODY_BYTES} bytes, which the console takes at most`);
    chunks.push(chunk);
  }
  if (size === 0) return undefined;
  const type = req.headers["content-type"] ?? "";
  if (!/^application\/json\s*(;|$)/i.test(type))
    throw new ApiError(
      415,
      `the body must be JSON (content-type application/json), got ${JSON.stringify(type)}`,
    );
  try {
    return JSON.parse(Buffer.concat(chunks).toString("utf8")) as unknown;
  } catch {
    throw new ApiError(400, "the body is not valid JSON");
  }
}

/**
 * One of the page's files; any path that names none answers with index.html (the page routes by hash).
 * Loading the page on loopback without a session makes one.
 */
async function serveStatic(
  res: ServerResponse,
  pathname: string,
  head: boolean,
  session: ConsoleSession | undefined,
  ctx: Serving,
): Promise<void> {
  res.setHeader("cache-control", "no-cache");
  let file = await pageFile(ctx.uiDir, pathname);
  if (file === undefined) {
    file = join(ctx.uiDir, "index.html");
    if (!(await isFile(file))) {
      sendText(res, 500, `the console's page is not built (no index.html in ${ctx.uiDir}): npm run build\n`);
      return;
    }
  }
  const body = await readFile(file);
  if (file.endsWith(`${sep}index.html`) && !session)
    res.setHeader("set-cookie", sessionCookie(ctx.auth.createSession()));
  res.writeHead(200, {
    "content-type": CONTENT_TYPES[extname(file)] ?? "application/octet-stream",
    "content-length": String(body.length),
  });
  res.end(head ? undefined : body);
}

/** The file under `root` that a URL path names, if it is a plain name inside it and a file there. */
async function pageFile(root: string, pathname: string): Promise<string | undefined> {
  let path: string;
  try {
    path = decodeURIComponent(pathname);
  } catch {
    return undefined;
  }
  const name = path === "/" ? "index.html" : path.slice(1);
  if (!/^[\w-]+(\.[\w-]+)*(\/[\w-]+(\.[\w-]+)*)*$/.test(name)) return undefined;
  const file = join(root, name);
  const inside = relative(root, file);
  if (inside.startsWith("..") || isAbsolute(inside)) return undefined;
  return (await isFile(file)) ? file : undefined;
}

const isFile = async (path: string): Promise<boolean> =>
  (await stat(path).catch(() => undefined))?.isFile() ?? false;

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json; charset=utf-8", "cache-control": "no-store" });
  res.end(JSON.stringify(body));
}

function sendText(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8" });
  res.end(text);
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((done, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => {
      server.off("error", fail);
      done();
    });
  });
}

const bracketed = (host: string): string => (isIP(host) === 6 ? `[${host}]` : host);

/** A name a browser elsewhere reaches a wildcard address by: the first outside IPv4 address, else the host name. */
function publicHost(host: string): string {
  if (host !== "0.0.0.0" && host !== "::") return host;
  const outside = Object.values(networkInterfaces())
    .flat()
    .find((a) => a && a.family === "IPv4" && !a.internal);
  return outside?.address ?? hostname();
}
