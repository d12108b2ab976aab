import type { CommandRunner } from "./run-process";
import { GPU_USAGE_FIELDS, parseGpuQuery } from "./nvidia-smi";

/** The node's GPUs in use right now: mean utilisation and memory summed over them. */
export interface GpuUsage {
  readonly utilPercent: number;
  readonly memoryMiB: number;
}

/** A sample is taken every few seconds: one that takes longer than this is skipped, not waited for. */
const USAGE_LIMITS = { timeoutMs: 5_000, maxBytes: 64 * 1024 };

/**
 * Reads the node's GPU usage with `nvidia-smi`. Undefined when it fails or reports no GPU with both
 * numbers: a sample is telemetry, and a node whose GPUs are unwell is the health check's business.
 */
export function nvidiaSmiUsage(commands: CommandRunner): () => Promise<GpuUsage | undefined> {
  return async () => {
    const result = await commands
      .run(
        "nvidia-smi",
        [`--query-gpu=${GPU_USAGE_FIELDS.join(",")}`, "--format=csv,noheader,nounits"],
        USAGE_LIMITS,
      )
      .catch(() => undefined);
    if (!result || result.exitCode !== 0) return undefined;
    const gpus = parseGpuQuery(result.stdout, GPU_USAGE_FIELDS).gpus.filter(
      (g) => g.utilizationPercent !== undefined && g.memoryUsedMiB !== undefined,
    );
    if (gpus.length === 0) return undefined;
    return {
      utilPercent: gpus.reduce((sum, g) => sum + g.utilizationPercent!, 0) / gpus.length,
      memoryMiB: gpus.reduce((sum, g) => sum + g.memoryUsedMiB!, 0),
    };
  };
}
