import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import type { Envelope, Launcher } from "../../job/contract";
import type { Logger } from "../../logger";
import type { Tier } from "../../catalog/tiers";

/** What the compute probe measured inside the tier's job image. */
export interface ProbeFacts {
  readonly torch: string;
  /** The CUDA version PyTorch was built with; null for a CPU-only build. */
  readonly torchCuda: string | null;
  readonly cudaAvailable: boolean;
  /** Per visible GPU: the largest difference from the CPU's result, relative to the result's scale. */
  readonly devices: readonly { readonly name: string; readonly maxRelativeError: number | null }[];
}

/** Runs the compute probe; rejects, with what went wrong, when it could not measure anything. */
export interface GpuProbe {
  run(): Promise<ProbeFacts>;
}

/**
 * The probe, as a job's `main.py`: a 512×512 float32 matmul on each visible GPU against the same on the
 * CPU. TF32 is turned off so both sides compute in full float32 and a healthy GPU agrees to ~1e-6.
 * It is `probe.py` beside this module, read when the probe runs: in source (tsx) it is the file itself;
 * in the built package the build copies it into dist (runtime/package.json `build`, and the agent
 * image's compile stage, images/agent/Dockerfile).
 */
export const PROBE_PATH = join(__dirname, "probe.py");

const probeResultSchema = z.object({
  torch: z.string(),
  torch_cuda: z.string().nullable(),
  cuda_available: z.boolean(),
  devices: z.array(z.object({ name: z.string(), max_relative_error: z.number().nullable() })),
});

/** Characters of a failed probe's error and stderr kept in its problem. */
const PROBE_DETAIL_CHARS = 500;

/**
 * Runs the probe ({@link PROBE_PATH}) as a job of the tier through the agent's own launcher: the tier's
 * image (by digest on a node), its GPUs and the whole sandbox, labels, deadline, bounded output and
 * removal, exactly as a job gets them, so a pass means a job would get a working GPU.
 */
export class LauncherGpuProbe implements GpuProbe {
  constructor(
    private readonly launcher: Launcher,
    private readonly tier: Tier["name"],
    private readonly logger: Logger,
    private readonly timeoutSeconds = 120,
  ) {}

  async run(): Promise<ProbeFacts> {
    const jobId = `gpu-probe-${Date.now().toString(36)}`;
    const script = await readFile(PROBE_PATH, "utf8");
    const dir = await mkdtemp(join(tmpdir(), "crucible-gpu-probe-"));
    try {
      const code = join(dir, "main.py");
      await writeFile(code, script);
      const started = performance.now();
      this.logger.info({ jobId, tier: this.tier }, "GPU probe starting");
      const envelope = await this.launcher.run({
        jobId,
        tier: this.tier,
        code,
        timeoutSeconds: this.timeoutSeconds,
      });
      this.logger.info(
        { jobId, status: envelope.status, ms: Math.round(performance.now() - started) },
        "GPU probe finished",
      );
      return probeFacts(envelope);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
}

function probeFacts(envelope: Envelope): ProbeFacts {
  if (envelope.status !== "success") {
    const stderr = envelope.logs.stderr.trim().slice(-PROBE_DETAIL_CHARS);
    throw new Error(
      `the probe job failed (${envelope.reason ?? "error"}): ${(envelope.error?.message ?? "").slice(0, PROBE_DETAIL_CHARS)}${stderr ? `; stderr: ${stderr}` : ""}`,
    );
  }
  const parsed = probeResultSchema.safeParse(envelope.result);
  if (!parsed.success)
    throw new Error(
      `the probe job returned ${JSON.stringify(envelope.result)?.slice(0, PROBE_DETAIL_CHARS)}`,
    );
  const { torch, torch_cuda, cuda_available, devices } = parsed.data;
  return {
    torch,
    torchCuda: torch_cuda,
    cudaAvailable: cuda_available,
    devices: devices.map((d) => ({ name: d.name, maxRelativeError: d.max_relative_error })),
  };
}
