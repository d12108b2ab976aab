import { describe, expect, it } from "vitest";
import { jobQueuesHaveDlq, snsTopicsEncrypted, sqsQueuesEncrypted } from "../../policies/messaging";
import {
  UNKNOWN_VALUE,
  messages,
  urnOf,
  validateResource,
  validateStack,
  type TestResource,
} from "./run-policy";

const QUEUE = "aws:sqs/queue:Queue";
const arnOf = (name: string) => `arn:aws:sqs:us-east-1:123456789012:${name}`;
const queue = (name: string, props: Record<string, unknown> = {}): TestResource => ({
  type: QUEUE,
  name,
  props: {
    name,
    arn: arnOf(name),
    url: `https://sqs.us-east-1.amazonaws.com/123456789012/${name}`,
    sqsManagedSseEnabled: true,
    ...props,
  },
});
const redrive = (target: string) => JSON.stringify({ deadLetterTargetArn: target, maxReceiveCount: 5 });

describe("sqs-queues-encrypted", () => {
  it("passes SSE-SQS and KMS", async () => {
    expect((await validateResource(sqsQueuesEncrypted(), queue("jobs"))).violations).toEqual([]);
    const kms = queue("jobs", { sqsManagedSseEnabled: undefined, kmsMasterKeyId: "alias/aws/sqs" });
    expect((await validateResource(sqsQueuesEncrypted(), kms)).violations).toEqual([]);
  });

  it("fails a queue without encryption", async () => {
    const o = await validateResource(sqsQueuesEncrypted(), queue("jobs", { sqsManagedSseEnabled: false }));
    expect(messages(o)).toEqual(["jobs: set sqsManagedSseEnabled to true or kmsMasterKeyId to a KMS key."]);
  });
});

describe("sns-topics-encrypted", () => {
  const topic = (props: Record<string, unknown>): TestResource => ({
    type: "aws:sns/topic:Topic",
    name: "notifications-topic",
    props,
  });

  it("passes a topic with a KMS key", async () => {
    expect(
      (await validateResource(snsTopicsEncrypted(), topic({ kmsMasterKeyId: "arn:aws:kms:k" }))).violations,
    ).toEqual([]);
  });

  it("fails a topic without one", async () => {
    expect(messages(await validateResource(snsTopicsEncrypted(), topic({})))).toEqual([
      "notifications-topic: set kmsMasterKeyId to a KMS key (a customer key lets budgets and alarms publish).",
    ]);
  });
});

describe("job-queues-have-dlq", () => {
  const policy = jobQueuesHaveDlq();

  it("passes a job queue whose redrive policy targets its DLQ (which needs none itself)", async () => {
    const o = await validateStack(policy, [
      queue("jobs", { redrivePolicy: redrive(arnOf("jobs-dlq")) }),
      queue("jobs-dlq"),
    ]);
    expect(o.violations).toEqual([]);
  });

  it("passes a redrive policy declared as its own resource", async () => {
    const o = await validateStack(policy, [
      queue("jobs"),
      queue("jobs-dlq"),
      {
        type: "aws:sqs/redrivePolicy:RedrivePolicy",
        name: "jobs-redrive",
        props: {
          queueUrl: "https://sqs.us-east-1.amazonaws.com/123456789012/jobs",
          redrivePolicy: redrive(arnOf("jobs-dlq")),
        },
      },
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails a job queue without a DLQ, naming it", async () => {
    const o = await validateStack(policy, [
      queue("jobs", { redrivePolicy: redrive(arnOf("jobs-dlq")) }),
      queue("jobs-dlq"),
      queue("other"),
    ]);
    expect(o.violations.map((v) => v.urn)).toEqual([urnOf(QUEUE, "other")]);
    expect(messages(o)[0]).toMatch(
      /^SQS queue other is a job queue without a dead-letter queue: set redrivePolicy to/,
    );
  });

  it("fails a redrive policy that points at the queue itself or at something not a queue", async () => {
    const o = await validateStack(policy, [queue("loop", { redrivePolicy: redrive(arnOf("loop")) })]);
    expect(messages(o)).toEqual([
      "SQS queue loop: its redrive policy targets the queue itself; point it at a separate dead-letter queue.",
    ]);
    const bad = await validateStack(policy, [
      queue("jobs", { redrivePolicy: redrive("arn:aws:sns:us-east-1:1:t") }),
    ]);
    expect(messages(bad)).toEqual([
      "SQS queue jobs: its redrive policy's deadLetterTargetArn must be an SQS queue ARN, got arn:aws:sns:us-east-1:1:t.",
    ]);
  });

  it("recognises the DLQ by property dependency during preview, when ARNs are unknown", async () => {
    const o = await validateStack(
      policy,
      [
        queue("jobs", { arn: UNKNOWN_VALUE.string, redrivePolicy: UNKNOWN_VALUE.string }),
        { ...queue("jobs-dlq", { arn: UNKNOWN_VALUE.string }) },
      ].map((q) =>
        q.name === "jobs" ? { ...q, propertyDependencies: { redrivePolicy: [urnOf(QUEUE, "jobs-dlq")] } } : q,
      ),
    );
    expect(o).toEqual({ violations: [] });
  });
});
