import { EnvironmentStore } from "../../runtime/src/environments/environment-store";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { closeSync, openSync, writeSync } from "node:fs";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PRECACHED_DATASETS } from "../../runtime/src/catalog/datasets";
import { DatasetStore } from "../../runtime/src/store/dataset-store";
import type { Document, NamedPolicy } from "../support/iam-evaluator";
import { evaluate, globMatch, statementsOf, validatePolicy } from "../support/iam-evaluator";
import type { IamRequest, RecordedCall, StackNaming } from "../support/record-calls";
import { CallRecorder, iamRequests } from "../support/record-calls";
import { MOCK_ACCOUNT_ID } from "../../scripts/lib/mock-engine";
import { STACKS, readStackConfig, runStack, type DeclaredResource, type Plan } from "../support/harness";

/**
 * The datasets bucket's IAM against the dataset store's real calls (runtime/src/store/dataset-store.ts):
 * the store pushes, lists, resolves and reads as a researcher, and publishes the pre-cached sets and reads
 * a user's version as an agent, and the environment store (runtime/src/environments/environment-store.ts)
 * stores, finds and fetches a job environment as an agent, on an embedded S3 (fauxqs) while a middleware records every call. Each
 * call, mapped to each stack's names, must be allowed to the submitter role of every project (as each of
 * its users) and to the node role of every tier (inline policy, within the permissions boundary, past the
 * bucket's policy); every datasets grant of either role must be used by some call; and what neither may
 * do (another user's prefix, deleting a version, a submitter writing `precached/`) is refused.
 */

const logger = pino({ level: process.env.AGENT_TEST_LOG ?? "silent" });
const LOCAL_BUCKET = "crucible-datasets";
const OWNER = { project: "lab", user: "ada" };
const USER_TAG = "aws:PrincipalTag/crucible-user";
const PRECACHED = PRECACHED_DATASETS[0]!;
/** Over the 8 MiB part size: the store uploads it in parts. */
const LARGE_BYTES = 9 * 2 ** 20;

const T = {
  role: "aws:iam/role:Role",
  rolePolicy: "aws:iam/rolePolicy:RolePolicy",
  policy: "aws:iam/policy:Policy",
  bucket: "aws:s3/bucket:Bucket",
  bucketPolicy: "aws:s3/bucketPolicy:BucketPolicy",
  encryption: "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
  fleet: "crucible:fleet:TierFleet",
} as const;

