import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import {
  CreateQueueCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
  SQSClient,
} from "@aws-sdk/client-sqs";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import {
  FAST_SCALE_ENV,
  type FastScaleClients,
  type ScaledGroup,
  handle,
  look,
  needOf,
  parseSettings,
  raiseToNeed,
} from "../../../infra/fast-scaler/handler";

/**
 * The fast scale-out handler (infra/fast-scaler/handler.ts) with the real @aws-sdk clients: SQS against the
 * local emulator (fauxqs), Auto Scaling against an in-memory group behind the client's middleware stack, as
 * no Auto Scaling emulator runs here. The stub answers DescribeAutoScalingGroups and SetDesiredCapacity from
 * the group's state, yielding to the event loop first as a network call would, so interleaved looks would
 * show; every SetDesiredCapacity is recorded.
 */

interface Group {
  desired: number;
  max: number;
}

class AutoScalingStub {
  readonly groups = new Map<string, Group>();
  readonly raises: { asgName: string; desired: number; honorCooldown: unknown }[] = [];

  client(): AutoScalingClient {
    const client = new AutoScalingClient({
      region: "us-east-1",
      credentials: { accessKeyId: "x", secretAccessKey: "x" },
    });
    client.middlewareStack.add(
      (_next, context) => async (args) => {
        await new Promise((resolve) => setImmediate(resolve));
        const input = args.input as Record<string, unknown>;
        const { commandName } = context as { commandName?: string };
        if (commandName === "DescribeAutoScalingGroupsCommand") {
          const names = input.AutoScalingGroupNames as string[];
          return {
            output: {
              $metadata: {},
              AutoScalingGroups: names.flatMap((n) => {
                const g = this.groups.get(n);
                return g
                  ? [{ AutoScalingGroupName: n, DesiredCapacity: g.desired, MaxSize: g.max, MinSize: 0 }]
                  : [];
              }),
            },
            response: {},
          };
        }
        if (commandName !== "SetDesiredCapacityCommand") throw new Error(`unexpected ${commandName}`);
        const asgName = input.AutoScalingGroupName as string;
        const desired = input.DesiredCapacity as number;
        const group = this.groups.get(asgName)!;
        // What Auto Scaling itself refuses: a desired capacity past the maximum.
        if (desired > group.max)
          throw new Error(`ValidationError: ${desired} is above the maximum ${group.max}`);
        group.desired = desired;
        this.raises.push({ asgName, desired, honorCooldown: input.HonorCooldown });
        return { output: { $metadata: {} }, response: {} };
      },
      { step: "initialize", name: "autoScalingStub", priority: "high" },
    );
    return client;
  }
}

let sqs: SQSClient;
let close: () => Promise<void>;
let queueSeq = 0;

beforeAll(async () => {
  const { buildApp } = await import("fauxqs");
  const server = buildApp({ logger: false, host: "127.0.0.1", defaultRegion: "us-east-1" });
  const endpoint = await server.listen({ port: 0, host: "127.0.0.1" });
  sqs = new SQSClient({
    endpoint,
    region: "us-east-1",
    credentials: { accessKeyId: "x", secretAccessKey: "x" },
  });
  close = () => server.close();
});
afterAll(async () => {
  await close();
});

/** A tier's three priority queues, fresh for each test. */
async function tierQueues(): Promise<string[]> {
  queueSeq += 1;
  return Promise.all(
    ["high", "normal", "low"].map(async (p) => {
      const { QueueUrl } = await sqs.send(
        new CreateQueueCommand({ QueueName: `crucible-t${queueSeq}-${p}` }),
      );
      return QueueUrl!;
    }),
  );
}

const send = (queueUrl: string, n = 1) =>
  Promise.all(
    Array.from({ length: n }, (_, i) =>
      sqs.send(new SendMessageCommand({ QueueUrl: queueUrl, MessageBody: `job-${i}` })),
    ),
  );

let stub: AutoScalingStub;
let clients: FastScaleClients;
beforeEach(() => {
  // The handler logs a line per group and look; the assertions read what it returns and did.
  vi.spyOn(console, "log").mockImplementation(() => undefined);
  stub = new AutoScalingStub();
  clients = { sqs, autoscaling: stub.client() };
});

describe("the need", () => {
  it("is the nodes the jobs fill, rounded up, never past the maximum", () => {
    expect(needOf(0, 4, 10)).toBe(0);
    expect(needOf(1, 4, 10)).toBe(1);
    expect(needOf(8, 4, 10)).toBe(2);
    expect(needOf(9, 4, 10)).toBe(3);
    expect(needOf(100, 4, 10)).toBe(10);
    // A budget pause leaves a maximum of 0: nothing is raised.
    expect(needOf(100, 4, 0)).toBe(0);
    expect(needOf(3, 1.5, 10)).toBe(2);
  });
});

