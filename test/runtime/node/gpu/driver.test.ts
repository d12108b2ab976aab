import { describe, expect, it } from "vitest";
import {
  compareVersions,
  MINIMUM_DRIVER_BY_CUDA_MAJOR,
  minimumDriver,
} from "../../../../runtime/src/node/gpu/driver";

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
});
