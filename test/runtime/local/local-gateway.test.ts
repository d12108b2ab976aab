import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { getSignedUrl } from "@aws-sdk/s3-request-presigner";
import type { SQSClient } from "@aws-sdk/client-sqs";
import { SendMessageCommand } from "@aws-sdk/client-sqs";
import { request as httpRequest } from "node:http";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { localSubmitterRoleId } from "../../../runtime/src/local/local-gateway";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import { senderProblem } from "../../../runtime/src/catalog/senders";
import { JobFiles } from "../../../runtime/src/store/job-files";

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

/**
 * `command` as `s3` sends it, but with the path (and query) replaced by `raw` before it is signed: a
 * request the SDK would not make (it encodes each key segment), signed as validly as any.
 */
function sendRaw<Output>(
  s3: S3Client,
  command: { middlewareStack: { add(m: unknown, o: { step: "build" }): void } },
  raw: string,
): Promise<Output> {
  const [path, query] = raw.split("?");
  command.middlewareStack.add(
    (next: (args: { request: unknown }) => Promise<unknown>) => (args: { request: unknown }) => {
      const request = args.request as { path: string; query: Record<string, string | string[]> };
      request.path = path!;
      request.query = {};
      for (const pair of (query ?? "").split("&").filter(Boolean)) {
        const [name, value = ""] = pair.split("=").map(decodeURIComponent) as [string, string?];
        const before = request.query[name];
        request.query[name] = before === undefined ? value : [before as string, value].flat();
      }
      return next(args);
    },
    { step: "build" },
  );
  return s3.send(command as never) as Promise<Output>;
}

