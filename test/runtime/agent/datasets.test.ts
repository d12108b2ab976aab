import Dockerode from "dockerode";
import { mkdir, readdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { beforeAll, describe, expect, it, vi } from "vitest";
import type { Agent } from "../../../runtime/src/agent/agent";
import type { NodeDatasets } from "../../../runtime/src/agent/job-datasets";
import { openNodeDatasets } from "../../../runtime/src/agent/job-datasets";
import type { Envelope } from "../../../runtime/src/job/contract";
import { submitJob } from "../../../runtime/src/job/submit";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { localAgent, next, useLocalPlatform } from "../../support/local-agents";

const logger = pino({ level: "silent" });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
const TIER = "cpu-large";
const PROJECT = "demo";
const local = useLocalPlatform(TIER, logger, { visibilityTimeoutSeconds: 15 });
let counter = 0;

/** A node's datasets as `crucible agent` opens them: its cache seeded with the pre-cached sets. */
let node: NodeDatasets;
beforeAll(async () => {
  node = await openNodeDatasets({
    s3: local.platform.s3,
    bucket: local.platform.datasetsBucket,
    tier: TIER,
    root: join(local.root, "dataset-cache"),
    logger,
    docker: new Dockerode(),
  });
  const corpus = join(local.root, "corpus");
  await mkdir(join(corpus, "labels"), { recursive: true });
  await writeFile(join(corpus, "train.txt"), "to be or not to be\n");
  await writeFile(join(corpus, "labels", "classes.csv"), "id,label\n1,tragedy\n");
  await local.platform.as(PROJECT, "ada").datasets.push({ project: PROJECT, user: "ada" }, "corpus", corpus);
});

/** Submits `code` as `user` with these datasets named in its spec, past the CLI's own checks. */
async function submit(user: string, datasets: readonly string[], code: string): Promise<JobAddress> {
  const jobId = `datasets-${process.pid}-${++counter}`;
  const dir = join(local.root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), code);
  const as = local.platform.as(PROJECT, user);
  return submitJob(as.store, as.queue(TIER), {
    path: dir,
    address: { project: PROJECT, user, jobId },
    spec: { jobId, tier: TIER, imageFamily: "cpu", env: {}, datasets: [...datasets] },
    quotaGiB: 1,
  });
}

/** Runs the submitted jobs on one agent with `datasets`, resolving with each one's envelope. */
async function run(jobs: readonly JobAddress[], datasets = node): Promise<Envelope[]> {
  const agent: Agent = localAgent(local.platform, TIER, launcher, logger, { datasets, concurrency: 2 });
  const finished = jobs.map((job) => next<[JobAddress, Envelope]>(agent, "finished", job.jobId, 120_000));
  const running = agent.run();
  try {
    return (await Promise.all(finished)).map(([, envelope]) => envelope);
  } finally {
    agent.stop();
    await running;
  }
}

const READER = [
  "import errno, os",
  "def main():",
  "    seen = {}",
  "    for base, _, files in os.walk('/datasets/corpus'):",
  "        for f in files:",
  "            path = os.path.join(base, f)",
  "            seen[os.path.relpath(path, '/datasets')] = open(path).read()",
  "    try:",
  "        open('/datasets/corpus/planted.txt', 'w').write('x')",
  "        write = 'written'",
  "    except OSError as e:",
  "        write = errno.errorcode[e.errno]",
  "    return {",
  "        'files': seen,",
  "        'write': write,",
  "        'mounts': sorted(os.listdir('/datasets')),",
  "        'shakespeare': os.path.getsize('/datasets/shakespeare/tinyshakespeare.txt.gz') > 100_000,",
  "        'iris': open('/datasets/sklearn/iris.csv').readline().startswith('150,4'),",
  "    }",
].join("\n");

describe("datasets on the local platform", () => {
  it("mounts the owner's own version and the pre-cached sets read-only at /datasets/NAME", async () => {
    const [envelope] = await run([await submit("ada", ["corpus@1", "shakespeare@1", "sklearn@1"], READER)]);
    expect(envelope).toMatchObject({
      status: "success",
      result: {
        files: {
          "corpus/train.txt": "to be or not to be\n",
          "corpus/labels/classes.csv": "id,label\n1,tragedy\n",
        },
        write: "EROFS",
        mounts: ["corpus", "shakespeare", "sklearn"],
        shakespeare: true,
        iris: true,
      },
    });
  });

  it("refuses before running a missing version, another user's dataset, and a set larger than the cache", async () => {
    const missing = await submit("ada", ["corpus@2"], READER);
    const bobs = await submit("bob", ["corpus@1"], READER);
    const [version, other] = await run([missing, bobs]);
    for (const envelope of [version, other])
      expect(envelope).toMatchObject({ status: "error", reason: "invalid_job", exitCode: null });
    expect(version!.error?.message).toMatch(/^datasets: .*corpus@2.*\b1\b/);
    expect(other!.error?.message).toMatch(/^datasets: .*corpus/);
    expect(other!.error?.message).not.toContain("ada");

    const small = await openNodeDatasets({
      s3: local.platform.s3,
      bucket: local.platform.datasetsBucket,
      tier: TIER,
      root: join(local.root, "small-cache"),
      logger,
      capacityBytes: 16,
      precached: false,
    });
    const [tooBig] = await run([await submit("ada", ["corpus@1"], READER)], small);
    expect(tooBig).toMatchObject({
      status: "error",
      reason: "invalid_job",
      error: { message: "datasets: corpus@1 is 38 B, more than the 16 B dataset cache of a cpu-large node" },
    });
  });

  it("opened again on the same cache (an agent restarted), copies nothing out of the images", async () => {
    const docker = new Dockerode();
    const creates = vi.spyOn(docker, "createContainer");
    const again = await openNodeDatasets({
      s3: local.platform.s3,
      bucket: local.platform.datasetsBucket,
      tier: TIER,
      root: join(local.root, "dataset-cache"),
      logger,
      docker,
    });
    expect(creates).not.toHaveBeenCalled();
    const sklearn = await again.store.resolve(
      { project: PROJECT, user: "ada" },
      { name: "sklearn", version: 1 },
    );
    const lease = await again.cache.acquire(sklearn);
    expect(await readdir(lease.dir)).toContain("iris.csv");
    await lease.release();
  });
});
