import { beforeAll, describe, expect, it } from "vitest";
import { T } from "../../support/fleet-plan";
import { configWith, readStackConfig, runStack, type Plan } from "../../support/harness";

/** A warm pool's state reaches the group's warmPool, and Hibernated the launch template too. */

describe("warm pool states under mocks", () => {
  let plan: Plan;
  const devFleet = JSON.parse(readStackConfig("dev")["crucible:fleet"]!) as {
    tiers: Record<string, Record<string, unknown>>;
  };
  const onDemand = { enabled: false, onDemandBase: 0, onDemandPercentage: 100 };
  beforeAll(async () => {
    plan = await runStack(
      "dev",
      configWith("dev", {
        "crucible:fleet": {
          ...devFleet,
          tiers: {
            ...devFleet.tiers,
            "cpu-small": {
              ...devFleet.tiers["cpu-small"],
              instanceTypes: ["m6i.xlarge"],
              // Its 16 GiB of RAM beside the node's 48 (crucible:fleet.tiers.*.rootVolumeGiB's rule).
              rootVolumeGiB: 64,
              spot: onDemand,
              warmPool: { minSize: 1, maxPreparedCapacity: 2, state: "Hibernated" },
            },
            "gpu-small": {
              ...devFleet.tiers["gpu-small"],
              spot: onDemand,
              warmPool: { minSize: 1, maxPreparedCapacity: 1, state: "Running" },
            },
          },
        },
      }),
    );
  });

  it("holds each pool in its declared state, returning scaled-in instances to it", () => {
    expect(plan.get(T.group, "fleet-gpu-small-nodes").inputs.warmPool).toEqual({
      poolState: "Running",
      minSize: 1,
      maxGroupPreparedCapacity: 1,
      instanceReusePolicy: { reuseOnScaleIn: true },
    });
    expect(plan.get(T.group, "fleet-cpu-small-nodes").inputs.warmPool).toEqual({
      poolState: "Hibernated",
      minSize: 1,
      maxGroupPreparedCapacity: 2,
      instanceReusePolicy: { reuseOnScaleIn: true },
    });
  });

  it("enables hibernation on the launch template of a Hibernated pool only, with its encrypted root", () => {
    const hibernated = plan.get(T.template, "fleet-cpu-small-node").inputs;
    expect(hibernated.hibernationOptions).toEqual({ configured: true });
    expect(hibernated.blockDeviceMappings).toMatchObject([{ ebs: { encrypted: "true", volumeSize: 64 } }]);
    expect(plan.get(T.template, "fleet-gpu-small-node").inputs.hibernationOptions).toBeUndefined();
    expect(plan.get(T.template, "fleet-cpu-large-node").inputs.hibernationOptions).toBeUndefined();
  });
});
