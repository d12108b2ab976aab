import { PassThrough } from "node:stream";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { OutputSink } from "../../../../runtime/src/launch/docker/container-engine";
import { DockerEngine, FrameSplitter } from "../../../../runtime/src/launch/docker/container-engine";
import type { StreamName } from "../../../../runtime/src/launch/output";

/** Docker's multiplexed framing: an 8-byte header (stream, 0, 0, 0, big-endian length), then the payload. */
function frame(stream: 1 | 2, text: string): Buffer {
  const payload = Buffer.from(text);
  const header = Buffer.alloc(8);
  header.writeUInt8(stream, 0);
  header.writeUInt32BE(payload.length, 4);
  return Buffer.concat([header, payload]);
}

function split(chunks: readonly Buffer[]): [StreamName, Buffer][] {
  const frames = new FrameSplitter();
  const out: [StreamName, Buffer][] = [];
  for (const chunk of chunks) frames.push(chunk, (stream, payload) => out.push([stream, payload]));
  return out;
}

const joined = (out: readonly [StreamName, Buffer][], stream: StreamName): string =>
  Buffer.concat(out.filter(([s]) => s === stream).map(([, b]) => b)).toString();

describe("FrameSplitter", () => {
  it("splits frames cut anywhere, headers included, by stream", () => {
    const bytes = Buffer.concat([frame(1, "out one\n"), frame(2, "err\n"), frame(1, "out two\n")]);
    for (let cut = 1; cut < bytes.length; cut++)
      for (const at of [cut, Math.max(1, cut - 7)]) {
        const out = split([bytes.subarray(0, at), bytes.subarray(at, cut), bytes.subarray(cut)]);
        expect([cut, at, joined(out, "stdout"), joined(out, "stderr")]).toEqual([
          cut,
          at,
          "out one\nout two\n",
          "err\n",
        ]);
      }
  });

  it("hands payloads on as views of the chunk received, not copies", () => {
    const chunk = Buffer.concat([frame(1, "a".repeat(4096)), frame(2, "b".repeat(4096))]);
    const out = split([chunk]);
    expect(out.map(([stream, payload]) => [stream, payload.length, payload.buffer === chunk.buffer])).toEqual(
      [
        ["stdout", 4096, true],
        ["stderr", 4096, true],
      ],
    );
  });

  it("passes a stream that is not multiplexed (a TTY's) through whole, as stdout", () => {
    const out = split([Buffer.from("plain te"), Buffer.from("rminal output\n")]);
    expect(out.every(([stream]) => stream === "stdout")).toBe(true);
    expect(joined(out, "stdout")).toBe("plain terminal output\n");
  });
});

describe("DockerEngine.attach", () => {
  it("stops reading the container's output while the sink holds it back, and resumes when it lets go", async () => {
    const socket = new PassThrough();
    const docker = { getContainer: () => ({ attach: () => Promise.resolve(socket) }) };
    const engine = new DockerEngine(docker as never, pino({ level: "silent" }));
    const seen: string[] = [];
    let release: () => void = () => undefined;
    let arrived: () => void = () => undefined;
    const sink: OutputSink = (stream, chunk) => {
      seen.push(`${stream}:${chunk.toString()}`);
      arrived();
      if (seen.length === 1) return { released: new Promise<void>((resolve) => (release = resolve)) };
      return undefined;
    };
    const next = () => new Promise<void>((resolve) => (arrived = resolve));
    const attached = await engine.attach("c1", { jobId: "attach-test" }, sink);

    const first = next();
    socket.write(frame(1, "held\n"));
    await first;
    expect(socket.isPaused()).toBe(true);
    socket.write(frame(2, "later\n"));
    socket.end();
    // A turn of the event loop: written, but not read while the hold stands.
    await new Promise(setImmediate);
    expect(seen).toEqual(["stdout:held\n"]);

    const second = next();
    release();
    await second;
    await attached.ended;
    expect(seen).toEqual(["stdout:held\n", "stderr:later\n"]);
  });
});
