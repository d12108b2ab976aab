import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import type { S3Client } from "@aws-sdk/client-s3";
import { GetQueueAttributesCommand } from "@aws-sdk/client-sqs";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { senderProblem } from "../../../runtime/src/catalog/senders";
import { localSubmitterRoleId } from "../../../runtime/src/local/local-gateway";
import type { LocalPlatform, LocalPlatformOptions } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";

const logger = pino({ level: "silent" });
const TIER = "cpu-small";
let dataDir: string;
const started: LocalPlatform[] = [];

beforeEach(async () => {
  dataDir = await mkdtemp(join(tmpdir(), "crucible-local-state-test-"));
});
afterEach(async () => {
  await Promise.all(started.splice(0).map((p) => p.stop()));
  await rm(dataDir, { recursive: true, force: true });
});

async function start(options: Partial<LocalPlatformOptions> = {}): Promise<LocalPlatform> {
  const platform = await startLocalPlatform({ tiers: [TIER], logger, dataDir, ...options });
  started.push(platform);
  return platform;
}

async function stop(platform: LocalPlatform): Promise<void> {
  started.splice(started.indexOf(platform), 1);
  await platform.stop();
}

const put = (s3: S3Client, bucket: string, key: string, body: string, contentType?: string) =>
  s3.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: contentType }));

async function read(s3: S3Client, bucket: string, key: string): Promise<string> {
  const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  return out.Body!.transformToString();
}

const keysOf = async (platform: LocalPlatform): Promise<string[]> =>
  ((await platform.s3.send(new ListObjectsV2Command({ Bucket: platform.bucket }))).Contents ?? [])
    .map((o) => o.Key!)
    .sort();

/** The SDK clients mark credentials they were given with where they came from: only the key is compared. */
const keyOf = ({ accessKeyId, secretAccessKey }: { accessKeyId: string; secretAccessKey: string }) => ({
  accessKeyId,
  secretAccessKey,
});

const address = (jobId: string) => ({ project: "lab", user: "ada", jobId });

describe("the local platform on a data directory", () => {
  it("keeps objects, queued messages with their senders, and identities across a restart", async () => {
    const first = await start();
    const ada = first.as("lab", "ada");
    await put(ada.s3, first.bucket, "workspaces/lab/ada/jobs/j1/spec.json", '{"a":1}', "application/json");
    await put(ada.s3, first.bucket, "workspaces/lab/ada/jobs/j1/gone.txt", "x");
    await ada.s3.send(
      new DeleteObjectCommand({ Bucket: first.bucket, Key: "workspaces/lab/ada/jobs/j1/gone.txt" }),
    );
    await put(first.s3, first.bucket, "ledger/2026-12/lab/ada/j0/1.json", "{}");
    // An agent's running marker: not kept, its agent is gone after a restart.
    await put(first.s3, first.bucket, "workspaces/lab/_running/cpu-small/ada/1-j1", "node");
    await ada.queue(TIER).send(address("job-1"));
    await first.queue(TIER).send(address("job-2"));
    // Received and never deleted: offered again after the restart, as after its visibility timeout.
    expect((await first.queue(TIER).receive(10, 1)).map((m) => m.address?.jobId).sort()).toEqual([
      "job-1",
      "job-2",
    ]);
    await ada.queue(TIER, "high").send(address("job-3"), 600);
    await stop(first);

    const second = await start();
    expect(keyOf(second.as("lab", "ada").credentials)).toEqual(keyOf(ada.credentials));
    expect(await keysOf(second)).toEqual([
      "ledger/2026-12/lab/ada/j0/1.json",
      "workspaces/lab/ada/jobs/j1/spec.json",
    ]);
    // Ada's key from before the restart still signs her requests.
    const again = second.as("lab", "ada");
    expect(await read(again.s3, second.bucket, "workspaces/lab/ada/jobs/j1/spec.json")).toBe('{"a":1}');
    const head = await again.s3.send(
      new GetObjectCommand({ Bucket: second.bucket, Key: "workspaces/lab/ada/jobs/j1/spec.json" }),
    );
    expect(head.ContentType).toBe("application/json");
    const received = await second.queue(TIER).receive(10, 1);
    expect(Object.fromEntries(received.map((m) => [m.address!.jobId, [m.senderId, m.receiveCount]]))).toEqual(
      {
        "job-1": [`${localSubmitterRoleId("lab")}:ada`, 1],
        "job-2": ["AROALOCALAGENT00000000:local-agent", 1],
      },
    );
    const j1 = received.find((m) => m.address?.jobId === "job-1")!;
    expect(senderProblem(second.senders, j1.senderId, j1.address!)).toBeUndefined();
    // Still delayed, by what was left of its delay.
    const high = await second.sqs.send(
      new GetQueueAttributesCommand({
        QueueUrl: second.queueUrls[TIER]!.high,
        AttributeNames: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
      }),
    );
    expect(high.Attributes).toMatchObject({
      ApproximateNumberOfMessages: "0",
      ApproximateNumberOfMessagesDelayed: "1",
    });
  });

  it("saves each change before answering it, so a platform that dies loses nothing it acknowledged", async () => {
    const first = await start();
    const ada = first.as("lab", "ada");
    await put(ada.s3, first.bucket, "workspaces/lab/ada/jobs/j1/spec.json", "{}");
    await ada.queue(TIER).send(address("job-1"));
    // A second platform on the same directory, while the first runs: what a restart after a crash sees.
    const second = await startLocalPlatform({ tiers: [TIER], logger, dataDir });
    try {
      expect(await keysOf(second)).toEqual(["workspaces/lab/ada/jobs/j1/spec.json"]);
      const [message] = await second.queue(TIER).receive(10, 1);
      expect(message).toMatchObject({
        address: address("job-1"),
        senderId: `${localSubmitterRoleId("lab")}:ada`,
      });
      expect(keyOf(second.as("lab", "ada").credentials)).toEqual(keyOf(ada.credentials));
    } finally {
      await second.stop();
    }
  });

  it("keeps the queued jobs of tiers a later start does not serve, for a start that does", async () => {
    const first = await start({ tiers: ["cpu-small", "cpu-large"] });
    await first.as("lab", "ada").queue("cpu-large").send(address("big"));
    await stop(first);
    const second = await start({ tiers: ["cpu-small"] });
    expect(Object.keys(second.queueUrls)).toEqual(["cpu-small"]);
    await stop(second);
    const third = await start({ tiers: ["cpu-large"] });
    const [message] = await third.queue("cpu-large").receive(10, 1);
    expect(message?.address).toEqual(address("big"));
  });

  it("keeps its keys to the owner, and hands out a user's credentials only once they are saved", async () => {
    const platform = await start();
    const credentials = await platform.credentialsOf("lab", "bo");
    const saved = JSON.parse(await readFile(join(dataDir, "state/identities.json"), "utf8")) as {
      submitters: unknown;
    };
    expect(saved.submitters).toEqual([{ project: "lab", user: "bo", credentials }]);
    expect((await stat(join(dataDir, "state/identities.json"))).mode & 0o777).toBe(0o600);
    expect((await stat(join(dataDir, "state"))).mode & 0o777).toBe(0o700);
  });

  it("refuses a damaged state file, naming it", async () => {
    await stop(await start());
    await writeFile(join(dataDir, "state/identities.json"), '{"agent": {}}');
    await expect(start()).rejects.toThrow(
      `${join(dataDir, "state/identities.json")} is not the local platform's identities.json: agent.accessKeyId`,
    );
  });
});
