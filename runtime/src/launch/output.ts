import { StringDecoder } from "node:string_decoder";
import type { Envelope, OutputHold, ProgressEvent } from "../job/contract";
import { PROGRESS_PREFIX } from "../job/contract";

/** Bytes of each stream an envelope keeps by default: the end of the output, where errors are. */
export const DEFAULT_TAIL_BYTES = 64 * 1024;

/** Longer lines are never progress; scanning stops holding them so a newline-free flood stays cheap. */
const MAX_LINE_BYTES = 16 * 1024;

export type StreamName = "stdout" | "stderr";

/** The last `limit` bytes written to it, in memory bounded by `limit` plus one chunk, whatever is written. */
export class BoundedTail {
  private chunks: Buffer[] = [];
  private held = 0;
  private total = 0;

  constructor(readonly limit: number) {}

  push(chunk: Buffer): void {
    this.total += chunk.length;
    if (chunk.length >= this.limit) {
      // Copy so a huge chunk's backing memory is not retained for its last few bytes.
      this.chunks = [Buffer.from(chunk.subarray(chunk.length - this.limit))];
      this.held = this.limit;
      return;
    }
    this.chunks.push(chunk);
    this.held += chunk.length;
    while (this.chunks.length > 1 && this.held - this.chunks[0]!.length >= this.limit) {
      this.held -= this.chunks.shift()!.length;
    }
  }

  /** Bytes written in all, kept or not. */
  get totalBytes(): number {
    return this.total;
  }

  get truncated(): boolean {
    return this.total > this.limit;
  }

  toString(): string {
    const all = Buffer.concat(this.chunks);
    let start = Math.max(0, all.length - this.limit);
    // Cutting may land inside a UTF-8 sequence: skip its continuation bytes rather than show garbage.
    if (this.truncated) while (start < all.length && (all[start]! & 0xc0) === 0x80) start++;
    return all.subarray(start).toString("utf8");
  }
}

/** Splits a byte stream into lines (`\n` or `\r`, so tqdm-style redraws count), dropping overlong ones. */
export class LineScanner {
  private partial: Buffer[] = [];
  private partialBytes = 0;
  private overflow = false;

  /**
   * @param wanted Which lines are decoded and handed to `onLine`, judged on their bytes (all by default):
   *   a flood of lines no one reads costs no strings.
   */
  constructor(
    private readonly onLine: (line: string) => void,
    private readonly wanted: (line: Buffer) => boolean = () => true,
  ) {}

  push(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const end = nextBreak(chunk, start);
      if (end < 0) {
        this.append(chunk.subarray(start));
        return;
      }
      this.append(chunk.subarray(start, end));
      this.flush();
      start = end + 1;
    }
  }

  /** Emits a last line that had no newline. */
  end(): void {
    this.flush();
  }

  private append(bytes: Buffer): void {
    if (this.overflow || bytes.length === 0) return;
    if (this.partialBytes + bytes.length > MAX_LINE_BYTES) {
      this.overflow = true;
      this.partial = [];
      this.partialBytes = 0;
      return;
    }
    this.partial.push(bytes);
    this.partialBytes += bytes.length;
  }

  private flush(): void {
    if (!this.overflow && this.partialBytes > 0) {
      const line = this.partial.length === 1 ? this.partial[0]! : Buffer.concat(this.partial);
      if (this.wanted(line)) this.onLine(line.toString("utf8"));
    }
    this.partial = [];
    this.partialBytes = 0;
    this.overflow = false;
  }
}

function nextBreak(chunk: Buffer, from: number): number {
  const lf = chunk.indexOf(0x0a, from);
  const cr = chunk.indexOf(0x0d, from);
  if (lf < 0) return cr;
  if (cr < 0) return lf;
  return Math.min(lf, cr);
}

