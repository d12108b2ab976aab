import type { S3Client } from "@aws-sdk/client-s3";
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
} from "@aws-sdk/client-s3";
import type { SQSClient } from "@aws-sdk/client-sqs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { submitJob } from "../../../runtime/src/job/submit";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import { JobQueue } from "../../../runtime/src/queue/job-queue";
import type { IndexEntry } from "../../../runtime/src/store/job-index";
import { indexStamp, isIndexCursor, JobIndex, jobNameOf } from "../../../runtime/src/store/job-index";
import type { JobAddress, JobState } from "../../../runtime/src/store/job-store";
import { JobStore } from "../../../runtime/src/store/job-store";
import { USER_SESSION_TAG } from "../../../infra/access";
import { MOCK_ACCOUNT_ID } from "../../../scripts/lib/mock-engine";
import type { DeclaredResource } from "../../support/harness";
import { readStackConfig, runStack, STACKS } from "../../support/harness";
import type { Document } from "../../support/iam-evaluator";
import { evaluate } from "../../support/iam-evaluator";
import type { IamRequest, StackNaming } from "../../support/record-calls";
import { CallRecorder, iamRequests } from "../../support/record-calls";

const TIER = "cpu-small";
const logger = pino({ level: "silent" });
let platform: LocalPlatform;
let dir: string;
/** Every job of this file is submitted within the last day, a minute apart from this time on. */
const T0 = Date.UTC(2026, 2, 18, 12, 0, 0);

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: [TIER], logger });
  dir = await mkdtemp(join(tmpdir(), "crucible-job-index-"));
});
afterAll(async () => {
  await platform?.stop();
  await rm(dir, { recursive: true, force: true });
});

const at = (minute: number): string => new Date(T0 + minute * 60_000).toISOString();
const ids = (jobs: readonly { address: JobAddress }[]): string[] => jobs.map((j) => j.address.jobId);

/** A job as submit leaves it and the agent updates it: its state, then its index entry. */
async function seed(
  address: JobAddress,
  minute: number,
  state: Partial<JobState> & Pick<JobState, "status"> = { status: "queued" },
  entry: Partial<IndexEntry> = {},
): Promise<void> {
  const { store } = platform.as(address.project, address.user);
  await store.updateState(address, { tier: TIER, submittedAt: at(minute), ...state });
  await JobIndex.of(store).put(address, {
    jobId: address.jobId,
    tier: TIER,
    priority: "normal",
    submittedAt: at(minute),
    ...entry,
  });
}

/** The S3 and SQS calls made through `clients` while `body` runs: the command, and its key or prefix. */
async function calls<T>(
  clients: { s3: S3Client; sqs?: SQSClient },
  body: () => Promise<T>,
): Promise<{ result: T; made: string[] }> {
  const made: string[] = [];
  const name = `record-${Math.random()}`;
  const record = (
    commandName: string | undefined,
    input: { Key?: string; Prefix?: string; MaxKeys?: number },
  ): void => {
    const what = input.Key ?? (input.Prefix === undefined ? "" : `${input.Prefix}*`);
    const max = input.MaxKeys === undefined ? "" : ` max ${input.MaxKeys}`;
    made.push(`${(commandName ?? "unknown").replace(/Command$/, "")} ${what}${max}`.trimEnd());
  };
  clients.s3.middlewareStack.add(
    (next, context) => (args) => {
      record(context.commandName, args.input as { Key?: string; Prefix?: string; MaxKeys?: number });
      return next(args);
    },
    { step: "initialize", name },
  );
  clients.sqs?.middlewareStack.add(
    (next, context) => (args) => {
      record(context.commandName, {});
      return next(args);
    },
    { step: "initialize", name },
  );
  try {
    return { result: await body(), made };
  } finally {
    clients.s3.middlewareStack.remove(name);
    clients.sqs?.middlewareStack.remove(name);
  }
}

