import { AutoScalingClient } from "@aws-sdk/client-auto-scaling";
import { CloudWatchClient } from "@aws-sdk/client-cloudwatch";
import { DeleteObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { beforeAll, describe, expect, it } from "vitest";
import { SESSION_MANAGER_ACTIONS } from "../../../runtime/src/catalog";
import type { AgentOptions } from "../../../runtime/src/agent/agent";
import type { Agent } from "../../../runtime/src/agent/agent";
import { pauseCheck } from "../../../runtime/src/agent/budget-pause";
import { pauseMarkerKey } from "../../../runtime/src/catalog/bucket-layout";
import type { Envelope } from "../../../runtime/src/job/contract";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { JobStore } from "../../../runtime/src/store/job-store";
import type { LedgerEntry } from "../../../runtime/src/cost/ledger";
import { costOf } from "../../../runtime/src/cost/ledger";
import {
  cloudWatchOutcomes,
  InstanceMetadata,
  NodeLifecycle,
} from "../../../runtime/src/node/node-lifecycle";
import type { Priority, SchedulingPolicyInput } from "../../../runtime/src/catalog/scheduling";
import { schedulingPolicySchema } from "../../../runtime/src/catalog/scheduling";
import { cloudWatchSpend } from "../../../runtime/src/cost/spend";
import { submitJob } from "../../../runtime/src/job/submit";
import { getTier } from "../../../runtime/src/catalog/tiers";
import { MOCK_ACCOUNT_ID } from "../../../scripts/lib/mock-engine";
import { STACKS, readStackConfig, runStack, type DeclaredResource, type Plan } from "../../support/harness";
import { localAgent, next, useLocalPlatform } from "../../support/local-agents";
import type { Decision, Document, NamedPolicy, Statement } from "../../support/iam-evaluator";
import {
  UnsupportedPolicyError,
  arnMatch,
  evaluate,
  globMatch,
  statementsOf,
  validatePolicy,
} from "../../support/iam-evaluator";
import type { IamRequest, StackNaming } from "../../support/record-calls";
import { CallRecorder, iamRequests } from "../../support/record-calls";

/**
 * Issue #16 item 7: the node role covers exactly what the agent calls. Real agents run the platform's flows
 * on the local platform while a middleware on their clients records every AWS call; each call, mapped to
 * each stack's names, must be allowed by the node role of every tier of every stack (its inline and
 * attached policies, within its permissions boundary, past the bucket's and queues' policies), and every
 * grant of the node role must be exercised by some call or be listed below with the reason it is not.
 */

const logger = pino({ level: process.env.AGENT_TEST_LOG ?? "silent" });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
const LOCAL_TIER = "cpu-large";
const WAIT_MS = 60_000;
const TEST_MS = 120_000;
/** The local stand-in for a node's Auto Scaling group, mapped to each stack tier's group. */
const LOCAL_GROUP = `crucible-local-${LOCAL_TIER}`;

/**
 * Node role grants the flows on the local platform cannot exercise, each with who uses it. Keyed
 * `<statement Sid> <action>`. An entry no stack grants, or one the recorded calls do exercise, fails.
 */
const NOT_EXERCISED_HERE: Readonly<Record<string, string>> = {
  "RegistryToken ecr:GetAuthorizationToken":
    "the node's user data logs in to ECR before pulling (infra/fleet/user-data.ts)",
  "PullImages ecr:BatchGetImage": "docker pull of the agent and job images at boot, by digest",
  "PullImages ecr:GetDownloadUrlForLayer": "docker pull of the agent and job images at boot, by digest",
  "PullImages ecr:BatchCheckLayerAvailability": "docker pull (ECR's documented pull set), at boot",
  "AgentLog logs:CreateLogStream": "the Docker engine's awslogs driver, which ships the agent's output",
  "AgentLog logs:PutLogEvents": "the Docker engine's awslogs driver, which ships the agent's output",
  // The dataset store's calls (runtime/src/store/dataset-store.ts), which these flows do not make yet:
  // test/infra/datasets-access.test.ts runs the store and judges them against every stack's roles.
  "ReadDatasets s3:GetObject": "the dataset store: an agent fetches the datasets a job names",
  "ListDatasets s3:ListBucket":
    "the dataset store: an agent lists a name's versions when a job names a missing one",
  "PublishPrecachedDatasets s3:PutObject": "the dataset store: an agent publishes the pre-cached sets",
  // The environment store's calls (runtime/src/environments/environment-store.ts), judged the same way
  // there; test/runtime/environments/job-environments.test.ts runs them in an agent on the local platform.
  "BuildEnvironments s3:GetObject": "the environment store: an agent fetches a job environment built before",
  "BuildEnvironments s3:PutObject": "the environment store: an agent stores a job environment it built",
  "ListEnvironments s3:ListBucket": "the environment store: an agent asks whether an environment is stored",
  // The stack's package proxy (infra/environments/): resolvePackageIndex (runtime/src/environments/package-index.ts)
  // asks CodeArtifact for a token and the endpoint before each build, and pip reads the repository through
  // the agent's index proxy; the local platform has no CodeArtifact (test/runtime/environments/package-index.test.ts).
  "PackageIndexToken codeartifact:GetAuthorizationToken":
    "resolvePackageIndex: a 15-minute token for the stack's CodeArtifact domain before each environment build",
  "PackageIndexBearerToken sts:GetServiceBearerToken":
    "CodeArtifact's GetAuthorizationToken, which asks STS for it on the agent's behalf (codeartifact.amazonaws.com only)",
  "ReadPackageIndex codeartifact:GetRepositoryEndpoint":
    "resolvePackageIndex: the nodes' repository's pypi endpoint before each environment build",
  "ReadPackageIndex codeartifact:ReadFromRepository":
    "pip in the builder container, through the agent's index proxy, reading the nodes' repository",
  "SpotPrices ec2:DescribeSpotPriceHistory":
    "SpotPriceLookup (runtime/src/node/node-price.ts) on spot nodes, through its own EC2 client; test/runtime/node/node-price.test.ts",
  ...Object.fromEntries(
    SESSION_MANAGER_ACTIONS.map((a) => [
      `SessionManager ${a}`,
      "the SSM agent, for operators' Session Manager shells",
    ]),
  ),
};

/**
 * Grants nothing in the code uses but the stack keeps anyway, each with its reason; none today (the
 * datasets read, the agent-config read and lifecycle heartbeats were dropped when this test found them).
 * An entry whose grant is gone from every stack fails as stale.
 */
const UNUSED_GRANTS: Readonly<Record<string, string>> = {};

const local = useLocalPlatform(LOCAL_TIER, logger, { maxReceiveCount: 5, visibilityTimeoutSeconds: 5 });
const recorder = new CallRecorder();
/** Services the local platform does not run: the runtime's own code calls them, answered in-process. */
const cloudwatch = new CloudWatchClient({
  region: "us-east-1",
  credentials: { accessKeyId: "x", secretAccessKey: "x" },
});
const autoscaling = new AutoScalingClient({
  region: "us-east-1",
  credentials: { accessKeyId: "x", secretAccessKey: "x" },
});
recorder.attach(cloudwatch, "cloudwatch", { offline: true });
recorder.attach(autoscaling, "autoscaling", { offline: true });
let counter = 0;

/** The instance metadata a fleet node sees, as the test sets it. */
class NodeMetadata extends InstanceMetadata {
  target = "InService";
  override get(path: string): Promise<string | undefined> {
    const values: Record<string, string> = {
      "instance-id": "i-0123456789abcdef0",
      "autoscaling/target-lifecycle-state": this.target,
    };
    return Promise.resolve(values[path]);
  }
}

/** Writes and deletes what the budget enforcer and finance write, unrecorded (not the agent's calls). */
function operatorStore(): { s3: S3Client; store: JobStore } {
  const { endpoint, region, credentials, bucket } = local.platform;
  const s3 = new S3Client({ endpoint, region, credentials, forcePathStyle: true });
  return { s3, store: new JobStore(s3, bucket, logger) };
}

function newAgent(policy: SchedulingPolicyInput = {}, options: Partial<AgentOptions> = {}): Agent {
  return localAgent(local.platform, LOCAL_TIER, launcher, logger, {
    policy: schedulingPolicySchema.parse(policy),
    paused: pauseCheck(local.platform.s3, local.platform.bucket, LOCAL_TIER),
    recordOutcome: cloudWatchOutcomes(cloudwatch, logger),
    recordSpend: cloudWatchSpend(cloudwatch, logger),
    ...options,
  });
}

/** Submits `code` as `user` of project lab, through that user's own submitter identity (unrecorded). */
async function submit(
  code: string,
  {
    user = "ada",
    priority = "normal",
    resumeFrom,
  }: { user?: string; priority?: Priority; resumeFrom?: string } = {},
): Promise<JobAddress> {
  const jobId = `iam-${process.pid}-${++counter}`;
  const dir = join(local.root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), code);
  const submitter = local.platform.as("lab", user);
  return submitJob(submitter.store, submitter.queue(LOCAL_TIER, priority), {
    path: dir,
    address: { project: "lab", user, jobId },
    spec: { jobId, tier: LOCAL_TIER, imageFamily: "cpu", env: {}, ...(resumeFrom && { resumeFrom }) },
    quotaGiB: 1,
  });
}

