import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";

let platform: LocalPlatform;

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: ["cpu-small"], logger: pino({ level: "silent" }) });
  await platform.s3.send(
    new PutObjectCommand({ Bucket: platform.datasetsBucket, Key: "precached/iris/v1.json", Body: "{}" }),
  );
});

afterAll(async () => {
  await platform?.stop();
});

describe("the local gateway's datasets bucket rules", () => {
  const put = (who: string, key: string) =>
    platform
      .as("lab", who)
      .s3.send(new PutObjectCommand({ Bucket: platform.datasetsBucket, Key: key, Body: "x" }));
  const get = (who: string, key: string) =>
    platform.as("lab", who).s3.send(new GetObjectCommand({ Bucket: platform.datasetsBucket, Key: key }));
  const list = (who: string, prefix: string) =>
    platform
      .as("lab", who)
      .s3.send(new ListObjectsV2Command({ Bucket: platform.datasetsBucket, Prefix: prefix }));

  it("lets a submitter read and write their own prefix only", async () => {
    await put("alice", "users/lab/alice/blobs/" + "a".repeat(64));
    expect((await list("alice", "users/lab/alice/")).KeyCount).toBe(1);
    await expect(get("bob", "users/lab/alice/blobs/" + "a".repeat(64))).rejects.toMatchObject({
      name: "AccessDenied",
    });
    await expect(put("bob", "users/lab/alice/blobs/" + "b".repeat(64))).rejects.toMatchObject({
      name: "AccessDenied",
    });
    await expect(list("bob", "users/lab/alice/")).rejects.toMatchObject({ name: "AccessDenied" });
    await expect(list("bob", "users/")).rejects.toMatchObject({ name: "AccessDenied" });
  });

  it("lets every submitter read and list precached/, and nobody but agents write there", async () => {
    expect(await (await get("bob", "precached/iris/v1.json")).Body!.transformToString()).toBe("{}");
    expect((await list("bob", "precached/")).KeyCount).toBe(1);
    await expect(put("bob", "precached/iris/v2.json")).rejects.toMatchObject({ name: "AccessDenied" });
    await expect(put("bob", "elsewhere/x")).rejects.toMatchObject({ name: "AccessDenied" });
  });

  it("keeps the workspaces bucket's rules as they were", async () => {
    await expect(
      platform
        .as("lab", "bob")
        .s3.send(new PutObjectCommand({ Bucket: platform.bucket, Key: "precached/iris/v1.json", Body: "x" })),
    ).rejects.toMatchObject({ name: "AccessDenied" });
  });
});