/** The store's calls as each identity makes them. */
const calls: { submitter: RecordedCall[]; agent: RecordedCall[] } = { submitter: [], agent: [] };
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-datasets-iam-"));
  const { buildApp } = await import("fauxqs");
  const server = buildApp({ logger: false, host: "127.0.0.1", defaultRegion: "us-east-1" });
  const endpoint = await server.listen({ port: 0, host: "127.0.0.1" });
  const client = (recorder: CallRecorder): S3Client => {
    const s3 = new S3Client({
      endpoint,
      region: "us-east-1",
      credentials: { accessKeyId: "x", secretAccessKey: "x" },
      forcePathStyle: true,
    });
    recorder.attach(s3, "s3");
    return s3;
  };
  const setup = new S3Client({
    endpoint,
    region: "us-east-1",
    credentials: { accessKeyId: "x", secretAccessKey: "x" },
    forcePathStyle: true,
  });
  try {
    await setup.send(new CreateBucketCommand({ Bucket: LOCAL_BUCKET }));
    const dir = async (name: string, files: Record<string, string | Buffer>): Promise<string> => {
      const path = join(root, name);
      for (const [file, content] of Object.entries(files)) {
        await mkdir(join(path, file, ".."), { recursive: true });
        await writeFile(join(path, file), content);
      }
      return path;
    };
    const first = await dir("v1", { "train.txt": "to be", "large.bin": Buffer.alloc(LARGE_BYTES, 1) });
    const second = await dir("v2", {
      "train.txt": "or not to be",
      "large.bin": Buffer.alloc(LARGE_BYTES, 1),
    });
    const precached = await dir("precached", { "input.txt": "First Citizen:" });

    // An agent publishes the pre-cached set (as a node does when it starts), then a researcher works.
    const agentRecorder = new CallRecorder();
    const agent = new DatasetStore({ s3: client(agentRecorder), bucket: LOCAL_BUCKET, logger });
    await agent.publishPrecached(PRECACHED, precached);
    const submitterRecorder = new CallRecorder();
    const submitter = new DatasetStore({ s3: client(submitterRecorder), bucket: LOCAL_BUCKET, logger });
    await submitter.push(OWNER, "corpus", first);
    await submitter.push(OWNER, "corpus", first);
    await submitter.push(OWNER, "corpus", second);
    // A file rewritten while it goes up: the push removes the blob stored under its old hash, and fails.
    const changing = await dir("changing", { "large.bin": Buffer.alloc(LARGE_BYTES, 2) });
    let rewritten = false;
    await expect(
      submitter.push(OWNER, "changing", changing, {
        onProgress: () => {
          if (rewritten) return;
          rewritten = true;
          // The tail, which the upload has not read yet: it streams the file in order.
          const fd = openSync(join(changing, "large.bin"), "r+");
          writeSync(fd, Buffer.from([3]), 0, 1, LARGE_BYTES - 1);
          closeSync(fd);
        },
      }),
    ).rejects.toThrow(/changed while it was pushed/);
    await submitter.list(OWNER);
    const own = await submitter.resolve(OWNER, { name: "corpus", version: 2 });
    await submitter.getBlob(own.prefix, own.manifest.files[0]!.sha256).then(drain);
    await expect(submitter.resolve(OWNER, { name: "corpus", version: 9 })).rejects.toThrow(
      /has versions 1, 2/,
    );
    const shared = await submitter.resolve(OWNER, PRECACHED);
    await submitter.getBlob(shared.prefix, shared.manifest.files[0]!.sha256).then(drain);

    // An agent fetches what a job of OWNER names: their version and the pre-cached set.
    const job = await agent.resolve(OWNER, { name: "corpus", version: 1 });
    for (const file of job.manifest.files) await agent.getBlob(job.prefix, file.sha256).then(drain);
    await agent.resolve(OWNER, PRECACHED);
    // A job naming a version that is not there: the agent lists the name's versions for the message.
    await expect(agent.resolve(OWNER, { name: "corpus", version: 9 })).rejects.toThrow(/has versions 1, 2/);
    await agent.publishPrecached(PRECACHED, precached);
    // Job environments, stored beside the datasets: an agent builds one, another finds and fetches it.
    const environments = new EnvironmentStore(client(agentRecorder), LOCAL_BUCKET);
    const key = "e".repeat(64);
    expect(await environments.find(key)).toBeUndefined();
    const archive = join(root, "env.tar");
    await writeFile(archive, "an environment's archive");
    const stored = await environments.put(
      {
        key,
        bytes: 24,
        pythonPath: ["prefix/lib/python3.13/site-packages"],
        packages: [{ name: "tinypkg", version: "1.0" }],
        image: "crucible/cpu:py3.13",
        requirements: ["tinypkg==1.0"],
        builtAt: new Date().toISOString(),
        buildSeconds: 1,
      },
      archive,
      "pip's output",
    );
    expect(await environments.find(key)).toEqual(stored);
    await environments.download(stored, join(root, "fetched.tar"));
    calls.agent.push(...agentRecorder.calls);
    calls.submitter.push(...submitterRecorder.calls);
  } finally {
    setup.destroy();
    await server.close();
  }
}, 120_000);

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

async function drain(body: NodeJS.ReadableStream): Promise<void> {
  for await (const _ of body as AsyncIterable<unknown>);
}

const parse = (r: DeclaredResource, field: string): Document =>
  JSON.parse(r.inputs[field] as string) as Document;

/** A role as IAM sees it for the datasets bucket: its inline policy, its boundary and the bucket's policy. */
function roleLayers(plan: Plan, roleName: string) {
  const role = plan.get(T.role, roleName);
  const inline = plan.ofType(T.rolePolicy).filter((p) => p.inputs.role === role.id);
  const boundary = plan.ofType(T.policy).find((p) => p.state.arn === role.inputs.permissionsBoundary);
  const bucket = plan.get(T.bucket, "workspaces-datasets");
  const bucketPolicies = plan
    .ofType(T.bucketPolicy)
    .filter((p) => p.inputs.bucket === bucket.id || p.inputs.bucket === bucket.state.bucket);
  expect(boundary, `${plan.stack} ${roleName}'s boundary`).toBeDefined();
  expect(bucketPolicies, `${plan.stack} the datasets bucket's policy`).toHaveLength(1);
  const layers = {
    identity: inline.map((p): NamedPolicy => ({ name: p.name, document: parse(p, "policy") })),
    boundary: { name: boundary!.name, document: parse(boundary!, "policy") },
    resource: bucketPolicies.map((p): NamedPolicy => ({ name: p.name, document: parse(p, "policy") })),
  };
  for (const p of [...layers.identity, layers.boundary, ...layers.resource]) validatePolicy(p);
  return layers;
}

