import { useCallback, useEffect, useRef, useState } from "preact/hooks";

/** A page of the console, from the location's hash. */
export type Route =
  | { readonly page: "jobs" }
  | { readonly page: "job"; readonly jobId: string }
  | { readonly page: "new"; readonly params: URLSearchParams }
  | { readonly page: "usage" }
  | { readonly page: "missing"; readonly hash: string };

/** `#/jobs` (and no hash), `#/jobs/<id>`, `#/new[?resumeFrom=&resumeStep=]`, `#/usage`. */
export function parseRoute(hash: string): Route {
  const [path = "", search = ""] = hash.replace(/^#/, "").split("?", 2);
  const parts = path.split("/").filter(Boolean);
  if (parts.length === 0 || (parts.length === 1 && parts[0] === "jobs")) return { page: "jobs" };
  if (parts.length === 2 && parts[0] === "jobs") return { page: "job", jobId: decodeURIComponent(parts[1]!) };
  if (parts.length === 1 && parts[0] === "new") return { page: "new", params: new URLSearchParams(search) };
  if (parts.length === 1 && parts[0] === "usage") return { page: "usage" };
  return { page: "missing", hash };
}

export function jobHref(jobId: string): string {
  return `#/jobs/${encodeURIComponent(jobId)}`;
}

/** The current route, following `hashchange`. */
export function useRoute(): Route {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const changed = (): void => setHash(location.hash);
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return parseRoute(hash);
}

export interface Polled<T> {
  readonly data: T | undefined;
  readonly error: unknown;
  /** Fetches now (and the polling goes on from then). */
  readonly reload: () => void;
}

/**
 * Fetches with `load` now and then every `intervalMs` while `active`, one request at a time, skipping
 * turns while the page is hidden; starts over (dropping what it had) when `key` changes. The last good
 * answer stays while a later one fails.
 */
export function usePoll<T>(
  key: string,
  load: (signal: AbortSignal) => Promise<T>,
  intervalMs: number,
  active = true,
): Polled<T> {
  const [state, setState] = useState<{ key: string; data?: T; error?: unknown }>({ key });
  const loadRef = useRef(load);
  loadRef.current = load;
  const [tick, setTick] = useState(0);
  const reload = useCallback(() => setTick((t) => t + 1), []);

  useEffect(() => {
    const controller = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const turn = async (): Promise<void> => {
      if (!document.hidden || timer === undefined) {
        try {
          const data = await loadRef.current(controller.signal);
          if (!controller.signal.aborted) setState({ key, data });
        } catch (error) {
          if (controller.signal.aborted) return;
          setState((s) => ({ key, data: s.key === key ? s.data : undefined, error }));
        }
      }
      if (active && !controller.signal.aborted) timer = setTimeout(() => void turn(), intervalMs);
    };
    timer = undefined;
    void turn();
    return () => {
      controller.abort();
      clearTimeout(timer);
    };
  }, [key, intervalMs, active, tick]);

  const current = state.key === key;
  return { data: current ? state.data : undefined, error: current ? state.error : undefined, reload };
}

/** Sets the document's title while the page shows. */
export function useTitle(title: string): void {
  useEffect(() => {
    document.title = `${title} · Crucible`;
  }, [title]);
}

/** `value`, once it has stayed unchanged for `ms`. */
export function useDebounced<T>(value: T, ms: number): T {
  const [settled, setSettled] = useState(value);
  useEffect(() => {
    const timer = setTimeout(() => setSettled(value), ms);
    return () => clearTimeout(timer);
  }, [value, ms]);
  return settled;
}
