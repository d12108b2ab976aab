import type { ProgressEvent, ResourceSample } from "../job/contract";
import { PROGRESS_PREFIX } from "../job/contract";
import type { Logger } from "../logger";
import type { OutputHold } from "../job/contract";
import type { ChunkSeries } from "../store/chunk-series";
import type { LogRecord } from "../store/job-log";
import type { MetricRecord } from "../store/job-metrics";
import { RESOURCE_METRICS } from "../store/job-metrics";
import type { JobState } from "../store/job-store";
import { describeBytes } from "../job/code-source";

/** A flush starts as soon as this much is waiting, not only on the timer: big chunks, few requests. */
export const FLUSH_BYTES = 1024 * 1024;
/**
 * With this much waiting while a flush is under way, {@link JobTelemetry.write} asks its caller to hold
 * the job's output back until the next flush takes it: a job printing faster than the store takes it is
 * slowed down, not cut.
 */
export const HOLD_BYTES = 2 * FLUSH_BYTES;
/** Output waiting for the store beyond this is dropped (and counted): the agent's memory stays bounded. */
export const MAX_PENDING_BYTES = 8 * 1024 * 1024;
/** The buffer pending lines are first encoded into; it grows with what is waiting. */
const FIRST_BUFFER_BYTES = 16 * 1024;
/** Room for {@link HOLD_BYTES} and the write that crosses it. */
const HOLD_BUFFER_BYTES = HOLD_BYTES + 256 * 1024;
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
 * JSON lines waiting for the store, encoded into one buffer as they are taken: however many lines a job
 * prints, none stays behind as an object of its own, and a flood reuses the same two buffers (the one
 * filling, the one being shipped) instead of allocating its size over again.
 */
class PendingLines {
  private buffer: Buffer = Buffer.allocUnsafe(FIRST_BUFFER_BYTES);
  private used = 0;
  /** Lines put back after a failed flush, in front of the buffer's. */
  private front: Buffer | undefined;
  /** The buffer the last body taken is a view of, while the store has it. */
  private lent: Buffer | undefined;
  private spare: Buffer | undefined;

  get bytes(): number {
    return (this.front?.length ?? 0) + this.used;
  }

  /** Appends `line` and its line break: `bytes` long, as `Buffer.byteLength(line) + 1` counts it. */
  add(line: string, bytes: number): void {
    if (this.buffer.length - this.used < bytes) {
      // Doubling, but stopping first just past HOLD_BYTES (where a caller that holds back keeps it).
      const limit = this.buffer.length < HOLD_BUFFER_BYTES ? HOLD_BUFFER_BYTES : MAX_PENDING_BYTES;
      const grown = Buffer.allocUnsafe(Math.max(this.used + bytes, Math.min(2 * this.buffer.length, limit)));
      this.buffer.copy(grown, 0, 0, this.used);
      this.buffer = grown;
    }
    this.used += this.buffer.write(line, this.used, "utf8");
    this.buffer[this.used++] = 0x0a;
  }

  /** Puts a body taken earlier back in front of what came since. */
  prepend(body: Buffer): void {
    this.front = this.front ? Buffer.concat([body, this.front]) : body;
  }

  /** Everything waiting, as one JSON-lines body; empty afterwards. Hand it back to {@link recycle}. */
  take(): Buffer {
    const lines = this.buffer.subarray(0, this.used);
    const body = this.front ? Buffer.concat([this.front, lines]) : lines;
    this.front = undefined;
    this.lent = undefined;
    if (body === lines && this.used > 0) {
      this.lent = this.buffer;
      this.buffer = this.spare ?? Buffer.allocUnsafe(FIRST_BUFFER_BYTES);
      this.spare = undefined;
    }
    this.used = 0;
    return body;
  }

  /** The store is done with a body from {@link take}: the memory under it takes the next lines. */
  recycle(body: Buffer): void {
    if (this.lent && body.buffer === this.lent.buffer) this.spare = this.lent;
    this.lent = undefined;
  }
}

/**
 * A running attempt's output and progress on their way to the store, while it runs: log lines and
 * metric records are buffered, and shipped as chunks every few seconds (or at once when a megabyte is
 * waiting), one flush at a time. A caller that can slow the job down is asked to, past
 * {@link HOLD_BYTES}; whatever the job prints, memory stays under {@link MAX_PENDING_BYTES}: past it, and
 * past the job's log cap, output is dropped and counted, and a marker line says how much.
 */
