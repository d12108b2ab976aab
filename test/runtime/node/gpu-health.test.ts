import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { existsSync, readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { EventEmitter } from "node:events";
import { dirname, join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Envelope, JobSpecInput, Launcher } from "../../../runtime/src/job/contract";
import type {
  CommandResult,
  CommandRunner,
  GpuProbe,
  HealthReport,
  ProbeFacts,
} from "../../../runtime/src/node/gpu-health";
import {
  compareVersions,
  GPU_QUERY_FIELDS,
  GpuHealth,
  HealthGate,
  LauncherGpuProbe,
  MINIMUM_DRIVER_BY_CUDA_MAJOR,
  minimumDriver,
  parseGpuQuery,
  parseSmiLog,
  PROBE_SCRIPT,
  processRunner,
} from "../../../runtime/src/node/gpu-health";
import { InstanceMetadata, NodeLifecycle } from "../../../runtime/src/node/node-lifecycle";
import type { Tier } from "../../../runtime/src/catalog/tiers";
import { getTier, TIERS } from "../../../runtime/src/catalog/tiers";
import { getInstanceType } from "../../../runtime/src/catalog/instance-types";
import { Ec2Node } from "../../support/ec2-node";

const logger = pino({ level: "silent" });
const fixture = (name: string): string =>
  readFileSync(join(__dirname, "../../fixtures/nvidia-smi", name), "utf8");
const QUERY_ARGS = [`--query-gpu=${GPU_QUERY_FIELDS.join(",")}`, "--format=csv,noheader,nounits"];
const XML_ARGS = ["-q", "-x"];

const ok = (stdout: string): CommandResult => ({ exitCode: 0, stdout, stderr: "" });
/** A fake's answer: resolves with a value, rejects with an error. */
const settle = <T>(answer: T | Error): Promise<T> =>
  answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);
const exit = (exitCode: number, stdout: string): CommandResult => ({ exitCode, stdout, stderr: "" });

/** nvidia-smi as a node would run it: the answer to the GPU query and to `-q -x`, recording every call. */
function nvidiaSmi(
  query: CommandResult | Error,
  xml: CommandResult | Error = ok(fixture("q-x-560.xml")),
): CommandRunner & { calls: string[][] } {
  const calls: string[][] = [];
  return {
    calls,
    run: (file, args, limits) => {
      calls.push([file, ...args]);
      expect(limits).toEqual({ timeoutMs: 20_000, maxBytes: 4 * 1024 * 1024 });
      return settle(args[0] === "-q" ? xml : query);
    },
  };
}

/** What the probe measures on `count` healthy GPUs in the matrix's ml-cuda image. */
const goodProbe = (name: string, count = 1): ProbeFacts => ({
  torch: "2.6.0+cu126",
  torchCuda: "12.6",
  cudaAvailable: true,
  devices: Array.from({ length: count }, () => ({ name, maxRelativeError: 3.1e-7 })),
});

function probeOf(result: ProbeFacts | Error): GpuProbe & { runs: number } {
  const probe = {
    runs: 0,
    run: () => {
      probe.runs++;
      return settle(result);
    },
  };
  return probe;
}

/** A p5-like tier: eight 80 GB GPUs, which no catalog tier has yet. */
const EIGHT_GPUS: Pick<Tier, "name" | "gpu"> = { name: "gpu-large", gpu: { count: 8, memoryGB: 80 } };

function health(
  commands: CommandRunner,
  probe: GpuProbe,
  tier: Pick<Tier, "name" | "gpu"> = getTier("gpu-small"),
): GpuHealth {
  return new GpuHealth({ tier, commands, probe, logger });
}

