import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import type { SQSClient } from "@aws-sdk/client-sqs";
import { SendMessageCommand } from "@aws-sdk/client-sqs";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localSubmitterRoleId } from "../../../runtime/src/local/local-gateway";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import { senderProblem } from "../../../runtime/src/catalog/senders";

const TIER = "cpu-small";
let platform: LocalPlatform;

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: [TIER], logger: pino({ level: "silent" }) });
});
afterAll(async () => {
  await platform.stop();
});

const put = (s3: S3Client, key: string) =>
  s3.send(new PutObjectCommand({ Bucket: platform.bucket, Key: key, Body: "x" }));

describe("the local platform's gateway", () => {
  it("refuses requests signed with an unknown key or a wrong secret", async () => {
    const { accessKeyId } = platform.as("lab", "ada").credentials;
    for (const credentials of [
      { accessKeyId: "LOCALNOSUCHKEY", secretAccessKey: "x" },
      { accessKeyId, secretAccessKey: "not-the-secret" },
    ]) {
      const s3 = new S3Client({
        endpoint: platform.endpoint,
        region: platform.region,
        credentials,
        forcePathStyle: true,
      });
      await expect(put(s3, "workspaces/lab/ada/jobs/x/spec.json")).rejects.toMatchObject({
        name: credentials.accessKeyId === accessKeyId ? "SignatureDoesNotMatch" : "InvalidClientTokenId",
      });
      s3.destroy();
    }
  });

  it("lets a submitter read, write and list only their own prefix, and read their project's ledger", async () => {
    const ada = platform.as("lab", "ada");
    await put(ada.s3, "workspaces/lab/ada/jobs/j1/spec.json");
    const listed = await ada.s3.send(
      new ListObjectsV2Command({ Bucket: platform.bucket, Prefix: "workspaces/lab/ada/" }),
    );
    expect(listed.Contents?.map((o) => o.Key)).toEqual(["workspaces/lab/ada/jobs/j1/spec.json"]);
    await put(platform.s3, "ledger/2026-12/lab/bo/j9/1.json");
    const ledger = await ada.s3.send(
      new GetObjectCommand({ Bucket: platform.bucket, Key: "ledger/2026-12/lab/bo/j9/1.json" }),
    );
    expect(await ledger.Body!.transformToString()).toBe("x");
    for (const key of [
      "workspaces/lab/bo/jobs/j1/spec.json",
      "workspaces/lab/_running/cpu-small/ada/1-j1",
      "workspaces/other/ada/jobs/j1/spec.json",
      "ledger/2026-12/lab/ada/j1/1.json",
    ])
      await expect(put(ada.s3, key), key).rejects.toMatchObject({ name: "AccessDenied" });
    await expect(
      ada.s3.send(new ListObjectsV2Command({ Bucket: platform.bucket, Prefix: "workspaces/lab/" })),
    ).rejects.toMatchObject({ name: "AccessDenied" });
  });

  it("stamps each message with its authenticated sender, as SQS does, for the agent to check", async () => {
    const ada = platform.as("lab", "ada");
    const address = { project: "lab", user: "ada", jobId: "job-1" };
    await ada.queue(TIER).send(address);
    await platform.queue(TIER).send({ ...address, jobId: "job-2" });
    const received = await platform.queue(TIER).receive(10, 1);
    const senders = Object.fromEntries(received.map((m) => [m.address!.jobId, m.senderId]));
    expect(senders).toEqual({
      "job-1": `${localSubmitterRoleId("lab")}:ada`,
      "job-2": "AROALOCALAGENT00000000:local-agent",
    });
    expect(senderProblem(platform.senders, senders["job-1"], address)).toBeUndefined();
    expect(senderProblem(platform.senders, senders["job-1"], { ...address, user: "bo" })).toBe(
      `sender ${localSubmitterRoleId("lab")}:ada may queue jobs only as lab/ada, but the message names lab/bo`,
    );
    for (const m of received) await m.queue.delete(m.receiptHandle);
  });

  it("lets a submitter send but not receive, delete or batch", async () => {
    const ada = platform.as("lab", "ada");
    await expect(ada.queue(TIER).receive(1, 0)).rejects.toMatchObject({ name: "AccessDenied" });
    const sqs: SQSClient = ada.sqs;
    await expect(
      sqs.send(new SendMessageCommand({ QueueUrl: platform.queue(TIER).queueUrl, MessageBody: "{}" })),
    ).resolves.toMatchObject({ MessageId: expect.any(String) as string });
  });
});
