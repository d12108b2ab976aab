import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { CloudWatchClient } from "@aws-sdk/client-cloudwatch";
import { EventEmitter } from "node:events";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Departure } from "../../../runtime/src/node/node-lifecycle";
import {
  cloudWatchOutcomes,
  InstanceMetadata,
  NodeLifecycle,
} from "../../../runtime/src/node/node-lifecycle";
import type { QueryCall } from "../../support/ec2-node";
import { Ec2Node } from "../../support/ec2-node";

const logger = pino({ level: "silent" });
const CREDENTIALS = { accessKeyId: "test", secretAccessKey: "test" };
const GROUP = {
  name: "crucible-prod-gpu-small",
  launchHook: "crucible-prod-gpu-small-launch",
  terminationHook: "crucible-prod-gpu-small-terminate",
};

let node: Ec2Node;
let endpoint: string;

beforeEach(async () => {
  node = new Ec2Node();
  endpoint = await node.start();
  node.metadata.set("instance-id", "i-0abc");
});

afterEach(async () => {
  await node.stop();
});

function lifecycle(): NodeLifecycle {
  return new NodeLifecycle({
    metadata: new InstanceMetadata(endpoint),
    autoscaling: new AutoScalingClient({ endpoint, region: "us-west-2", credentials: CREDENTIALS }),
    group: GROUP,
    logger,
    pollSeconds: 0.05,
  });
}

const hookCompletion = (hook: string) => ({
  AutoScalingGroupName: GROUP.name,
  LifecycleHookName: hook,
  InstanceId: "i-0abc",
  LifecycleActionResult: "CONTINUE",
});

const actions = (): string[] => node.calls.map((c) => c.action);

describe("InstanceMetadata", () => {
  it("reads with a session token (IMDSv2), and a missing path as undefined", async () => {
    const metadata = new InstanceMetadata(endpoint);
    expect(await metadata.get("instance-id")).toBe("i-0abc");
    expect(await metadata.get("spot/instance-action")).toBeUndefined();
  });

  it("fails with the path and status when the service refuses", async () => {
    node.issuesTokens = false;
    await expect(new InstanceMetadata(endpoint).get("instance-id")).rejects.toThrow(
      "instance metadata token request answered 403",
    );
  });
});

describe("joining the group", () => {
  it("completes the launch hook with CONTINUE once in service, and serves", async () => {
    node.metadata.set("autoscaling/target-lifecycle-state", "InService");
    expect(await lifecycle().join()).toBeUndefined();
    expect(node.calls).toEqual([
      {
        action: "CompleteLifecycleAction",
        params: expect.objectContaining(hookCompletion(GROUP.launchHook)) as QueryCall["params"],
      },
    ]);
  });

  it("completes the hook for the warm pool without serving, then again when put in service", async () => {
    node.metadata.set("autoscaling/target-lifecycle-state", "Warmed:Stopped");
    let served = false;
    const joining = lifecycle()
      .join()
      .then((departure) => {
        served = true;
        return departure;
      });
    await node.nextCall("CompleteLifecycleAction");
    expect(served).toBe(false);
    node.metadata.set("autoscaling/target-lifecycle-state", "InService");
    expect(await joining).toBeUndefined();
    expect(actions()).toEqual(["CompleteLifecycleAction", "CompleteLifecycleAction"]);
  });

  it("readies a warm node before completing its hook into the warm pool, once, and not again in service", async () => {
    node.metadata.set("autoscaling/target-lifecycle-state", "Warmed:Stopped");
    const order: string[] = [];
    const warmUp = (): Promise<boolean> => {
      order.push(`warm-up, ${node.calls.length} hook calls`);
      return Promise.resolve(true);
    };
    const joining = lifecycle().join(undefined, warmUp);
    await node.nextCall("CompleteLifecycleAction");
    node.metadata.set("autoscaling/target-lifecycle-state", "InService");
    expect(await joining).toBeUndefined();
    expect(order).toEqual(["warm-up, 0 hook calls"]);
    expect(actions()).toEqual(["CompleteLifecycleAction", "CompleteLifecycleAction"]);
  });

  it("abandons the launch of a warm node that is not fit to serve, and takes nothing", async () => {
    node.metadata.set("autoscaling/target-lifecycle-state", "Warmed:Stopped");
    expect(await lifecycle().join(undefined, () => Promise.resolve(false))).toBe("scale-in");
    expect(node.calls).toEqual([
      {
        action: "CompleteLifecycleAction",
        params: expect.objectContaining({
          ...hookCompletion(GROUP.launchHook),
          LifecycleActionResult: "ABANDON",
        }) as QueryCall["params"],
      },
    ]);
  });

  it("still serves when no launch action is pending (an agent restarted on a node in service)", async () => {
    node.metadata.set("autoscaling/target-lifecycle-state", "InService");
    node.failing.set("CompleteLifecycleAction", "ValidationError");
    expect(await lifecycle().join()).toBeUndefined();
  });

  it("takes nothing on a node that already has a spot notice or is terminating", async () => {
    node.metadata.set("autoscaling/target-lifecycle-state", "InService");
    node.metadata.set("spot/instance-action", '{"action":"terminate","time":"2026-12-02T16:00:00Z"}');
    expect(await lifecycle().join()).toBe("spot-interruption");
    node.metadata.delete("spot/instance-action");
    node.metadata.set("autoscaling/target-lifecycle-state", "Terminated");
    expect(await lifecycle().join()).toBe("scale-in");
    expect(node.calls).toEqual([]);
  });

  it("refuses to run where there is no instance id", async () => {
    node.metadata.delete("instance-id");
    await expect(lifecycle().join()).rejects.toThrow(/no instance-id/);
  });
});

