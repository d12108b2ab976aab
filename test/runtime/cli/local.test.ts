import Dockerode from "dockerode";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { envelopeSchema } from "../../../runtime/src/job/contract";
import type { LocalScratch } from "../local/local-helpers";
import {
  addressOf,
  gone,
  localScratch,
  NOTHING_RUNS,
  nothingRuns,
  platformProcess,
  storeOf,
  until,
} from "../local/local-helpers";

let local: LocalScratch;

beforeAll(async () => {
  local = await localScratch({
    hello: 'def main():\n    print("hi from the job")\n    return {"answer": 42}\n',
    fails: 'def main():\n    raise RuntimeError("nope")\n',
    waits: "import time\ndef main():\n    time.sleep(25)\n",
  });
});
afterAll(() => local.remove());

/** The job id `local run` reports on stderr as it waits. */
function jobIdOf(stderr: string): string {
  const id = /job (job-[a-z0-9]+-[0-9a-f]{6}) queued on cpu-small/.exec(stderr)?.[1];
  expect(id, stderr).toBeDefined();
  return id!;
}

async function containersOf(jobId: string): Promise<unknown[]> {
  return new Dockerode().listContainers({
    all: true,
    filters: JSON.stringify({ label: [`crucible.job-id=${jobId}`] }),
  });
}

describe.sequential("crucible local run", { timeout: 300_000 }, () => {
  let first: string;

  it("without a running platform, starts one for the job, prints its result, and leaves nothing running", async () => {
    const run = local.cli(["local", "run", join(local.code, "hello")]);
    const done = await run;
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toBe('{\n  "answer": 42\n}\n');
    first = jobIdOf(done.stderr);
    // It ends by saying how to see the job in the console, on the platform it stopped.
    expect(done.stderr.trimEnd().split("\n").pop()).toBe(
      `see it in the console: \`crucible local up\`, then \`crucible console --local\` and open http://127.0.0.1:8321/#/jobs/${first}`,
    );
    // The platform ran in the command's own process, which is gone, and took its files with it.
    expect(nothingRuns(local.dir, run.child.pid!)).toEqual(NOTHING_RUNS);
    expect(await containersOf(first)).toEqual([]);
  });

  it("with a running platform, submits to it and waits for the result, and leaves it running as it was", async () => {
    const up = await local.cli(["local", "up", "--tiers", "cpu-small"]);
    expect(up.code, up.stderr).toBe(0);
    const { pid } = platformProcess(local.dir);
    const run = local.cli(["local", "run", join(local.code, "hello"), "--json"]);
    const done = await run;
    expect(done.code, done.stderr).toBe(0);
    const envelope = envelopeSchema.parse(JSON.parse(done.stdout));
    expect(envelope).toMatchObject({
      status: "success",
      result: { answer: 42 },
      logs: { stdout: "hi from the job\n" },
    });
    expect(gone(run.child.pid!)).toBe(true);
    // Run by the platform that was up, which runs on.
    expect(platformProcess(local.dir).pid).toBe(pid);
    expect(gone(pid)).toBe(false);
    expect(await local.cli(["local", "status", "--json"])).toMatchObject({ code: 0 });
    // The job run by the platform of the first test is in the data it left.
    expect(await local.cli(["result", first])).toMatchObject({ code: 0, stdout: '{\n  "answer": 42\n}\n' });

    const failed = await local.cli(["local", "run", join(local.code, "fails"), "--json"]);
    expect(failed.code).toBe(1);
    expect(JSON.parse(failed.stdout)).toMatchObject({
      reason: "exception",
      error: { type: "RuntimeError", message: "nope" },
    });
  });

  it("refuses a job for a tier the running platform does not serve, saying how to serve it", async () => {
    const refused = await local.cli(["local", "run", join(local.code, "hello"), "--tier", "cpu-large"]);
    expect(refused.code).toBe(2);
    // Its last line: loading the AWS SDK on Node 20 prints a deprecation notice first.
    expect(refused.stderr.trimEnd().split("\n").pop()).toBe(
      `crucible: the local platform in ${local.dir} serves cpu-small, not cpu-large: ` +
        "`crucible local down`, then `crucible local up --tiers cpu-small,cpu-large`",
    );
    const { pid } = platformProcess(local.dir);
    expect((await local.cli(["local", "down"])).code).toBe(0);
    expect(nothingRuns(local.dir, pid)).toEqual(NOTHING_RUNS);
  });

  it("Ctrl-C cancels the job, and the platform it started stops, leaving no process and no container", async () => {
    let jobId: string | undefined;
    const run = local.cli(["local", "run", join(local.code, "waits")]);
    run.child.stderr!.on("data", (chunk: Buffer) => {
      jobId ??= /job (job-[a-z0-9]+-[0-9a-f]{6}) queued/.exec(chunk.toString())?.[1];
    });
    const store = await until("the platform local run starts", () =>
      Promise.resolve(jobId === undefined ? undefined : storeOf(local.dir)),
    );
    await until("the job's start", async () =>
      (await store.getState(addressOf(jobId!)))?.status === "running" ? true : undefined,
    );
    run.child.kill("SIGINT");
    const done = await run;
    expect(done.code).toBe(130);
    expect(done.stderr).toContain(`cancelling job ${jobId}...\n`);
    expect(done.stderr).toContain(`job ${jobId} failed (cancelled)`);
    expect(nothingRuns(local.dir, run.child.pid!)).toEqual(NOTHING_RUNS);
    expect(await containersOf(jobId!)).toEqual([]);
  });
});
