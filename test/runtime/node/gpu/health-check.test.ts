import { describe, expect, it } from "vitest";
import type { Tier } from "../../../../runtime/src/catalog/tiers";
import { getTier, TIERS } from "../../../../runtime/src/catalog/tiers";
import { getInstanceType } from "../../../../runtime/src/catalog/instance-types";
import type { HealthReport } from "../../../../runtime/src/node/gpu/health-check";
import { GpuHealth } from "../../../../runtime/src/node/gpu/health-check";
import { GPU_QUERY_FIELDS, parseGpuQuery } from "../../../../runtime/src/node/gpu/nvidia-smi";
import type { GpuProbe, ProbeFacts } from "../../../../runtime/src/node/gpu/probe";
import type { CommandResult, CommandRunner } from "../../../../runtime/src/node/gpu/run-process";
import { fixture, goodProbe, logger, settle } from "./fakes";

const QUERY_ARGS = [`--query-gpu=${GPU_QUERY_FIELDS.join(",")}`, "--format=csv,noheader,nounits"];
const XML_ARGS = ["-q", "-x"];

const ok = (stdout: string): CommandResult => ({ exitCode: 0, stdout, stderr: "" });
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
  it.each([
    ["525.60.13", true],
    ["525.60.12", false],
  ])("driver %s on the ml-cuda image (CUDA 12.6) passes: %s", async (driver, passes) => {
    const csv = fixture("g4dn-t4.csv").replace("560.35.03", driver);
    const report = await health(nvidiaSmi(ok(csv)), probeOf(goodProbe("Tesla T4"))).check();
    expect(report.healthy).toBe(passes);
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
