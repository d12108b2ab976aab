import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  FLUSH_BYTES,
  HOLD_BYTES,
  JobTelemetry,
  MAX_PENDING_BYTES,
} from "../../../runtime/src/agent/job-telemetry";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import type { ChunkSeries } from "../../../runtime/src/store/chunk-series";
import type { LogRecord } from "../../../runtime/src/store/job-log";
import { logText, readLogRecords } from "../../../runtime/src/store/job-log";
import { readMetricHistory, reportedByJob } from "../../../runtime/src/store/job-metrics";
import type { JobState } from "../../../runtime/src/store/job-store";

const logger = pino({ level: "silent" });
let platform: LocalPlatform;
let counter = 0;

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: [], logger });
});
afterAll(() => platform.stop());

function telemetry(
  options: { capBytes?: number; storedBytes?: number; attempt?: number; jobId?: string } = {},
) {
  const address = { project: "demo", user: "ada", jobId: options.jobId ?? `telemetry-${++counter}` };
  const logs = platform.store.logSeries(address);
  const metrics = platform.store.metricSeries(address);
  const shown: NonNullable<JobState["progress"]>[] = [];
  const sink = new JobTelemetry({
    logs,
    metrics,
    attempt: options.attempt ?? 1,
    capBytes: options.capBytes ?? 1024 ** 3,
    storedBytes: options.storedBytes ?? 0,
    log: logger,
    redact: (text) => text.split("hunter22").join("[redacted]"),
    onProgress: (progress) => {
      shown.push(progress);
      return Promise.resolve();
    },
  });
  return { address, logs, metrics, sink, shown };
}

const records = async (logs: ChunkSeries): Promise<LogRecord[]> => readLogRecords(logs, await logs.list());