const NUMBER = String.raw`[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?`;
/** `| 45/100 [` — a tqdm bar. */
const TQDM = /\|\s*(\d+)\/(\d+)\s*\[/;
const STEP = /\b(?:step|iter|iteration|batch)\b\s*[:#=]?\s*(\d+)(?:\s*(?:\/|of)\s*(\d+))?/i;
const EPOCH = /\bepoch\b\s*[:#=]?\s*(\d+)(?:\s*(?:\/|of)\s*(\d+))?/i;
const METRIC = new RegExp(
  String.raw`\b(?:(train|training|val|valid|validation|test|eval)[ _])?` +
    String.raw`(loss|acc|accuracy|perplexity|ppl|lr|learning_rate|grad_norm|mfu|tokens_per_s)\b` +
    String.raw`\s*[:=]?\s*(${NUMBER})`,
  "gi",
);

/**
 * A progress event from one line of output, or undefined: the runner's protocol (`##crucible:progress
 * {json}`) or a common training log line (`step 10/100`, `epoch 2/5`, `iter 300: loss 1.23`, `loss=0.5`,
 * a tqdm bar).
 */
export function parseProgress(line: string, jobId: string): ProgressEvent | undefined {
  if (line.startsWith(PROGRESS_PREFIX)) return parseProtocol(line.slice(PROGRESS_PREFIX.length), jobId);
  if (!/\d/.test(line)) return undefined;
  const metrics: Record<string, number> = {};
  for (const [, split, name, value] of line.matchAll(METRIC)) {
    const key = split ? `${split.toLowerCase()}_${name!.toLowerCase()}` : name!.toLowerCase();
    const number = Number(value);
    if (Number.isFinite(number)) metrics[key] = number;
  }
  const epoch = EPOCH.exec(line);
  if (epoch) metrics.epoch = Number(epoch[1]);
  const counter = TQDM.exec(line) ?? STEP.exec(line) ?? epoch;
  if (!counter && Object.keys(metrics).length === 0) return undefined;
  return {
    jobId,
    ...(counter && { step: Number(counter[1]) }),
    ...(counter?.[2] !== undefined && { total: Number(counter[2]) }),
    metrics,
    source: "log",
  };
}

function parseProtocol(json: string, jobId: string): ProgressEvent | undefined {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) return undefined;
  const { step, total, ...rest } = value as Record<string, unknown>;
  const metrics: Record<string, number> = {};
  for (const [key, number] of Object.entries(rest)) {
    if (typeof number === "number" && Number.isFinite(number)) metrics[key] = number;
  }
  return {
    jobId,
    ...(isCount(step) && { step }),
    ...(isCount(total) && { total }),
    metrics,
    source: "protocol",
  };
}

function isCount(value: unknown): value is number {
  return typeof value === "number" && Number.isFinite(value) && value >= 0;
}

const PROTOCOL_BYTES = Buffer.from(PROGRESS_PREFIX);

/** Whether {@link parseProgress} could find anything in a line: the protocol, or at least one digit. */
export function mayBeProgress(line: Buffer): boolean {
  if (line.subarray(0, PROTOCOL_BYTES.length).equals(PROTOCOL_BYTES)) return true;
  for (let i = 0; i < line.length; i++) if (line[i]! >= 0x30 && line[i]! <= 0x39) return true;
  return false;
}

/** Whether a consumer's answer is a {@link OutputHold} (contract.ts): take no more output until it is released. */
export function isOutputHold(value: unknown): value is OutputHold {
  return typeof value === "object" && value !== null && (value as OutputHold).released instanceof Promise;
}

export interface JobOutputOptions {
  readonly jobId: string;
  /** Bytes kept of each stream. Defaults to {@link DEFAULT_TAIL_BYTES}. */
  readonly tailBytes?: number;
  /** The text as it comes; an {@link OutputHold} it returns is handed back by {@link JobOutput.write}. */
  readonly onLog?: (stream: StreamName, text: string) => unknown;
  readonly onProgress?: (event: ProgressEvent) => void;
}

/**
 * Everything a job prints, consumed as it arrives: bounded tails for the envelope, progress events,
 * and the text for live display. Memory stays bounded however much the job prints.
 */
export class JobOutput {
  private readonly tails: Record<StreamName, BoundedTail>;
  private readonly scanners: Record<StreamName, LineScanner>;
  private readonly decoders: Record<StreamName, StringDecoder>;
  private protocolMetrics: Record<string, number> | undefined;

  constructor(private readonly options: JobOutputOptions) {
    const tailBytes = options.tailBytes ?? DEFAULT_TAIL_BYTES;
    this.tails = { stdout: new BoundedTail(tailBytes), stderr: new BoundedTail(tailBytes) };
    this.scanners = { stdout: this.scanner(), stderr: this.scanner() };
    this.decoders = { stdout: new StringDecoder("utf8"), stderr: new StringDecoder("utf8") };
  }

  /**
   * Takes a chunk of `stream`. A hold back means {@link JobOutputOptions.onLog} is behind: a caller that
   * can hold the job's output back should take no more until it is released.
   */
  write(stream: StreamName, chunk: Buffer): OutputHold | undefined {
    this.tails[stream].push(chunk);
    this.scanners[stream].push(chunk);
    if (!this.options.onLog) return undefined;
    const text = this.decoders[stream].write(chunk);
    const hold: unknown = text ? this.options.onLog(stream, text) : undefined;
    return isOutputHold(hold) ? hold : undefined;
  }

  /** Flushes what is left of unterminated lines; call once the streams have ended. */
  end(): void {
    for (const stream of ["stdout", "stderr"] as const) {
      this.scanners[stream].end();
      const text = this.decoders[stream].end();
      if (text && this.options.onLog) this.options.onLog(stream, text);
    }
  }

  logs(): Envelope["logs"] {
    return {
      stdout: this.tails.stdout.toString(),
      stderr: this.tails.stderr.toString(),
      truncated: this.tails.stdout.truncated || this.tails.stderr.truncated,
    };
  }

  /** The latest value of each metric the job reported through the progress protocol. */
  metrics(): Record<string, number> | undefined {
    return this.protocolMetrics;
  }

  private scanner(): LineScanner {
    return new LineScanner((line) => {
      const event = parseProgress(line, this.options.jobId);
      if (!event) return;
      if (event.source === "protocol") this.protocolMetrics = { ...this.protocolMetrics, ...event.metrics };
      this.options.onProgress?.(event);
    }, mayBeProgress);
  }
}