describe("the driver requirement", () => {
  it("is NVIDIA's minimum for minor version compatibility of each CUDA major version", () => {
    expect(MINIMUM_DRIVER_BY_CUDA_MAJOR).toEqual({ 11: "450.80.02", 12: "525.60.13", 13: "580" });
    expect(minimumDriver("12.6")).toBe("525.60.13");
    expect(minimumDriver("12.0")).toBe("525.60.13");
    expect(minimumDriver("11.8")).toBe("450.80.02");
    expect(minimumDriver("13.0")).toBe("580");
    expect(() => minimumDriver("14.0")).toThrow(
      "no minimum driver is known for CUDA 14.0; add CUDA 14.x to the table",
    );
  });

  it("compares driver versions part by part as numbers", () => {
    expect(compareVersions("525.105.17", "525.60.13")).toBe(1);
    expect(compareVersions("525.60.13", "525.60.13")).toBe(0);
    expect(compareVersions("525.60.12", "525.60.13")).toBe(-1);
    expect(compareVersions("470.182.03", "525.60.13")).toBe(-1);
    expect(compareVersions("580.65.06", "580")).toBe(1);
    expect(compareVersions("12.4", "12.6")).toBe(-1);
  });

  it.each([
    ["525.60.13", true],
    ["525.60.12", false],
  ])("driver %s on the ml-cuda image (CUDA 12.6) passes: %s", async (driver, passes) => {
    const csv = fixture("g4dn-t4.csv").replace("560.35.03", driver);
    const report = await health(nvidiaSmi(ok(csv)), probeOf(goodProbe("Tesla T4"))).check();
    expect(report.healthy).toBe(passes);
  });
});

