import { beforeAll, describe, expect, it } from "vitest";
import { configProblems, configWith, runStack, type Plan } from "../support/harness";

const QUEUE = "aws:sqs/queue:Queue";
const QUEUE_POLICY = "aws:sqs/queuePolicy:QueuePolicy";
const REDRIVE_ALLOW = "aws:sqs/redriveAllowPolicy:RedriveAllowPolicy";

/** Each stack's enabled tiers and its queue settings (the environment defaults: no stack file overrides them). */
const EXPECTED = {
  dev: {
    tiers: ["cpu-small", "cpu-large", "gpu-small"],
    visibility: 120,
    maxReceiveCount: 5,
    retention: 345600,
  },
  staging: {
    tiers: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium"],
    visibility: 120,
    maxReceiveCount: 5,
    retention: 345600,
  },
  prod: {
    tiers: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium", "gpu-large"],
    visibility: 120,
    maxReceiveCount: 5,
    retention: 345600,
  },
};

interface Expected {
  tiers: string[];
  visibility: number;
  maxReceiveCount: number;
  retention: number;
}

const json = (value: unknown) => JSON.parse(value as string) as Record<string, unknown>;

const PRIORITIES = ["high", "normal", "low"] as const;
/** `normal` keeps the name of the tier's one queue from before priorities: an existing stack keeps it. */
const logical = (tier: string, priority: string) =>
  priority === "normal" ? `queues-${tier}` : `queues-${tier}-${priority}`;

function checkQueues(getPlan: () => Plan, want: Expected): void {
  const queue = (tier: string, p: string) => getPlan().get(QUEUE, logical(tier, p));
  const dlq = (tier: string, p: string) => getPlan().get(QUEUE, `${logical(tier, p)}-dlq`);
  /** Every enabled tier and priority, as [tier, priority]. */
  const each = () => want.tiers.flatMap((t) => PRIORITIES.map((p) => [t, p] as const));

  it("declares exactly a job queue and a dead-letter queue per priority of each enabled tier", () => {
    expect(
      getPlan()
        .ofType(QUEUE)
        .map((q) => q.name)
        .sort(),
    ).toEqual(
      want.tiers
        .flatMap((t) => [
          `queues-${t}`,
          `queues-${t}-dlq`,
          `queues-${t}-high`,
          `queues-${t}-high-dlq`,
          `queues-${t}-low`,
          `queues-${t}-low-dlq`,
        ])
        .sort(),
    );
    expect(getPlan().ofType(QUEUE)).toHaveLength(want.tiers.length * 6);
  });

  it("keeps the normal queue's URN, so an existing stack's waiting jobs stay where they are", () => {
    const component = getPlan().get("crucible:queues:JobQueues", "queues");
    for (const tier of want.tiers) {
      expect(queue(tier, "normal").urn).toBe(
        `urn:pulumi:${getPlan().stack}::crucible::crucible:queues:JobQueues$aws:sqs/queue:Queue::queues-${tier}`,
      );
      expect(queue(tier, "normal").parent).toBe(component.urn);
    }
  });

  it("encrypts every queue at rest and long-polls for 20 s", () => {
    for (const q of getPlan().ofType(QUEUE)) {
      expect(q.inputs).toMatchObject({ sqsManagedSseEnabled: true, receiveWaitTimeSeconds: 20 });
    }
  });

  it(`keeps a running job invisible for ${want.visibility} s and its message ${want.retention} s`, () => {
    for (const [tier, p] of each()) {
      expect(queue(tier, p).inputs).toMatchObject({
        visibilityTimeoutSeconds: want.visibility,
        messageRetentionSeconds: want.retention,
      });
    }
  });

  it(`redrives each queue to its own DLQ after ${want.maxReceiveCount} receives`, () => {
    for (const [tier, p] of each()) {
      expect(json(queue(tier, p).inputs.redrivePolicy)).toEqual({
        deadLetterTargetArn: dlq(tier, p).state.arn,
        maxReceiveCount: want.maxReceiveCount,
      });
    }
  });

  it("keeps dead letters for the maximum 14 days, and lets only its own queue redrive into it", () => {
    for (const [tier, p] of each()) {
      const d = dlq(tier, p);
      expect(d.inputs.messageRetentionSeconds).toBe(1209600);
      expect(d.inputs.redrivePolicy).toBeUndefined();
      const allow = getPlan()
        .ofType(REDRIVE_ALLOW)
        .filter((p) => p.inputs.queueUrl === d.state.url);
      expect(allow).toHaveLength(1);
      expect(json(allow[0]!.inputs.redriveAllowPolicy)).toEqual({
        redrivePermission: "byQueue",
        sourceQueueArns: [queue(tier, p).state.arn],
      });
    }
  });

  it("denies every request without TLS on every queue", () => {
    const policies = getPlan().ofType(QUEUE_POLICY);
    for (const q of getPlan().ofType(QUEUE)) {
      const attached = policies.filter((p) => p.inputs.queueUrl === q.state.url);
      expect(attached).toHaveLength(1);
      expect(json(attached[0]!.inputs.policy)).toEqual({
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "DenyInsecureTransport",
            Effect: "Deny",
            Principal: "*",
            Action: "sqs:*",
            Resource: q.state.arn,
            Condition: { Bool: { "aws:SecureTransport": "false" } },
          },
        ],
      });
    }
  });

  it("tags each queue with its tier", () => {
    for (const [tier, p] of each()) {
      for (const q of [queue(tier, p), dlq(tier, p)]) {
        expect(q.inputs.tags).toEqual({ "crucible:component": "queues", "crucible:tier": tier });
      }
    }
  });

  it("exports each tier's URLs, ARNs and names per priority", () => {
    const byTier = getPlan().outputs.queues as Record<string, Record<string, Record<string, unknown>>>;
    expect(Object.keys(byTier)).toEqual(want.tiers);
    for (const tier of want.tiers) {
      expect(Object.keys(byTier[tier]!)).toEqual([...PRIORITIES]);
      for (const p of PRIORITIES) {
        const [q, d] = [queue(tier, p), dlq(tier, p)];
        expect(byTier[tier]![p]).toEqual({
          queueUrl: q.state.url,
          queueArn: q.state.arn,
          queueName: q.state.name,
          dlqUrl: d.state.url,
          dlqArn: d.state.arn,
          dlqName: d.state.name,
        });
      }
    }
  });
}

