import type { SessionInfo } from "../api-contract.js";
import { CSRF_HEADER } from "../api-contract.js";

/** A request the console's server refused or could not answer: its status and what it said. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }

  /** The session is gone (or never was): the user must open the login URL again. */
  get unauthenticated(): boolean {
    return this.status === 401;
  }
}

let session: SessionInfo | undefined;
const signedOut = new Set<() => void>();

/** Reads the session (GET /api/session); every later POST carries its CSRF token. */
export async function loadSession(): Promise<SessionInfo> {
  session = await getJson<SessionInfo>("/api/session");
  return session;
}

/** Calls `listener` when any request answers 401; returns how to stop. */
export function onSignedOut(listener: () => void): () => void {
  signedOut.add(listener);
  return () => signedOut.delete(listener);
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await fetch(path, { headers: { accept: "application/json" }, signal });
  return answer<T>(response);
}

/** A state-changing request: JSON body, the session's CSRF token, same-origin credentials. */
export async function postJson<T>(path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json", "content-type": "application/json" };
  if (session) headers[CSRF_HEADER] = session.csrfToken;
  const response = await fetch(path, {
    method: "POST",
    headers,
    credentials: "same-origin",
    body: JSON.stringify(body ?? {}),
  });
  return answer<T>(response);
}

/** A file as a state-changing request's whole body, of content type `type`, with the session's CSRF token. */
export async function postFile<T>(path: string, file: Blob, type: string): Promise<T> {
  const headers: Record<string, string> = { accept: "application/json", "content-type": type };
  if (session) headers[CSRF_HEADER] = session.csrfToken;
  const response = await fetch(path, { method: "POST", headers, credentials: "same-origin", body: file });
  return answer<T>(response);
}

async function answer<T>(response: Response): Promise<T> {
  if (response.ok) return (await response.json()) as T;
  if (response.status === 401) for (const listener of signedOut) listener();
  throw new ApiError(response.status, await errorMessage(response));
}

/** The server's `{ error }` (or `{ message }`) when it sent one, else the status line. */
async function errorMessage(response: Response): Promise<string> {
  const text = await response.text().catch(() => "");
  try {
    const body = JSON.parse(text) as { error?: unknown; message?: unknown };
    const said = body.error ?? body.message;
    if (typeof said === "string" && said) return said;
  } catch {
    // not JSON: fall through to the text or the status
  }
  return text.trim().slice(0, 300) || `${response.status} ${response.statusText}`.trim();
}

/** A query string from the defined, non-empty values of `params` ("" when there are none). */
export function query(params: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params))
    if (value !== undefined && value !== "") search.set(key, String(value));
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** An error's message, for showing: the server's words for an {@link ApiError}. */
export function describeError(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
