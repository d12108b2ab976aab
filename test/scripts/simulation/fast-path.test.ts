import { describe, expect, it } from "vitest";
import {
  defaultDurations,
  loadSimulatedTier,
  poissonArrivals,
  renderComparison,
  simulate,
  simulateComparison,
  type Arrival,
  type SimulatedTier,
} from "../../../scripts/lib/simulation";
import { prodWithFleet } from "./stack-config";

/** The fast path, the warm pool's states and the three columns (scripts/lib/simulation/model.ts). */

const DAY = { hours: 24, seed: 1 };
/**
 * The one in-service instance is busy for an hour; the second job, at 100 s (well after the first's fast
 * path decision, which asked for nothing), needs a new one.
 */
const SECOND_NEEDS_A_NODE: Arrival[] = [
  { offsetSeconds: 0, durationSeconds: 3600 },
  { offsetSeconds: 100, durationSeconds: 600 },
];
const withState = (tier: SimulatedTier, state: "Stopped" | "Hibernated" | "Running"): SimulatedTier => ({
  ...tier,
  warmPool: { ...tier.warmPool!, state },
  warmPoolIdleHourlyUsd: state === "Running" ? tier.instanceHourlyUsd : tier.stoppedHourlyUsd,
});

describe("prod gpu-small's fast path", () => {
  const tier = loadSimulatedTier("prod", "gpu-small");

  it("is declared by default, 10 s after a submission, one job per node", () => {
    expect(tier.fastScale).toEqual({ jobsPerNode: 1 });
    expect(tier.timing.fastScaleDelaySeconds).toBe(10);
    expect(tier.warmPool).toEqual({ minSize: 2, maxPreparedCapacity: 6, state: "Stopped" });
  });

  it("raises desired fastScaleDelaySeconds after the arrival: then a warm start, or a cold boot", () => {
    // Arrival at 100 s, decision at 110 s, in service 60 s (warm) or 240 s (cold) later.
    expect(simulate(tier, SECOND_NEEDS_A_NODE, DAY).waits[1]).toBe(70);
    expect(simulate({ ...tier, warmPool: null }, SECOND_NEEDS_A_NODE, DAY).waits[1]).toBe(250);
  });

  it("takes its delay from crucible:fleet.scaling.fastScaleDelaySeconds", () => {
    const slow = loadSimulatedTier(
      "prod",
      "gpu-small",
      prodWithFleet({ scaling: { fastScaleDelaySeconds: 30 } }),
    );
    expect(simulate(slow, SECOND_NEEDS_A_NODE, DAY).waits[1]).toBe(90);
  });

  it("is off where the stack says so", () => {
    const off = loadSimulatedTier("prod", "gpu-small", prodWithFleet({ fastScale: { enabled: false } }));
    expect(off.fastScale).toBeNull();
    // Target tracking only: the sample at 120 s, acted on at 300 s, then the warm start.
    expect(simulate(off, SECOND_NEEDS_A_NODE, DAY).waits[1]).toBe(260);
  });

  it("asks for ceil((waiting + running) / jobs per node), at most maxSize", () => {
    const flood = Array.from({ length: 40 }, (): Arrival => ({ offsetSeconds: 0, durationSeconds: 3600 }));
    const r = simulate(tier, flood, { hours: 0.05, seed: 1 });
    // 10 s after the flood, before any metric acts (the first at 180 s): 40 jobs, capped at 24.
    expect(r.scaling.peakDesired).toBe(24);
    expect(r.scaling.peakGroupSize).toBe(24);
  });

  it("never lowers the desired capacity", () => {
    const r = simulate({ ...tier, desired: 3 }, [{ offsetSeconds: 1, durationSeconds: 60 }], {
      hours: 0.2,
      seed: 1,
    });
    expect(r.scaling).toMatchObject({ minGroupSize: 3, peakGroupSize: 3, peakDesired: 3 });
  });
});

