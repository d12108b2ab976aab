import type { Tier } from "../../catalog/tiers";
import { IMAGE_MATRIX } from "../../catalog/image-matrix";
import type { Logger } from "../../logger";
import { compareVersions, minimumDriver } from "./driver";
import type { GpuStatus } from "./nvidia-smi";
import { GPU_QUERY_FIELDS, parseGpuQuery, parseSmiLog, REQUIRED_FIELDS } from "./nvidia-smi";
import type { GpuProbe, ProbeFacts } from "./probe";
import type { CommandResult, CommandRunner } from "./run-process";

/** One thing wrong with the node. */
export interface HealthProblem {
  readonly check: "nvidia-smi" | "driver" | "gpu-count" | "gpu" | "probe";
  readonly message: string;
  /**
   * Whether a fresh instance can fix it. Not for what every instance of the launch template shares (the
   * AMI's driver against the image, the image's PyTorch): replacing would only churn through instances.
   */
  readonly replaceable: boolean;
}

export interface HealthReport {
  readonly healthy: boolean;
  readonly problems: readonly HealthProblem[];
  /** Worth knowing, not worth a node: minor version compatibility, a check this driver cannot do. */
  readonly warnings: readonly string[];
  readonly gpus: readonly GpuStatus[];
  readonly driverVersion?: string;
  /** The newest CUDA version the driver supports. */
  readonly driverCuda?: string;
  readonly probe?: ProbeFacts;
}

export interface GpuHealthOptions {
  /** The node's tier: its GPU count is what must be visible. */
  readonly tier: Pick<Tier, "name" | "gpu">;
  readonly commands: CommandRunner;
  readonly probe: GpuProbe;
  readonly logger: Logger;
  /** CUDA version the tier's image is built with. Defaults to the ml-cuda family's axis in the image matrix. */
  readonly imageCuda?: string;
  /** Temperature at which a GPU between jobs counts as failing to cool. Defaults to 90 °C. */
  readonly maxTemperatureC?: number;
  /** Largest relative difference between a GPU's matmul and the CPU's. Defaults to 1e-4 (float32 agrees to ~1e-6). */
  readonly maxRelativeError?: number;
}

const NVIDIA_SMI = "nvidia-smi";
const NVIDIA_SMI_LIMITS = { timeoutMs: 20_000, maxBytes: 4 * 1024 * 1024 };
/** Characters of nvidia-smi's own message kept in a problem. */
const SMI_MESSAGE_CHARS = 300;

/**
 * Whether this GPU node may take jobs: the driver against the image's CUDA version, every GPU the tier
 * needs visible and sound (no uncorrectable ECC errors, no pages or rows waiting for a reset, no hardware
 * slowdown, not overheating), then a compute probe in the tier's own image. The probe, the only check that
 * costs seconds, runs only when everything else passed.
 */
export class GpuHealth {
  private readonly imageCuda: string;
  private readonly maxTemperatureC: number;
  private readonly maxRelativeError: number;

  constructor(private readonly options: GpuHealthOptions) {
    const imageCuda = options.imageCuda ?? IMAGE_MATRIX["ml-cuda"].axes.cuda;
    if (!imageCuda) throw new Error("the ml-cuda image family has no cuda axis in the image matrix");
    this.imageCuda = imageCuda;
    this.maxTemperatureC = options.maxTemperatureC ?? 90;
    this.maxRelativeError = options.maxRelativeError ?? 1e-4;
  }

  /** Never rejects: whatever goes wrong is a problem in the report. */
  async check(): Promise<HealthReport> {
    const problems: HealthProblem[] = [];
    const warnings: string[] = [];
    const problem = (check: HealthProblem["check"], message: string, replaceable = true): void => {
      problems.push({ check, message, replaceable });
    };
    const query = await this.queryGpus(warnings);
    if ("failure" in query) {
      problem("nvidia-smi", query.failure);
      return { healthy: false, problems, warnings, gpus: [] };
    }
    const { gpus, unreadable } = parseGpuQuery(query.stdout, query.fields);
    for (const message of unreadable) problem("gpu", message);

    const expected = this.options.tier.gpu?.count ?? 0;
    if (gpus.length !== expected)
      problem("gpu-count", `${gpus.length} GPU(s) visible, tier ${this.options.tier.name} needs ${expected}`);
    for (const gpu of gpus) this.judgeGpu(gpu, problem);

    const log = await this.smiLog(warnings);
    const driverVersion = gpus[0]?.driverVersion ?? log.driverVersion;
    const driverCuda = log.cudaVersion;
    this.judgeDriver(driverVersion, driverCuda, problem, warnings);
    const versions = { ...(driverVersion && { driverVersion }), ...(driverCuda && { driverCuda }) };
    if (problems.length > 0) return { healthy: false, problems, warnings, gpus, ...versions };

    let probe: ProbeFacts;
    try {
      probe = await this.options.probe.run();
    } catch (error) {
      problem("probe", `the GPU probe could not run: ${(error as Error).message}`);
      return { healthy: false, problems, warnings, gpus, ...versions };
    }
    this.judgeProbe(probe, expected, problem);
    return { healthy: problems.length === 0, problems, warnings, gpus, ...versions, probe };
  }