describe("serving", () => {
  async function serving(): Promise<{ life: NodeLifecycle; agent: EventEmitter<{ load: [number] }> }> {
    node.metadata.set("autoscaling/target-lifecycle-state", "InService");
    const life = lifecycle();
    await life.join();
    node.calls.length = 0;
    return { life, agent: new EventEmitter<{ load: [number] }>() };
  }

  it("holds scale-in protection exactly while jobs run, with one call per change", async () => {
    const { life, agent } = await serving();
    const unwatch = life.watch(agent, () => undefined);
    try {
      agent.emit("load", 1);
      agent.emit("load", 2);
      const on = await node.nextCall("SetInstanceProtection");
      expect(on.params).toMatchObject({
        AutoScalingGroupName: GROUP.name,
        "InstanceIds.member.1": "i-0abc",
        ProtectedFromScaleIn: "true",
      });
      agent.emit("load", 1);
      agent.emit("load", 0);
      const off = await node.nextCall(
        "SetInstanceProtection",
        (c) => c.params.ProtectedFromScaleIn === "false",
      );
      expect(off.params["InstanceIds.member.1"]).toBe("i-0abc");
      expect(actions()).toEqual(["SetInstanceProtection", "SetInstanceProtection"]);
    } finally {
      unwatch();
    }
  });

  /** Watches until the node reports a departure; resolves with every departure reported by then. */
  function departures(life: NodeLifecycle, agent: EventEmitter<{ load: [number] }>): Promise<Departure[]> {
    const seen: Departure[] = [];
    return new Promise((resolve) => {
      const unwatch = life.watch(agent, (departure) => {
        seen.push(departure);
        unwatch();
        resolve(seen);
      });
    });
  }

  it.each([
    ["spot/instance-action", '{"action":"terminate","time":"2026-12-02T16:00:00Z"}', "spot-interruption"],
    ["events/recommendations/rebalance", '{"noticeTime":"2026-12-02T16:00:00Z"}', "rebalance"],
  ])(
    "reports %s once, then completes the termination hook only when the group terminates the node",
    async (path, notice, expected) => {
      const { life, agent } = await serving();
      const reported = departures(life, agent);
      node.metadata.set(path, notice);
      expect(await reported).toEqual([expected]);
      const looked = node.reads("autoscaling/target-lifecycle-state", 2);
      const leaving = life.leave();
      await looked;
      expect(node.calls).toEqual([]);
      node.metadata.set("autoscaling/target-lifecycle-state", "Terminated");
      await leaving;
      expect(node.calls).toEqual([
        {
          action: "CompleteLifecycleAction",
          params: expect.objectContaining(hookCompletion(GROUP.terminationHook)) as QueryCall["params"],
        },
      ]);
    },
  );

  it("on scale-in, completes the termination hook once its jobs are handed back", async () => {
    const { life, agent } = await serving();
    const reported = departures(life, agent);
    node.metadata.set("autoscaling/target-lifecycle-state", "Terminated");
    expect(await reported).toEqual(["scale-in"]);
    await life.leave();
    expect(node.calls).toEqual([
      {
        action: "CompleteLifecycleAction",
        params: expect.objectContaining(hookCompletion(GROUP.terminationHook)) as QueryCall["params"],
      },
    ]);
  });

  it("stops waiting for the termination when the agent is stopped", async () => {
    const { life } = await serving();
    const stop = new AbortController();
    const leaving = life.leave(stop.signal);
    stop.abort();
    await leaving;
    expect(node.calls).toEqual([]);
  });
});