describe("warm pool states", () => {
  const tier = loadSimulatedTier("prod", "gpu-small");

  it("start in seconds when Running, 30 s when Hibernated, 60 s when Stopped (after the 10 s decision)", () => {
    expect(simulate(withState(tier, "Running"), SECOND_NEEDS_A_NODE, DAY).waits[1]).toBe(15);
    expect(simulate(withState(tier, "Hibernated"), SECOND_NEEDS_A_NODE, DAY).waits[1]).toBe(40);
    expect(simulate(withState(tier, "Stopped"), SECOND_NEEDS_A_NODE, DAY).waits[1]).toBe(70);
  });

  it("cost idle: Running the full on-demand hour, Stopped and Hibernated the root volume", () => {
    const hours = 10;
    // Five idle pool instances (maxPreparedCapacity 6 − desired 1) for 10 h; one in service.
    const running = simulate(withState(tier, "Running"), [], { hours, seed: 1 });
    expect(running.instanceHours).toMatchObject({ warmPoolStopped: 0, warmPoolRunning: 50 });
    expect(running.costUsd).toEqual({
      compute: 5.26,
      warmPoolStorage: 0,
      warmPoolRunning: 26.3,
      total: 31.56,
    });
    // 200 GiB × $0.08 per GiB-month ÷ 730 h = $0.0219 an hour each.
    for (const state of ["Stopped", "Hibernated"] as const) {
      const r = simulate(withState(tier, state), [], { hours, seed: 1 });
      expect(r.instanceHours).toMatchObject({ warmPoolStopped: 50, warmPoolRunning: 0 });
      expect(r.costUsd).toEqual({ compute: 5.26, warmPoolStorage: 1.1, warmPoolRunning: 0, total: 6.36 });
    }
  });

  it("price a Running pool at the node's on-demand price from the stack config", () => {
    const running = loadSimulatedTier(
      "prod",
      "gpu-small",
      prodWithFleet({
        tiers: {
          ...prodWithFleetTiers(),
          "gpu-small": {
            ...prodWithFleetTiers()["gpu-small"],
            warmPool: { minSize: 2, maxPreparedCapacity: 6, state: "Running" },
          },
        },
      }),
    );
    expect(running.warmPoolIdleHourlyUsd).toBe(0.526);
    expect(tier.warmPoolIdleHourlyUsd).toBeCloseTo(0.0219178, 6);
  });
});

describe("the comparison's three columns", () => {
  const tier = loadSimulatedTier("prod", "gpu-small");

  it.each([
    // rate, [declared, without fast path, without either] p95 wait in seconds, then total cost in USD
    [6, [70, 292.024, 462.748], [47.93, 47.7, 46.05]],
    [20, [70, 259.391, 341.324], [134.51, 132.73, 130.13]],
  ])(
    "poisson:%d: as declared, without the fast path, without the warm pool and fast path",
    (rate, p95, cost) => {
      const arrivals = poissonArrivals(rate, 24, defaultDurations(tier), 1);
      const c = simulateComparison(tier, arrivals, { ...DAY, arrivalsSource: `poisson:${rate}` });
      const columns = [c.declared, c.withoutFastPath, c.withoutWarmPool];
      expect(columns.map((r) => [r.warmPool, r.fastScale])).toEqual([
        [true, true],
        [true, false],
        [false, false],
      ]);
      expect(columns.map((r) => r.waitSeconds.p95)).toEqual(p95);
      expect(columns.map((r) => r.costUsd.total)).toEqual(cost);
      const text = renderComparison(c, "text");
      expect(text).toMatch(/^\s+as declared\s+without fast path\s+without warm pool or fast path$/m);
      expect(text).toMatch(/^cost: total\s+\$\S+\s+\$\S+\s+\$\S+$/m);
    },
  );
});

/** Prod's declared tiers, for overriding one of them. */
function prodWithFleetTiers(): Record<string, Record<string, unknown>> {
  return (
    JSON.parse(prodWithFleet({})["crucible:fleet"]!) as { tiers: Record<string, Record<string, unknown>> }
  ).tiers;
}