/** The stack's names for the local ones: the datasets bucket, its key, and OWNER's prefix as `as`'s. */
function naming(plan: Plan, as: { project: string; user: string }): StackNaming {
  const bucket = plan.get(T.bucket, "workspaces-datasets");
  const encryption = plan.ofType(T.encryption).find((e) => e.inputs.bucket === bucket.state.bucket)!;
  const [rule] = encryption.inputs.rules as {
    applyServerSideEncryptionByDefault: { sseAlgorithm: string; kmsMasterKeyId?: string };
  }[];
  const sse = rule!.applyServerSideEncryptionByDefault;
  const refuse = (what: string) => (): string => {
    throw new Error(`the dataset store made a ${what} call`);
  };
  return {
    stack: plan.stack,
    region: readStackConfig(plan.stack)["aws:region"]!,
    accountId: MOCK_ACCOUNT_ID,
    tier: "",
    bucketArn: (name) => {
      if (name !== LOCAL_BUCKET) throw new Error(`a call to bucket ${name}, not the datasets bucket`);
      return bucket.state.arn as string;
    },
    kmsKeyArn: sse.sseAlgorithm === "aws:kms" ? sse.kmsMasterKeyId : undefined,
    queueArn: refuse("queue"),
    groupArn: refuse("group"),
    key: (key) => key.replace(`users/${OWNER.project}/${OWNER.user}/`, `users/${as.project}/${as.user}/`),
  };
}

/** The IAM requests of `recorded`, as the session of `user` makes them (its `crucible-user` tag). */
function requests(recorded: readonly RecordedCall[], names: StackNaming, user?: string): IamRequest[] {
  const seen = new Map<string, IamRequest>();
  for (const request of recorded.flatMap((c) => iamRequests(c, names))) {
    const tagged =
      user === undefined
        ? request
        : {
            ...request,
            context: { ...request.context, [USER_TAG]: user },
            knownKeys: new Set([...request.knownKeys, USER_TAG]),
          };
    seen.set(JSON.stringify([tagged.action, tagged.resource, tagged.context]), tagged);
  }
  return [...seen.values()];
}

type Layers = ReturnType<typeof roleLayers>;
const refusals = (layers: Layers, reqs: readonly IamRequest[]): string[] =>
  reqs.flatMap((r) => {
    const d = evaluate(r, layers);
    return d.allowed ? [] : [`${r.call}: ${d.reason}`];
  });
/** The S3 requests of `reqs` allowed (the key's are allowed to anyone who may write or read an object). */
const allowed = (layers: Layers, reqs: readonly IamRequest[]): string[] =>
  reqs.filter((r) => r.action.startsWith("s3:") && evaluate(r, layers).allowed).map((r) => r.call);

/** `<Sid> <action>` of the identity statements on the datasets bucket that no request in `reqs` is allowed by. */
function unusedDatasetGrants(layers: Layers, reqs: readonly IamRequest[], datasetsArn: string): string[] {
  const decided = reqs.map((r) => [r, evaluate(r, layers)] as const);
  return layers.identity.flatMap((policy, p) =>
    statementsOf(policy.document).flatMap((s, i) => {
      const resources = [s.Resource ?? []].flat();
      if (!resources.some((r) => r.startsWith(datasetsArn))) return [];
      const by = decided.filter(([, d]) => d.allowedBy.some(([dp, di]) => dp === p && di === i));
      return [s.Action ?? []]
        .flat()
        .filter((action) => !by.some(([r]) => globMatch(action, r.action, true)))
        .map((action) => `${s.Sid ?? i} ${action}`);
    }),
  );
}

/** One S3 call of the store's kind, for what the store never does. */
const s3Call = (operation: string, input: Record<string, unknown>): RecordedCall => ({
  service: "s3",
  operation,
  input: { Bucket: LOCAL_BUCKET, ...input },
});
const BLOB = `blobs/${"0".repeat(64)}`;

