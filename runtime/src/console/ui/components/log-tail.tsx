import type { ComponentChildren } from "preact";
import { useEffect, useId, useLayoutEffect, useMemo, useRef, useState } from "preact/hooks";
import type { LogEvent } from "../../api-contract.js";

/** Lines kept on the page; older ones are dropped (the whole log stays a download away). */
export const MAX_LINES = 5000;
/** How often arrived lines are drawn, in ms: a chatty job costs one render per period, not per line. */
const FLUSH_MS = 150;
/** Pixels from the bottom that still count as "at the end". */
const AT_END_PX = 24;
const RECONNECT_MS = 3000;

type Streams = "both" | "stdout" | "stderr";
type Connection = "connecting" | "live" | "ended" | "reconnecting";

interface Line extends LogEvent {
  readonly id: number;
}

const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

/**
 * A job's log as it grows, from `/api/jobs/:id/log/events`: follows the end until the reader scrolls
 * up, filters by stream and text, keeps the last {@link MAX_LINES} lines. Every line is text.
 */
export function LogTail({ jobId }: { jobId: string }) {
  const ids = useId();
  const box = useRef<HTMLDivElement>(null);
  // Lines arrive into `buffer`; each draw shows a copy of it (`shown`), so a render between draws
  // never sees half of a batch.
  const buffer = useRef<{ lines: Line[]; dropped: number; next: number }>({ lines: [], dropped: 0, next: 0 });
  const [drawn, setDrawn] = useState<{ lines: readonly Line[]; dropped: number }>({ lines: [], dropped: 0 });
  const [connection, setConnection] = useState<Connection>("connecting");
  const [attempt, setAttempt] = useState(0);
  const [following, setFollowing] = useState(true);
  const [streams, setStreams] = useState<Streams>("both");
  const [search, setSearch] = useState("");

  useEffect(() => {
    // A new connection replays the log from its start: begin again from nothing.
    buffer.current = { lines: [], dropped: 0, next: 0 };
    setDrawn({ lines: [], dropped: 0 });
    setConnection(attempt === 0 ? "connecting" : "reconnecting");
    const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/log/events`);
    let flush: ReturnType<typeof setTimeout> | undefined;
    let retry: ReturnType<typeof setTimeout> | undefined;
    const draw = (): void => {
      flush = undefined;
      const { lines, dropped } = buffer.current;
      setDrawn({ lines: lines.slice(), dropped });
    };
    source.addEventListener("open", () => setConnection("live"));
    source.addEventListener("line", (event: MessageEvent<string>) => {
      const held = buffer.current;
      let line: LogEvent;
      try {
        line = JSON.parse(event.data) as LogEvent;
      } catch {
        return;
      }
      held.lines.push({ ...line, id: held.next++ });
      if (held.lines.length > MAX_LINES)
        held.dropped += held.lines.splice(0, held.lines.length - MAX_LINES).length;
      flush ??= setTimeout(draw, FLUSH_MS);
    });
    source.addEventListener("end", () => {
      source.close();
      setConnection("ended");
      clearTimeout(flush);
      draw();
    });
    source.addEventListener("error", () => {
      setConnection("reconnecting");
      // The browser reconnects by itself, after the last event id, and the server goes on from there.
      // A refused stream (closed for good) is opened afresh after a pause, from the start.
      if (source.readyState === EventSource.CLOSED)
        retry = setTimeout(() => setAttempt((a) => a + 1), RECONNECT_MS);
    });
    return () => {
      source.close();
      clearTimeout(flush);
      clearTimeout(retry);
    };
  }, [jobId, attempt]);

  const { lines, dropped } = drawn;
  const needle = search.trim().toLowerCase();
  const shown = useMemo(
    () =>
      lines.filter(
        (line) =>
          (streams === "both" || line.stream === streams) &&
          (!needle || line.text.toLowerCase().includes(needle)),
      ),
    [lines, streams, needle],
  );

  useLayoutEffect(() => {
    const element = box.current;
    if (following && element) element.scrollTop = element.scrollHeight;
  });

  const onScroll = (): void => {
    const element = box.current!;
    const atEnd = element.scrollHeight - element.scrollTop - element.clientHeight <= AT_END_PX;
    if (atEnd !== following) setFollowing(atEnd);
  };

  const download = `/api/jobs/${encodeURIComponent(jobId)}/log.txt${streams === "both" ? "" : `?stream=${streams}`}`;
  const status =
    connection === "ended"
      ? "The job has finished: its whole log has arrived."
      : connection === "reconnecting"
        ? "The connection to the log was lost; reconnecting…"
        : connection === "connecting"
          ? "Connecting to the log…"
          : following
            ? "Following the log as it grows."
            : "Paused: scrolled up from the end. Follow resumes.";

  return (
    <section class="log-tail" aria-labelledby={`${ids}-h`}>
      <div class="section-head">
        <h2 id={`${ids}-h`}>Log</h2>
        <a class="button-link" href={download} download>
          Download whole log
        </a>
      </div>
      <div class="toolbar">
        <label class="field">
          <span>Search the log</span>
          <input
            type="search"
            value={search}
            placeholder="text in a line"
            onInput={(e) => setSearch(e.currentTarget.value)}
          />
        </label>
        <fieldset class="segmented">
          <legend>Streams</legend>
          {(["both", "stdout", "stderr"] as const).map((value) => (
            <label key={value}>
              <input
                type="radio"
                name={`${ids}-streams`}
                value={value}
                checked={streams === value}
                onChange={() => setStreams(value)}
              />
              <span>{value === "both" ? "Both" : `${value} only`}</span>
            </label>
          ))}
        </fieldset>
        <button
          type="button"
          class={following ? "secondary" : "primary"}
          aria-pressed={following}
          onClick={() => {
            setFollowing(true);
            const element = box.current;
            if (element) element.scrollTop = element.scrollHeight;
          }}
        >
          Follow
        </button>
      </div>
      <p class="log-status" role="status" aria-live="polite">
        {status}
      </p>
      <p class="log-count muted">
        {shown.length === lines.length
          ? plural(lines.length, "line")
          : `${shown.length} of ${plural(lines.length, "line")} match`}
        {dropped > 0 ? ` · ${plural(dropped, "earlier line")} not kept here (download the whole log)` : ""}
      </p>
      <div
        ref={box}
        class="log-lines"
        role="log"
        aria-live="off"
        aria-label="Log lines"
        tabIndex={0}
        onScroll={onScroll}
        data-lines={shown.length}
      >
        {shown.map((line) => (
          <div
            key={line.id}
            class={`log-line ${line.stream}${line.platform ? " platform" : ""}`}
            data-stream={line.stream}
          >
            <span class="log-time">{time.format(line.at)}</span>
            <span class="log-text">{highlight(line.text, needle)}</span>
          </div>
        ))}
        {shown.length === 0 && (
          <p class="muted log-empty">{lines.length === 0 ? "No lines yet." : "No line matches."}</p>
        )}
      </div>
    </section>
  );
}

const plural = (n: number, noun: string): string => `${n} ${noun}${n === 1 ? "" : "s"}`;

/** `text` with each case-insensitive occurrence of `needle` in a <mark>; text nodes only. */
function highlight(text: string, needle: string) {
  const lower = text.toLowerCase();
  // Lower-casing a few characters changes their length; such a line is shown unmarked.
  if (!needle || lower.length !== text.length) return text;
  const parts: ComponentChildren[] = [];
  let from = 0;
  for (let at = lower.indexOf(needle); at !== -1; at = lower.indexOf(needle, from)) {
    if (at > from) parts.push(text.slice(from, at));
    parts.push(<mark key={at}>{text.slice(at, at + needle.length)}</mark>);
    from = at + needle.length;
  }
  parts.push(text.slice(from));
  return parts;
}