describe("a burst of 100 submissions", () => {
  it("raises the group once per distinct need as the queue fills, in order, and never past the maximum", async () => {
    const queueUrls = await tierQueues();
    const group: ScaledGroup = {
      tier: "cpu-small",
      asgName: "crucible-dev-cpu-small",
      queueUrls,
      jobsPerNode: 4,
    };
    stub.groups.set(group.asgName, { desired: 0, max: 20 });
    // Each submission's message, then its event, every look started at once without waiting for the last.
    const looks: Promise<unknown>[] = [];
    for (let i = 0; i < 100; i++) {
      await send(queueUrls[i % 3]!);
      looks.push(handlerFor([group]));
    }
    await Promise.all(looks);
    const desired = stub.raises.map((r) => r.desired);
    // 100 jobs at 4 a node is 25, capped by the maximum of 20.
    expect(desired.at(-1)).toBe(20);
    expect(new Set(desired).size).toBe(desired.length);
    expect(desired).toEqual([...desired].sort((a, b) => a - b));
    expect(Math.max(...desired)).toBeLessThanOrEqual(20);
    expect(stub.raises.every((r) => r.honorCooldown === false)).toBe(true);
  });

  it("raises once for each need when each submission's event follows its message", async () => {
    const queueUrls = await tierQueues();
    const group: ScaledGroup = {
      tier: "cpu-small",
      asgName: "crucible-dev-cpu-small",
      queueUrls,
      jobsPerNode: 4,
    };
    stub.groups.set(group.asgName, { desired: 0, max: 30 });
    for (let i = 0; i < 100; i++) {
      await send(queueUrls[0]!);
      await handlerFor([group]);
    }
    expect(stub.raises.map((r) => r.desired)).toEqual(Array.from({ length: 25 }, (_, i) => i + 1));
  });

  it("sets the need exactly once when 100 events arrive together for jobs already queued", async () => {
    const queueUrls = await tierQueues();
    const group: ScaledGroup = {
      tier: "gpu-small",
      asgName: "crucible-prod-gpu-small",
      queueUrls,
      jobsPerNode: 1,
    };
    stub.groups.set(group.asgName, { desired: 1, max: 8 });
    await send(queueUrls[1]!, 100);
    await Promise.all(Array.from({ length: 100 }, () => handlerFor([group])));
    expect(stub.raises).toEqual([{ asgName: group.asgName, desired: 8, honorCooldown: false }]);
  });
});

describe("a look", () => {
  it("counts running jobs (messages in flight) with waiting ones, over every priority queue", async () => {
    const queueUrls = await tierQueues();
    const group: ScaledGroup = {
      tier: "cpu-large",
      asgName: "crucible-staging-cpu-large",
      queueUrls,
      jobsPerNode: 2,
    };
    stub.groups.set(group.asgName, { desired: 0, max: 10 });
    await send(queueUrls[0]!, 3);
    await send(queueUrls[2]!, 2);
    // An agent takes two: they run, their messages in flight.
    await sqs.send(
      new ReceiveMessageCommand({ QueueUrl: queueUrls[0], MaxNumberOfMessages: 2, VisibilityTimeout: 300 }),
    );
    const steps = await raiseToNeed(clients, [group]);
    expect(steps).toEqual([
      {
        tier: "cpu-large",
        asgName: group.asgName,
        outcome: "raised",
        jobs: 5,
        need: 3,
        desired: 0,
        maxSize: 10,
      },
    ]);
  });

  it("never lowers a group, and does nothing when the need is met", async () => {
    const queueUrls = await tierQueues();
    const group: ScaledGroup = {
      tier: "cpu-small",
      asgName: "crucible-dev-cpu-small",
      queueUrls,
      jobsPerNode: 4,
    };
    stub.groups.set(group.asgName, { desired: 5, max: 10 });
    await send(queueUrls[0]!, 8);
    const steps = await raiseToNeed(clients, [group]);
    expect(steps[0]).toMatchObject({ outcome: "met", need: 2, desired: 5 });
    expect(stub.raises).toEqual([]);
    expect(stub.groups.get(group.asgName)!.desired).toBe(5);
  });

  it("leaves a group it cannot find, and raises the others", async () => {
    const [a, b] = [await tierQueues(), await tierQueues()];
    stub.groups.set("crucible-dev-cpu-large", { desired: 0, max: 2 });
    await send(a[0]!);
    await send(b[0]!);
    const steps = await raiseToNeed(clients, [
      { tier: "cpu-small", asgName: "crucible-dev-cpu-small", queueUrls: a, jobsPerNode: 4 },
      { tier: "cpu-large", asgName: "crucible-dev-cpu-large", queueUrls: b, jobsPerNode: 2 },
    ]);
    expect(steps.map((s) => s.outcome)).toEqual(["missing", "raised"]);
  });

  it("looks again after the settle when the job's message was not counted yet", async () => {
    const queueUrls = await tierQueues();
    const group: ScaledGroup = {
      tier: "gpu-small",
      asgName: "crucible-prod-gpu-small",
      queueUrls,
      jobsPerNode: 1,
    };
    stub.groups.set(group.asgName, { desired: 0, max: 4 });
    // The submitter sends the message after spec.json: it lands while the function waits.
    const waits: number[] = [];
    const steps = await look(clients, { groups: [group], settleSeconds: 2 }, async (ms) => {
      waits.push(ms);
      await send(queueUrls[0]!);
    });
    expect(waits).toEqual([2000]);
    expect(steps.map((s) => s.outcome)).toEqual(["met", "raised"]);
    expect(stub.raises.map((r) => r.desired)).toEqual([1]);
  });
});

describe("the settings", () => {
  it("refuses what infra would never hand over, naming the variable", () => {
    expect(() => parseSettings(undefined)).toThrow(`${FAST_SCALE_ENV}: must be JSON with a groups list`);
    expect(() =>
      parseSettings(JSON.stringify({ groups: [{ tier: "a", asgName: "b", queueUrls: [], jobsPerNode: 0 }] })),
    ).toThrow("jobsPerNode must be positive");
  });
});

/** The Lambda's entry point as deployed, with the test's clients: an S3 event whose content it ignores. */
async function handlerFor(groups: ScaledGroup[]): Promise<unknown> {
  process.env[FAST_SCALE_ENV] = JSON.stringify({ groups, settleSeconds: 0 });
  return handle({ Records: [{ s3: { object: { key: "workspaces/lab/ada/jobs/x/spec.json" } } }] }, clients);
}
