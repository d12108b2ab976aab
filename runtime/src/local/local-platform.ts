import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import {
  CreateQueueCommand,
  GetQueueAttributesCommand,
  SendMessageCommand,
  SQSClient,
} from "@aws-sdk/client-sqs";
import { join } from "node:path";
import { z } from "zod";
import { JobQueue } from "../queue/job-queue";
import { DatasetStore } from "../store/dataset-store";
import { JobStore } from "../store/job-store";
import type { LocalCredentials, LocalIdentity } from "./local-gateway";
import { LocalGateway } from "./local-gateway";
import type { SavedMessage, SavedQueues } from "./local-state";
import { LocalState } from "./local-state";
import type { Logger } from "../logger";
import { PriorityQueues } from "../queue/priority-queues";
import type { Priority, SchedulingPolicy } from "../catalog/scheduling";
import { DEFAULT_SCHEDULING, PRIORITIES } from "../catalog/scheduling";
import type { Senders } from "../catalog/senders";
import { formatSenders, SENDERS_ENV } from "../catalog/senders";
import type { TierName } from "../catalog/tiers";
import { isTierName } from "../catalog/tiers";

export interface LocalPlatformOptions {
  readonly tiers: readonly TierName[];
  readonly logger: Logger;
  /** Deliveries before a message moves to its dead-letter queue. Defaults to 3. */
  readonly maxReceiveCount?: number;
  /** Defaults to 120 s. */
  readonly visibilityTimeoutSeconds?: number;
  /** Weights of the priority classes' queues. Defaults to the scheduling policy's. */
  readonly weights?: SchedulingPolicy["weights"];
  /**
   * Where the platform keeps its objects, queued messages and identities, so a platform started again
   * on the same directory carries on where this one stopped (local-state.ts). Without it, everything is
   * in memory and gone once stopped.
   */
  readonly dataDir?: string;
}

/** One identity's view of the platform: its clients, and the store and queues through them. */
export interface PlatformClients {
  readonly credentials: LocalCredentials;
  readonly s3: S3Client;
  readonly sqs: SQSClient;
  readonly store: JobStore;
  /** The datasets bucket through this identity's client. */
  readonly datasets: DatasetStore;
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
  readonly datasetsBucket: string;
  /** What agents accept as senders: the agent role, and the submitter role of every project used so far. */
  readonly senders: Senders;
  /** A project user's submitter identity, as after assuming the project's submitter role. */
  as(project: string, user: string): PlatformClients & { readonly senderId: string };
  /** All of the tier's queues, read by weighted polling. */
  queues(tier: TierName): PriorityQueues;
  dlqUrl(tier: TierName, priority?: Priority): string;
  /** Every tier's queues as CRUCIBLE_QUEUES takes them, for agents and CLIs in other processes. */
  readonly queuesEnv: string;
  /** The same, as an object. */
  readonly queueUrls: Readonly<Partial<Record<TierName, Record<Priority, string>>>>;
  /**
   * A project user's submitter credentials, made on first use; with a data directory, saved before they
   * are handed out, so they still work after a restart.
   */
  credentialsOf(project: string, user: string): Promise<LocalCredentials>;
  /** With a data directory, saves the queues one last time: stop what uses the platform first. */
  stop(): Promise<void>;
}

const REGION = "us-east-1";
const BUCKET = "crucible-workspaces";
const DATASETS_BUCKET = "crucible-datasets";
/** The embedded server checks no credentials; the SDK clients that talk to it directly need some. */
const UPSTREAM_CREDENTIALS = { accessKeyId: "local-platform", secretAccessKey: "unchecked" };

/**
 * Starts the embedded server (fauxqs) with the stack's layout: per tier a queue and dead-letter queue for
 * each priority class (`crucible-<tier>` is normal's, as in the stack), and the workspaces bucket. With a
 * data directory, what an earlier platform saved there is put back first.
 */
