import { describe, expect, it } from "vitest";
import {
  defaultDurations,
  loadSimulatedTier,
  poissonArrivals,
  simulate,
  simulateComparison,
  type Arrival,
  type SimulatedTier,
} from "../../../scripts/lib/simulation";
import { prodWithFleet } from "./stack-config";

const DAY = { hours: 24, seed: 1 };

/** Seconds from an arrival to the sample that first sees it, plus the delay before the policy acts. */
function detectionLag(tier: SimulatedTier, arrivalSeconds: number): number {
  const period = tier.timing.metricPeriodSeconds;
  return Math.ceil(arrivalSeconds / period) * period - arrivalSeconds + tier.timing.scaleOutDelaySeconds;
}

describe("prod gpu-small, as the stack declares it", () => {
  const tier = loadSimulatedTier("prod", "gpu-small");
  const arrivals = poissonArrivals(6, 24, defaultDurations(tier), 1);

  it("is deterministic for a seed", () => {
    expect(simulate(tier, arrivals, DAY)).toEqual(simulate(tier, arrivals, DAY));
    expect(poissonArrivals(6, 24, defaultDurations(tier), 1)).toEqual(arrivals);
    expect(poissonArrivals(6, 24, defaultDurations(tier), 2)).not.toEqual(arrivals);
  });

  it("has a lower p95 wait with its warm pool than without one, on the same arrivals", () => {
    const c = simulateComparison(tier, arrivals, { ...DAY, arrivalsSource: "poisson:6" });
    expect(c.withoutWarmPool).not.toBeNull();
    expect(c.declared.waitSeconds.p95).toBeLessThan(c.withoutWarmPool.waitSeconds.p95);
    expect(c.declared.scaling.warmStarts).toBeGreaterThan(0);
    expect(c.withoutWarmPool.scaling.warmStarts).toBe(0);
    expect(c.declared.jobs.arrived).toBe(c.withoutWarmPool.jobs.arrived);
  });

  it("with no jobs, stays at minSize and costs minSize × price × hours (plus the stopped pool's volumes)", () => {
    const hours = 10;
    const r = simulate(tier, [], { hours, seed: 1 });
    expect(r.scaling).toMatchObject({ peakGroupSize: 1, minGroupSize: 1, coldStarts: 0, warmStarts: 0 });
    expect(r.costUsd.compute).toBeCloseTo(tier.minSize * tier.instanceHourlyUsd * hours, 2);
    // The pool holds maxPreparedCapacity − desired = 5 stopped instances, billed for their volumes.
    expect(r.instanceHours.warmPoolStopped).toBe(5 * hours);
    expect(r.costUsd.warmPoolStorage).toBeCloseTo(5 * tier.stoppedHourlyUsd * hours, 2);
    const bare = simulate({ ...tier, warmPool: null }, [], { hours, seed: 1 });
    expect(bare.costUsd.total).toBeCloseTo(tier.minSize * tier.instanceHourlyUsd * hours, 2);
  });

  it("serves a job from the warm pool warmStartSeconds after the policy asks, cold coldBootSeconds after", () => {
    // The one in-service instance is busy for an hour; the second job needs a new one.
    const jobs: Arrival[] = [
      { offsetSeconds: 0, durationSeconds: 3600 },
      { offsetSeconds: 1, durationSeconds: 600 },
    ];
    // Target tracking alone: the fast path (on by default) is pinned in fast-path.test.ts.
    const slow = { ...tier, fastScale: null };
    const lag = detectionLag(tier, 1);
    expect(simulate(slow, jobs, DAY).waits[1]! - lag).toBe(tier.timing.warmStartSeconds);
    expect(simulate({ ...slow, warmPool: null }, jobs, DAY).waits[1]! - lag).toBe(
      tier.timing.coldBootSeconds,
    );
  });

  it("takes the warm start time from crucible:fleet.startup", () => {
    const slow = loadSimulatedTier(
      "prod",
      "gpu-small",
      prodWithFleet({ startup: { warmStartSeconds: 150 } }),
    );
    expect(slow.timing).toMatchObject({ warmStartSeconds: 150, coldBootSeconds: 240 });
    const jobs: Arrival[] = [
      { offsetSeconds: 0, durationSeconds: 3600 },
      { offsetSeconds: 1, durationSeconds: 600 },
    ];
    expect(simulate({ ...slow, fastScale: null }, jobs, DAY).waits[1]! - detectionLag(slow, 1)).toBe(150);
  });

  it("never grows past maxSize, however many jobs wait", () => {
    const flood = poissonArrivals(300, 6, defaultDurations(tier), 3);
    for (const t of [tier, { ...tier, warmPool: null }]) {
      const r = simulate(t, flood, { hours: 6, seed: 3 });
      expect(r.scaling.peakGroupSize).toBe(tier.maxSize);
      expect(r.scaling.peakDesired).toBe(tier.maxSize);
    }
  });
});

describe("spot tiers", () => {
  const declared = loadSimulatedTier("prod", "gpu-medium");
  const tier = { ...declared, spotInterruptionsPerHour: 0 };

  it("scale up from zero through the from-zero alarm, cold", () => {
    const slow = { ...tier, fastScale: null };
    const r = simulate(slow, [{ offsetSeconds: 601, durationSeconds: 300 }], { hours: 2, seed: 1 });
    expect(r.scaling.minGroupSize).toBe(0);
    expect(r.scaling.fromZeroScaleOuts).toBe(1);
    expect(r.jobs.completed).toBe(1);
    expect(r.waits[0]! - detectionLag(tier, 601)).toBe(tier.timing.coldBootSeconds);
  });

  it("hand interrupted jobs back; they resume from their checkpoints and finish", () => {
    const stormy = { ...declared, spotInterruptionsPerHour: 1 };
    const jobs = poissonArrivals(4, 12, { medianSeconds: 3600, sigma: 0.3 }, 5);
    const r = simulate(stormy, jobs, { hours: 48, seed: 5, checkpointSeconds: 300 });
    expect(r.scaling.spotInterruptions).toBeGreaterThan(0);
    expect(r.jobs.handedBack).toBeGreaterThan(0);
    expect(r.jobs.lostWorkSeconds).toBeLessThanOrEqual(300 * r.jobs.handedBack);
    expect(r.jobs.completed).toBe(jobs.length);
    expect(r.scaling.peakGroupSize).toBeLessThanOrEqual(declared.maxSize);
  });

  it("follow their pre-warm schedules (prod cpu-small: 4 from 08:00 Los Angeles time)", () => {
    const cpu = loadSimulatedTier("prod", "cpu-small");
    const r = simulate({ ...cpu, spotInterruptionsPerHour: 0 }, [], DAY);
    expect(r.scaling).toMatchObject({ minGroupSize: 1, peakGroupSize: 4 });
  });

  it("reject a cron form Auto Scaling does not take, naming the key", () => {
    const odd = { ...tier, prewarmSchedule: [{ name: "eom", recurrence: "0 8 L * *", minSize: 1 }] };
    expect(() => simulate(odd, [], DAY)).toThrow(
      'crucible:fleet.tiers.gpu-medium.prewarmSchedule[0].recurrence "0 8 L * *" is a cron form the simulation does not support',
    );
  });
});