async function whileRunning<T>(agent: Agent, body: () => Promise<T>): Promise<T> {
  const running = agent.run();
  try {
    return await body();
  } finally {
    agent.stop("interrupted", 0);
    await running;
  }
}

const progressed = (agent: Agent, jobId: string, step: number): Promise<void> =>
  new Promise((resolve) =>
    agent.on("progress", (a, event) => {
      if (a.jobId === jobId && (event.step ?? 0) >= step) resolve();
    }),
  );

const QUICK = "def main():\n    return 1\n";
/** Counts to `steps` at 10 per second, saving its step on SIGTERM and resuming from it. */
const CHECKPOINTED = (steps: number): string =>
  [
    "import signal, time",
    "from crucible import checkpoint_dir, progress",
    "def main():",
    '    path = checkpoint_dir() / "step"',
    "    start = int(path.read_text()) if path.exists() else 0",
    "    stop = []",
    "    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))",
    "    step = start",
    `    while step < ${steps}:`,
    "        if stop:",
    "            path.write_text(str(step))",
    '            return {"stopped": step}',
    "        step += 1",
    `        progress(step=step, total=${steps})`,
    "        time.sleep(0.1)",
    '    return {"resumed_from": start, "steps": step}',
  ].join("\n");

describe("the agent's AWS calls on the local platform", () => {
  beforeAll(() => {
    recorder.attach(local.platform.s3, "s3");
    recorder.attach(local.platform.sqs, "sqs");
  });

  it(
    "waits out a budget pause, then runs, fails and defers jobs, writing the ledger and reading spend, on a fleet node's lifecycle",
    async () => {
      const operator = operatorStore();
      const marker = pauseMarkerKey(LOCAL_TIER);
      await operator.s3.send(
        new PutObjectCommand({
          Bucket: local.platform.bucket,
          Key: marker,
          Body: JSON.stringify({ reason: "test", budget: "crucible-test", at: new Date().toISOString() }),
        }),
      );
      const done = [
        // Outputs, and a checkpoint over the 8 MiB part size: a tagged multipart upload.
        await submit(
          [
            "from crucible import checkpoint_dir, output_dir",
            "def main():",
            '    (output_dir() / "model.txt").write_text("weights")',
            '    (checkpoint_dir() / "big.bin").write_bytes(b"0" * (9 * 2**20))',
            '    return {"accuracy": 0.9}',
          ].join("\n"),
        ),
        await submit('def main():\n    raise ValueError("bad data")\n'),
        await submit(QUICK),
      ];
      const agent = newAgent(
        { fairShare: { perUser: 1, deferSeconds: 1 }, budgets: { users: { ada: 100 } } },
        { concurrency: 2 },
      );
      const metadata = new NodeMetadata();
      const lifecycle = new NodeLifecycle({
        metadata,
        autoscaling,
        group: {
          name: LOCAL_GROUP,
          launchHook: `${LOCAL_GROUP}-launch`,
          terminationHook: `${LOCAL_GROUP}-terminate`,
        },
        logger,
        pollSeconds: 1,
      });
      expect(await lifecycle.join()).toBeUndefined();
      const unwatch = lifecycle.watch(agent, () => undefined);
      let deferred = 0;
      agent.on("deferred", () => (deferred += 1));
      const envelopes = await whileRunning(agent, async () => {
        const pauses: (string | undefined)[] = [];
        await new Promise<void>((resolve) =>
          agent.on("paused", (reason) => {
            pauses.push(reason);
            if (reason === undefined) resolve();
            else
              void operator.s3.send(new DeleteObjectCommand({ Bucket: local.platform.bucket, Key: marker }));
          }),
        );
        expect(pauses).toEqual(["test", undefined]);
        return Promise.all(
          done.map(async (a) => (await next<[JobAddress, Envelope]>(agent, "finished", a.jobId, WAIT_MS))[1]),
        );
      });
      expect(envelopes.map((e) => e.status)).toEqual(["success", "error", "success"]);
      expect(deferred).toBeGreaterThan(0);
      await lifecycle.markUnhealthy("test");
      metadata.target = "Terminated";
      await lifecycle.leave();
      unwatch();
      operator.s3.destroy();
    },
    TEST_MS,
  );

  it(
    "stops a cancelled job",
    async () => {
      const agent = newAgent();
      await whileRunning(agent, async () => {
        const address = await submit("import time\ndef main():\n    time.sleep(300)\n");
        await next(agent, "started", address.jobId, WAIT_MS);
        const finished = next<[JobAddress, Envelope]>(agent, "finished", address.jobId, WAIT_MS);
        await local.platform.as("lab", "ada").store.requestCancel(address);
        expect((await finished)[1]).toMatchObject({ status: "error", reason: "cancelled" });
      });
    },
    TEST_MS,
  );

  it(
    "hands an interrupted job back with its checkpoint, resumes it on another agent, and starts a job from its checkpoints (resumeFrom)",
    async () => {
      const first = newAgent();
      const firstRun = first.run();
      const address = await submit(CHECKPOINTED(30));
      await progressed(first, address.jobId, 3);
      const handedBack = next<[JobAddress, string]>(first, "handedBack", address.jobId, WAIT_MS);
      first.stop("interrupted", 5);
      expect((await handedBack)[1]).toBe("interrupted");
      await firstRun;
      const second = newAgent();
      await whileRunning(second, async () => {
        const [, resumed] = await next<[JobAddress, Envelope]>(second, "finished", address.jobId, WAIT_MS);
        expect(resumed).toMatchObject({ status: "success", result: { steps: 30 } });
        const saved = (resumed.result as { resumed_from: number }).resumed_from;
        expect(saved).toBeGreaterThanOrEqual(3);
        const later = await submit(CHECKPOINTED(30), { resumeFrom: address.jobId });
        const [, envelope] = await next<[JobAddress, Envelope]>(second, "finished", later.jobId, WAIT_MS);
        expect(envelope).toMatchObject({ status: "success", result: { resumed_from: saved, steps: 30 } });
      });
    },
    TEST_MS,
  );

  it(
    "preempts a low-priority job for a high one, and the low one resumes",
    async () => {
      const agent = newAgent({ preemption: { afterSeconds: 1 } });
      await whileRunning(agent, async () => {
        // Long enough (15 s) that preemption (a 1 s wait, looked at every second) comes well before it
        // ends, however late its progress reaches the test on a loaded machine.
        const low = await submit(CHECKPOINTED(150), { priority: "low" });
        await progressed(agent, low.jobId, 3);
        const lowFinished = next<[JobAddress, Envelope]>(agent, "finished", low.jobId, WAIT_MS);
        const handedBack = next<[JobAddress, string]>(agent, "handedBack", low.jobId, WAIT_MS);
        const high = await submit(QUICK, { priority: "high" });
        const highFinished = next<[JobAddress, Envelope]>(agent, "finished", high.jobId, WAIT_MS);
        expect((await handedBack)[1]).toBe("preempted");
        expect((await highFinished)[1]).toMatchObject({ status: "success" });
        expect((await lowFinished)[1]).toMatchObject({ status: "success", result: { steps: 150 } });
      });
    },
    TEST_MS,
  );

  it(
    "stops a running job when its owner's budget is spent",
    async () => {
      const price = getTier(LOCAL_TIER).onDemandHourlyUsd;
      const limit = 1;
      const earlier: LedgerEntry = {
        jobId: "earlier-job",
        project: "lab",
        user: "carol",
        tier: LOCAL_TIER,
        priority: "normal",
        attempt: 1,
        node: "elsewhere",
        startedAt: new Date().toISOString(),
        endedAt: new Date().toISOString(),
        seconds: 0,
        outcome: "finished",
        status: "success",
        pricePerHourUsd: price,
        priceSource: "on-demand",
        priceFactor: 1,
        costUsd: Math.round((limit - costOf(6, price)) * 10_000) / 10_000,
      };
      const operator = operatorStore();
      await operator.store.putLedgerEntry(earlier);
      operator.s3.destroy();
      const agent = newAgent({ budgets: { users: { carol: limit } } });
      await whileRunning(agent, async () => {
        const address = await submit(CHECKPOINTED(600), { user: "carol" });
        const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", address.jobId, WAIT_MS);
        expect(envelope).toMatchObject({ status: "error", reason: "budget" });
      });
    },
    TEST_MS,
  );

  it("recorded the calls of every flow", () => {
    expect(recorder.operations()).toEqual([
      "autoscaling:CompleteLifecycleAction",
      "autoscaling:SetInstanceHealth",
      "autoscaling:SetInstanceProtection",
      "cloudwatch:PutMetricData",
      "s3:CompleteMultipartUpload",
      "s3:CreateMultipartUpload",
      "s3:DeleteObject",
      "s3:GetObject",
      "s3:HeadObject",
      "s3:ListObjectsV2",
      "s3:PutObject",
      "s3:UploadPart",
      "sqs:ChangeMessageVisibility",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:ReceiveMessage",
      "sqs:SendMessage",
    ]);
  });
});

