import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { z } from "zod";
import type { Envelope, Launcher } from "../job/contract";
import { IMAGE_MATRIX } from "../catalog/image-matrix";
import type { Logger } from "../logger";
import type { AgentSignals } from "./node-lifecycle";
import type { Tier } from "../catalog/tiers";

/** What a program printed and how it ended. */
export interface CommandResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a program (no shell). Rejects when it cannot start or runs past `timeoutMs`; a non-zero exit is a result. */
export interface CommandRunner {
  run(
    file: string,
    args: readonly string[],
    limits: { readonly timeoutMs: number; readonly maxBytes: number },
  ): Promise<CommandResult>;
}

/** Runs programs on this machine, keeping the first `maxBytes` of each stream and killing them at the deadline. */
export function processRunner(logger: Logger): CommandRunner {
  return {
    run: (file, args, { timeoutMs, maxBytes }) =>
      new Promise((resolve, reject) => {
        const started = performance.now();
        const fields = { command: [file, ...args].join(" ") };
        logger.debug(fields, "running command");
        const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
        const capture = (stream: NodeJS.ReadableStream): (() => string) => {
          const chunks: Buffer[] = [];
          let kept = 0;
          stream.on("data", (chunk: Buffer) => {
            if (kept >= maxBytes) return;
            chunks.push(chunk.subarray(0, maxBytes - kept));
            kept += Math.min(chunk.length, maxBytes - kept);
          });
          return () => Buffer.concat(chunks).toString("utf8");
        };
        const stdout = capture(child.stdout);
        const stderr = capture(child.stderr);
        let timedOut = false;
        const timer = setTimeout(() => {
          timedOut = true;
          child.kill("SIGKILL");
        }, timeoutMs);
        const ms = (): number => Math.round(performance.now() - started);
        child.once("error", (error) => {
          clearTimeout(timer);
          logger.warn({ ...fields, ms: ms(), err: error }, "command could not run");
          reject(error);
        });
        child.once("close", (code) => {
          clearTimeout(timer);
          if (timedOut) {
            logger.warn({ ...fields, ms: ms() }, "command timed out");
            reject(new Error(`${file} ran past its ${timeoutMs} ms limit and was killed`));
            return;
          }
          const exitCode = code ?? -1;
          logger.debug({ ...fields, ms: ms(), exitCode }, "command finished");
          resolve({ exitCode, stdout: stdout(), stderr: stderr() });
        });
      }),
  };
}

/**
 * The oldest Linux x86_64 driver that runs an application built with each CUDA major version, through
 * minor version compatibility: NVIDIA, CUDA Toolkit Release Notes, "CUDA Toolkit and Minimum Required
 * Driver Version for CUDA Minor Version Compatibility", and CUDA Compatibility, "Minor Version
 * Compatibility" (https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html),
 * which gives 13.x only as ">= 580". Within a major version, a driver older than the toolkit's own (e.g.
 * 535, CUDA 12.2, for an image built with 12.6) runs it without the features that need the newer driver,
 * PTX JIT among them; the compute probe proves the image's PyTorch works regardless.
 */
export const MINIMUM_DRIVER_BY_CUDA_MAJOR: Readonly<Record<number, string>> = {
  11: "450.80.02",
  12: "525.60.13",
  13: "580",
};

/** Compares dotted versions part by part as numbers ("525.105.17" > "525.60.13"); missing parts count as 0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const diff = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (diff !== 0) return Math.sign(diff);
  }
  return 0;
}

/** The oldest driver that runs an image built with `cuda` (e.g. "12.6"), from {@link MINIMUM_DRIVER_BY_CUDA_MAJOR}. */
export function minimumDriver(cuda: string): string {
  const major = Number(cuda.split(".")[0]);
  const minimum = MINIMUM_DRIVER_BY_CUDA_MAJOR[major];
  if (!minimum)
    throw new Error(`no minimum driver is known for CUDA ${cuda}; add CUDA ${major}.x to the table`);
  return minimum;
}

/** One GPU as `nvidia-smi --query-gpu` reports it; a field the GPU or driver does not report is absent. */
export interface GpuStatus {
  readonly index: number;
  readonly name: string;
  readonly busId?: string;
  readonly driverVersion?: string;
  readonly memoryMiB?: number;
  readonly temperatureC?: number;
  /** Uncorrectable ECC errors since the driver loaded: the memory held wrong data at least once. */
  readonly uncorrectedEccErrors?: number;
  /** Pages waiting to be retired at the next reset (GPUs before Ampere). */
  readonly retiredPagesPending?: boolean;
  /** Rows waiting to be remapped at the next reset (HBM GPUs from Ampere on). */
  readonly remappedRowsPending?: boolean;
  /** Row remapping has run out of spare rows: the GPU needs servicing. */
  readonly remappingFailed?: boolean;
  /** Clocks cut by half or more by the hardware (power brake, overheating, an external signal). */
  readonly hwSlowdown?: boolean;
}