describe("index keys", () => {
  it("sort later times first, at a fixed width, and refuse times they cannot hold", () => {
    const keys = [0, 1, T0, T0 + 1, Date.UTC(2100, 0, 1)].map(indexStamp);
    expect(keys.every((k) => k.length === 9)).toBe(true);
    expect([...keys].sort()).toEqual([...keys].reverse());
    expect(indexStamp(0)).toBe("zzzzzzzzz");
    expect(() => indexStamp(-1)).toThrow(
      "an index key holds a time from the epoch to 101559956668415 ms, got -1",
    );
    expect(() => indexStamp(1.5)).toThrow(RangeError);
  });

  it.each([
    ["/home/ada/nanogpt", "nanogpt"],
    ["/home/ada/nanogpt/", "nanogpt"],
    ["train.py", "train"],
    ["runs/Sweep 3.zip", "Sweep-3"],
    ["/tmp/\u001b[31m", "31m"],
    ["/tmp/...", undefined],
    ["/", undefined],
    ["/tmp/***", undefined],
  ])("name a job after its code: %j is %j", (path, name) => {
    expect(jobNameOf(path)).toBe(name);
  });
});

describe("submitting", () => {
  async function code(name: string): Promise<string> {
    const path = join(dir, name);
    await mkdir(path);
    await writeFile(join(path, "main.py"), "def main():\n    return 1\n");
    return path;
  }

  it("writes the state, then the index entry, then the message", async () => {
    const ada = platform.as("sub", "ada");
    const address = { project: "sub", user: "ada", jobId: "job-indexed" };
    const path = await code("mnist");
    const { made } = await calls(ada, () =>
      submitJob(ada.store, ada.queue(TIER, "high"), {
        path,
        address,
        spec: { jobId: address.jobId, tier: TIER, env: {} },
        quotaGiB: 1,
      }),
    );
    const state = (await ada.store.getState(address))!;
    const stamp = indexStamp(Date.parse(state.submittedAt));
    const key = `workspaces/sub/ada/index/${stamp}-job-indexed.high.mnist.json`;
    expect(made.filter((c) => c.startsWith("PutObject") || c.startsWith("SendMessage"))).toEqual([
      "PutObject workspaces/sub/ada/jobs/job-indexed/code.zip",
      "PutObject workspaces/sub/ada/jobs/job-indexed/spec.json",
      "PutObject workspaces/sub/ada/jobs/job-indexed/state.json",
      `PutObject ${key}`,
      "SendMessage",
    ]);
    const body = await ada.s3.send(new GetObjectCommand({ Bucket: platform.bucket, Key: key }));
    expect(JSON.parse(await body.Body!.transformToString())).toEqual({
      jobId: "job-indexed",
      tier: TIER,
      priority: "high",
      submittedAt: state.submittedAt,
      name: "mnist",
    });
  });

  it("leaves a job whose message could not be sent listed as failed, saying it was never queued", async () => {
    const ada = platform.as("sub", "ada");
    const address = { project: "sub", user: "ada", jobId: "job-unsent" };
    const missing = new JobQueue(ada.sqs, `${ada.queue(TIER).queueUrl}-missing`, logger);
    const sent = submitJob(ada.store, missing, {
      path: await code("unsent"),
      address,
      spec: { jobId: address.jobId, tier: TIER, env: {} },
      quotaGiB: 1,
    });
    const error = await sent.then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    expect(error).toBeInstanceOf(Error);
    const [listed] = await JobIndex.of(ada.store).list({ project: "sub", users: { user: "ada" }, limit: 1 });
    expect(listed).toMatchObject({
      address,
      priority: "normal",
      name: "unsent",
      state: { status: "failed", note: `never queued: ${error!.message}; submit it again` },
    });
  });
});