describe("the gateway's keys", () => {
  const ALICE = "workspaces/lab/ada/secret.txt";
  const keysOf = async (s3: S3Client, prefix: string) =>
    (await s3.send(new ListObjectsV2Command({ Bucket: platform.bucket, Prefix: prefix }))).Contents?.map(
      (o) => o.Key!,
    ) ?? [];
  const denied = { name: "AccessDenied" };
  /** Every key in Alice's prefix, which none of Bob's requests may change. */
  let alices: string[];

  beforeAll(async () => {
    await platform
      .as("lab", "ada")
      .s3.send(new PutObjectCommand({ Bucket: platform.bucket, Key: ALICE, Body: "alice's" }));
    alices = await keysOf(platform.s3, "workspaces/lab/ada/");
  });

  // Every key here either means Alice's object to someone past the check, or reaches Alice's prefix
  // while a normalised reading of it is under Bob's.
  const TRICKS = [
    "workspaces/lab/bo/../ada/secret.txt",
    "workspaces/lab/ada/../bo/x",
    "workspaces/lab/bo/./x",
    "workspaces/lab/bo//x",
    "workspaces/lab/bo/x/",
    "workspaces/lab/bo\\..\\ada\\secret.txt",
    "workspaces/lab/bo/\u0000/x",
  ];
  // Raw paths the SDK would encode differently: escaped dots and slashes, raw backslashes.
  const RAW_TRICKS = [
    "workspaces/lab/bo/%2e%2e/ada/secret.txt",
    "workspaces/lab/bo/%2E%2E/ada/secret.txt",
    "workspaces/lab/bo/..%2Fada%2Fsecret.txt",
    "workspaces/lab/bo%2F..%2Fada/secret.txt",
    "workspaces/lab/ada/%2e%2e/bo/x",
    "workspaces/lab/bo/%2e/x",
    "workspaces/lab/bo/..\\ada\\secret.txt",
    "workspaces/lab/bo/%5C..%5Cada/secret.txt",
  ];

  it("refuses Bob every read and write of a key with dot or empty segments, however it is spelled", async () => {
    const bob = platform.as("lab", "bo").s3;
    const Bucket = platform.bucket;
    for (const Key of TRICKS) {
      await expect(bob.send(new PutObjectCommand({ Bucket, Key, Body: "bob's" })), Key).rejects.toMatchObject(
        denied,
      );
      await expect(bob.send(new GetObjectCommand({ Bucket, Key })), Key).rejects.toMatchObject(denied);
      await expect(bob.send(new DeleteObjectCommand({ Bucket, Key })), Key).rejects.toMatchObject(denied);
    }
    for (const key of RAW_TRICKS) {
      const path = `/${Bucket}/${key}`;
      const put = new PutObjectCommand({ Bucket, Key: "workspaces/lab/bo/decoy", Body: "bob's" });
      await expect(sendRaw(bob, put, path), key).rejects.toMatchObject(denied);
      const get = new GetObjectCommand({ Bucket, Key: "workspaces/lab/bo/decoy" });
      await expect(sendRaw(bob, get, path), key).rejects.toMatchObject(denied);
      const head = new HeadObjectCommand({ Bucket, Key: "workspaces/lab/bo/decoy" });
      await expect(sendRaw(bob, head, path), key).rejects.toMatchObject({
        $metadata: { httpStatusCode: 403 },
      });
    }
    const malformed = new GetObjectCommand({ Bucket, Key: "workspaces/lab/bo/decoy" });
    await expect(sendRaw(bob, malformed, `/${Bucket}/workspaces/lab/bo/%zz`)).rejects.toMatchObject({
      name: "InvalidURI",
    });
    // Nothing landed in Alice's prefix, and her object is as she wrote it.
    const ada = platform.as("lab", "ada").s3;
    expect(await keysOf(ada, "workspaces/lab/ada/")).toEqual(alices);
    const body = await ada.send(new GetObjectCommand({ Bucket, Key: ALICE }));
    expect(await body.Body!.transformToString()).toBe("alice's");
    expect(await keysOf(platform.s3, "workspaces/lab/bo/")).toEqual([]);
  });

  it("stores the key it checked: odd but safe characters reach the bucket as written", async () => {
    const bob = platform.as("lab", "bo").s3;
    const Bucket = platform.bucket;
    const Key = "workspaces/lab/bo/a b+c%2e%2e;?#=&é.txt";
    await bob.send(new PutObjectCommand({ Bucket, Key, Body: "odd" }));
    expect(await keysOf(platform.s3, "workspaces/lab/bo/")).toEqual([Key]);
    const got = await bob.send(new GetObjectCommand({ Bucket, Key }));
    expect(await got.Body!.transformToString()).toBe("odd");
    await bob.send(new DeleteObjectCommand({ Bucket, Key }));
    expect(await keysOf(platform.s3, "workspaces/lab/bo/")).toEqual([]);
  });

  it("lists for Bob only under his own prefix, whatever the prefix parameter hides", async () => {
    const bob = platform.as("lab", "bo").s3;
    const Bucket = platform.bucket;
    for (const Prefix of [
      "workspaces/lab/bo/../ada/",
      "workspaces/lab/bo/./",
      "workspaces/lab/bo//",
      "workspaces/lab/bo",
      "workspaces/lab/bo\\..\\ada/",
    ])
      await expect(bob.send(new ListObjectsV2Command({ Bucket, Prefix })), Prefix).rejects.toMatchObject(
        denied,
      );
    const list = () => new ListObjectsV2Command({ Bucket, Prefix: "workspaces/lab/bo/" });
    await expect(
      sendRaw(bob, list(), `/${Bucket}?list-type=2&prefix=workspaces%2Flab%2Fbo%2F%2E%2E%2Fada%2F`),
    ).rejects.toMatchObject(denied);
    // Two prefixes: the gateway and the server must not each read a different one.
    await expect(
      sendRaw(
        bob,
        list(),
        `/${Bucket}?list-type=2&prefix=workspaces%2Flab%2Fbo%2F&prefix=workspaces%2Flab%2Fada%2F`,
      ),
    ).rejects.toMatchObject({ name: "InvalidArgument" });
    await expect(
      sendRaw(bob, list(), `/${Bucket}?list-type=2&list-type=1&prefix=workspaces%2Flab%2Fbo%2F`),
    ).rejects.toMatchObject({ name: "InvalidArgument" });
    await expect(bob.send(list())).resolves.toMatchObject({ KeyCount: 0 });
  });

  it("lets Bob copy only from keys he may read (x-amz-copy-source)", async () => {
    const bob = platform.as("lab", "bo").s3;
    const Bucket = platform.bucket;
    const Key = "workspaces/lab/bo/stolen";
    for (const CopySource of [
      `${Bucket}/${ALICE}`,
      `/${Bucket}/${ALICE}`,
      `${Bucket}/workspaces/lab/bo/../ada/secret.txt`,
      `${Bucket}/workspaces/lab/bo/%2e%2e/ada/secret.txt`,
      `${Bucket}/workspaces%2Flab%2Fbo%2F..%2Fada%2Fsecret.txt`,
      `${Bucket}/workspaces/lab/bo//../ada/secret.txt`,
    ])
      await expect(
        bob.send(new CopyObjectCommand({ Bucket, Key, CopySource })),
        CopySource,
      ).rejects.toMatchObject(denied);
    await expect(
      bob.send(new CopyObjectCommand({ Bucket, Key, CopySource: `other-bucket/${ALICE}` })),
    ).rejects.toMatchObject(denied);
    await expect(
      bob.send(
        new CopyObjectCommand({ Bucket, Key, CopySource: `${Bucket}/workspaces/lab/bo/a?versionId=1` }),
      ),
    ).rejects.toMatchObject({ name: "InvalidArgument" });
    expect(await keysOf(platform.s3, "workspaces/lab/bo/")).toEqual([]);
    // His own objects copy, names with spaces included.
    await bob.send(new PutObjectCommand({ Bucket, Key: "workspaces/lab/bo/a b", Body: "mine" }));
    await bob.send(
      new CopyObjectCommand({
        Bucket,
        Key: "workspaces/lab/bo/c",
        CopySource: `${Bucket}/workspaces/lab/bo/a%20b`,
      }),
    );
    const copy = await bob.send(new GetObjectCommand({ Bucket, Key: "workspaces/lab/bo/c" }));
    expect(await copy.Body!.transformToString()).toBe("mine");
    for (const k of ["workspaces/lab/bo/a b", "workspaces/lab/bo/c"])
      await bob.send(new DeleteObjectCommand({ Bucket, Key: k }));
  });

  it("ties a multipart upload to the key it was started for", async () => {
    const Bucket = platform.bucket;
    const ada = platform.as("lab", "ada").s3;
    const bob = platform.as("lab", "bo").s3;
    for (const Key of ["workspaces/lab/ada/big", "workspaces/lab/ada/../bo/big", "workspaces/lab/bo//big"])
      await expect(bob.send(new CreateMultipartUploadCommand({ Bucket, Key })), Key).rejects.toMatchObject(
        denied,
      );
    const raw = new CreateMultipartUploadCommand({ Bucket, Key: "workspaces/lab/bo/big" });
    await expect(
      sendRaw(bob, raw, `/${Bucket}/workspaces/lab/bo/%2e%2e/ada/big?uploads`),
    ).rejects.toMatchObject(denied);

    // Alice's upload: Bob may not add parts to it or complete it under his own key.
    const { UploadId: hers } = await ada.send(
      new CreateMultipartUploadCommand({ Bucket, Key: "workspaces/lab/ada/big" }),
    );
    const Key = "workspaces/lab/bo/big";
    await expect(
      bob.send(new UploadPartCommand({ Bucket, Key, UploadId: hers, PartNumber: 1, Body: "bob's" })),
    ).rejects.toMatchObject(denied);
    await expect(
      bob.send(
        new CompleteMultipartUploadCommand({
          Bucket,
          Key,
          UploadId: hers,
          MultipartUpload: { Parts: [{ PartNumber: 1, ETag: '"x"' }] },
        }),
      ),
    ).rejects.toMatchObject(denied);
    await expect(
      bob.send(new AbortMultipartUploadCommand({ Bucket, Key, UploadId: hers })),
    ).rejects.toMatchObject(denied);
    await ada.send(
      new AbortMultipartUploadCommand({ Bucket, Key: "workspaces/lab/ada/big", UploadId: hers }),
    );

    // His own upload works from start to end.
    const { UploadId } = await bob.send(new CreateMultipartUploadCommand({ Bucket, Key }));
    const { ETag } = await bob.send(
      new UploadPartCommand({ Bucket, Key, UploadId, PartNumber: 1, Body: "part" }),
    );
    await bob.send(
      new CompleteMultipartUploadCommand({
        Bucket,
        Key,
        UploadId,
        MultipartUpload: { Parts: [{ PartNumber: 1, ETag }] },
      }),
    );
    const got = await bob.send(new GetObjectCommand({ Bucket, Key }));
    expect(await got.Body!.transformToString()).toBe("part");
    await bob.send(new DeleteObjectCommand({ Bucket, Key }));
    expect(await keysOf(ada, "workspaces/lab/ada/")).toEqual(alices);
  });

  it("refuses submitters batch deletes (DeleteObjects), so none can name another user's keys", async () => {
    const bob = platform.as("lab", "bo").s3;
    for (const Key of [ALICE, "workspaces/lab/bo/x"])
      await expect(
        bob.send(new DeleteObjectsCommand({ Bucket: platform.bucket, Delete: { Objects: [{ Key }] } })),
        Key,
      ).rejects.toMatchObject(denied);
    expect(await keysOf(platform.s3, "workspaces/lab/ada/")).toEqual(alices);
  });
});

