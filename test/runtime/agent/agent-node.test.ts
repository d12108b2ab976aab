import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import { submitJob } from "../../../runtime/src/job/submit";
import { localAgentEnv, queueDepth } from "../../../scripts/lib/soak";
import { crucible } from "../../support/cli";
import { Ec2Node } from "../../support/ec2-node";
import { spotPriceHistory } from "../../support/spot-prices";

const logger = pino({ level: "silent" });
const TIER = "cpu-small";
const GROUP = "crucible-dev-cpu-small";

let platform: LocalPlatform;
let node: Ec2Node;
let nodeEndpoint: string;
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-agent-node-"));
  platform = await startLocalPlatform({ tiers: [TIER], logger, visibilityTimeoutSeconds: 30 });
  node = new Ec2Node();
  nodeEndpoint = await node.start();
  node.metadata.set("instance-id", "i-0node");
  node.metadata.set("autoscaling/target-lifecycle-state", "InService");
  // A spot m6i.xlarge at 0.0768 USD/h: 0.4 of its on-demand 0.192.
  node.metadata.set("instance-life-cycle", "spot");
  node.metadata.set("instance-type", "m6i.xlarge");
  node.metadata.set("placement/availability-zone", "us-east-1a");
  node.answers.set(
    "DescribeSpotPriceHistory",
    spotPriceHistory([
      { instanceType: "m6i.xlarge", zone: "us-east-1a", price: "0.0768", at: "2026-12-01T00:00:00Z" },
    ]),
  );
});

afterAll(async () => {
  await node.stop();
  await platform.stop();
  await rm(root, { recursive: true, force: true });
});

async function submit(name: string, code: string): Promise<JobAddress> {
  const dir = join(root, name);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), code);
  const jobId = `node-${process.pid}-${name}`;
  return submitJob(platform.store, platform.queue(TIER), {
    path: dir,
    address: { project: "demo", user: "ada", jobId },
    spec: { jobId, tier: TIER, imageFamily: "cpu", env: {} },
    quotaGiB: 1,
  });
}

const protection = (value: "true" | "false") => (c: { params: Record<string, unknown> }) =>
  c.params.ProtectedFromScaleIn === value;

describe("crucible agent on a fleet node", () => {
  it("joins its group, prices its jobs at its spot price, holds scale-in protection while it works, publishes outcomes, and on scale-in hands its job back before letting the instance go", async () => {
    const agent = crucible(["agent", "--tier", TIER], undefined, {
      CRUCIBLE_LOG_LEVEL: "info",
      ...localAgentEnv(platform),
      CRUCIBLE_GRACE_SECONDS: "5",
      CRUCIBLE_ASG_NAME: GROUP,
      CRUCIBLE_LAUNCH_HOOK: `${GROUP}-launch`,
      CRUCIBLE_TERMINATION_HOOK: `${GROUP}-terminate`,
      AWS_EC2_METADATA_SERVICE_ENDPOINT: nodeEndpoint,
      AWS_ENDPOINT_URL_AUTO_SCALING: nodeEndpoint,
      AWS_ENDPOINT_URL_CLOUDWATCH: nodeEndpoint,
      AWS_ENDPOINT_URL_EC2: nodeEndpoint,
    });
    try {
      const launch = await node.nextCall("CompleteLifecycleAction");
      expect(launch.params).toMatchObject({
        AutoScalingGroupName: GROUP,
        LifecycleHookName: `${GROUP}-launch`,
        InstanceId: "i-0node",
        LifecycleActionResult: "CONTINUE",
      });

      const hello = await submit("hello", 'def main():\n    return "hi"\n');
      const outcome = await node.nextCall("PutMetricData");
      const [, seconds, cost] = outcome.params.MetricData as { Value: number }[];
      // The dashboard's cost at the same spot price as the ledger.
      expect(cost!.Value).toBe(Math.round(((0.008 * seconds!.Value) / 3600) * 1e6) / 1e6);
      expect((await platform.store.getEnvelope(hello))?.status).toBe("success");
      // cpu-small's 0.02 USD/h on demand, at the node's spot discount.
      expect(await platform.store.ledgerEntries({ project: "demo", user: "ada" })).toMatchObject([
        { jobId: hello.jobId, priceSource: "spot", pricePerHourUsd: 0.008, priceFactor: 1 },
      ]);
      await node.nextCall("SetInstanceProtection", protection("false"));

      const long = await submit("long", "import time\ndef main():\n    time.sleep(300)\n");
      await expect
        .poll(async () => (await platform.store.getState(long))?.status, { timeout: 60_000 })
        .toBe("running");
      node.metadata.set("autoscaling/target-lifecycle-state", "Terminated");
      // At worst: a metadata poll (5 s), the job's grace (5 s), and the class long poll in flight (7 s).
      const released = await node.nextCall(
        "CompleteLifecycleAction",
        (c) => String(c.params.LifecycleHookName).endsWith("-terminate"),
        40_000,
      );
      expect(released.params).toMatchObject({ InstanceId: "i-0node", LifecycleActionResult: "CONTINUE" });

      expect(await platform.store.getState(long)).toMatchObject({ status: "queued" });
      // Handed back: the message is in the queue again, for another node.
      expect(await queueDepth(platform, platform.queue(TIER).queueUrl)).toBe(1);
      expect(
        node.calls.map((c) =>
          c.action === "PutMetricData"
            ? (c.params.MetricData as { MetricName: string }[])[0]!.MetricName
            : `${c.action} ${String(c.params.ProtectedFromScaleIn ?? c.params.LifecycleHookName ?? c.params["InstanceType.1"])}`,
        ),
      ).toEqual([
        `CompleteLifecycleAction ${GROUP}-launch`,
        "DescribeSpotPriceHistory m6i.xlarge",
        "SetInstanceProtection true",
        "JobsSucceeded",
        "SetInstanceProtection false",
        "SetInstanceProtection true",
        "JobsInterrupted",
        "SetInstanceProtection false",
        `CompleteLifecycleAction ${GROUP}-terminate`,
      ]);
      expect(agent.child.exitCode).toBeNull();
    } finally {
      agent.child.kill("SIGTERM");
    }
    const done = await agent;
    expect({ code: done.code, signal: done.signal, stderr: done.stderr.slice(-2000) }).toMatchObject({
      code: 0,
      signal: null,
    });
    // It waited to be stopped instead of exiting (Docker would restart it on the departing node).
    expect(done.stderr).toContain('"signal":"SIGTERM","msg":"signal received; stopping"');
    // Stopped by its node: it took nothing more after letting the instance go.
    expect(node.calls.at(-1)?.action).toBe("CompleteLifecycleAction");
  });
});
