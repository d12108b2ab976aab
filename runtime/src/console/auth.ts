import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import type { IncomingMessage } from "node:http";
import { isIP } from "node:net";
import { SESSION_COOKIE } from "./api-contract";

/**
 * Who may use a console, and how a browser proves it: a session cookie, created on loopback by the first
 * page load and elsewhere only by the login URL's one secret token; a CSRF token per session that every
 * state-changing request carries in a header, from the console's own origin.
 */

/** Sessions a console keeps at most: the oldest is dropped first, so page loads cannot grow its memory. */
const MAX_SESSIONS = 1000;
/** How long a session lasts from its creation. */
const SESSION_MS = 24 * 3600 * 1000;

export interface ConsoleSession {
  readonly id: string;
  readonly csrfToken: string;
  readonly expiresAt: number;
}

/** A new secret: 32 random bytes, base64url. */
export const newSecret = (): string => randomBytes(32).toString("base64url");

const sha256 = (text: string): Buffer => createHash("sha256").update(text, "utf8").digest();

/** Equal strings, compared in time that depends on neither (both are hashed to 32 bytes first). */
export const sameSecret = (given: string, expected: string): boolean =>
  timingSafeEqual(sha256(given), sha256(expected));

/** Whether a host the console binds names this machine's loopback only. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, "");
  if (bare === "localhost") return true;
  if (isIP(bare) === 4) return bare.startsWith("127.");
  return bare === "::1";
}

export class ConsoleAuth {
  private readonly sessions = new Map<string, ConsoleSession>();
  /** The login token's SHA-256 only: the token itself is printed once and never kept. */
  private readonly tokenHash: Buffer | undefined;

  constructor(
    /** Bound to loopback: the first page load makes a session, no token needed. */
    readonly loopback: boolean,
    loginToken?: string,
  ) {
    if (!loopback && loginToken === undefined)
      throw new Error("a console reachable beyond loopback needs a login token");
    this.tokenHash = loginToken === undefined ? undefined : sha256(loginToken);
  }

  /** Whether `given` is the login token, compared in constant time. */
  checkLoginToken(given: string): boolean {
    return this.tokenHash !== undefined && timingSafeEqual(sha256(given), this.tokenHash);
  }

  /** A new session, remembered; the oldest goes once there are {@link MAX_SESSIONS}. */
  createSession(now = Date.now()): ConsoleSession {
    const session = { id: newSecret(), csrfToken: newSecret(), expiresAt: now + SESSION_MS };
    this.sessions.set(session.id, session);
    if (this.sessions.size > MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    return session;
  }

  /** The live session the request's cookie names, if any. */
  sessionOf(req: IncomingMessage, now = Date.now()): ConsoleSession | undefined {
    const id = cookieValue(req.headers.cookie, SESSION_COOKIE);
    if (id === undefined) return undefined;
    const session = this.sessions.get(id);
    if (!session) return undefined;
    if (session.expiresAt <= now) {
      this.sessions.delete(id);
      return undefined;
    }
    return session;
  }
}

/** The `Set-Cookie` value that hands a browser its session: script cannot read it, no other site sends it. */
export const sessionCookie = (session: ConsoleSession): string =>
  `${SESSION_COOKIE}=${session.id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=${Math.floor(SESSION_MS / 1000)}`;

/** One cookie's value from a `Cookie` header. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  for (const part of (header ?? "").split(";")) {
    const eq = part.indexOf("=");
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/**
 * Why a state-changing request is refused, or undefined when it may go on: it must carry the session's
 * CSRF token in `csrfHeader` and come from `origin` (its Origin header, or without one, a
 * Sec-Fetch-Site of same-origin).
 */
export function csrfRefusal(
  req: IncomingMessage,
  session: ConsoleSession,
  origin: string,
  csrfHeader: string,
): string | undefined {
  const token = req.headers[csrfHeader];
  if (typeof token !== "string" || !sameSecret(token, session.csrfToken))
    return `a state-changing request must carry the session's CSRF token in the ${csrfHeader} header (GET /api/session gives it)`;
  const from = req.headers.origin;
  if (from !== undefined) {
    if (from !== origin) return `a state-changing request must come from ${origin}, not from ${from}`;
    return undefined;
  }
  if (req.headers["sec-fetch-site"] !== "same-origin")
    return `a state-changing request must come from ${origin}: it has no Origin header and no Sec-Fetch-Site of same-origin`;
  return undefined;
}