const T = {
  role: "aws:iam/role:Role",
  rolePolicy: "aws:iam/rolePolicy:RolePolicy",
  attachment: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
  policy: "aws:iam/policy:Policy",
  queue: "aws:sqs/queue:Queue",
  queuePolicy: "aws:sqs/queuePolicy:QueuePolicy",
  bucket: "aws:s3/bucket:Bucket",
  bucketPolicy: "aws:s3/bucketPolicy:BucketPolicy",
  encryption: "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
  group: "aws:autoscaling/group:Group",
  fleet: "crucible:fleet:TierFleet",
} as const;

const parse = (r: DeclaredResource, field: string): Document =>
  JSON.parse(r.inputs[field] as string) as Document;

/** A tier's node role as IAM sees it: inline and attached policies, its boundary, and the resource policies. */
interface NodeRole {
  readonly identity: NamedPolicy[];
  readonly boundary: NamedPolicy | undefined;
  readonly resource: NamedPolicy[];
}

function nodeRole(plan: Plan, tier: string): NodeRole {
  const role = plan.get(T.role, `fleet-${tier}-node`);
  const isRole = (v: unknown) => v === role.id || v === role.state.name || v === role.state.arn;
  for (const field of ["inlinePolicies", "managedPolicyArns"])
    if (((role.inputs[field] as unknown[] | undefined) ?? []).length > 0)
      throw new Error(`${plan.stack} ${role.name} sets ${field}: read them here too`);
  const declared = (arn: unknown): DeclaredResource => {
    const found = plan.ofType(T.policy).find((p) => p.state.arn === arn);
    if (!found)
      throw new Error(
        `${plan.stack} ${role.name}: policy ${String(arn)} is not declared in the program, so it cannot be read`,
      );
    return found;
  };
  const identity = [
    ...plan
      .ofType(T.rolePolicy)
      .filter((p) => isRole(p.inputs.role))
      .map((p) => ({ name: p.name, document: parse(p, "policy") })),
    ...plan
      .ofType(T.attachment)
      .filter((a) => isRole(a.inputs.role))
      .map((a) => declared(a.inputs.policyArn))
      .map((p) => ({ name: p.name, document: parse(p, "policy") })),
  ];
  const boundaryPolicy =
    role.inputs.permissionsBoundary === undefined ? undefined : declared(role.inputs.permissionsBoundary);
  const bucket = plan.get(T.bucket, "workspaces-workspaces");
  const queueUrls = new Set(
    plan
      .ofType(T.queue)
      .filter((q) => q.name.startsWith(`queues-${tier}`))
      .map((q) => q.state.url),
  );
  const resource = [
    ...plan
      .ofType(T.bucketPolicy)
      .filter((p) => p.inputs.bucket === bucket.id || p.inputs.bucket === bucket.state.bucket),
    ...plan.ofType(T.queuePolicy).filter((p) => queueUrls.has(p.inputs.queueUrl)),
  ].map((p) => ({ name: p.name, document: parse(p, "policy") }));
  const named = {
    identity,
    boundary: boundaryPolicy && { name: boundaryPolicy.name, document: parse(boundaryPolicy, "policy") },
    resource,
  };
  for (const p of [...named.identity, ...(named.boundary ? [named.boundary] : []), ...named.resource])
    validatePolicy(p);
  return named;
}

