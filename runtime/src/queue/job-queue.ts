import type { SQSClient } from "@aws-sdk/client-sqs";
import {
  ChangeMessageVisibilityCommand,
  DeleteMessageCommand,
  GetQueueAttributesCommand,
  ReceiveMessageCommand,
  SendMessageCommand,
} from "@aws-sdk/client-sqs";
import type { JobAddress } from "../store/job-store";
import { jobAddressSchema } from "../store/job-store";
import type { Logger } from "../logger";
import type { Priority } from "../catalog/scheduling";

/** A received message: the job's address, or why the body is not one (a poison message). */
export interface ReceivedJob {
  readonly receiptHandle: string;
  readonly messageId: string;
  /** How many times the queue has handed this message out, this time included. */
  readonly receiveCount: number;
  readonly address?: JobAddress;
  readonly problem?: string;
  /** Who sent it, as SQS authenticated them (`<role unique id>:<session>` for an assumed role). */
  readonly senderId?: string;
  /** The queue it came from: its priority class, and where to extend, release or delete it. */
  readonly queue: JobQueue;
}

/**
 * A tier's SQS queue of jobs. A message carries only the job's address; while a job runs, its message
 * stays invisible through heartbeats, and a message never deleted returns and, after the queue's
 * maxReceiveCount, is moved to the dead-letter queue by SQS itself.
 */
export class JobQueue {
  constructor(
    private readonly sqs: SQSClient,
    readonly queueUrl: string,
    private readonly logger: Logger,
    /** The priority class whose jobs this queue holds. */
    readonly priority: Priority = "normal",
  ) {}

  /** Queues a job; with `delaySeconds` (at most 900, SQS's limit) it becomes visible only then. */
  async send(address: JobAddress, delaySeconds = 0): Promise<string> {
    const out = await this.sqs.send(
      new SendMessageCommand({
        QueueUrl: this.queueUrl,
        MessageBody: JSON.stringify({ version: 1, ...address }),
        ...(delaySeconds > 0 && { DelaySeconds: Math.min(900, Math.ceil(delaySeconds)) }),
      }),
    );
    this.logger.debug(
      { jobId: address.jobId, messageId: out.MessageId, priority: this.priority, delaySeconds },
      "job queued",
    );
    return out.MessageId ?? "";
  }

  /**
   * Puts a received job back as a fresh message (after `delaySeconds`) and deletes the one received.
   * Unlike {@link release}, the new message starts with a receive count of 0: a job deferred for fair
   * share or preempted many times must not be moved to the dead-letter queue as if it were poison.
   * Sent before the delete, so a failure between the two duplicates the job rather than losing it.
   */
  async requeue(message: ReceivedJob & { address: JobAddress }, delaySeconds = 0): Promise<void> {
    await this.send(message.address, delaySeconds);
    await message.queue.delete(message.receiptHandle);
  }

  /** Messages waiting to be received (SQS's approximate count; no receive is counted). */
  async waiting(): Promise<number> {
    const out = await this.sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: this.queueUrl,
        AttributeNames: ["ApproximateNumberOfMessages"],
      }),
    );
    return Number(out.Attributes?.ApproximateNumberOfMessages ?? "0");
  }

  /** Long-polls for up to `max` jobs. */
  async receive(max: number, waitSeconds: number): Promise<ReceivedJob[]> {
    const out = await this.sqs.send(
      new ReceiveMessageCommand({
        QueueUrl: this.queueUrl,
        MaxNumberOfMessages: Math.min(10, Math.max(1, max)),
        WaitTimeSeconds: waitSeconds,
        MessageSystemAttributeNames: ["ApproximateReceiveCount", "SenderId"],
      }),
    );
    return (out.Messages ?? []).map((m) => ({
      receiptHandle: m.ReceiptHandle ?? "",
      messageId: m.MessageId ?? "",
      receiveCount: Number(m.Attributes?.ApproximateReceiveCount ?? "1"),
      ...(m.Attributes?.SenderId && { senderId: m.Attributes.SenderId }),
      queue: this,
      ...parseBody(m.Body),
    }));
  }

  /** Keeps a message hidden for `seconds` more (the heartbeat of a running job). */
  async extend(receiptHandle: string, seconds: number): Promise<void> {
    await this.sqs.send(
      new ChangeMessageVisibilityCommand({
        QueueUrl: this.queueUrl,
        ReceiptHandle: receiptHandle,
        VisibilityTimeout: seconds,
      }),
    );
  }

  /** Makes a message visible again now, for another agent (or the DLQ) to take. */
  async release(receiptHandle: string): Promise<void> {
    await this.extend(receiptHandle, 0);
  }

  async delete(receiptHandle: string): Promise<void> {
    await this.sqs.send(new DeleteMessageCommand({ QueueUrl: this.queueUrl, ReceiptHandle: receiptHandle }));
  }
}

function parseBody(body: string | undefined): { address?: JobAddress; problem?: string } {
  let value: unknown;
  try {
    value = JSON.parse(body ?? "");
  } catch {
    return { problem: `the message body is not JSON: ${JSON.stringify((body ?? "").slice(0, 200))}` };
  }
  const { version, ...rest } = (value ?? {}) as { version?: unknown };
  if (version !== 1) return { problem: `the message has version ${JSON.stringify(version)}, expected 1` };
  const parsed = jobAddressSchema.safeParse(rest);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return { problem: `the message is not a job address: ${issue?.path.join(".")} ${issue?.message}` };
  }
  return { address: parsed.data };
}
