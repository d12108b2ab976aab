import type { ResourceSample } from "../job/contract";
import type { Logger } from "../logger";
import type { GpuUsage } from "../node/gpu/gpu-usage";

/** One reading of a sandbox: memory now, CPU time used since it started. */
export interface SandboxUsage {
  readonly memoryBytes: number;
  readonly cpuNanos: number;
}

export interface ResourceSamplerOptions {
  readonly everyMs: number;
  /** The sandbox now; undefined once it is not running. */
  readonly sandbox: () => Promise<SandboxUsage | undefined>;
  /** The node's GPUs, where the job has them. */
  readonly gpu?: () => Promise<GpuUsage | undefined>;
  readonly onSample: (sample: ResourceSample) => void;
  readonly log: Logger;
  /** Milliseconds on a monotonic clock, CPU rates are taken against. Defaults to performance.now. */
  readonly clock?: () => number;
}

const MiB = 1024 * 1024;

/**
 * Samples a running job's resources every `everyMs` until stopped: one sample at a time (a slow engine
 * makes fewer samples, never a pile of them), CPU as cores from the difference of two readings.
 */
export function sampleResources(options: ResourceSamplerOptions): { stop(): Promise<void> } {
  const clock = options.clock ?? (() => performance.now());
  let previous: { cpuNanos: number; at: number } | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  const sample = async (): Promise<void> => {
    const at = clock();
    const [sandbox, gpu] = await Promise.all([options.sandbox(), options.gpu?.()]);
    if (!sandbox || stopped) return;
    const cores =
      previous && at > previous.at && sandbox.cpuNanos >= previous.cpuNanos
        ? (sandbox.cpuNanos - previous.cpuNanos) / ((at - previous.at) * 1e6)
        : undefined;
    previous = { cpuNanos: sandbox.cpuNanos, at };
    options.onSample({
      memoryMiB: Math.round((sandbox.memoryBytes / MiB) * 10) / 10,
      ...(cores !== undefined && { cpuCores: Math.round(cores * 100) / 100 }),
      ...(gpu && { gpuUtilPercent: Math.round(gpu.utilPercent), gpuMemoryMiB: gpu.memoryMiB }),
    });
  };
  const tick = (): void => {
    running = running.then(sample).catch((error: unknown) => {
      options.log.debug({ err: error }, "resource sample failed");
    });
  };
  tick();
  const timer = setInterval(tick, options.everyMs);
  return {
    stop: async () => {
      stopped = true;
      clearInterval(timer);
      await running;
    },
  };
}
