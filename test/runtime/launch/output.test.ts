import { describe, expect, it } from "vitest";
import type { ProgressEvent } from "../../../runtime/src/job/contract";
import {
  BoundedTail,
  JobOutput,
  LineScanner,
  mayBeProgress,
  parseProgress,
} from "../../../runtime/src/launch/output";

describe("BoundedTail", () => {
  it("keeps everything while under its limit", () => {
    const tail = new BoundedTail(10);
    tail.push(Buffer.from("abc"));
    tail.push(Buffer.from("def"));
    expect(tail.toString()).toBe("abcdef");
    expect(tail.truncated).toBe(false);
  });

  it("keeps exactly the last bytes once past it, and says so", () => {
    const tail = new BoundedTail(5);
    for (const piece of ["hello ", "wor", "ld", "!"]) tail.push(Buffer.from(piece));
    expect(tail.toString()).toBe("orld!");
    expect(tail.truncated).toBe(true);
    expect(tail.totalBytes).toBe(12);
  });

  it("never starts inside a UTF-8 character", () => {
    const tail = new BoundedTail(4);
    tail.push(Buffer.from("aé€")); // 1 + 2 + 3 bytes: the last 4 start inside é
    expect(tail.toString()).toBe("€");
  });
});

describe("LineScanner", () => {
  it("splits on newlines and carriage returns across chunks", () => {
    const lines: string[] = [];
    const scanner = new LineScanner((l) => lines.push(l));
    scanner.push(Buffer.from("one\ntw"));
    scanner.push(Buffer.from("o\r three"));
    scanner.end();
    expect(lines).toEqual(["one", "two", " three"]);
  });

  it("drops a line longer than it holds, and resumes at the next one", () => {
    const lines: string[] = [];
    const scanner = new LineScanner((l) => lines.push(l));
    scanner.push(Buffer.alloc(64 * 1024, "x"));
    scanner.push(Buffer.from("x\nstep 3/4\n"));
    expect(lines).toEqual(["step 3/4"]);
  });

  it("hands on only the lines its filter wants, judged on their bytes", () => {
    const lines: string[] = [];
    const scanner = new LineScanner((l) => lines.push(l), mayBeProgress);
    scanner.push(Buffer.from('plain words\nstep 7\n##crucible:progress {"loss": 0.5}\nünïcode 9\n'));
    scanner.push(Buffer.from("##crucible:progress {}\nwörds\n"));
    scanner.end();
    expect(lines).toEqual([
      "step 7",
      '##crucible:progress {"loss": 0.5}',
      "ünïcode 9",
      "##crucible:progress {}",
    ]);
  });
});

describe("mayBeProgress", () => {
  it("holds for every line parseProgress reads something from", () => {
    for (const line of ["step 3/4", "loss=0.5", "| 45/100 [", '##crucible:progress {"step": 1}'])
      expect([line, mayBeProgress(Buffer.from(line))]).toEqual([line, true]);
    for (const line of ["Downloading files", "", "##crucible:progres", "日本語"]) {
      expect([line, mayBeProgress(Buffer.from(line))]).toEqual([line, false]);
      expect(parseProgress(line, "job-1")).toBeUndefined();
    }
  });
});

describe("parseProgress", () => {
  const parse = (line: string): ProgressEvent | undefined => parseProgress(line, "job-1");

  it("reads the runner's protocol: step, total and numeric metrics", () => {
    expect(parse('##crucible:progress {"step": 10, "total": 100, "loss": 1.5, "note": "x"}')).toEqual({
      jobId: "job-1",
      step: 10,
      total: 100,
      metrics: { loss: 1.5 },
      source: "protocol",
    });
    expect(parse("##crucible:progress not json")).toBeUndefined();
  });

  it.each([
    ["step 10/100", { step: 10, total: 100, metrics: {} }],
    ["Epoch 2/5", { step: 2, total: 5, metrics: { epoch: 2 } }],
    ["iter 300: loss 1.23", { step: 300, metrics: { loss: 1.23 } }],
    ["loss=0.5", { metrics: { loss: 0.5 } }],
    [
      "epoch 1 of 3, step 40/50, train_loss: 2.5e-1, val loss 0.3, lr=3e-4",
      {
        step: 40,
        total: 50,
        metrics: { epoch: 1, train_loss: 0.25, val_loss: 0.3, lr: 0.0003 },
      },
    ],
    [" 45%|████▌     | 45/100 [00:01<00:02, 30.00it/s]", { step: 45, total: 100, metrics: {} }],
  ])("reads %j", (line, expected) => {
    expect(parse(line)).toEqual({ jobId: "job-1", source: "log", ...expected });
  });

  it("ignores lines without progress", () => {
    expect(parse("Downloading files")).toBeUndefined();
    expect(parse("processed 12 rows")).toBeUndefined();
  });
});

describe("JobOutput", () => {
  it("turns a gigabyte of output into bounded tails without holding it", () => {
    const output = new JobOutput({ jobId: "job-1", tailBytes: 1024 });
    const chunk = Buffer.alloc(1024 * 1024, "y");
    const before = process.memoryUsage();
    for (let i = 0; i < 1024; i++) output.write("stdout", chunk);
    output.write("stdout", Buffer.from("\nthe end\n"));
    output.end();
    const after = process.memoryUsage();
    const logs = output.logs();
    expect(logs.truncated).toBe(true);
    expect(Buffer.byteLength(logs.stdout)).toBe(1024);
    expect(logs.stdout.endsWith("y\nthe end\n")).toBe(true);
    expect(after.arrayBuffers - before.arrayBuffers).toBeLessThan(16 * 1024 * 1024);
  });

  it("streams text and progress, and keeps the latest protocol metrics", () => {
    const events: ProgressEvent[] = [];
    const text: string[] = [];
    const output = new JobOutput({
      jobId: "job-1",
      onProgress: (e) => events.push(e),
      onLog: (stream, t) => text.push(`${stream}:${t}`),
    });
    output.write(
      "stdout",
      Buffer.from('##crucible:progress {"step": 1, "loss": 2}\n##crucible:progress {"step": 2, "lr": 0.1}\n'),
    );
    output.write("stderr", Buffer.from("epoch 1/2\n"));
    output.end();
    expect(events.map((e) => [e.source, e.step])).toEqual([
      ["protocol", 1],
      ["protocol", 2],
      ["log", 1],
    ]);
    expect(output.metrics()).toEqual({ loss: 2, lr: 0.1 });
    expect(text.join("")).toContain("stderr:epoch 1/2");
    expect(output.logs()).toMatchObject({ stderr: "epoch 1/2\n", truncated: false });
  });

  it("hands back a hold its log sink returns, so the caller can hold the job's output back", () => {
    const hold = { released: Promise.resolve() };
    let behind = false;
    const output = new JobOutput({ jobId: "job-1", onLog: () => (behind ? hold : undefined) });
    expect(output.write("stdout", Buffer.from("fast\n"))).toBeUndefined();
    behind = true;
    expect(output.write("stdout", Buffer.from("too fast\n"))).toBe(hold);
    expect(new JobOutput({ jobId: "job-1" }).write("stdout", Buffer.from("x\n"))).toBeUndefined();
  });
});
