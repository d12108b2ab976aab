import { S3Client } from "@aws-sdk/client-s3";
import { SQSClient } from "@aws-sdk/client-sqs";
import { JobQueue } from "./job-queue";
import { JobStore } from "./job-store";
import type { Logger } from "./logger";
import type { TierName } from "./tiers";

export interface LocalPlatformOptions {
  readonly tiers: readonly TierName[];
  readonly logger: Logger;
  /** Deliveries before a message moves to its dead-letter queue. Defaults to 3. */
  readonly maxReceiveCount?: number;
  /** Defaults to 120 s. */
  readonly visibilityTimeoutSeconds?: number;
}

/** The platform on one machine: an SQS/S3-compatible server on loopback with the stack's queues and bucket. */
export interface LocalPlatform {
  readonly endpoint: string;
  readonly region: string;
  readonly bucket: string;
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  readonly store: JobStore;
  queue(tier: TierName): JobQueue;
  dlqUrl(tier: TierName): string;
  stop(): Promise<void>;
}

const REGION = "us-east-1";
const BUCKET = "crucible-workspaces";
/** The embedded server checks no credentials; the SDK still signs, so it needs some. */
const CREDENTIALS = { accessKeyId: "local", secretAccessKey: "local" };

/** Starts the embedded server (fauxqs) with a queue and dead-letter queue per tier and the workspaces bucket. */
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
  const queues = new Map<TierName, { url: string; dlqUrl: string }>();
  for (const tier of options.tiers) {
    const dlq = server.createQueue(`crucible-${tier}-dlq`, { region: REGION });
    const queue = server.createQueue(`crucible-${tier}`, {
      region: REGION,
      attributes: {
        VisibilityTimeout: String(options.visibilityTimeoutSeconds ?? 120),
        RedrivePolicy: JSON.stringify({
          deadLetterTargetArn: dlq.queueArn,
          maxReceiveCount: options.maxReceiveCount ?? 3,
        }),
      },
    });
    queues.set(tier, { url: queue.queueUrl, dlqUrl: dlq.queueUrl });
  }
  server.createBucket(BUCKET);
  const s3 = new S3Client({ endpoint, region: REGION, credentials: CREDENTIALS, forcePathStyle: true });
  const sqs = new SQSClient({ endpoint, region: REGION, credentials: CREDENTIALS });
  const known = (tier: TierName): { url: string; dlqUrl: string } => {
    const found = queues.get(tier);
    if (!found)
      throw new Error(
        `the local platform has no queue for tier ${tier}; it runs ${options.tiers.join(", ")}`,
      );
    return found;
  };
  options.logger.info({ endpoint, tiers: options.tiers }, "local platform started");
  return {
    endpoint,
    region: REGION,
    bucket: BUCKET,
    s3,
    sqs,
    store: new JobStore(s3, BUCKET, options.logger),
    queue: (tier) => new JobQueue(sqs, known(tier).url, options.logger),
    dlqUrl: (tier) => known(tier).dlqUrl,
    async stop() {
      s3.destroy();
      sqs.destroy();
      await server.stop();
    },
  };
}