describe("reading nvidia-smi", () => {
  it("parses a g4dn (Tesla T4) query, with what the GPU does not report left out", () => {
    expect(parseGpuQuery(fixture("g4dn-t4.csv"))).toEqual({
      gpus: [
        {
          index: 0,
          name: "Tesla T4",
          busId: "00000000:00:1E.0",
          driverVersion: "560.35.03",
          memoryMiB: 15360,
          temperatureC: 27,
          uncorrectedEccErrors: 0,
          retiredPagesPending: false,
          hwSlowdown: false,
        },
      ],
      unreadable: [],
    });
    expect(parseGpuQuery(fixture("g4dn-t4-not-reported.csv")).gpus).toEqual([
      {
        index: 0,
        name: "Tesla T4",
        busId: "00000000:00:1E.0",
        driverVersion: "560.35.03",
        memoryMiB: 15360,
        temperatureC: 29,
      },
    ]);
  });

  it("parses eight H100s, in order, with row remapping instead of page retirement", () => {
    const { gpus, unreadable } = parseGpuQuery(fixture("p5-h100x8.csv"));
    expect(unreadable).toEqual([]);
    expect(gpus.map((g) => g.index)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(gpus[7]).toEqual({
      index: 7,
      name: "NVIDIA H100 80GB HBM3",
      busId: "00000000:CA:00.0",
      driverVersion: "550.127.05",
      memoryMiB: 81559,
      temperatureC: 37,
      uncorrectedEccErrors: 0,
      remappedRowsPending: false,
      remappingFailed: false,
      hwSlowdown: false,
    });
  });

  it("names a value it cannot read, and a line of the wrong shape", () => {
    expect(parseGpuQuery(fixture("p5-h100x8-degraded.csv")).unreadable).toEqual([
      'GPU 2 (NVIDIA H100 80GB HBM3) reports ecc.errors.uncorrected.volatile.total as "[GPU requires reset]"',
    ]);
    expect(parseGpuQuery("0, Tesla T4\n").unreadable).toEqual([
      `nvidia-smi printed 2 values where ${GPU_QUERY_FIELDS.length} were asked: "0, Tesla T4"`,
    ]);
  });

  it("reads the driver and its CUDA version from the -q -x header", () => {
    expect(parseSmiLog(fixture("q-x-560.xml"))).toEqual({ driverVersion: "560.35.03", cudaVersion: "12.6" });
    expect(parseSmiLog(fixture("q-x-470.xml"))).toEqual({ driverVersion: "470.182.03", cudaVersion: "11.4" });
    expect(parseSmiLog("<nvidia_smi_log></nvidia_smi_log>")).toEqual({});
  });
});

describe("GpuHealth", () => {
  it("passes a healthy g4dn node: both nvidia-smi queries, then the probe", async () => {
    const smi = nvidiaSmi(ok(fixture("g4dn-t4.csv")));
    const probe = probeOf(goodProbe("Tesla T4"));
    const report = await health(smi, probe).check();
    expect(report).toEqual({
      healthy: true,
      problems: [],
      warnings: [],
      gpus: parseGpuQuery(fixture("g4dn-t4.csv")).gpus,
      driverVersion: "560.35.03",
      driverCuda: "12.6",
      probe: goodProbe("Tesla T4"),
    });
    expect(smi.calls).toEqual([
      ["nvidia-smi", ...QUERY_ARGS],
      ["nvidia-smi", ...XML_ARGS],
    ]);
    expect(probe.runs).toBe(1);
  });

  it("passes a healthy g5 node (A10G) on gpu-large", async () => {
    const smi = nvidiaSmi(ok(fixture("g5-a10g.csv")), ok(fixture("q-x-570.xml")));
    const report = await health(smi, probeOf(goodProbe("NVIDIA A10G")), getTier("gpu-large")).check();
    expect(report).toMatchObject({ healthy: true, problems: [], warnings: [], driverCuda: "12.8" });
  });

  it("passes eight H200s, and eight H100s whose driver runs CUDA 12.6 by minor version compatibility", async () => {
    const h200 = nvidiaSmi(ok(fixture("p5en-h200x8.csv")), ok(fixture("q-x-570.xml")));
    expect(await health(h200, probeOf(goodProbe("NVIDIA H200", 8)), EIGHT_GPUS).check()).toMatchObject({
      healthy: true,
      warnings: [],
    });
    const h100 = nvidiaSmi(ok(fixture("p5-h100x8.csv")), ok(fixture("q-x-550.xml")));
    const report = await health(h100, probeOf(goodProbe("NVIDIA H100 80GB HBM3", 8)), EIGHT_GPUS).check();
    expect(report).toMatchObject({
      healthy: true,
      problems: [],
      warnings: [
        "driver 550.127.05 supports CUDA 12.4, older than the ml-cuda image (CUDA 12.6): it runs under minor version compatibility (no PTX JIT)",
      ],
    });
  });

  it("passes a T4 whose ECC and remapping fields are [N/A] or [Not Supported]", async () => {
    const report = await health(
      nvidiaSmi(ok(fixture("g4dn-t4-not-reported.csv"))),
      probeOf(goodProbe("Tesla T4")),
    ).check();
    expect(report).toMatchObject({ healthy: true, problems: [] });
  });

  it("fails a driver too old for CUDA 12.6 as not replaceable, without probing", async () => {
    const probe = probeOf(goodProbe("Tesla T4"));
    const smi = nvidiaSmi(ok(fixture("g4dn-t4-driver-470.csv")), ok(fixture("q-x-470.xml")));
    const report = await health(smi, probe).check();
    expect(report).toMatchObject({ healthy: false, driverVersion: "470.182.03", driverCuda: "11.4" });
    expect(report.problems).toEqual([
      {
        check: "driver",
        message:
          "driver 470.182.03 is too old for the ml-cuda image (CUDA 12.6): CUDA 12.x needs 525.60.13 or newer",
        replaceable: false,
      },
    ]);
    expect(report.probe).toBeUndefined();
    expect(probe.runs).toBe(0);
  });

  it("fails uncorrectable ECC errors and rows waiting to be remapped", async () => {
    const smi = nvidiaSmi(ok(fixture("g5-a10g-ecc-uncorrected.csv")), ok(fixture("q-x-570.xml")));
    const report = await health(smi, probeOf(goodProbe("NVIDIA A10G")), getTier("gpu-large")).check();
    expect(report.problems).toEqual([
      {
        check: "gpu",
        message:
          "GPU 0 (NVIDIA A10G, 00000000:00:1E.0) has 2 uncorrectable ECC error(s) since the driver loaded",
        replaceable: true,
      },
      {
        check: "gpu",
        message:
          "GPU 0 (NVIDIA A10G, 00000000:00:1E.0) has memory rows waiting to be remapped; it needs a reset",
        replaceable: true,
      },
    ]);
  });

  it("names each failing GPU of eight: a reset needed, failed remapping, slowdown, heat", async () => {
    const smi = nvidiaSmi(ok(fixture("p5-h100x8-degraded.csv")), ok(fixture("q-x-550.xml")));
    const report = await health(smi, probeOf(goodProbe("NVIDIA H100 80GB HBM3", 8)), EIGHT_GPUS).check();
    const gpu5 = "GPU 5 (NVIDIA H100 80GB HBM3, 00000000:A8:00.0)";
    expect(report.problems.map((p) => p.message)).toEqual([
      'GPU 2 (NVIDIA H100 80GB HBM3) reports ecc.errors.uncorrected.volatile.total as "[GPU requires reset]"',
      `${gpu5} ran out of spare memory rows (row remapping failed)`,
      `${gpu5} is in hardware slowdown (clocks cut by half or more)`,
      `${gpu5} is at 93 °C, at or above the 90 °C limit`,
    ]);
    expect(report.problems.every((p) => p.check === "gpu" && p.replaceable)).toBe(true);
  });

  it("fails when nvidia-smi cannot talk to the driver, with its own words", async () => {
    const probe = probeOf(goodProbe("Tesla T4"));
    const smi = nvidiaSmi(exit(9, fixture("no-driver.txt")), exit(9, fixture("no-driver.txt")));
    expect(await health(smi, probe).check()).toEqual({
      healthy: false,
      problems: [
        {
          check: "nvidia-smi",
          message:
            "nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the latest NVIDIA driver is installed and running.",
          replaceable: true,
        },
      ],
      warnings: [],
      gpus: [],
    });
    expect(smi.calls).toEqual([["nvidia-smi", ...QUERY_ARGS]]);
    expect(probe.runs).toBe(0);
  });

  it("fails when nvidia-smi finds no GPU, or is not there at all", async () => {
    const none = await health(nvidiaSmi(exit(6, fixture("no-devices.txt"))), probeOf(goodProbe("x"))).check();
    expect(none.problems).toEqual([
      {
        check: "nvidia-smi",
        message: "nvidia-smi failed (exit 6): No devices were found",
        replaceable: true,
      },
    ]);
    const missing = Object.assign(new Error("spawn nvidia-smi ENOENT"), { code: "ENOENT" });
    const absent = await health(nvidiaSmi(missing), probeOf(goodProbe("x"))).check();
    expect(absent.problems).toEqual([
      {
        check: "nvidia-smi",
        message: "nvidia-smi could not run: spawn nvidia-smi ENOENT",
        replaceable: true,
      },
    ]);
  });

  it("fails a GPU count that is not the tier's, taking the driver from the -q -x header", async () => {
    const report = await health(nvidiaSmi(ok("")), probeOf(goodProbe("x"))).check();
    expect(report).toMatchObject({ healthy: false, gpus: [], driverVersion: "560.35.03" });
    expect(report.problems).toEqual([
      { check: "gpu-count", message: "0 GPU(s) visible, tier gpu-small needs 1", replaceable: true },
    ]);
    const eight = nvidiaSmi(ok(fixture("p5-h100x8.csv")), ok(fixture("q-x-550.xml")));
    expect((await health(eight, probeOf(goodProbe("x"))).check()).problems[0]?.message).toBe(
      "8 GPU(s) visible, tier gpu-small needs 1",
    );
  });

  it("drops a field this driver does not know, warns, and asks again without it", async () => {
    const calls: string[][] = [];
    const commands: CommandRunner = {
      run: (file, args) => {
        calls.push([file, ...args]);
        if (args[0] === "-q") return settle(ok(fixture("q-x-560.xml")));
        if (args[0]?.includes("remapped_rows.pending")) return settle(exit(2, fixture("unknown-field.txt")));
        return settle(ok(fixture("g4dn-t4-without-remapped-pending.csv")));
      },
    };
    const report = await health(commands, probeOf(goodProbe("Tesla T4"))).check();
    expect(report).toMatchObject({
      healthy: true,
      warnings: ["this driver's nvidia-smi does not know remapped_rows.pending; that check is skipped"],
    });
    expect(report.gpus[0]).toMatchObject({ retiredPagesPending: false, hwSlowdown: false });
    const without = GPU_QUERY_FIELDS.filter((f) => f !== "remapped_rows.pending");
    expect(calls.map((c) => c[1])).toEqual([QUERY_ARGS[0], `--query-gpu=${without.join(",")}`, "-q"]);
  });

  it("warns, and still decides on the driver version, when -q -x tells no CUDA version", async () => {
    const smi = nvidiaSmi(ok(fixture("g4dn-t4.csv")), new Error("nvidia-smi ran past its 20000 ms limit"));
    const report = await health(smi, probeOf(goodProbe("Tesla T4"))).check();
    expect(report).toMatchObject({
      healthy: true,
      driverVersion: "560.35.03",
      warnings: ["nvidia-smi -q -x did not tell the driver's CUDA version"],
    });
    expect(report.driverCuda).toBeUndefined();
  });

  describe("the compute probe", () => {
    const check = (facts: ProbeFacts | Error): Promise<HealthReport> =>
      health(nvidiaSmi(ok(fixture("g4dn-t4.csv"))), probeOf(facts)).check();

    it("fails when it cannot run", async () => {
      const report = await check(
        new Error("the probe job failed (timeout): the job ran past its 120 s limit"),
      );
      expect(report.problems).toEqual([
        {
          check: "probe",
          message:
            "the GPU probe could not run: the probe job failed (timeout): the job ran past its 120 s limit",
          replaceable: true,
        },
      ]);
    });

    it("fails an image whose PyTorch is not the matrix's CUDA build, as not replaceable", async () => {
      const cu124 = await check({ ...goodProbe("Tesla T4"), torch: "2.6.0+cu124", torchCuda: "12.4" });
      expect(cu124.problems).toEqual([
        {
          check: "probe",
          message: "the tier's image has PyTorch 2.6.0+cu124 built for CUDA 12.4, the image matrix says 12.6",
          replaceable: false,
        },
      ]);
      const cpu = await check({ torch: "2.6.0+cpu", torchCuda: null, cudaAvailable: false, devices: [] });
      expect(cpu.problems).toEqual([
        { check: "probe", message: "the tier's image has a CPU-only PyTorch 2.6.0+cpu", replaceable: false },
        {
          check: "probe",
          message: "PyTorch in the tier's image sees no usable GPU (torch.cuda.is_available() is False)",
          replaceable: true,
        },
      ]);
    });

    it("fails wrong or non-finite results and a GPU count other than the tier's", async () => {
      const report = await check({
        ...goodProbe("Tesla T4"),
        devices: [
          { name: "Tesla T4", maxRelativeError: 0.25 },
          { name: "Tesla T4", maxRelativeError: null },
        ],
      });
      expect(report.problems.map((p) => p.message)).toEqual([
        "the probe's container sees 2 GPU(s), the tier gives it 1",
        "GPU 0 (Tesla T4) differs from the CPU by 2.50e-1 (relative) in a float32 matmul; at most 1e-4 is allowed",
        "GPU 1 (Tesla T4) computed non-finite values in a float32 matmul",
      ]);
    });
  });

  it("every allowed instance type of a GPU tier has exactly the tier's GPU count, so equality is the check", () => {
    for (const tier of Object.values(TIERS).filter((t) => t.gpu))
      for (const type of tier.allowedInstanceTypes)
        expect([type, getInstanceType(type).gpus]).toEqual([type, tier.gpu?.count]);
  });
});

describe("LauncherGpuProbe", () => {
  function launcherAnswering(
    envelope: Partial<Envelope>,
  ): Launcher & { specs: JobSpecInput[]; code: string[] } {
    const launcher = {
      specs: [] as JobSpecInput[],
      code: [] as string[],
      gc: () => settle(0),
      run: async (spec: JobSpecInput): Promise<Envelope> => {
        launcher.specs.push(spec);
        launcher.code.push(await readFile(spec.code, "utf8"));
        return {
          jobId: spec.jobId ?? "",
          status: "success",
          exitCode: 0,
          executionTime: 7.5,
          timestamp: "2026-03-10T09:14:02Z",
          systemInfo: { jobId: spec.jobId ?? "", tier: "gpu-small", image: "crucible/ml-cuda", node: "n" },
          resources: {},
          logs: { stdout: "", stderr: "", truncated: false },
          ...envelope,
        };
      },
    };
    return launcher;
  }

  it("runs the probe script as a job of the tier, within its deadline, and removes its code after", async () => {
    const launcher = launcherAnswering({
      result: {
        torch: "2.6.0+cu126",
        torch_cuda: "12.6",
        cuda_available: true,
        devices: [{ name: "Tesla T4", max_relative_error: 3.1e-7 }],
      },
    });
    const facts = await new LauncherGpuProbe(launcher, "gpu-small", logger).run();
    expect(facts).toEqual(goodProbe("Tesla T4"));
    const [spec] = launcher.specs;
    expect(spec).toEqual({
      jobId: expect.stringMatching(/^gpu-probe-[a-z0-9]+$/) as string,
      tier: "gpu-small",
      code: expect.stringMatching(/crucible-gpu-probe-[^/]+\/main\.py$/) as string,
      timeoutSeconds: 120,
    });
    expect(launcher.code).toEqual([PROBE_SCRIPT]);
    expect(existsSync(dirname(spec?.code ?? ""))).toBe(false);
  });

  it("rejects with the job's reason, message and stderr tail when the job fails", async () => {
    const launcher = launcherAnswering({
      status: "error",
      reason: "exception",
      error: { type: "RuntimeError", message: "CUDA error: no kernel image is available" },
      logs: { stdout: "", stderr: `${"x".repeat(2000)}\nRuntimeError: CUDA error\n`, truncated: true },
    });
    const failure = await new LauncherGpuProbe(launcher, "gpu-small", logger).run().catch((e: Error) => e);
    expect((failure as Error).message).toBe(
      `the probe job failed (exception): CUDA error: no kernel image is available; stderr: ${"x".repeat(475)}\nRuntimeError: CUDA error`,
    );
    expect(existsSync(dirname(launcher.specs[0]?.code ?? ""))).toBe(false);
  });

  it("rejects a result that is not the probe's", async () => {
    const launcher = launcherAnswering({ result: { hello: "world" } });
    await expect(new LauncherGpuProbe(launcher, "gpu-small", logger).run()).rejects.toThrow(
      'the probe job returned {"hello":"world"}',
    );
  });
});

describe("processRunner", () => {
  const runner = processRunner(logger);
  const node = (script: string) => [process.execPath, ["-e", script]] as const;

  it("returns the exit code and each stream, cut at maxBytes", async () => {
    const [file, args] = node(
      "process.stdout.write('o'.repeat(100000)); process.stderr.write('err'); process.exit(3)",
    );
    expect(await runner.run(file, args, { timeoutMs: 20_000, maxBytes: 1000 })).toEqual({
      exitCode: 3,
      stdout: "o".repeat(1000),
      stderr: "err",
    });
  });

  it("kills a program that runs past its deadline, and rejects one that cannot start", async () => {
    const [file, args] = node("setInterval(() => undefined, 1000)");
    await expect(runner.run(file, args, { timeoutMs: 200, maxBytes: 1000 })).rejects.toThrow(
      `${process.execPath} ran past its 200 ms limit and was killed`,
    );
    await expect(
      runner.run("/nonexistent/nvidia-smi", [], { timeoutMs: 1000, maxBytes: 1000 }),
    ).rejects.toMatchObject({ code: "ENOENT" });
  });
});

describe("HealthGate", () => {
  const healthy: HealthReport = { healthy: true, problems: [], warnings: [], gpus: [] };
  const unhealthy = (replaceable: boolean): HealthReport => ({
    healthy: false,
    problems: [
      { check: "gpu", message: "GPU 0 (Tesla T4) has 2 uncorrectable ECC error(s)", replaceable },
      { check: "probe", message: "the probe failed", replaceable: true },
    ],
    warnings: [],
    gpus: [],
  });

  /** A gate on a fake clock whose checks answer `reports` in turn (the last one repeated). */
  function gate(reports: HealthReport[], markUnhealthy?: (reason: string) => Promise<void>) {
    let clock = 1_000_000;
    const checks: number[] = [];
    const agent = new EventEmitter<{ load: [number] }>();
    const g = new HealthGate({
      health: {
        check: () => {
          checks.push(clock);
          return settle(reports[Math.min(checks.length - 1, reports.length - 1)] ?? healthy);
        },
      },
      logger,
      now: () => clock,
      ...(markUnhealthy && { markUnhealthy }),
    });
    const unwatch = g.watch(agent);
    const jobRan = (): void => {
      agent.emit("load", 1);
      agent.emit("load", 0);
    };
    return { g, checks, jobRan, unwatch, advance: (s: number) => (clock += s * 1000) };
  }

  it("checks before the first receive, then only after a job, at most once a minute", async () => {
    const { g, checks, jobRan, advance } = gate([healthy]);
    expect(await g.ready()).toBe(true);
    expect(await g.ready()).toBe(true);
    expect(checks).toHaveLength(1);
    advance(600);
    expect(await g.ready()).toBe(true); // idle for ten minutes: nothing ran, nothing to re-check
    expect(checks).toHaveLength(1);
    advance(-570);
    jobRan();
    expect(await g.ready()).toBe(true); // 30 s after the last check: too soon
    expect(checks).toHaveLength(1);
    advance(30);
    expect(await g.ready()).toBe(true);
    expect(await g.ready()).toBe(true);
    expect(checks).toHaveLength(2);
  });

  it("shares one check between callers that ask at once", async () => {
    const { g, checks } = gate([healthy]);
    expect(await Promise.all([g.ready(), g.ready(), g.ready()])).toEqual([true, true, true]);
    expect(checks).toHaveLength(1);
  });

  it("on a failure marks the node unhealthy once, and never takes work or re-checks again", async () => {
    const reasons: string[] = [];
    const { g, checks, jobRan, advance } = gate([unhealthy(true), healthy], (reason) => {
      reasons.push(reason);
      return settle(undefined);
    });
    expect(await g.ready()).toBe(false);
    advance(3600);
    jobRan();
    expect(await g.ready()).toBe(false);
    expect(checks).toHaveLength(1);
    expect(reasons).toEqual([
      "gpu: GPU 0 (Tesla T4) has 2 uncorrectable ECC error(s); probe: the probe failed",
    ]);
    expect(g.failed).toEqual(unhealthy(true));
  });

  it("does not mark the node unhealthy when no new instance could pass either", async () => {
    const reasons: string[] = [];
    const report: HealthReport = { ...unhealthy(false), problems: [unhealthy(false).problems[0]!] };
    const { g } = gate([report], (reason) => {
      reasons.push(reason);
      return settle(undefined);
    });
    expect(await g.ready()).toBe(false);
    expect(reasons).toEqual([]);
  });

  it("stays out of work when marking the node unhealthy fails", async () => {
    const { g } = gate([unhealthy(true)], () => Promise.reject(new Error("Throttling")));
    expect(await g.ready()).toBe(false);
    expect(await g.ready()).toBe(false);
  });

  describe("on a fleet node", () => {
    let ec2: Ec2Node;
    let endpoint: string;
    beforeEach(async () => {
      ec2 = new Ec2Node();
      endpoint = await ec2.start();
      ec2.metadata.set("instance-id", "i-0abc");
      ec2.metadata.set("autoscaling/target-lifecycle-state", "InService");
    });
    afterEach(async () => {
      await ec2.stop();
    });

    it("has the group replace the node through SetInstanceHealth", async () => {
      const lifecycle = new NodeLifecycle({
        metadata: new InstanceMetadata(endpoint),
        autoscaling: new AutoScalingClient({
          endpoint,
          region: "us-west-2",
          credentials: { accessKeyId: "test", secretAccessKey: "test" },
        }),
        group: { name: "crucible-prod-gpu-small", launchHook: "launch", terminationHook: "terminate" },
        logger,
      });
      const g = new HealthGate({
        health: { check: () => settle(unhealthy(true)) },
        logger,
        markUnhealthy: (reason) => lifecycle.markUnhealthy(reason),
      });
      expect(await g.ready()).toBe(false);
      expect(ec2.calls).toEqual([
        {
          action: "SetInstanceHealth",
          params: {
            Action: "SetInstanceHealth",
            Version: "2011-01-01",
            InstanceId: "i-0abc",
            HealthStatus: "Unhealthy",
            ShouldRespectGracePeriod: "false",
          },
        },
      ]);
    });
  });
});