describe("listing one user's jobs", () => {
  const ada = (jobId: string): JobAddress => ({ project: "one", user: "ada", jobId });
  /** 250 jobs a minute apart, seeded out of order; the three oldest failed, the rest succeeded. */
  const JOBS = 250;
  const job = (i: number): string => `job-${String(i).padStart(3, "0")}`;

  beforeAll(async () => {
    const order = Array.from({ length: JOBS }, (_, i) => (i * 97) % JOBS);
    for (let start = 0; start < JOBS; start += 25)
      await Promise.all(
        order
          .slice(start, start + 25)
          .map((i) => seed(ada(job(i)), i, { status: i < 3 ? "failed" : "succeeded" })),
      );
  }, 120_000);

  it("lists one page of exactly the keys it shows, and reads only those jobs' states", async () => {
    const clients = platform.as("one", "ada");
    const index = JobIndex.of(clients.store);
    const { result, made } = await calls(clients, () =>
      index.list({ project: "one", users: { user: "ada" }, limit: 3 }),
    );
    expect(ids(result)).toEqual(["job-249", "job-248", "job-247"]);
    expect(result[0]!.state).toMatchObject({ status: "succeeded", submittedAt: at(249) });
    expect(made.filter((c) => c.startsWith("ListObjectsV2"))).toEqual([
      "ListObjectsV2 workspaces/one/ada/index/* max 3",
    ]);
    expect(made.filter((c) => c.startsWith("GetObject")).sort()).toEqual(
      [249, 248, 247].map((i) => `GetObject workspaces/one/ada/jobs/${job(i)}/state.json`).sort(),
    );
  });

  it("filtered by state, pages on until the limit matches", async () => {
    const clients = platform.as("one", "ada");
    const { result, made } = await calls(clients, () =>
      JobIndex.of(clients.store).list({
        project: "one",
        users: { user: "ada" },
        limit: 2,
        statuses: new Set(["failed"]),
      }),
    );
    expect(ids(result)).toEqual(["job-002", "job-001"]);
    expect(made.filter((c) => c.startsWith("ListObjectsV2"))).toEqual([
      "ListObjectsV2 workspaces/one/ada/index/* max 100",
      "ListObjectsV2 workspaces/one/ada/index/* max 100",
      "ListObjectsV2 workspaces/one/ada/index/* max 100",
    ]);
  });

  it("since a time, stops listing at the first older key and reads none of the older jobs", async () => {
    const clients = platform.as("one", "ada");
    const { result, made } = await calls(clients, () =>
      JobIndex.of(clients.store).list({
        project: "one",
        users: { user: "ada" },
        limit: 50,
        statuses: new Set(["failed"]),
        since: new Date(at(200)),
      }),
    );
    expect(result).toEqual([]);
    expect(made.filter((c) => c.startsWith("ListObjectsV2"))).toEqual([
      "ListObjectsV2 workspaces/one/ada/index/* max 100",
    ]);
    // The states of jobs 249 down to 200, and no other.
    expect(made.filter((c) => c.startsWith("GetObject"))).toHaveLength(50);
    const recent = await JobIndex.of(clients.store).list({
      project: "one",
      users: { user: "ada" },
      limit: 50,
      since: new Date(at(247)),
    });
    expect(ids(recent)).toEqual(["job-249", "job-248", "job-247"]);
  });

  it("goes on after a listed job's cursor, one page listed from there", async () => {
    const clients = platform.as("one", "ada");
    const index = JobIndex.of(clients.store);
    const first = await index.list({ project: "one", users: { user: "ada" }, limit: 3 });
    expect(isIndexCursor(first[2]!.cursor)).toBe(true);
    const { result, made } = await calls(clients, () =>
      index.list({ project: "one", users: { user: "ada" }, limit: 3, after: first[2]!.cursor }),
    );
    expect(ids(result)).toEqual(["job-246", "job-245", "job-244"]);
    expect(made.filter((c) => c.startsWith("ListObjectsV2"))).toEqual([
      "ListObjectsV2 workspaces/one/ada/index/* max 3",
    ]);
    expect(isIndexCursor("../../bob/index/x.json")).toBe(false);
  });

  it("filtered by text, matches ids and names in the keys and reads only the matching jobs' states", async () => {
    const clients = platform.as("one", "ada");
    const { result, made } = await calls(clients, () =>
      JobIndex.of(clients.store).list({ project: "one", users: { user: "ada" }, limit: 5, text: "JOB-24" }),
    );
    expect(ids(result)).toEqual(["job-249", "job-248", "job-247", "job-246", "job-245"]);
    // The first batch of 100 keys holds job-240 to job-249: their states only are read.
    expect(made.filter((c) => c.startsWith("GetObject"))).toHaveLength(10);
  });

  it("finds one job's entry by its submission time with a listing of one key", async () => {
    const clients = platform.as("one", "ada");
    const { result, made } = await calls(clients, () =>
      JobIndex.of(clients.store).find(ada(job(100)), at(100)),
    );
    expect(result).toMatchObject({ address: ada(job(100)), priority: "normal" });
    expect(made).toHaveLength(1);
    expect(await JobIndex.of(clients.store).find(ada(job(100)), at(101))).toBeUndefined();
  });
});