/** The local platform's names, as the stack names them for `tier`. */
function naming(plan: Plan, tier: string): StackNaming {
  const bucket = plan.get(T.bucket, "workspaces-workspaces");
  const encryption = plan.get(T.encryption, "workspaces-workspaces").inputs.rules as {
    applyServerSideEncryptionByDefault: { sseAlgorithm: string; kmsMasterKeyId?: string };
  }[];
  const sse = encryption[0]!.applyServerSideEncryptionByDefault;
  const queueName = new RegExp(`^crucible-${LOCAL_TIER}(-high|-low)?(-dlq)?$`);
  return {
    stack: plan.stack,
    region: readStackConfig(plan.stack)["aws:region"]!,
    accountId: MOCK_ACCOUNT_ID,
    tier,
    bucketArn: (name) => {
      if (name !== local.platform.bucket)
        throw new Error(`a call to bucket ${name}, not the workspaces bucket`);
      return bucket.state.arn as string;
    },
    kmsKeyArn: sse.sseAlgorithm === "aws:kms" ? sse.kmsMasterKeyId : undefined,
    queueArn: (name) => {
      const [, priority = "", dlq = ""] = queueName.exec(name) ?? [];
      if (queueName.exec(name) === null)
        throw new Error(`a call to queue ${name}, not one of ${LOCAL_TIER}'s`);
      return plan.get(T.queue, `queues-${tier}${priority}${dlq}`).state.arn as string;
    },
    groupArn: (name) => {
      if (name !== "" && name !== LOCAL_GROUP) throw new Error(`a call on group ${name}, not the node's`);
      return plan.get(T.group, `fleet-${tier}-nodes`).state.arn as string;
    },
    key: (key) =>
      key === pauseMarkerKey(LOCAL_TIER)
        ? pauseMarkerKey(tier)
        : key.replace(`/_running/${LOCAL_TIER}/`, `/_running/${tier}/`),
  };
}