/** GET `url` exactly as written, path unresolved (fetch and http.get resolve `..`); its status and S3 error code. */
function rawGet(url: string): Promise<{ status: number | undefined; code: string | undefined }> {
  const { hostname, port } = new URL(url);
  const path = url.slice(url.indexOf("/", "http://".length));
  return new Promise((resolve, reject) => {
    const req = httpRequest({ hostname, port, path, agent: false }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk: string) => (text += chunk));
      res.on("end", () => resolve({ status: res.statusCode, code: /<Code>([^<]*)<\/Code>/.exec(text)?.[1] }));
    });
    req.on("error", reject);
    req.end();
  });
}

describe("presigned links", () => {
  const KEY = "workspaces/lab/ada/jobs/share-1/outputs/model.bin";
  const BYTES = Buffer.from([0, 1, 2, 250, 255]);

  beforeAll(async () => {
    await platform
      .as("lab", "ada")
      .s3.send(new PutObjectCommand({ Bucket: platform.bucket, Key: KEY, Body: BYTES }));
  });

  it("downloads a share link made by the owner with plain fetch", async () => {
    const ada = platform.as("lab", "ada");
    const files = new JobFiles(ada.s3, ada.store);
    const { links } = await files.share({ project: "lab", user: "ada", jobId: "share-1" }, 3600);
    expect(links.map((l) => l.name)).toEqual(["model.bin"]);
    const answer = await fetch(links[0]!.url);
    expect(answer.status).toBe(200);
    expect(Buffer.from(await answer.arrayBuffer())).toEqual(BYTES);
    const head = await getSignedUrl(ada.s3, new HeadObjectCommand({ Bucket: platform.bucket, Key: KEY }));
    const headed = await fetch(head, { method: "HEAD" });
    expect([headed.status, headed.headers.get("content-length")]).toEqual([200, String(BYTES.length)]);
  });

  it("refuses an expired, altered, misdirected or writing link", async () => {
    const ada = platform.as("lab", "ada").s3;
    const bob = platform.as("lab", "bo").s3;
    const Bucket = platform.bucket;
    const get = (Key = KEY) => new GetObjectCommand({ Bucket, Key });
    const refused = async (url: string, init?: RequestInit) => {
      const answer = await fetch(url, init);
      return { status: answer.status, code: /<Code>([^<]*)<\/Code>/.exec(await answer.text())?.[1] };
    };
    const expired = await getSignedUrl(ada, get(), {
      expiresIn: 60,
      signingDate: new Date(Date.now() - 61_000),
    });
    expect(await refused(expired)).toEqual({ status: 403, code: "AccessDenied" });
    const link = await getSignedUrl(ada, get(), { expiresIn: 60 });
    const altered = (name: string, value: string) => {
      const url = new URL(link);
      url.searchParams.set(name, value);
      return url.toString();
    };
    expect(await refused(altered("X-Amz-Expires", "86400"))).toEqual({
      status: 403,
      code: "SignatureDoesNotMatch",
    });
    const signature = new URL(link).searchParams.get("X-Amz-Signature")!;
    const flipped = `${signature[0] === "0" ? "1" : "0"}${signature.slice(1)}`;
    expect(await refused(altered("X-Amz-Signature", flipped))).toEqual({
      status: 403,
      code: "SignatureDoesNotMatch",
    });
    expect(await refused(link.replace("model.bin", "other.bin"))).toEqual({
      status: 403,
      code: "SignatureDoesNotMatch",
    });
    expect(await refused(altered("X-Amz-Expires", "0"))).toMatchObject({ status: 403 });
    // A link for HEAD does not GET; a link may not write; Bob's link to Alice's key is Bob's request.
    expect(await refused(link, { method: "HEAD" })).toMatchObject({ status: 403 });
    const put = await getSignedUrl(ada, new PutObjectCommand({ Bucket, Key: KEY }), { expiresIn: 60 });
    expect(await refused(put, { method: "PUT", body: "x" })).toEqual({ status: 403, code: "AccessDenied" });
    expect(await refused(await getSignedUrl(bob, get()))).toEqual({ status: 403, code: "AccessDenied" });
    // fetch would resolve the `..` before sending; sent as signed, the gateway refuses it.
    const dotted = await getSignedUrl(bob, get("workspaces/lab/bo/../ada/jobs/share-1/outputs/model.bin"));
    expect(await rawGet(dotted)).toEqual({ status: 403, code: "AccessDenied" });
    const stranger = new S3Client({
      endpoint: platform.endpoint,
      region: platform.region,
      credentials: { accessKeyId: "LOCALNOSUCHKEY", secretAccessKey: "x" },
      forcePathStyle: true,
    });
    expect(await refused(await getSignedUrl(stranger, get()))).toEqual({
      status: 403,
      code: "InvalidClientTokenId",
    });
    stranger.destroy();
    const body = await fetch(link);
    expect(Buffer.from(await body.arrayBuffer())).toEqual(BYTES);
  });
});