export async function startLocalPlatform(options: LocalPlatformOptions): Promise<LocalPlatform> {
  const { logger } = options;
  // fauxqs ships only as an ES module: a real import(), which module node16 keeps. Its app is listened on
  // loopback here: startFauxqs would listen on every interface, where its unauthenticated port would
  // bypass the gateway.
  const { buildApp } = await import("fauxqs");
  const server = buildApp({ logger: false, host: "127.0.0.1", defaultRegion: REGION });
  const listening = await server.listen({ port: 0, host: "127.0.0.1" });
  const upstream: Upstream = {
    endpoint: listening,
    sqs: new SQSClient({ endpoint: listening, region: REGION, credentials: UPSTREAM_CREDENTIALS }),
    s3: new S3Client({
      endpoint: listening,
      region: REGION,
      credentials: UPSTREAM_CREDENTIALS,
      forcePathStyle: true,
    }),
  };
  let prepared: Prepared;
  try {
    prepared = await prepare(options, upstream);
  } catch (error) {
    // Nothing of a platform that failed to start is left listening.
    upstream.sqs.destroy();
    upstream.s3.destroy();
    await server.close();
    throw error;
  }
  const { gateway, queues, tiers, saveIdentities, saveQueues, state, datasetsState } = prepared;
  const endpoint = gateway.endpoint;
  const known = (tier: TierName, priority: Priority): { url: string; dlqUrl: string } => {
    const found = queues.get(`${tier}/${priority}`);
    if (!found)
      throw new Error(`the local platform has no queue for tier ${tier}; it runs ${tiers.join(", ")}`);
    return found;
  };
  const queueUrls = Object.fromEntries(
    options.tiers.map((tier) => [tier, Object.fromEntries(PRIORITIES.map((p) => [p, known(tier, p).url]))]),
  ) as Partial<Record<TierName, Record<Priority, string>>>;
  const queuesEnv = JSON.stringify(queueUrls);
  const opened: PlatformClients[] = [];
  const senders = gateway.senders;
  const clientsOf = (identity: LocalIdentity): PlatformClients => {
    const { credentials } = identity;
    const s3 = new S3Client({ endpoint, region: REGION, credentials, forcePathStyle: true });
    const sqs = new SQSClient({ endpoint, region: REGION, credentials });
    const clients: PlatformClients = {
      credentials,
      s3,
      sqs,
      store: new JobStore(s3, BUCKET, logger),
      datasets: new DatasetStore({ s3, bucket: DATASETS_BUCKET, logger }),
      queue: (tier, priority = "normal") => new JobQueue(sqs, known(tier, priority).url, logger, priority),
      env: () => ({
        CRUCIBLE_BUCKET: BUCKET,
        CRUCIBLE_DATASETS_BUCKET: DATASETS_BUCKET,
        CRUCIBLE_ENDPOINT: endpoint,
        CRUCIBLE_QUEUES: queuesEnv,
        [SENDERS_ENV]: formatSenders(senders),
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
  logger.info({ endpoint, tiers: options.tiers, dataDir: options.dataDir }, "local platform started");
  return {
    ...agent,
    endpoint,
    region: REGION,
    bucket: BUCKET,
    datasetsBucket: DATASETS_BUCKET,
    senders,
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
    queueUrls,
    async credentialsOf(project, user) {
      const { credentials } = gateway.submitter(project, user);
      await saveIdentities?.();
      return credentials;
    },
    async stop() {
      for (const clients of opened) {
        clients.s3.destroy();
        clients.sqs.destroy();
      }
      await gateway.stop();
      // Nothing changes the server any more: this last record of the queues is exact.
      await state?.settled();
      await datasetsState?.settled();
      await saveQueues?.();
      upstream.sqs.destroy();
      upstream.s3.destroy();
      await server.close();
    },
  };
}

/** The embedded server's endpoint, and clients that talk to it directly. */
interface Upstream {
  readonly endpoint: string;
  readonly sqs: SQSClient;
  readonly s3: S3Client;
}

interface Prepared {
  readonly gateway: LocalGateway;
  /** By `<tier>/<priority>`. */
  readonly queues: ReadonlyMap<string, { readonly url: string; readonly dlqUrl: string }>;
  readonly tiers: readonly TierName[];
  readonly state?: LocalState;
  /** The datasets bucket's objects, kept apart from the workspaces bucket's (`<data dir>/datasets/state/`). */
  readonly datasetsState?: LocalState;
  readonly saveIdentities?: () => Promise<void>;
  readonly saveQueues?: () => Promise<void>;
}

/**
 * Makes the queues and the buckets on the embedded server, puts back what the data directory holds, and
 * starts the gateway in front of them.
 */
async function prepare(options: LocalPlatformOptions, upstream: Upstream): Promise<Prepared> {
  const { logger } = options;
  const state = options.dataDir ? await LocalState.open(options.dataDir, logger) : undefined;
  const saved = await state?.queues();
  // The tiers asked for, and those whose queues the last run had: their jobs wait for a platform that serves them.
  const tiers = [...new Set([...options.tiers, ...(saved?.tiers ?? []).filter(isTierName)])];
  const queues = new Map<string, { name: string; url: string; dlqUrl: string }>();
  for (const tier of tiers) {
    for (const priority of PRIORITIES) {
      const name = priority === "normal" ? `crucible-${tier}` : `crucible-${tier}-${priority}`;
      const dlq = await upstream.sqs.send(new CreateQueueCommand({ QueueName: `${name}-dlq` }));
      const { Attributes } = await upstream.sqs.send(
        new GetQueueAttributesCommand({ QueueUrl: dlq.QueueUrl, AttributeNames: ["QueueArn"] }),
      );
      const queue = await upstream.sqs.send(
        new CreateQueueCommand({
          QueueName: name,
          Attributes: {
            VisibilityTimeout: String(options.visibilityTimeoutSeconds ?? 120),
            RedrivePolicy: JSON.stringify({
              deadLetterTargetArn: Attributes?.QueueArn,
              maxReceiveCount: options.maxReceiveCount ?? 3,
            }),
          },
        }),
      );
      queues.set(`${tier}/${priority}`, { name, url: queue.QueueUrl!, dlqUrl: dlq.QueueUrl! });
    }
  }
  await upstream.s3.send(new CreateBucketCommand({ Bucket: BUCKET }));
  await upstream.s3.send(new CreateBucketCommand({ Bucket: DATASETS_BUCKET }));
  const buckets = { bucket: BUCKET, datasetsBucket: DATASETS_BUCKET };
  if (!state) {
    const gateway = await LocalGateway.start({ upstream: upstream.endpoint, ...buckets, logger });
    return { gateway, queues, tiers };
  }
  const datasetsState = await LocalState.open(join(options.dataDir!, "datasets"), logger);
  const restored = await state.restoreObjects(upstream.s3, BUCKET);
  if (restored.objects > 0) logger.info({ ...restored, dir: state.dir }, "local platform objects restored");
  const datasets = await datasetsState.restoreObjects(upstream.s3, DATASETS_BUCKET);
  if (datasets.objects > 0)
    logger.info({ ...datasets, dir: datasetsState.dir }, "local platform datasets restored");
  const urlsByName = new Map(
    [...queues.values()].flatMap(({ name, url, dlqUrl }) => [
      [name, url],
      [`${name}-dlq`, dlqUrl],
    ]),
  );
  // The gateway tells of every change; saving one reads the gateway's own records (its identities, the
  // senders of messages), so the writers are made before it and run only once it exists.
  const started: { gateway?: LocalGateway } = {};
  const saveIdentities = state.identitiesWriter(() => started.gateway!.saved());
  const saveQueues = state.queuesWriter(() =>
    snapshotQueues(upstream.endpoint, tiers, urlsByName, started.gateway!),
  );
  const savedIdentities = await state.identities();
  const gateway = await LocalGateway.start({
    upstream: upstream.endpoint,
    ...buckets,
    logger,
    ...(savedIdentities && { identities: savedIdentities }),
    changes: {
      identities: () =>
        void saveIdentities().catch((error: unknown) =>
          logger.error({ err: error }, "saving the local identities failed"),
        ),
      objects: (keys, bucket) =>
        (bucket === DATASETS_BUCKET ? datasetsState : state).saveObjects(upstream.s3, bucket, keys),
      queues: saveQueues,
    },
  });
  started.gateway = gateway;
  try {
    const resent = await resendMessages(saved!, urlsByName, upstream.sqs, gateway, logger);
    if (resent > 0) logger.info({ messages: resent }, "local platform queues restored");
    // Saved at once: the agent identity's key is new on a first start.
    await saveIdentities();
  } catch (error) {
    await gateway.stop();
    throw error;
  }
  return { gateway, queues, tiers, state, datasetsState, saveIdentities, saveQueues };
}

/** Every queue's messages as the embedded server holds them, oldest first, each with its sender. */
async function snapshotQueues(
  upstream: string,
  tiers: readonly TierName[],
  urlsByName: ReadonlyMap<string, string>,
  gateway: LocalGateway,
): Promise<SavedQueues> {
  const now = Date.now();
  const queues: Record<string, SavedMessage[]> = {};
  for (const name of urlsByName.keys()) {
    const answer = await fetch(`${upstream}/_fauxqs/queues/${encodeURIComponent(name)}`);
    if (!answer.ok) throw new Error(`inspecting queue ${name} failed: HTTP ${answer.status}`);
    const { messages } = inspectedQueueSchema.parse(await answer.json());
    // In flight too: whoever received them is gone after a restart, so they are offered again.
    queues[name] = [...messages.ready, ...messages.delayed, ...messages.inflight.map((i) => i.message)]
      .sort((a, b) => a.sentTimestamp - b.sentTimestamp)
      .map((m) => {
        const sender = gateway.senderOf(m.messageId);
        const delaySeconds = m.delayUntil === undefined ? 0 : Math.ceil((m.delayUntil - now) / 1000);
        return {
          body: m.body,
          ...(sender && { sender }),
          ...(delaySeconds > 0 && { delaySeconds: Math.min(900, delaySeconds) }),
        };
      });
  }
  return { tiers: [...tiers], queues };
}

/** Sends the saved messages again, each stamped with its original sender; returns how many. */
async function resendMessages(
  saved: SavedQueues,
  urlsByName: ReadonlyMap<string, string>,
  sqs: SQSClient,
  gateway: LocalGateway,
  logger: Logger,
): Promise<number> {
  let resent = 0;
  for (const [name, messages] of Object.entries(saved.queues)) {
    const url = urlsByName.get(name);
    if (!url) {
      if (messages.length > 0)
        logger.warn(
          { queue: name, dropped: messages.length },
          "saved messages of a queue no tier has; dropped",
        );
      continue;
    }
    for (const { body, sender, delaySeconds } of messages) {
      const out = await sqs.send(
        new SendMessageCommand({
          QueueUrl: url,
          MessageBody: body,
          ...(delaySeconds && { DelaySeconds: delaySeconds }),
        }),
      );
      if (sender && out.MessageId) gateway.stamp(out.MessageId, sender);
      resent += 1;
    }
  }
  return resent;
}

const inspectedMessageSchema = z.object({
  messageId: z.string(),
  body: z.string(),
  sentTimestamp: z.number(),
  delayUntil: z.number().optional(),
});

/** What fauxqs's `GET /_fauxqs/queues/<name>` answers, as far as it is read. */
const inspectedQueueSchema = z.object({
  messages: z.object({
    ready: z.array(inspectedMessageSchema),
    delayed: z.array(inspectedMessageSchema),
    inflight: z.array(z.object({ message: inspectedMessageSchema })),
  }),
});