const list = (v: string | readonly string[] | undefined): readonly string[] =>
  v === undefined ? [] : typeof v === "string" ? [v] : v;

/** Node role grants (`<Sid> <action>`) of any stack and tier, and those the recorded calls use. */
const granted = new Set<string>();
const exercised = new Set<string>();
/** Stacks whose grants were judged. */
const judged = new Set<string>();

/** The distinct IAM requests of the recorded calls on a stack's tier (the agent polls: many repeat). */
function requestsFor(plan: Plan, tier: string): IamRequest[] {
  const names = naming(plan, tier);
  const seen = new Map<string, IamRequest>();
  for (const request of recorder.calls.flatMap((c) => iamRequests(c, names)))
    seen.set(JSON.stringify([request.action, request.resource, request.context]), request);
  return [...seen.values()];
}

/**
 * The node role's grants that no decided request used, but for the listed ones: one line each, naming the
 * statement, and the action or resource. Adds every grant to {@link granted}, and used ones to {@link exercised}.
 */
function unusedGrants(role: NodeRole, decided: readonly [IamRequest, Decision][], where: string): string[] {
  const unused: string[] = [];
  role.identity.forEach((policy, p) =>
    statementsOf(policy.document).forEach((s, i) => {
      if (s.Effect !== "Allow") return;
      const at = `${where} ${policy.name}#${s.Sid ?? i}`;
      if (s.NotAction !== undefined || s.NotResource !== undefined)
        unused.push(`${at}: allows by NotAction/NotResource, which grants more than any list of calls`);
      const by = decided
        .filter(([, d]) => d.allowedBy.some(([dp, di]) => dp === p && di === i))
        .map(([r]) => r);
      let listedOnly = true;
      for (const action of list(s.Action)) {
        const key = `${s.Sid ?? i} ${action}`;
        granted.add(key);
        const used = by.some((r) => globMatch(action, r.action, true));
        if (used) exercised.add(key);
        if (NOT_EXERCISED_HERE[key] !== undefined || UNUSED_GRANTS[key] !== undefined) continue;
        listedOnly = false;
        if (/[*?]/.test(action)) unused.push(`${at}: grants the wildcard action ${action}`);
        else if (!used) unused.push(`${at}: grants ${action}, which no recorded call uses`);
      }
      if (listedOnly) return;
      for (const resource of list(s.Resource))
        if (!by.some((r) => arnMatch(resource, r.resource)))
          unused.push(`${at}: grants on ${resource}, which no recorded call it allows touches`);
    }),
  );
  return unused;
}