export class JobTelemetry {
  private readonly pending = new PendingLines();
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
  /** A flush is queued that has not taken what is waiting yet: it will take whatever is by then. */
  private shipQueued = false;
  /** Released when the next flush takes what is waiting: what a held-back caller waits on. */
  private hold: (OutputHold & { release: () => void }) | undefined;
  private closed = false;

  constructor(private readonly options: TelemetryOptions) {
    this.accepted = options.storedBytes;
  }

  /**
   * Text the job printed on `stream`: complete lines become records, the rest waits for its line break.
   * A hold back means the store is behind ({@link HOLD_BYTES} wait while a flush is under way): a caller
   * that can should take no more of the job's output until it is released. One that writes anyway is
   * still bounded, by {@link MAX_PENDING_BYTES}.
   */
  write(stream: Stream, text: string): OutputHold | undefined {
    if (this.closed) return undefined;
    const pieces = (this.partial[stream] + text).split("\n");
    this.partial[stream] = pieces.pop()!;
    for (const line of pieces) this.line(stream, line, false);
    while (this.partial[stream].length > MAX_LINE_CHARS) {
      this.line(stream, this.partial[stream].slice(0, MAX_LINE_CHARS), true);
      this.partial[stream] = this.partial[stream].slice(MAX_LINE_CHARS);
    }
    if (this.pending.bytes < FLUSH_BYTES) return undefined;
    void this.flush();
    if (this.pending.bytes < HOLD_BYTES) return undefined;
    if (!this.hold) {
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      this.hold = { released, release };
    }
    return this.hold;
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
    this.keepMetric(record);
    const step = event.step ?? this.latest?.step;
    const total = event.total ?? this.latest?.total;
    this.latest = {
      ...(step !== undefined && { step }),
      ...(total !== undefined && { total }),
      metrics: { ...this.latest?.metrics, ...event.metrics },
      at: new Date(at).toISOString(),
    };
  }

  /** A sample of what the job uses, kept in the metric history beside what the job reports. */
  resources(sample: ResourceSample): void {
    if (this.closed) return;
    const m: Record<string, number> = { [RESOURCE_METRICS.memoryMiB]: sample.memoryMiB };
    if (sample.cpuCores !== undefined) m[RESOURCE_METRICS.cpuCores] = sample.cpuCores;
    if (sample.gpuUtilPercent !== undefined) m[RESOURCE_METRICS.gpuUtilPercent] = sample.gpuUtilPercent;
    if (sample.gpuMemoryMiB !== undefined) m[RESOURCE_METRICS.gpuMemoryMiB] = sample.gpuMemoryMiB;
    this.keepMetric({ t: Date.now(), a: this.options.attempt, m, src: "resources" });
  }

  /** Ships what is waiting; flushes run one after another, never side by side. */
  flush(): Promise<void> {
    if (this.shipQueued) return this.flushing;
    this.shipQueued = true;
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

  private keepMetric(record: MetricRecord): void {
    const line = JSON.stringify(record);
    if (this.metricLines.length < MAX_METRICS_PER_FLUSH) this.metricLines.push(line);
    else this.metricLines[MAX_METRICS_PER_FLUSH - 1] = line;
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
    if (this.pending.bytes + bytes > MAX_PENDING_BYTES) {
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
    this.pending.add(line, bytes);
    this.accepted += bytes;
  }

  private async ship(): Promise<void> {
    const { logs, metrics, attempt, log } = this.options;
    this.shipQueued = false;
    const body = this.pending.take();
    const metricLines = this.metricLines;
    this.metricLines = [];
    this.hold?.release();
    this.hold = undefined;
    try {
      if (body.length > 0) {
        await logs.put(attempt, this.logSeq++, body);
        this.pending.recycle(body);
      }
    } catch (error) {
      log.warn(
        { err: error, bytes: body.length },
        "shipping the job's log failed; retrying with the next flush",
      );
      this.requeue(body);
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
  private requeue(body: Buffer): void {
    const room = MAX_PENDING_BYTES - this.pending.bytes;
    // Whole lines only: up to the last line break that fits.
    const end = body.length <= room ? body.length : room > 0 ? body.lastIndexOf(0x0a, room - 1) + 1 : 0;
    this.droppedBacklog += body.length - end;
    if (end > 0) this.pending.prepend(body.subarray(0, end));
  }
}