describe("listing every user of a project", () => {
  beforeAll(async () => {
    for (const [user, minute] of [
      ["ada", 1],
      ["bob", 2],
      ["ada", 3],
      ["cy", 4],
      ["bob", 5],
      ["ada", 6],
    ] as const)
      await seed({ project: "many", user, jobId: `${user}-at-${minute}` }, minute, undefined, {
        priority: user === "bob" ? "high" : "low",
        name: `${user}.v${minute}`,
      });
    // Fair share's records sit beside the users: no user of that name.
    await platform.store.markRunning(
      { address: { project: "many", user: "ada", jobId: "ada-at-6" }, tier: TIER, claimedAt: T0 },
      "node-1",
    );
  });

  it("merges the users' jobs newest first, with the priority and name their keys carry", async () => {
    const index = JobIndex.of(platform.store);
    expect(await index.users("many")).toEqual(["ada", "bob", "cy"]);
    const jobs = await index.list({ project: "many", users: "all", limit: 4 });
    expect(jobs.map((j) => [`${j.address.user}/${j.address.jobId}`, j.priority, j.name])).toEqual([
      ["ada/ada-at-6", "low", "ada.v6"],
      ["bob/bob-at-5", "high", "bob.v5"],
      ["cy/cy-at-4", "low", "cy.v4"],
      ["ada/ada-at-3", "low", "ada.v3"],
    ]);
  });

  it("is refused to a submitter, whose credentials reach only their own prefix", async () => {
    const index = JobIndex.of(platform.as("many", "ada").store);
    await expect(index.list({ project: "many", users: "all", limit: 4 })).rejects.toMatchObject({
      name: "AccessDenied",
    });
  });
});