const refusals = (decided: readonly [IamRequest, Decision][]): string[] =>
  decided.filter(([, d]) => !d.allowed).map(([r, d]) => `${r.call}: ${d.reason}`);

describe.each(STACKS)("the %s stack's node roles", (stack) => {
  let plan: Plan;
  let tiers: string[];
  beforeAll(async () => {
    plan = await runStack(stack);
    tiers = plan.ofType(T.fleet).map((f) => f.name.replace(/^fleet-/, ""));
  }, TEST_MS);

  const decide = (tier: string, role = nodeRole(plan, tier)): [IamRequest, Decision][] =>
    requestsFor(plan, tier).map((r) => [r, evaluate(r, role)]);

  it("allow every call the agent made, for every tier", () => {
    expect(recorder.calls.length).toBeGreaterThan(0);
    for (const tier of tiers) expect(refusals(decide(tier)), `${stack} ${tier}`).toEqual([]);
  });

  it("grant nothing the calls do not use, but for the grants listed with their reasons", () => {
    const unused = tiers.flatMap((tier) =>
      unusedGrants(nodeRole(plan, tier), decide(tier), `${stack} ${tier}`),
    );
    expect(unused).toEqual([]);
    judged.add(stack);
  });

  it("would fail without the re-send that deferral and preemption make, and with a grant nobody uses", () => {
    const tier = tiers[0]!;
    const role = nodeRole(plan, tier);
    const withoutSend = mapStatements(role, (s) =>
      s.Sid === "TierQueue" ? { ...s, Action: list(s.Action).filter((a) => a !== "sqs:SendMessage") } : s,
    );
    expect(refusals(decide(tier, withoutSend)).some((r) => r.startsWith("sqs:SendMessage"))).toBe(true);
    const broader = mapStatements(role, (s) =>
      s.Sid === "Workspaces" ? { ...s, Action: [...list(s.Action), "s3:DeleteObjectVersion"] } : s,
    );
    expect(unusedGrants(broader, decide(tier, broader), `${stack} ${tier}`)).toEqual([
      `${stack} ${tier} ${role.identity[0]!.name}#Workspaces: grants s3:DeleteObjectVersion, which no recorded call uses`,
    ]);
  });
});

