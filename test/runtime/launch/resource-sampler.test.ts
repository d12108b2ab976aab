import pino from "pino";
import { describe, expect, it } from "vitest";
import type { ResourceSample } from "../../../runtime/src/job/contract";
import type { SandboxUsage } from "../../../runtime/src/launch/resource-sampler";
import { sampleResources } from "../../../runtime/src/launch/resource-sampler";

const log = pino({ level: "silent" });
const MiB = 1024 * 1024;

/** Sandbox readings handed out one per sample, and a clock that moves 1000 ms per sample. */
function scripted(readings: readonly (SandboxUsage | Error | undefined)[]) {
  let now = 0;
  const samples: ResourceSample[] = [];
  const reads = { count: 0 };
  let wake: (() => void) | undefined;
  return {
    samples,
    clock: () => (now += 1000),
    sandbox: (): Promise<SandboxUsage | undefined> => {
      const reading = readings[Math.min(reads.count++, readings.length - 1)];
      wake?.();
      return reading instanceof Error ? Promise.reject(reading) : Promise.resolve(reading);
    },
    onSample: (sample: ResourceSample) => {
      samples.push(sample);
      wake?.();
    },
    /** Resolves once the sandbox has been read `count` times and `sampled` samples were made. */
    reached: (count: number, sampled: number) =>
      new Promise<void>((resolve, reject) => {
        const timeout = setTimeout(
          () => reject(new Error(`${reads.count} reads and ${samples.length} samples within 5 s`)),
          5000,
        );
        const check = (): void => {
          if (reads.count < count || samples.length < sampled) return;
          clearTimeout(timeout);
          resolve();
        };
        wake = check;
        check();
      }),
  };
}

describe("sampleResources", () => {
  it("reports memory in MiB at once and CPU as cores from the difference of two readings", async () => {
    const script = scripted([
      { memoryBytes: 100 * MiB, cpuNanos: 0 },
      { memoryBytes: 150 * MiB, cpuNanos: 1.5e9 },
      { memoryBytes: 150.25 * MiB, cpuNanos: 2e9 },
    ]);
    const sampler = sampleResources({ everyMs: 5, log, ...script });
    await script.reached(3, 3);
    await sampler.stop();
    expect(script.samples.slice(0, 3)).toEqual([
      { memoryMiB: 100 },
      { memoryMiB: 150, cpuCores: 1.5 },
      { memoryMiB: 150.3, cpuCores: 0.5 },
    ]);
  });

  it("adds the GPUs' use where it has a reader, and skips a reading that failed", async () => {
    const script = scripted([
      { memoryBytes: 10 * MiB, cpuNanos: 0 },
      new Error("engine went away"),
      { memoryBytes: 20 * MiB, cpuNanos: 2e9 },
    ]);
    const sampler = sampleResources({
      everyMs: 5,
      log,
      ...script,
      gpu: () => Promise.resolve({ utilPercent: 87.4, memoryMiB: 9000 }),
    });
    await script.reached(3, 2);
    await sampler.stop();
    // The failed reading made no sample; the next one's CPU is over the two seconds since the first.
    expect(script.samples.slice(0, 2)).toEqual([
      { memoryMiB: 10, gpuUtilPercent: 87, gpuMemoryMiB: 9000 },
      { memoryMiB: 20, cpuCores: 1, gpuUtilPercent: 87, gpuMemoryMiB: 9000 },
    ]);
  });

  it("makes no sample while the sandbox is not running", async () => {
    const script = scripted([{ memoryBytes: MiB, cpuNanos: 0 }, undefined]);
    const sampler = sampleResources({ everyMs: 5, log, ...script });
    await script.reached(4, 1);
    await sampler.stop();
    expect(script.samples).toEqual([{ memoryMiB: 1 }]);
  });
});