  /** Asks for every field; a field this driver does not know is dropped (with a warning) and asked again. */
  private async queryGpus(
    warnings: string[],
  ): Promise<{ stdout: string; fields: readonly string[] } | { failure: string }> {
    let fields: readonly string[] = GPU_QUERY_FIELDS;
    for (;;) {
      const result = await this.nvidiaSmi([
        `--query-gpu=${fields.join(",")}`,
        "--format=csv,noheader,nounits",
      ]);
      if ("failure" in result) return result;
      if (result.exitCode === 0) return { stdout: result.stdout, fields };
      const unknown = /Field "([^"]+)" is not a valid field to query/.exec(
        result.stdout + result.stderr,
      )?.[1];
      if (!unknown || REQUIRED_FIELDS.includes(unknown) || !fields.includes(unknown))
        return { failure: smiFailure(result) };
      warnings.push(`this driver's nvidia-smi does not know ${unknown}; that check is skipped`);
      fields = fields.filter((f) => f !== unknown);
    }
  }

  private async smiLog(warnings: string[]): Promise<ReturnType<typeof parseSmiLog>> {
    const result = await this.nvidiaSmi(["-q", "-x"]);
    const log = "failure" in result || result.exitCode !== 0 ? {} : parseSmiLog(result.stdout);
    if (!log.cudaVersion) warnings.push("nvidia-smi -q -x did not tell the driver's CUDA version");
    return log;
  }

  private async nvidiaSmi(args: readonly string[]): Promise<CommandResult | { failure: string }> {
    try {
      return await this.options.commands.run(NVIDIA_SMI, args, NVIDIA_SMI_LIMITS);
    } catch (error) {
      return { failure: `nvidia-smi could not run: ${(error as Error).message}` };
    }
  }

  private judgeGpu(gpu: GpuStatus, problem: (check: "gpu", message: string) => void): void {
    const label = `GPU ${gpu.index} (${gpu.name}${gpu.busId ? `, ${gpu.busId}` : ""})`;
    if (gpu.uncorrectedEccErrors !== undefined && gpu.uncorrectedEccErrors > 0)
      problem(
        "gpu",
        `${label} has ${gpu.uncorrectedEccErrors} uncorrectable ECC error(s) since the driver loaded`,
      );
    if (gpu.retiredPagesPending)
      problem("gpu", `${label} has memory pages waiting to be retired; it needs a reset`);
    if (gpu.remappedRowsPending)
      problem("gpu", `${label} has memory rows waiting to be remapped; it needs a reset`);
    if (gpu.remappingFailed) problem("gpu", `${label} ran out of spare memory rows (row remapping failed)`);
    if (gpu.hwSlowdown) problem("gpu", `${label} is in hardware slowdown (clocks cut by half or more)`);
    if (gpu.temperatureC !== undefined && gpu.temperatureC >= this.maxTemperatureC)
      problem(
        "gpu",
        `${label} is at ${gpu.temperatureC} °C, at or above the ${this.maxTemperatureC} °C limit`,
      );
  }

  private judgeDriver(
    driver: string | undefined,
    driverCuda: string | undefined,
    problem: (check: "driver", message: string, replaceable: boolean) => void,
    warnings: string[],
  ): void {
    const image = `the ml-cuda image (CUDA ${this.imageCuda})`;
    let minimum: string;
    try {
      minimum = minimumDriver(this.imageCuda);
    } catch (error) {
      problem("driver", (error as Error).message, false);
      return;
    }
    if (!driver) {
      problem("driver", "nvidia-smi did not tell the driver version", true);
      return;
    }
    if (compareVersions(driver, minimum) < 0) {
      problem(
        "driver",
        `driver ${driver} is too old for ${image}: CUDA ${this.imageCuda.split(".")[0]}.x needs ${minimum} or newer`,
        false,
      );
      return;
    }
    if (driverCuda && compareVersions(driverCuda, this.imageCuda) < 0)
      warnings.push(
        `driver ${driver} supports CUDA ${driverCuda}, older than ${image}: it runs under minor version compatibility (no PTX JIT)`,
      );
  }

  private judgeProbe(
    probe: ProbeFacts,
    expected: number,
    problem: (check: "probe", message: string, replaceable?: boolean) => void,
  ): void {
    if (probe.torchCuda === null)
      problem("probe", `the tier's image has a CPU-only PyTorch ${probe.torch}`, false);
    else if (probe.torchCuda !== this.imageCuda)
      problem(
        "probe",
        `the tier's image has PyTorch ${probe.torch} built for CUDA ${probe.torchCuda}, the image matrix says ${this.imageCuda}`,
        false,
      );
    if (!probe.cudaAvailable) {
      problem("probe", "PyTorch in the tier's image sees no usable GPU (torch.cuda.is_available() is False)");
      return;
    }
    if (probe.devices.length !== expected)
      problem(
        "probe",
        `the probe's container sees ${probe.devices.length} GPU(s), the tier gives it ${expected}`,
      );
    probe.devices.forEach((device, i) => {
      if (device.maxRelativeError === null)
        problem("probe", `GPU ${i} (${device.name}) computed non-finite values in a float32 matmul`);
      else if (device.maxRelativeError > this.maxRelativeError)
        problem(
          "probe",
          `GPU ${i} (${device.name}) differs from the CPU by ${device.maxRelativeError.toExponential(2)} (relative) in a float32 matmul; at most ${this.maxRelativeError.toExponential(0)} is allowed`,
        );
    });
  }
}

/** nvidia-smi's own explanation: its first non-empty line (e.g. "NVIDIA-SMI has failed because ..."), bounded. */
function smiFailure(result: CommandResult): string {
  const line = `${result.stdout}\n${result.stderr}`
    .split("\n")
    .map((l) => l.trim())
    .find((l) => l !== "");
  return `nvidia-smi failed (exit ${result.exitCode}): ${(line ?? "no output").slice(0, SMI_MESSAGE_CHARS)}`;
}