describe("marking the node unhealthy", () => {
  const setUnhealthy = {
    action: "SetInstanceHealth",
    params: {
      Action: "SetInstanceHealth",
      Version: "2011-01-01",
      InstanceId: "i-0abc",
      HealthStatus: "Unhealthy",
      ShouldRespectGracePeriod: "false",
    },
  };

  it("sends SetInstanceHealth Unhealthy without the grace period, for its own instance", async () => {
    await lifecycle().markUnhealthy("GPU 0 has 2 uncorrectable ECC errors");
    expect(node.calls).toEqual([setUnhealthy]);
  });

  it("then leaves like a scale-in: a departure, and the termination hook once jobs are back", async () => {
    node.metadata.set("autoscaling/target-lifecycle-state", "InService");
    const life = lifecycle();
    await life.join();
    node.calls.length = 0;
    const departed = new Promise<Departure>((resolve) => {
      const unwatch = life.watch(new EventEmitter<{ load: [number] }>(), (departure) => {
        unwatch();
        resolve(departure);
      });
    });
    await life.markUnhealthy("GPU 0 has 2 uncorrectable ECC errors");
    expect(await departed).toBe("scale-in");
    await life.leave();
    expect(node.calls).toEqual([
      setUnhealthy,
      {
        action: "CompleteLifecycleAction",
        params: expect.objectContaining(hookCompletion(GROUP.terminationHook)) as QueryCall["params"],
      },
    ]);
  });

  it("fails with Auto Scaling's error", async () => {
    node.failing.set("SetInstanceHealth", "ResourceContention");
    await expect(lifecycle().markUnhealthy("ECC")).rejects.toMatchObject({ name: "ResourceContentionFault" });
    expect(node.metadata.get("autoscaling/target-lifecycle-state")).toBeUndefined();
  });
});

describe("job outcome metrics", () => {
  const cloudwatch = () =>
    new CloudWatchClient({ endpoint, region: "us-west-2", credentials: CREDENTIALS, maxAttempts: 1 });

  it("publishes each attempt's count, run time and cost at its charged price in Crucible/Jobs, by tier", async () => {
    const record = cloudWatchOutcomes(cloudwatch(), logger);
    await record({ outcome: "succeeded", tier: "gpu-small", seconds: 1800, chargedHourlyUsd: 0.526 });
    await record({ outcome: "interrupted", tier: "cpu-large", seconds: 36, chargedHourlyUsd: 0.096 });
    // A spot cpu-small attempt at 0.4 of its 0.02 on demand: finer than the ledger's hundredth of a cent.
    await record({ outcome: "succeeded", tier: "cpu-small", seconds: 9, chargedHourlyUsd: 0.008 });
    const metrics = (name: string, tier: string, seconds: number, costUsd: number) => {
      const Dimensions = [{ Name: "Tier", Value: tier }];
      return {
        action: "PutMetricData",
        params: {
          Namespace: "Crucible/Jobs",
          MetricData: [
            { MetricName: name, Dimensions, Unit: "Count", Value: 1 },
            { MetricName: "JobSeconds", Dimensions, Unit: "Seconds", Value: seconds },
            { MetricName: "JobCostUsd", Dimensions, Unit: "None", Value: costUsd },
          ],
        },
      };
    };
    // Half an hour of gpu-small at $0.526/h; 36 s of cpu-large at $0.096/h.
    expect(node.calls).toEqual([
      metrics("JobsSucceeded", "gpu-small", 1800, 0.263),
      metrics("JobsInterrupted", "cpu-large", 36, 0.00096),
      metrics("JobsSucceeded", "cpu-small", 9, 0.00002),
    ]);
  });

  it("never fails the job it counts when CloudWatch refuses", async () => {
    node.failing.set("PutMetricData", "Throttling");
    await expect(
      cloudWatchOutcomes(
        cloudwatch(),
        logger,
      )({
        outcome: "failed",
        tier: "gpu-small",
        seconds: 5,
        chargedHourlyUsd: 0.526,
      }),
    ).resolves.toBeUndefined();
    expect(actions()).toEqual(["PutMetricData"]);
  });
});