describe.each(STACKS)("the %s stack's datasets bucket", (stack) => {
  let plan: Plan;
  let projects: { project: string; users: string[] }[];
  let tiers: string[];
  beforeAll(async () => {
    plan = await runStack(stack);
    const roles = (plan.outputs.access as { submitterRoleArns: Record<string, string> }).submitterRoleArns;
    projects = Object.keys(roles).map((project) => {
      const trust = parse(plan.get(T.role, `submitters-${project}`), "assumeRolePolicy");
      const users = statementsOf(trust).map(
        (s) => (s.Condition!.StringEquals as Record<string, string>)["sts:RoleSessionName"]!,
      );
      return { project, users };
    });
    tiers = plan.ofType(T.fleet).map((f) => f.name.replace(/^fleet-/, ""));
  }, 120_000);
  const datasetsArn = () => plan.get(T.bucket, "workspaces-datasets").state.arn as string;

  it("the store made the calls of every flow, as a researcher and as an agent", () => {
    const operations = (recorded: readonly RecordedCall[]) =>
      [...new Set(recorded.map((c) => c.operation))].sort();
    const multipart = ["CompleteMultipartUpload", "CreateMultipartUpload", "UploadPart"];
    expect(operations(calls.submitter)).toEqual(
      ["DeleteObject", "GetObject", "ListObjectsV2", "PutObject", ...multipart].sort(),
    );
    expect(operations(calls.agent)).toEqual(["GetObject", "ListObjectsV2", "PutObject"]);
    // A version's manifest is written once: If-None-Match, as the submitter's and agent's PutObject carry it.
    const manifests = [...calls.submitter, ...calls.agent].filter(
      (c) => c.operation === "PutObject" && /\/v\d+\.json$/.test(c.input.Key as string),
    );
    expect(manifests.length).toBeGreaterThan(0);
    for (const c of manifests) expect(c.input.IfNoneMatch, c.input.Key as string).toBe("*");
  });

  it("lets every project's submitters, each as themselves, make the store's calls, and uses every grant", () => {
    for (const { project, users } of projects) {
      const layers = roleLayers(plan, `submitters-${project}`);
      for (const user of users) {
        const reqs = requests(calls.submitter, naming(plan, { project, user }), user);
        expect(refusals(layers, reqs), `${stack} ${project}/${user}`).toEqual([]);
        expect(unusedDatasetGrants(layers, reqs, datasetsArn()), `${stack} ${project}/${user}`).toEqual([]);
      }
    }
  });

  it("lets every tier's agents make the store's calls, and uses every grant", () => {
    for (const tier of tiers) {
      const layers = roleLayers(plan, `fleet-${tier}-node`);
      for (const { project, users } of projects) {
        const reqs = requests(calls.agent, naming(plan, { project, user: users[0]! }));
        expect(refusals(layers, reqs), `${stack} ${tier}`).toEqual([]);
        expect(unusedDatasetGrants(layers, reqs, datasetsArn()), `${stack} ${tier}`).toEqual([]);
      }
    }
  });

  it("refuses a submitter another user's or project's datasets, deleting a version, writing precached/ and any of environments/", () => {
    for (const { project, users } of projects) {
      const layers = roleLayers(plan, `submitters-${project}`);
      const user = users[0]!;
      const names = naming(plan, { project, user });
      const as = (call: RecordedCall) => requests([call], names, user);
      const other = `users/${project}/${user}x/`;
      const attempts = [
        s3Call("GetObject", { Key: `${other}corpus/v1.json` }),
        s3Call("HeadObject", { Key: `${other}${BLOB}` }),
        s3Call("PutObject", { Key: `${other}${BLOB}` }),
        s3Call("GetObject", { Key: `users/${project}x/${user}/corpus/v1.json` }),
        s3Call("ListObjectsV2", { Prefix: other }),
        // Enumerating the project's users, or the whole bucket.
        s3Call("ListObjectsV2", { Prefix: `users/${project}/` }),
        s3Call("ListObjectsV2", {}),
        s3Call("DeleteObject", { Key: `users/${project}/${user}/corpus/v1.json` }),
        s3Call("DeleteObject", { Key: `${other}${BLOB}` }),
        s3Call("PutObject", { Key: `precached/${BLOB}` }),
        s3Call("PutObject", { Key: `precached/${PRECACHED.name}/v9.json` }),
        // Job environments are the agents' alone: a researcher reaches one only through a job.
        s3Call("GetObject", { Key: "environments/0123abcd/env.tar" }),
        s3Call("PutObject", { Key: "environments/0123abcd/env.tar" }),
        s3Call("PutObject", { Key: "environments/0123abcd/manifest.json" }),
        s3Call("ListObjectsV2", { Prefix: "environments/" }),
        s3Call("DeleteObject", { Key: "environments/0123abcd/build.log" }),
      ];
      for (const attempt of attempts)
        expect(
          allowed(layers, as(attempt)),
          `${stack} ${project}/${user} ${JSON.stringify(attempt.input)}`,
        ).toEqual([]);
    }
  });

  it("refuses an agent writing a user's datasets, and deleting anything there", () => {
    const names = naming(plan, { project: projects[0]!.project, user: projects[0]!.users[0]! });
    for (const tier of tiers) {
      const layers = roleLayers(plan, `fleet-${tier}-node`);
      for (const attempt of [
        s3Call("PutObject", { Key: `users/${OWNER.project}/${OWNER.user}/${BLOB}` }),
        s3Call("PutObject", { Key: `users/${OWNER.project}/${OWNER.user}/corpus/v3.json` }),
        s3Call("DeleteObject", { Key: `precached/${BLOB}` }),
        s3Call("DeleteObject", { Key: `users/${OWNER.project}/${OWNER.user}/${BLOB}` }),
      ])
        expect(allowed(layers, requests([attempt], names)), `${stack} ${tier} ${attempt.operation}`).toEqual(
          [],
        );
    }
  });
});