describe("a running job's telemetry", () => {
  it("stores complete lines per stream as they come (not the progress protocol's), and an unterminated line, continued, when it closes", async () => {
    const { logs, sink } = telemetry();
    sink.write("stdout", "epoch 1\nepo");
    sink.write("stderr", "warning: slow\n");
    sink.write("stdout", 'ch 2\n##crucible:progress {"step": 2}\nno newline at the end');
    await sink.flush();
    expect((await records(logs)).map((r) => [r.s, r.l, r.p ?? false])).toEqual([
      ["stdout", "epoch 1", false],
      ["stderr", "warning: slow", false],
      ["stdout", "epoch 2", false],
    ]);
    await sink.close();
    const all = await records(logs);
    expect(all.at(-1)).toMatchObject({ s: "stdout", l: "no newline at the end", p: true, a: 1 });
    expect(logText(all.filter((r) => r.s === "stdout"))).toBe("epoch 1\nepoch 2\nno newline at the end");
    expect((await logs.list()).map((c) => c.key.split("/").at(-1))).toEqual([
      "0001-00000000.jsonl",
      "0001-00000001.jsonl",
    ]);
  });

  it("blanks the job's secrets out of every line before it is stored", async () => {
    const { logs, sink } = telemetry();
    sink.write("stdout", "token=hunter22 ok\n");
    await sink.close();
    expect((await records(logs)).map((r) => r.l)).toEqual(["token=[redacted] ok"]);
  });

  it("splits an endless line into continued pieces, so memory does not hold it whole", async () => {
    const { logs, sink } = telemetry();
    sink.write("stdout", "x".repeat(150 * 1024));
    await sink.close();
    const stored = await records(logs);
    expect(stored.map((r) => [r.l.length, r.p ?? false])).toEqual([
      [64 * 1024, true],
      [64 * 1024, true],
      [22 * 1024, true],
    ]);
  });

  it("keeps the log under the job's cap over all attempts, and says how much it dropped", async () => {
    const { logs, sink } = telemetry({ capBytes: 4096, storedBytes: 1000, attempt: 2 });
    for (let i = 0; i < 100; i++) sink.write("stdout", `line ${i} ${"y".repeat(50)}\n`);
    await sink.close();
    const stored = await records(logs);
    const job = stored.filter((r) => !r.x);
    const markers = stored.filter((r) => r.x).map((r) => r.l);
    expect(job.length).toBeGreaterThan(20);
    expect(job.length).toBeLessThan(100);
    expect(job.map((r) => r.l)).toEqual(
      Array.from({ length: job.length }, (_, i) => `line ${i} ${"y".repeat(50)}`),
    );
    const dropped = (100 - job.length) * `line 99 ${"y".repeat(50)}`.length;
    expect(markers).toHaveLength(2);
    expect(markers[0]).toMatch(
      /^\[crucible\] the job's log reached its cap of 0\.0 MiB \(4096 bytes\); further output is dropped/,
    );
    // Each dropped line's text: "line NN yyy…" (57 or 58 characters).
    expect(markers[1]).toMatch(/^\[crucible\] 0\.0 MiB \((\d+) bytes\) of this attempt's output dropped/);
    expect(Math.abs(Number(/\((\d+) bytes\)/.exec(markers[1]!)![1]) - dropped)).toBeLessThan(100);
    const size = (await logs.list()).reduce((sum, c) => sum + c.size, 0);
    expect(size + 1000).toBeLessThan(4096 + 600);
  });

  it("holds at most its buffer while the store falls behind, dropping the rest with a marker where the gap is", async () => {
    const { logs, sink } = telemetry();
    const line = `${"z".repeat(1023)}\n`;
    // No flush in between: 12 MiB written while nothing ships (as when a flush is stuck on the store).
    const blocked = sink.flush();
    for (let i = 0; i < 12 * 1024; i++) sink.write("stdout", line);
    await blocked;
    sink.write("stdout", "after the gap\n");
    await sink.close();
    const stored = await records(logs);
    const kept = stored.filter((r) => !r.x && r.l !== "after the gap").length;
    expect(kept * 1024).toBeLessThanOrEqual(MAX_PENDING_BYTES * 1.2);
    expect(kept).toBeGreaterThan(1024);
    const marker = stored.find((r) => r.x);
    expect(marker?.l).toMatch(
      /^\[crucible\] [\d.]+ MiB \(\d+ bytes\) of output dropped here: the job printed faster than the store took it$/,
    );
    expect(stored.at(-1)?.l).toBe("after the gap");
  });

  it("records every progress event but repeated log-parsed ones and log-parsed ones after the protocol, and shows the latest after each flush", async () => {
    const { address, metrics, sink, shown } = telemetry({ attempt: 3 });
    sink.progress({ jobId: address.jobId, step: 9, metrics: {}, source: "log" });
    sink.progress({ jobId: address.jobId, step: 9, metrics: {}, source: "log" });
    sink.progress({ jobId: address.jobId, step: 10, total: 100, metrics: { loss: 2.5 }, source: "protocol" });
    sink.progress({ jobId: address.jobId, step: 11, metrics: {}, source: "protocol" });
    sink.progress({ jobId: address.jobId, step: 12, metrics: { lr: 0.001 }, source: "protocol" });
    sink.progress({ jobId: address.jobId, step: 12, metrics: { loss: 9 }, source: "log" });
    await sink.flush();
    await sink.close();
    const history = await readMetricHistory(metrics);
    expect(history.map(({ a, step, total, m, src }) => ({ a, step, total, m, src }))).toEqual([
      { a: 3, step: 9, total: undefined, m: {}, src: "log" },
      { a: 3, step: 10, total: 100, m: { loss: 2.5 }, src: "protocol" },
      { a: 3, step: 11, total: undefined, m: {}, src: "protocol" },
      { a: 3, step: 12, total: undefined, m: { lr: 0.001 }, src: "protocol" },
    ]);
    expect(shown).toHaveLength(1);
    expect(shown[0]).toMatchObject({ step: 12, total: 100, metrics: { loss: 2.5, lr: 0.001 } });
  });

  it("keeps resource samples in the metric history as such, apart from the job's progress", async () => {
    const { address, metrics, sink, shown } = telemetry({ attempt: 2 });
    sink.resources({ memoryMiB: 512.5 });
    sink.progress({ jobId: address.jobId, step: 1, metrics: { loss: 3 }, source: "protocol" });
    sink.resources({ memoryMiB: 600, cpuCores: 1.25, gpuUtilPercent: 91, gpuMemoryMiB: 8000 });
    await sink.close();
    const history = await readMetricHistory(metrics);
    expect(history.map(({ a, step, m, src }) => ({ a, step, m, src }))).toEqual([
      { a: 2, step: undefined, m: { memory_mib: 512.5 }, src: "resources" },
      { a: 2, step: 1, m: { loss: 3 }, src: "protocol" },
      {
        a: 2,
        step: undefined,
        m: { memory_mib: 600, cpu_cores: 1.25, gpu_util_percent: 91, gpu_memory_mib: 8000 },
        src: "resources",
      },
    ]);
    expect(history.filter(reportedByJob).map((r) => r.m)).toEqual([{ loss: 3 }]);
    // The job's progress shows what the job reported only.
    expect(shown.at(-1)).toMatchObject({ step: 1, metrics: { loss: 3 } });
    expect(shown.at(-1)?.metrics).toEqual({ loss: 3 });
  });
});

/** A store whose uploads wait until the test lets them finish (or fail), keeping a copy of each body. */
function gatedStore() {
  const bodies: string[] = [];
  const gates: { pass: () => void; fail: () => void }[] = [];
  let uploaded: () => void = () => undefined;
  const series = {
    put: (_attempt: number, _seq: number, lines: readonly string[] | Uint8Array) => {
      const body = Buffer.from(lines as Uint8Array).toString();
      return new Promise<number>((resolve, reject) => {
        gates.push({
          pass: () => {
            bodies.push(body);
            resolve(body.length);
          },
          fail: () => reject(new Error("the store is down")),
        });
        uploaded();
      });
    },
  } as unknown as ChunkSeries;
  /** Resolves once the upload `n` (from 1) has started. */
  const started = (n: number): Promise<void> =>
    gates.length >= n
      ? Promise.resolve()
      : new Promise((resolve) => (uploaded = () => gates.length >= n && resolve()));
  const sink = new JobTelemetry({
    logs: series,
    metrics: series,
    attempt: 1,
    capBytes: 1024 ** 3,
    storedBytes: 0,
    log: logger,
    redact: (text) => text,
    onProgress: () => Promise.resolve(),
  });
  const lines = () =>
    bodies
      .join("")
      .split("\n")
      .filter((line) => line !== "")
      .map((line) => JSON.parse(line) as LogRecord);
  return { sink, gates, started, lines };
}

describe("a running job's telemetry, when the job prints faster than the store takes it", () => {
  const line = `${"z".repeat(1023)}\n`;

  it("asks its caller to hold the job's output back until the next flush takes what waits, and so drops nothing", async () => {
    const { sink, gates, started, lines } = gatedStore();
    let written = 0;
    const writeUntilHeld = (): Promise<void> => {
      for (;;) {
        written++;
        const hold = sink.write("stdout", line);
        if (hold) return hold.released;
      }
    };
    const first = writeUntilHeld();
    // A flush started at a megabyte; the hold comes at two (as stored, a record's fields included).
    expect(written * line.length).toBeGreaterThan(0.9 * HOLD_BYTES);
    expect(written * line.length).toBeLessThanOrEqual(HOLD_BYTES);
    expect(written * line.length).toBeGreaterThan(FLUSH_BYTES);
    await first; // settles as the flush takes the lines, while their upload is still under way
    await started(1);

    const before = written;
    const second = writeUntilHeld();
    expect((written - before) * line.length).toBeGreaterThan(0.9 * HOLD_BYTES);
    let settled = false;
    void second.then(() => (settled = true));
    // One turn of the event loop: the first upload still blocks the next flush, so the hold stands.
    await new Promise(setImmediate);
    expect(settled).toBe(false);
    gates[0]!.pass();
    await second;
    await started(2);
    gates[1]!.pass();

    sink.write("stdout", "the end\n");
    const closed = sink.close();
    await started(3);
    gates[2]!.pass();
    await closed;
    const stored = lines();
    expect(stored.filter((r) => r.x)).toEqual([]);
    expect(stored.filter((r) => r.l === "z".repeat(1023))).toHaveLength(written);
    expect(stored.at(-1)?.l).toBe("the end");
  });

  it("puts the lines of a failed upload back in front of what came since, for the next flush", async () => {
    const { sink, gates, started, lines } = gatedStore();
    sink.write("stdout", "one\ntwo\n");
    const failed = sink.flush();
    await started(1);
    sink.write("stdout", "three\n");
    gates[0]!.fail();
    await failed;
    sink.write("stdout", "four\n");
    const closed = sink.close();
    await started(2);
    gates[1]!.pass();
    await closed;
    expect(lines().map((r) => r.l)).toEqual(["one", "two", "three", "four"]);
  });
});
