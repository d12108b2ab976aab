import { GetQueueAttributesCommand } from "@aws-sdk/client-sqs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { imageRef } from "../../runtime/src/image-matrix";
import type { JobAddress } from "../../runtime/src/job-store";
import type { LocalPlatform } from "../../runtime/src/local-platform";
import { startLocalPlatform } from "../../runtime/src/local-platform";
import { submitJob } from "../../runtime/src/submit";
import { crucible } from "../cli";
import { Ec2Node } from "../ec2-node";

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
    spec: { jobId, tier: TIER, image: imageRef("cpu"), env: {} },
    quotaGiB: 1,
  });
}

/** Resolves once `check` holds, looking every 200 ms, or fails after `ms`. */
async function until(what: string, check: () => Promise<boolean>, ms = 60_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

const protection = (value: "true" | "false") => (c: { params: Record<string, unknown> }) =>
  c.params.ProtectedFromScaleIn === value;

describe("crucible agent on a fleet node", () => {
  it("joins its group, holds scale-in protection while it works, publishes outcomes, and on scale-in hands its job back before letting the instance go", async () => {
    const agent = crucible(["agent", "--tier", TIER], undefined, {
      CRUCIBLE_LOG_LEVEL: "info",
      CRUCIBLE_BUCKET: platform.bucket,
      CRUCIBLE_ENDPOINT: platform.endpoint,
      CRUCIBLE_QUEUE_URL: platform.queue(TIER).queueUrl,
      CRUCIBLE_GRACE_SECONDS: "5",
      CRUCIBLE_ASG_NAME: GROUP,
      CRUCIBLE_LAUNCH_HOOK: `${GROUP}-launch`,
      CRUCIBLE_TERMINATION_HOOK: `${GROUP}-terminate`,
      AWS_REGION: platform.region,
      AWS_ACCESS_KEY_ID: "local",
      AWS_SECRET_ACCESS_KEY: "local",
      AWS_EC2_METADATA_SERVICE_ENDPOINT: nodeEndpoint,
      AWS_ENDPOINT_URL_AUTO_SCALING: nodeEndpoint,
      AWS_ENDPOINT_URL_CLOUDWATCH: nodeEndpoint,
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
      await node.nextCall("PutMetricData");
      expect((await platform.store.getEnvelope(hello))?.status).toBe("success");
      await node.nextCall("SetInstanceProtection", protection("false"));

      const long = await submit("long", "import time\ndef main():\n    time.sleep(300)\n");
      await until(
        "the long job starting",
        async () => (await platform.store.getState(long))?.status === "running",
      );
      node.metadata.set("autoscaling/target-lifecycle-state", "Terminated");
      const released = await node.nextCall("CompleteLifecycleAction", (c) =>
        String(c.params.LifecycleHookName).endsWith("-terminate"),
      );
      expect(released.params).toMatchObject({ InstanceId: "i-0node", LifecycleActionResult: "CONTINUE" });

      expect(await platform.store.getState(long)).toMatchObject({ status: "queued" });
      const depth = await platform.sqs.send(
        new GetQueueAttributesCommand({
          QueueUrl: platform.queue(TIER).queueUrl,
          AttributeNames: ["ApproximateNumberOfMessages"],
        }),
      );
      expect(depth.Attributes?.ApproximateNumberOfMessages).toBe("1");
      expect(
        node.calls.map((c) =>
          c.action === "PutMetricData"
            ? (c.params.MetricData as { MetricName: string }[])[0]!.MetricName
            : `${c.action} ${String(c.params.ProtectedFromScaleIn ?? c.params.LifecycleHookName)}`,
        ),
      ).toEqual([
        `CompleteLifecycleAction ${GROUP}-launch`,
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
    // Stopped by its node: it took nothing more after letting the instance go.
    expect(node.calls.at(-1)?.action).toBe("CompleteLifecycleAction");
  });
});