describe("what a listing cannot trust", () => {
  it("skips keys that name no job, and jobs whose state is gone or not a state", async () => {
    const warnings: string[] = [];
    const warned = pino({ level: "warn" }, { write: (line: string) => warnings.push(line) });
    const clients = platform.as("odd", "ada");
    const index = new JobIndex(clients.s3, new JobStore(clients.s3, platform.bucket, warned), warned);
    const address = (jobId: string): JobAddress => ({ project: "odd", user: "ada", jobId });
    const put = (Key: string, Body: string) =>
      clients.s3.send(new PutObjectCommand({ Bucket: platform.bucket, Key, Body }));
    await seed(address("good"), 1);
    await seed(address("bad-state"), 2);
    await put("workspaces/odd/ada/jobs/bad-state/state.json", '{"status":"exploded"}');
    // Its state removed by hand: the entry lingers, and the job is gone.
    await seed(address("no-state"), 3);
    await clients.s3.send(
      new DeleteObjectCommand({
        Bucket: platform.bucket,
        Key: "workspaces/odd/ada/jobs/no-state/state.json",
      }),
    );
    await seed(address("urgent"), 4);
    await put(`workspaces/odd/ada/index/${indexStamp(T0 + 4 * 60_000)}-urgent.urgent.json`, "{}");
    await put("workspaces/odd/ada/index/notes.txt", "not an entry");
    const jobs = await index.list({ project: "odd", users: { user: "ada" }, limit: 10 });
    expect(ids(jobs)).toEqual(["urgent", "good"]);
    const said = warnings.map((line) => {
      const { msg, key, jobId } = JSON.parse(line) as { msg: string; key?: string; jobId?: string };
      return `${msg}: ${key ?? jobId}`;
    });
    expect(said.sort()).toEqual([
      "skipping a job whose state does not parse: bad-state",
      "skipping an index key that names no job: workspaces/odd/ada/index/notes.txt",
      `skipping an index key that names no job: workspaces/odd/ada/index/${indexStamp(T0 + 4 * 60_000)}-urgent.urgent.json`,
    ]);
  });
});

describe("reindexing", () => {
  it("indexes the jobs submitted before the index, once, with their spec's priority or the default", async () => {
    const clients = platform.as("old", "ada");
    const address = (jobId: string): JobAddress => ({ project: "old", user: "ada", jobId });
    await clients.store.putSpec(address("old-low"), {
      jobId: "old-low",
      tier: TIER,
      env: {},
      priority: "low",
    });
    await clients.store.updateState(address("old-low"), {
      status: "succeeded",
      tier: TIER,
      submittedAt: at(1),
    });
    await clients.store.updateState(address("old-nospec"), {
      status: "failed",
      tier: TIER,
      submittedAt: at(2),
    });
    await seed(address("new"), 3);
    const index = JobIndex.of(clients.store);
    expect(await index.hasJobs({ project: "old", user: "ada" })).toBe(true);
    expect(ids(await index.list({ project: "old", users: { user: "ada" }, limit: 10 }))).toEqual(["new"]);
    expect(await index.reindex({ project: "old", user: "ada" })).toBe(2);
    const jobs = await index.list({ project: "old", users: { user: "ada" }, limit: 10 });
    expect(jobs.map((j) => [j.address.jobId, j.priority, j.state.submittedAt])).toEqual([
      ["new", "normal", at(3)],
      ["old-nospec", "normal", at(2)],
      ["old-low", "low", at(1)],
    ]);
    expect(await index.reindex({ project: "old", user: "ada" })).toBe(0);
    const listed = await clients.s3.send(
      new ListObjectsV2Command({ Bucket: platform.bucket, Prefix: "workspaces/old/ada/index/" }),
    );
    expect(listed.KeyCount).toBe(3);
  });
});

/**
 * The calls submit and `ls` make as a researcher, judged against each stack's submitter role (its inline
 * policy, within the permissions boundary, past the workspaces bucket's policy): the index sits under the
 * user's own prefix, so the role's existing grants cover it, and only `--all-users` is refused.
 */
