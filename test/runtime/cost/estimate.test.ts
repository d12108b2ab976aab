import { describe, expect, it } from "vitest";
import { estimateRun } from "../../../runtime/src/cost/estimate";
import { TIERS } from "../../../runtime/src/catalog/tiers";

describe("estimateRun", () => {
  const tier = TIERS["gpu-small"];

  it("extrapolates the measured pace past a fixed startup, priced at the tier's rate", () => {
    const estimate = estimateRun(
      [
        { seconds: 12, step: 10 },
        { seconds: 14, step: 20 },
        { seconds: 16, step: 30 },
      ],
      tier,
      5000,
    );
    expect(estimate.secondsPerStep).toBeCloseTo(0.2, 10);
    expect(estimate.startupSeconds).toBeCloseTo(10, 10);
    expect(estimate.seconds).toBeCloseTo(1010, 10);
    expect(estimate.costUsd).toBeCloseTo((1010 / 3600) * 0.526, 10);
    expect(estimate.exceedsMaxRuntime).toBe(false);
  });

  it("flags a run longer than the tier allows", () => {
    const estimate = estimateRun(
      [
        { seconds: 1, step: 1 },
        { seconds: 3, step: 2 },
      ],
      TIERS["cpu-small"],
      100,
    );
    expect(estimate.exceedsMaxRuntime).toBe(true);
  });

  it("refuses to guess without two reports of different steps", () => {
    expect(() => estimateRun([{ seconds: 1, step: 5 }], tier, 10)).toThrow(/fewer than two progress reports/);
    expect(() => estimateRun([], tier, 10)).toThrow(/must report progress/);
  });
});
