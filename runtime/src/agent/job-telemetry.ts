import type { ProgressEvent } from "../job/contract";
import { PROGRESS_PREFIX } from "../job/contract";
import type { Logger } from "../logger";
import type { ChunkSeries } from "../store/chunk-series";
import type { LogRecord } from "../store/job-log";
import type { MetricRecord } from "../store/job-metrics";
import type { JobState } from "../store/job-store";
import { describeBytes } from "../job/code-source";

/** A flush starts as soon as this much is waiting, not only on the timer: big chunks, few requests. */
const FLUSH_BYTES = 1024 * 1024;
/** Output waiting for the store beyond this is dropped (and counted): the agent's memory stays bounded. */
export const MAX_PENDING_BYTES = 8 * 1024 * 1024;
/** Longer lines are stored in pieces of this many characters, each marked as continued. */
const MAX_LINE_CHARS = 64 * 1024;
/** Metric records kept per flush; a job reporting faster keeps the last one of the overflow. */
const MAX_METRICS_PER_FLUSH = 5000;

export interface TelemetryOptions {
  readonly logs: ChunkSeries;
  readonly metrics: ChunkSeries;
  readonly attempt: number;
  /** Log bytes the job may store over all its attempts. */
  readonly capBytes: number;
  /** Log bytes its earlier attempts stored. */
  readonly storedBytes: number;
  readonly log: Logger;
  /** Blanks the job's secrets out of each line before it is stored. */
  readonly redact: (text: string) => string;
  /** Told the latest progress after each flush that recorded some: the job's state shows it. */
  readonly onProgress: (progress: NonNullable<JobState["progress"]>) => Promise<void>;
}

type Stream = LogRecord["s"];

/**
 * A running attempt's output and progress on their way to the store, while it runs: log lines and
 * metric records are buffered, and shipped as chunks every few seconds (or at once when a megabyte is
 * waiting), one flush at a time. Whatever the job prints, memory stays under {@link MAX_PENDING_BYTES}:
 * past it, and past the job's log cap, output is dropped and counted, and a marker line says how much.
 */
export class JobTelemetry {
  private pending: string[] = [];
  private pendingBytes = 0;
  private metricLines: string[] = [];
  private readonly partial: Record<Stream, string> = { stdout: "", stderr: "" };
  private accepted: number;
  private logSeq = 0;
  private metricSeq = 0;
  private droppedOverCap = 0;
  private droppedBacklog = 0;
  private lastLogged: string | undefined;
  private sawProtocol = false;
  private latest: NonNullable<JobState["progress"]> | undefined;
  private latestShown: NonNullable<JobState["progress"]> | undefined;
  private flushing: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(private readonly options: TelemetryOptions) {
    this.accepted = options.storedBytes;
  }

  /** Text the job printed on `stream`: complete lines become records, the rest waits for its line break. */
  write(stream: Stream, text: string): void {
    if (this.closed) return;
    const pieces = (this.partial[stream] + text).split("\n");
    this.partial[stream] = pieces.pop()!;
    for (const line of pieces) this.line(stream, line, false);
    while (this.partial[stream].length > MAX_LINE_CHARS) {
      this.line(stream, this.partial[stream].slice(0, MAX_LINE_CHARS), true);
      this.partial[stream] = this.partial[stream].slice(MAX_LINE_CHARS);
    }
    if (this.pendingBytes >= FLUSH_BYTES) void this.flush();
  }

  /**
   * A progress event: recorded unless it only repeats the last log-parsed one (tqdm redraws do), or is
   * log-parsed after the job has used the protocol.
   */
  progress(event: ProgressEvent): void {
    if (this.closed) return;
    const at = Date.now();
    // A job that reports through the protocol says what it means; its log lines would only echo it.
    if (event.source === "protocol") this.sawProtocol = true;
    else if (this.sawProtocol) return;
    else {
      const seen = JSON.stringify([event.step, event.total, event.metrics]);
      if (seen === this.lastLogged) return;
      this.lastLogged = seen;
    }
    const record: MetricRecord = {
      t: at,
      a: this.options.attempt,
      ...(event.step !== undefined && { step: event.step }),
      ...(event.total !== undefined && { total: event.total }),
      m: { ...event.metrics },
      src: event.source,
    };
    const line = JSON.stringify(record);
    if (this.metricLines.length < MAX_METRICS_PER_FLUSH) this.metricLines.push(line);
    else this.metricLines[MAX_METRICS_PER_FLUSH - 1] = line;
    const step = event.step ?? this.latest?.step;
    const total = event.total ?? this.latest?.total;
    this.latest = {
      ...(step !== undefined && { step }),
      ...(total !== undefined && { total }),
      metrics: { ...this.latest?.metrics, ...event.metrics },
      at: new Date(at).toISOString(),
    };
  }

