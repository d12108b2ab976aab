import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { EventEmitter } from "node:events";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { HealthReport } from "../../../../runtime/src/node/gpu/health-check";
import { HealthGate } from "../../../../runtime/src/node/gpu/health-gate";
import { InstanceMetadata, NodeLifecycle } from "../../../../runtime/src/node/node-lifecycle";
import { Ec2Node } from "../../../support/ec2-node";
import { logger, settle } from "./fakes";

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