describe.each(Object.entries(EXPECTED))("%s stack queues", (stack, want) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  checkQueues(() => plan, want);
});

describe("queue settings from config", () => {
  const queue = { visibilityTimeoutSeconds: 900, maxReceiveCount: 3, messageRetentionSeconds: 86400 };
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack("dev", configWith("dev", { "crucible:fleet": { ...devFleet(), queue } }));
  });
  checkQueues(() => plan, {
    tiers: EXPECTED.dev.tiers,
    visibility: 900,
    maxReceiveCount: 3,
    retention: 86400,
  });
});

/** The dev stack file's own fleet settings, so an override keeps its tiers. */
function devFleet(): Record<string, unknown> {
  return JSON.parse(configWith("dev", {})["crucible:fleet"]!) as Record<string, unknown>;
}

describe("bad queue config is rejected with the key and what is allowed", () => {
  it("a visibility timeout a single missed heartbeat would outlast", () => {
    expect(
      configProblems("dev", {
        "crucible:fleet": { ...devFleet(), heartbeatSeconds: 60, queue: { visibilityTimeoutSeconds: 120 } },
      }),
    ).toContain(
      "crucible:fleet.queue.visibilityTimeoutSeconds must be more than twice fleet.heartbeatSeconds (60) so one missed heartbeat does not release a running job, got 120",
    );
  });

  it("a redrive count of zero", () => {
    expect(
      configProblems("dev", { "crucible:fleet": { ...devFleet(), queue: { maxReceiveCount: 0 } } }),
    ).toEqual(["crucible:fleet.queue.maxReceiveCount must be a whole number from 1 to 1000, got 0"]);
  });

  it("a retention longer than SQS keeps messages", () => {
    expect(
      configProblems("dev", {
        "crucible:fleet": { ...devFleet(), queue: { messageRetentionSeconds: 1209601 } },
      }),
    ).toEqual([
      "crucible:fleet.queue.messageRetentionSeconds must be a whole number from 60 to 1209600, got 1209601",
    ]);
  });
});