  /** Ships what is waiting; flushes run one after another, never side by side. */
  flush(): Promise<void> {
    this.flushing = this.flushing.then(() => this.ship());
    return this.flushing;
  }

  /** Ends unterminated lines, says what was dropped, and ships the rest. No writes are taken afterwards. */
  async close(): Promise<void> {
    for (const stream of ["stdout", "stderr"] as const)
      if (this.partial[stream] !== "") this.line(stream, this.partial[stream], true);
    this.partial.stdout = this.partial.stderr = "";
    this.noteBacklog();
    if (this.droppedOverCap > 0)
      this.marker(
        `[crucible] ${describeBytes(this.droppedOverCap)} of this attempt's output dropped: the job's log reached its cap of ${describeBytes(this.options.capBytes)}`,
      );
    this.closed = true;
    await this.flush();
  }

  private line(stream: Stream, text: string, partial: boolean): void {
    // The runner's progress protocol is stored as metrics; in the log it would only be noise.
    if (!partial && text.startsWith(PROGRESS_PREFIX)) return;
    const record: LogRecord = {
      t: Date.now(),
      s: stream,
      l: this.options.redact(text),
      a: this.options.attempt,
      ...(partial && { p: true }),
    };
    const line = JSON.stringify(record);
    const bytes = Buffer.byteLength(line) + 1;
    if (this.accepted + bytes > this.options.capBytes) {
      if (this.droppedOverCap === 0)
        this.marker(
          `[crucible] the job's log reached its cap of ${describeBytes(this.options.capBytes)}; further output is dropped (the attempt's end says how much)`,
        );
      this.droppedOverCap += Buffer.byteLength(text);
      return;
    }
    if (this.pendingBytes + bytes > MAX_PENDING_BYTES) {
      this.droppedBacklog += Buffer.byteLength(text);
      return;
    }
    this.noteBacklog();
    this.enqueue(line, bytes);
  }

  /** After output was dropped for want of buffer, says so in the log where the gap is. */
  private noteBacklog(): void {
    if (this.droppedBacklog === 0) return;
    const dropped = this.droppedBacklog;
    this.droppedBacklog = 0;
    this.marker(
      `[crucible] ${describeBytes(dropped)} of output dropped here: the job printed faster than the store took it`,
    );
  }

  /** A platform line: kept past the cap and the buffer (it is small, and says why text is missing). */
  private marker(text: string): void {
    const line = JSON.stringify({
      t: Date.now(),
      s: "stderr",
      l: text,
      a: this.options.attempt,
      x: true,
    } satisfies LogRecord);
    this.enqueue(line, Buffer.byteLength(line) + 1);
  }

  private enqueue(line: string, bytes: number): void {
    this.pending.push(line);
    this.pendingBytes += bytes;
    this.accepted += bytes;
  }

  private async ship(): Promise<void> {
    const { logs, metrics, attempt, log } = this.options;
    const lines = this.pending;
    const metricLines = this.metricLines;
    this.pending = [];
    this.pendingBytes = 0;
    this.metricLines = [];
    try {
      if (lines.length > 0) await logs.put(attempt, this.logSeq++, lines);
    } catch (error) {
      log.warn(
        { err: error, lines: lines.length },
        "shipping the job's log failed; retrying with the next flush",
      );
      this.requeue(lines);
    }
    try {
      if (metricLines.length > 0) await metrics.put(attempt, this.metricSeq++, metricLines);
    } catch (error) {
      log.warn({ err: error }, "shipping the job's metrics failed; retrying with the next flush");
      this.metricLines = [...metricLines, ...this.metricLines].slice(-MAX_METRICS_PER_FLUSH);
    }
    const latest = this.latest;
    if (latest && latest !== this.latestShown) {
      this.latestShown = latest;
      await this.options
        .onProgress(latest)
        .catch((error: unknown) => log.warn({ err: error }, "recording the job's progress failed"));
    }
  }

  /** Lines whose upload failed go back in front, as far as the buffer allows; the rest are counted as dropped. */
  private requeue(lines: string[]): void {
    const kept: string[] = [];
    let bytes = this.pendingBytes;
    for (const line of lines) {
      const size = Buffer.byteLength(line) + 1;
      if (bytes + size > MAX_PENDING_BYTES) this.droppedBacklog += size;
      else {
        kept.push(line);
        bytes += size;
      }
    }
    this.pending = [...kept, ...this.pending];
    this.pendingBytes = bytes;
  }
}
