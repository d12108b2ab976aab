import { S3Client } from "@aws-sdk/client-s3";
import { SQSClient } from "@aws-sdk/client-sqs";
import { JobQueue } from "./job-queue";
import { JobStore } from "./job-store";
import type { Logger } from "./logger";
import { PriorityQueues } from "./priority-queues";
import type { Priority, SchedulingPolicy } from "./scheduling";
import { DEFAULT_SCHEDULING, PRIORITIES } from "./scheduling";
import type { TierName } from "./tiers";

export interface LocalPlatformOptions {
  readonly tiers: readonly TierName[];
  readonly logger: Logger;
  /** Deliveries before a message moves to its dead-letter queue. Defaults to 3. */
  readonly maxReceiveCount?: number;
  /** Defaults to 120 s. */
  readonly visibilityTimeoutSeconds?: number;
  /** Weights of the priority classes' queues. Defaults to the scheduling policy's. */
  readonly weights?: SchedulingPolicy["weights"];
}

/** The platform on one machine: an SQS/S3-compatible server on loopback with the stack's queues and bucket. */
export interface LocalPlatform {
  readonly endpoint: string;
  readonly region: string;
  readonly bucket: string;
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  readonly store: JobStore;
  /** The tier's queue of one priority class (by default `normal`). */
  queue(tier: TierName, priority?: Priority): JobQueue;
  /** All of the tier's queues, read by weighted polling. */
  queues(tier: TierName): PriorityQueues;
  dlqUrl(tier: TierName, priority?: Priority): string;
  /** Every tier's queues as CRUCIBLE_QUEUES takes them, for agents and CLIs in other processes. */
  readonly queuesEnv: string;
  stop(): Promise<void>;
}

const REGION = "us-east-1";
const BUCKET = "crucible-workspaces";
/** The embedded server checks no credentials; the SDK still signs, so it needs some. */
const CREDENTIALS = { accessKeyId: "local", secretAccessKey: "local" };

/**
 * Starts the embedded server (fauxqs) with the stack's layout: per tier a queue and dead-letter queue for
 * each priority class (`crucible-<tier>` is normal's, as in the stack), and the workspaces bucket.
 */
export async function startLocalPlatform(options: LocalPlatformOptions): Promise<LocalPlatform> {
  // fauxqs ships only as an ES module: a real import(), which module node16 keeps.
  const { startFauxqs } = await import("fauxqs");
  const server = await startFauxqs({
    port: 0,
    host: "127.0.0.1",
    logger: false,
    defaultRegion: REGION,
  });
  const endpoint = `http://127.0.0.1:${server.port}`;
  const queues = new Map<string, { url: string; dlqUrl: string }>();
  for (const tier of options.tiers) {
    for (const priority of PRIORITIES) {
      const name = priority === "normal" ? `crucible-${tier}` : `crucible-${tier}-${priority}`;
      const dlq = server.createQueue(`${name}-dlq`, { region: REGION });
      const queue = server.createQueue(name, {
        region: REGION,
        attributes: {
          VisibilityTimeout: String(options.visibilityTimeoutSeconds ?? 120),
          RedrivePolicy: JSON.stringify({
            deadLetterTargetArn: dlq.queueArn,
            maxReceiveCount: options.maxReceiveCount ?? 3,
          }),
        },
      });
      queues.set(`${tier}/${priority}`, { url: queue.queueUrl, dlqUrl: dlq.queueUrl });
    }
  }
  server.createBucket(BUCKET);
  const s3 = new S3Client({ endpoint, region: REGION, credentials: CREDENTIALS, forcePathStyle: true });
  const sqs = new SQSClient({ endpoint, region: REGION, credentials: CREDENTIALS });
  const known = (tier: TierName, priority: Priority): { url: string; dlqUrl: string } => {
    const found = queues.get(`${tier}/${priority}`);
    if (!found)
      throw new Error(
        `the local platform has no queue for tier ${tier}; it runs ${options.tiers.join(", ")}`,
      );
    return found;
  };
  const queueOf = (tier: TierName, priority: Priority = "normal"): JobQueue =>
    new JobQueue(sqs, known(tier, priority).url, options.logger, priority);
  options.logger.info({ endpoint, tiers: options.tiers }, "local platform started");
  return {
    endpoint,
    region: REGION,
    bucket: BUCKET,
    s3,
    sqs,
    store: new JobStore(s3, BUCKET, options.logger),
    queue: queueOf,
    queues: (tier) =>
      new PriorityQueues(
        Object.fromEntries(PRIORITIES.map((p) => [p, queueOf(tier, p)])) as Record<Priority, JobQueue>,
        options.weights ?? DEFAULT_SCHEDULING.weights,
      ),
    dlqUrl: (tier, priority = "normal") => known(tier, priority).dlqUrl,
    queuesEnv: JSON.stringify(
      Object.fromEntries(
        options.tiers.map((tier) => [
          tier,
          Object.fromEntries(PRIORITIES.map((p) => [p, known(tier, p).url])),
        ]),
      ),
    ),
    async stop() {
      s3.destroy();
      sqs.destroy();
      await server.stop();
    },
  };
}