/** The role with each of its identity policies' statements replaced by `f`'s. */
function mapStatements(role: NodeRole, f: (s: Statement) => Statement): NodeRole {
  return {
    ...role,
    identity: role.identity.map((p) => ({
      ...p,
      document: { ...p.document, Statement: statementsOf(p.document).map(f) },
    })),
  };
}

describe("the lists of grants the calls do not exercise", () => {
  it("name only grants some stack makes and no recorded call uses", () => {
    expect([...judged].sort()).toEqual([...STACKS].sort());
    const stale = [...Object.keys(NOT_EXERCISED_HERE), ...Object.keys(UNUSED_GRANTS)].filter(
      (key) => !granted.has(key) || exercised.has(key),
    );
    expect(stale, "entries granted by no stack, or exercised by the recorded calls: remove them").toEqual([]);
  });
});

describe("the IAM evaluator", () => {
  const request = (over: Partial<IamRequest> = {}): IamRequest => ({
    action: "s3:ListBucket",
    resource: "arn:aws:s3:::b",
    context: { "s3:prefix": "workspaces/lab/" },
    knownKeys: new Set(["s3:prefix", "aws:SecureTransport"]),
    call: "test",
    ...over,
  });
  const policy = (...Statement: Statement[]): NamedPolicy => ({
    name: "p",
    document: { Version: "2012-10-17", Statement },
  });
  const allow = (over: Partial<Statement> = {}): Statement => ({
    Effect: "Allow",
    Action: "s3:List*",
    Resource: "arn:aws:s3:::b",
    ...over,
  });

  it("allows by wildcard action and condition, and lets an explicit Deny win", () => {
    const like = allow({ Condition: { StringLike: { "s3:prefix": "workspaces/*" } } });
    expect(evaluate(request(), { identity: [policy(like)] }).allowed).toBe(true);
    expect(evaluate(request({ context: {} }), { identity: [policy(like)] }).allowed).toBe(false);
    const deny: Statement = { Effect: "Deny", NotAction: "s3:Get*", Resource: "*" };
    expect(evaluate(request(), { identity: [policy(like, deny)] })).toMatchObject({ allowed: false });
    expect(
      evaluate(request(), { identity: [policy(like)], boundary: policy(allow({ Action: "s3:Get*" })) }),
    ).toMatchObject({
      allowed: false,
      reason: "outside the permissions boundary p",
    });
  });

  it("matches ARN segments on their own, and fills in policy variables", () => {
    expect(arnMatch("arn:aws:sqs:*:123456789012:q", "arn:aws:sqs:us-east-1:123456789012:q")).toBe(true);
    expect(arnMatch("arn:aws:sqs:*:*:q-?", "arn:aws:sqs:us-east-1:123456789012:q-1")).toBe(true);
    expect(arnMatch("arn:aws:sqs:*:1234:q", "arn:aws:sqs:us-east-1:123456789012:q")).toBe(false);
    expect(() => arnMatch("arn:aws:sqs:us-*", "arn:aws:sqs:us-east-1:123456789012:q")).toThrow(
      UnsupportedPolicyError,
    );
    const own = allow({ Condition: { StringLike: { "s3:prefix": "${s3:prefix}" } } });
    expect(evaluate(request(), { identity: [policy(own)] }).allowed).toBe(true);
  });

  it("refuses to judge an operator, set operator or key it does not model", () => {
    const judge = (s: Statement) => () => {
      validatePolicy(policy(s));
      return evaluate(request(), { identity: [policy(s)] });
    };
    expect(judge(allow({ Condition: { DateGreaterThan: { "aws:CurrentTime": "2020-01-01" } } }))).toThrow(
      UnsupportedPolicyError,
    );
    expect(judge(allow({ Condition: { "ForAnyValue:StringLike": { "s3:prefix": "x" } } }))).toThrow(
      UnsupportedPolicyError,
    );
    expect(judge(allow({ Condition: { StringEquals: { "aws:SourceVpce": "vpce-1" } } }))).toThrow(
      /condition key aws:SourceVpce/,
    );
    expect(judge(allow({ Resource: "arn:aws:s3:::${aws:username}" }))).toThrow(/policy variable/);
  });
});