describe.each(STACKS)("the %s stack's submitter role", (stack) => {
  const T = {
    role: "aws:iam/role:Role",
    rolePolicy: "aws:iam/rolePolicy:RolePolicy",
    policy: "aws:iam/policy:Policy",
    bucket: "aws:s3/bucket:Bucket",
    bucketPolicy: "aws:s3/bucketPolicy:BucketPolicy",
    encryption: "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
  } as const;
  /** A user of its own per stack: stacks may name the same project, and a client keeps its recorder. */
  const USER = `iam-${stack}`;
  const parse = (r: DeclaredResource, field: string): Document =>
    JSON.parse(r.inputs[field] as string) as Document;

  it("allows every call of submit and ls on the user's own index, and refuses listing the project's users", async () => {
    const plan = await runStack(stack);
    const inline = plan.ofType(T.rolePolicy).find((p) => p.name.startsWith("submitters-"))!;
    const project = inline.name.slice("submitters-".length);
    const role = plan.get(T.role, `submitters-${project}`);
    const boundary = plan.ofType(T.policy).find((p) => p.state.arn === role.inputs.permissionsBoundary);
    const bucket = plan.get(T.bucket, "workspaces-workspaces");
    const layers = {
      identity: [{ name: inline.name, document: parse(inline, "policy") }],
      ...(boundary && { boundary: { name: boundary.name, document: parse(boundary, "policy") } }),
      resource: plan
        .ofType(T.bucketPolicy)
        .filter((p) => p.inputs.bucket === bucket.id || p.inputs.bucket === bucket.state.bucket)
        .map((p) => ({ name: p.name, document: parse(p, "policy") })),
    };
    const sse = (
      plan.get(T.encryption, "workspaces-workspaces").inputs.rules as {
        applyServerSideEncryptionByDefault: { sseAlgorithm: string; kmsMasterKeyId?: string };
      }[]
    )[0]!.applyServerSideEncryptionByDefault;
    const naming: StackNaming = {
      stack,
      region: readStackConfig(stack)["aws:region"]!,
      accountId: MOCK_ACCOUNT_ID,
      tier: TIER,
      bucketArn: () => bucket.state.arn as string,
      kmsKeyArn: sse.sseAlgorithm === "aws:kms" ? sse.kmsMasterKeyId : undefined,
      queueArn: (name) => {
        throw new Error(`no queue is judged here, got ${name}`);
      },
      groupArn: (name) => {
        throw new Error(`no group is judged here, got ${name}`);
      },
      key: (key) => key,
    };

    const researcher = platform.as(project, USER);
    const recorder = new CallRecorder();
    recorder.attach(researcher.s3, "s3");
    const dir = await mkdtemp(join(tmpdir(), "crucible-job-index-iam-"));
    try {
      await writeFile(join(dir, "main.py"), "def main():\n    return 1\n");
      await submitJob(researcher.store, researcher.queue(TIER), {
        path: dir,
        address: { project, user: USER, jobId: `iam-${stack}` },
        spec: { jobId: `iam-${stack}`, tier: TIER, env: {} },
        quotaGiB: 1,
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    const index = JobIndex.of(researcher.store);
    const mine = { project, users: { user: USER } } as const;
    expect(ids(await index.list({ ...mine, limit: 5 }))).toEqual([`iam-${stack}`]);
    await index.list({ ...mine, limit: 5, statuses: new Set(["failed"]), since: new Date(T0) });
    await index.hasJobs({ project, user: USER });
    await index.reindex({ project, user: USER });
    await expect(index.list({ project, users: "all", limit: 5 })).rejects.toMatchObject({
      name: "AccessDenied",
    });

    const tag = `aws:PrincipalTag/${USER_SESSION_TAG}`;
    const decided = recorder.calls
      .flatMap((call) => iamRequests(call, naming))
      .map((r) => {
        const request: IamRequest = {
          ...r,
          context: { ...r.context, [tag]: USER },
          knownKeys: new Set([...r.knownKeys, tag]),
        };
        return [request, evaluate(request, layers)] as const;
      });
    expect(recorder.operations()).toEqual(["s3:GetObject", "s3:ListObjectsV2", "s3:PutObject"]);
    expect(decided.some(([r]) => r.action === "s3:PutObject" && r.resource.includes(`/${USER}/index/`))).toBe(
      true,
    );
    expect(
      decided
        .filter(([, d]) => !d.allowed)
        .map(([r, d]) => `${r.action} ${r.context["s3:prefix"]}: ${d.reason}`),
    ).toEqual([`s3:ListBucket workspaces/${project}/: no identity policy statement allows it`]);
  }, 120_000);
});