/** The fields asked of `nvidia-smi --query-gpu`, in {@link GpuStatus}' order. */
export const GPU_QUERY_FIELDS = [
  "index",
  "name",
  "pci.bus_id",
  "driver_version",
  "memory.total",
  "temperature.gpu",
  "ecc.errors.uncorrected.volatile.total",
  "retired_pages.pending",
  "remapped_rows.pending",
  "remapped_rows.failure",
  "clocks_throttle_reasons.hw_slowdown",
] as const;
/** Without these the answer means nothing; any other field a driver does not know is dropped and skipped. */
const REQUIRED_FIELDS: readonly string[] = ["index", "name", "driver_version"];

/** "[N/A]", "[Not Supported]" and bare "N/A": the GPU or driver does not report it, which is no fault. */
const NOT_REPORTED = /^\[?(N\/A|Not Supported|Not Available)\]?$/i;
const FLAG_VALUES: Readonly<Record<string, boolean>> = {
  yes: true,
  active: true,
  true: true,
  no: false,
  "not active": false,
  false: false,
};

/**
 * Parses `--query-gpu=<fields> --format=csv,noheader,nounits`. A value that is neither reported nor
 * absent in a known way ("[GPU requires reset]", "[Unknown Error]") is returned in `unreadable`: a GPU
 * that cannot say whether its memory is sound is not sound.
 */
export function parseGpuQuery(
  csv: string,
  fields: readonly string[] = GPU_QUERY_FIELDS,
): { gpus: GpuStatus[]; unreadable: string[] } {
  const gpus: GpuStatus[] = [];
  const unreadable: string[] = [];
  for (const line of csv.split("\n").filter((l) => l.trim() !== "")) {
    // GPU names hold no commas; nvidia-smi neither quotes nor escapes.
    const cells = line.split(",").map((c) => c.trim());
    if (cells.length !== fields.length) {
      unreadable.push(
        `nvidia-smi printed ${cells.length} values where ${fields.length} were asked: "${line}"`,
      );
      continue;
    }
    const raw = (field: string): string | undefined => {
      const i = fields.indexOf(field);
      const value = i < 0 ? undefined : cells[i];
      return value === undefined || NOT_REPORTED.test(value) ? undefined : value;
    };
    const label = `GPU ${raw("index") ?? "?"} (${raw("name") ?? "unnamed"})`;
    const bad = (field: string, value: string): undefined => {
      unreadable.push(`${label} reports ${field} as "${value}"`);
      return undefined;
    };
    const num = (field: string): number | undefined => {
      const value = raw(field);
      if (value === undefined) return undefined;
      return /^\d+(\.\d+)?$/.test(value) ? Number(value) : bad(field, value);
    };
    const flag = (field: string): boolean | undefined => {
      const value = raw(field);
      if (value === undefined) return undefined;
      return FLAG_VALUES[value.toLowerCase()] ?? bad(field, value);
    };
    const optional = <K extends keyof GpuStatus>(key: K, value: GpuStatus[K] | undefined) =>
      value === undefined ? {} : { [key]: value };
    gpus.push({
      index: num("index") ?? gpus.length,
      name: raw("name") ?? "unnamed",
      ...optional("busId", raw("pci.bus_id")),
      ...optional("driverVersion", raw("driver_version")),
      ...optional("memoryMiB", num("memory.total")),
      ...optional("temperatureC", num("temperature.gpu")),
      ...optional("uncorrectedEccErrors", num("ecc.errors.uncorrected.volatile.total")),
      ...optional("retiredPagesPending", flag("retired_pages.pending")),
      ...optional("remappedRowsPending", flag("remapped_rows.pending")),
      ...optional("remappingFailed", flag("remapped_rows.failure")),
      ...optional("hwSlowdown", flag("clocks_throttle_reasons.hw_slowdown")),
    });
  }
  return { gpus, unreadable };
}

/**
 * The driver's version and the newest CUDA version it supports, from the header of `nvidia-smi -q -x`
 * (`<driver_version>`, `<cuda_version>`), which it prints even when it finds no GPU.
 */
export function parseSmiLog(xml: string): { driverVersion?: string; cudaVersion?: string } {
  const driverVersion = /<driver_version>\s*([\d.]+)\s*<\/driver_version>/.exec(xml)?.[1];
  const cudaVersion = /<cuda_version>\s*(\d+\.\d+)\s*<\/cuda_version>/.exec(xml)?.[1];
  return { ...(driverVersion && { driverVersion }), ...(cudaVersion && { cudaVersion }) };
}

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
 */
