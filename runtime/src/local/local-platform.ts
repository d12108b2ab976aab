import { S3Client } from "@aws-sdk/client-s3";
import { SQSClient } from "@aws-sdk/client-sqs";
import { JobQueue } from "../queue/job-queue";
import { JobStore } from "../store/job-store";
import type { LocalCredentials, LocalIdentity } from "./local-gateway";
import { LocalGateway } from "./local-gateway";
import type { Logger } from "../logger";
import { PriorityQueues } from "../queue/priority-queues";
import type { Priority, SchedulingPolicy } from "../catalog/scheduling";
import { DEFAULT_SCHEDULING, PRIORITIES } from "../catalog/scheduling";
import type { Senders } from "../catalog/senders";
import { formatSenders, SENDERS_ENV } from "../catalog/senders";
import type { TierName } from "../catalog/tiers";

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

/** One identity's view of the platform: its clients, and the store and queues through them. */
export interface PlatformClients {
  readonly credentials: LocalCredentials;
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  readonly store: JobStore;
  /** The tier's queue of one priority class (by default `normal`). */
  queue: (tier: TierName, priority?: Priority) => JobQueue;
  /** Variables that point a CLI or agent in another process at the platform as this identity. */
  env: () => Record<string, string>;
}

/**
 * The platform on one machine: an SQS/S3-compatible server on loopback with the stack's queues and
 * bucket, behind a gateway that authenticates every request as a local identity and applies the stack's
 * access rules (see {@link LocalGateway}). Its own clients, store and queues are the agent's (a node
 * role's); {@link as} gives a researcher's.
 */
export interface LocalPlatform extends PlatformClients {
  readonly endpoint: string;
  readonly region: string;
  readonly bucket: string;
  /** What agents accept as senders: the agent role, and the submitter role of every project used so far. */
  readonly senders: Senders;
  /** A project user's submitter identity, as after assuming the project's submitter role. */
  as(project: string, user: string): PlatformClients & { readonly senderId: string };
  /** All of the tier's queues, read by weighted polling. */
  queues(tier: TierName): PriorityQueues;
  dlqUrl(tier: TierName, priority?: Priority): string;
  /** Every tier's queues as CRUCIBLE_QUEUES takes them, for agents and CLIs in other processes. */
  readonly queuesEnv: string;
  stop(): Promise<void>;
}

const REGION = "us-east-1";
const BUCKET = "crucible-workspaces";

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
  const upstream = `http://127.0.0.1:${server.port}`;
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
  const gateway = await LocalGateway.start({ upstream, bucket: BUCKET, logger: options.logger });
  const endpoint = gateway.endpoint;
  const known = (tier: TierName, priority: Priority): { url: string; dlqUrl: string } => {
    const found = queues.get(`${tier}/${priority}`);
    if (!found)
      throw new Error(
        `the local platform has no queue for tier ${tier}; it runs ${options.tiers.join(", ")}`,
      );
    return found;
  };
  const queuesEnv = JSON.stringify(
    Object.fromEntries(
      options.tiers.map((tier) => [tier, Object.fromEntries(PRIORITIES.map((p) => [p, known(tier, p).url]))]),
    ),
  );
  const opened: PlatformClients[] = [];
  const clientsOf = (identity: LocalIdentity): PlatformClients => {
    const { credentials } = identity;
    const s3 = new S3Client({ endpoint, region: REGION, credentials, forcePathStyle: true });
    const sqs = new SQSClient({ endpoint, region: REGION, credentials });
    const clients: PlatformClients = {
      credentials,
      s3,
      sqs,
      store: new JobStore(s3, BUCKET, options.logger),
      queue: (tier, priority = "normal") =>
        new JobQueue(sqs, known(tier, priority).url, options.logger, priority),
      env: () => ({
        CRUCIBLE_BUCKET: BUCKET,
        CRUCIBLE_ENDPOINT: endpoint,
        CRUCIBLE_QUEUES: queuesEnv,
        [SENDERS_ENV]: formatSenders(gateway.senders),
        AWS_REGION: REGION,
        AWS_ACCESS_KEY_ID: credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
      }),
    };
    opened.push(clients);
    return clients;
  };
  const agent = clientsOf(gateway.agent);
  const submitters = new Map<string, PlatformClients & { senderId: string }>();
  const queueOf = agent.queue;
  options.logger.info({ endpoint, tiers: options.tiers }, "local platform started");
  return {
    ...agent,
    endpoint,
    region: REGION,
    bucket: BUCKET,
    senders: gateway.senders,
    as: (project, user) => {
      const key = `${project}/${user}`;
      let found = submitters.get(key);
      if (!found) {
        const identity = gateway.submitter(project, user);
        found = { ...clientsOf(identity), senderId: identity.senderId };
        submitters.set(key, found);
      }
      return found;
    },
    queues: (tier) =>
      new PriorityQueues(
        Object.fromEntries(PRIORITIES.map((p) => [p, queueOf(tier, p)])) as Record<Priority, JobQueue>,
        options.weights ?? DEFAULT_SCHEDULING.weights,
      ),
    dlqUrl: (tier, priority = "normal") => known(tier, priority).dlqUrl,
    queuesEnv,
    async stop() {
      for (const clients of opened) {
        clients.s3.destroy();
        clients.sqs.destroy();
      }
      await gateway.stop();
      await server.stop();
    },
  };
}
