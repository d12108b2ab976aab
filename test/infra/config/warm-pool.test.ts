import { describe, expect, it } from "vitest";
import { configProblems as problemsFor } from "../../support/harness";
import { parseWith as parse } from "../../support/crucible-config";

/** `crucible:fleet.tiers.<tier>.warmPool.state`: Stopped unless said, Hibernated only where EC2 can. */

const onDemand = { enabled: false, onDemandBase: 0, onDemandPercentage: 100 };
const pool = (state: string) => ({ minSize: 1, maxPreparedCapacity: 1, state });

describe("warm pool state", () => {
  it("defaults to Stopped", () => {
    expect(parse("prod").fleet.tiers["gpu-small"]?.warmPool).toEqual({
      minSize: 2,
      maxPreparedCapacity: 6,
      state: "Stopped",
    });
  });

  it("takes Running on a GPU tier", () => {
    const config = parse("dev", {
      "crucible:fleet": { tiers: { "gpu-small": { spot: onDemand, warmPool: pool("Running") } } },
    });
    expect(config.fleet.tiers["gpu-small"]?.warmPool?.state).toBe("Running");
  });

  it("rejects a state Auto Scaling does not have, naming the three", () => {
    expect(
      problemsFor("dev", {
        "crucible:fleet": { tiers: { "gpu-small": { spot: onDemand, warmPool: pool("Warm") } } },
      }),
    ).toEqual([
      'crucible:fleet.tiers.gpu-small.warmPool.state must be one of Stopped, Hibernated, Running, got "Warm"',
    ]);
  });

  it("rejects Hibernated on instance types EC2 cannot hibernate (no GPU family can)", () => {
    expect(
      problemsFor("dev", {
        "crucible:fleet": {
          tiers: {
            "gpu-small": {
              instanceTypes: ["g4dn.xlarge"],
              rootVolumeGiB: 200,
              spot: onDemand,
              warmPool: pool("Hibernated"),
            },
          },
        },
      }),
    ).toEqual([
      'crucible:fleet.tiers.gpu-small.instanceTypes[0] cannot be hibernated, which warmPool.state Hibernated needs; use an instance type that hibernates (c6i.large, c6i.xlarge, m5.large, m5.xlarge, m6a.large, m6a.xlarge, m6i.large, m6i.xlarge, m7i.xlarge, r6i.large) or warmPool.state Stopped or Running, got "g4dn.xlarge"',
    ]);
  });

  it("needs a root volume that holds the RAM besides the OS, images, workspaces and caches when Hibernated", () => {
    const tier = { instanceTypes: ["m6i.xlarge"], spot: onDemand, warmPool: pool("Hibernated") };
    expect(
      problemsFor("dev", { "crucible:fleet": { tiers: { "cpu-small": { ...tier, rootVolumeGiB: 40 } } } }),
    ).toEqual([
      "crucible:fleet.tiers.cpu-small.rootVolumeGiB must be at least 64 with warmPool.state Hibernated: the instance's 16 GiB of RAM is saved to the root volume, beside 30 GiB for the OS and images, 8 GiB of job workspaces, a 4 GiB dataset cache and a 6 GiB environment cache, got 40",
    ]);
    expect(
      problemsFor("dev", { "crucible:fleet": { tiers: { "cpu-small": { ...tier, rootVolumeGiB: 64 } } } }),
    ).toEqual([]);
  });

  it("orders the warm start times: running ≤ hibernated ≤ stopped", () => {
    expect(
      problemsFor("dev", {
        "crucible:fleet": { startup: { hibernatedStartSeconds: 90, runningStartSeconds: 120 } },
      }),
    ).toEqual([
      "crucible:fleet.startup.hibernatedStartSeconds must be at most fleet.startup.warmStartSeconds (60): a hibernated instance resumes where a stopped one boots, got 90",
      "crucible:fleet.startup.runningStartSeconds must be at most fleet.startup.hibernatedStartSeconds (90): a running instance is already up, got 120",
    ]);
  });
});