export const PROBE_SCRIPT = `"""Crucible's GPU probe: a matmul on each visible GPU, checked against the CPU."""
import math

import torch


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, generator=generator)
    b = torch.randn(512, 512, generator=generator)
    expected = a @ b
    scale = expected.abs().max().item()
    available = torch.cuda.is_available()
    devices = []
    for index in range(torch.cuda.device_count() if available else 0):
        device = torch.device("cuda", index)
        got = (a.to(device) @ b.to(device)).cpu()
        error = (got - expected).abs().max().item() / scale
        devices.append({
            "name": torch.cuda.get_device_name(index),
            "max_relative_error": error if math.isfinite(error) else None,
        })
    return {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": available,
        "devices": devices,
    }
`;

const probeResultSchema = z.object({
  torch: z.string(),
  torch_cuda: z.string().nullable(),
  cuda_available: z.boolean(),
  devices: z.array(z.object({ name: z.string(), max_relative_error: z.number().nullable() })),
});

/** Characters of a failed probe's error and stderr kept in its problem. */
const PROBE_DETAIL_CHARS = 500;

/**
 * Runs {@link PROBE_SCRIPT} as a job of the tier through the agent's own launcher: the tier's image (by
 * digest on a node), its GPUs and the whole sandbox, labels, deadline, bounded output and removal, exactly
 * as a job gets them, so a pass means a job would get a working GPU.
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
    const dir = await mkdtemp(join(tmpdir(), "crucible-gpu-probe-"));
    try {
      const code = join(dir, "main.py");
      await writeFile(code, PROBE_SCRIPT);
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

/** One line naming every problem, for logs and the Auto Scaling activity's cause. */
export function summarize(report: HealthReport): string {
  return report.problems.map((p) => `${p.check}: ${p.message}`).join("; ");
}

export interface HealthGateOptions {
  readonly health: Pick<GpuHealth, "check">;
  /** Has the group replace this instance (`NodeLifecycle.markUnhealthy`); absent off a fleet node. */
  readonly markUnhealthy?: (reason: string) => Promise<void>;
  readonly logger: Logger;
  /** Least time between two checks, since the probe costs seconds. Defaults to 60. */
  readonly minIntervalSeconds?: number;
  /** The clock, in milliseconds. Defaults to `Date.now`. */
  readonly now?: () => number;
}

/**
 * When the agent may take work: checked before its first receive, then again once a job has ended and
 * at least `minIntervalSeconds` have passed since the last check (an idle node is not probed over and over).
 * The first failure is final, with no re-check: uncorrectable errors, pending retirements and a lost GPU
 * do not heal without a reset, and a GPU that passes on a second try is the flaky one that fails hours
 * into a job. On that failure the node is marked unhealthy, so the group replaces it, unless no new
 * instance could pass either (see {@link HealthProblem.replaceable}).
 */
export class HealthGate {
  private lastCheck = Number.NEGATIVE_INFINITY;
  private jobEnded = true;
  private checking: Promise<boolean> | undefined;
  private failure: HealthReport | undefined;
  private readonly minIntervalMs: number;
  private readonly now: () => number;

  constructor(private readonly options: HealthGateOptions) {
    this.minIntervalMs = (options.minIntervalSeconds ?? 60) * 1000;
    this.now = options.now ?? Date.now;
  }

  /** The failed report, once a check has failed. */
  get failed(): HealthReport | undefined {
    return this.failure;
  }

  /** Counts a job as ended whenever the agent's load drops. Returns a function that stops watching. */
  watch(agent: AgentSignals): () => void {
    let previous = 0;
    const onLoad = (running: number): void => {
      if (running < previous) this.jobEnded = true;
      previous = running;
    };
    agent.on("load", onLoad);
    return () => agent.off("load", onLoad);
  }

  /** Whether the node may take work now; checks first when a check is due. Never rejects. */
  ready(): Promise<boolean> {
    if (this.failure) return Promise.resolve(false);
    if (this.checking) return this.checking;
    if (!this.jobEnded || this.now() - this.lastCheck < this.minIntervalMs) return Promise.resolve(true);
    this.checking = this.check().finally(() => (this.checking = undefined));
    return this.checking;
  }

  private async check(): Promise<boolean> {
    const { logger, markUnhealthy } = this.options;
    this.jobEnded = false;
    this.lastCheck = this.now();
    const report = await this.options.health.check();
    if (report.warnings.length > 0) logger.warn({ warnings: report.warnings }, "GPU health warnings");
    if (report.healthy) {
      logger.info({ gpus: report.gpus.length, driver: report.driverVersion }, "GPU health check passed");
      return true;
    }
    this.failure = report;
    const reason = summarize(report);
    logger.error({ report }, `GPU node unhealthy, taking no more jobs: ${reason}`);
    if (!report.problems.some((p) => p.replaceable)) {
      logger.error("a new instance would fail the same way: fix the launch template's AMI or the image");
    } else if (markUnhealthy) {
      try {
        await markUnhealthy(reason);
      } catch (error) {
        logger.error({ err: error }, "marking the instance unhealthy failed; it stays, taking no jobs");
      }
    }
    return false;
  }
}
