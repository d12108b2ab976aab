import { describe, expect, it } from "vitest";
import { GPU_QUERY_FIELDS, parseGpuQuery, parseSmiLog } from "../../../../runtime/src/node/gpu/nvidia-smi";
import { fixture } from "./fakes";

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
