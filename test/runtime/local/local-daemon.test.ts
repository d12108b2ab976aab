import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectionSchema, localPaths, statusSchema } from "../../../runtime/src/local/local-control";
import type { LocalScratch } from "./local-helpers";
import {
  addressOf,
  gone,
  localScratch,
  NOTHING_RUNS,
  nothingRuns,
  platformProcess,
  storeOf,
  until,
} from "./local-helpers";

/** Stops at SIGTERM with a checkpoint of how far it got; started again from one, ends at once. */
const CHECKPOINTING = [
  "import signal, time",
  "from crucible import checkpoint_dir, progress",
  "def main():",
  '    path = checkpoint_dir() / "step"',
  "    if path.exists():",
  '        return {"resumed_from": int(path.read_text())}',
  "    stop = []",
  "    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))",
  "    step = 0",
  "    while not stop:",
  "        step += 1",
  "        progress(step=step, total=10000)",
  "        time.sleep(0.2)",
  "    path.write_text(str(step))",
  '    return {"stopped": step}',
].join("\n");

let local: LocalScratch;

beforeAll(async () => {
  local = await localScratch({
    hello: 'def main():\n    print("hi from the job")\n    return {"answer": 42}\n',
    checkpointing: CHECKPOINTING,
  });
});
afterAll(() => local.remove());

/** The job id `submit` printed. */
function jobIdOf(stdout: string): string {
  const id = stdout.trim();
  expect(id).toMatch(/^job-[a-z0-9]+-[0-9a-f]{6}$/);
  return id;
}

// One platform's life, in order: each test starts from where the one before left it.
describe.sequential("crucible local up / status / down", { timeout: 300_000 }, () => {
  let helloJob: string;

  it("status says none runs (exit 3), and down with none running says so (exit 0)", async () => {
    expect(await local.cli(["local", "status"])).toMatchObject({
      code: 3,
      stdout: `no local platform runs in ${local.dir}\n`,
    });
    const json = await local.cli(["local", "status", "--json"]);
    expect(json.code).toBe(3);
    expect(JSON.parse(json.stdout)).toEqual({ running: false, dataDir: local.dir });
    expect(await local.cli(["local", "down"])).toMatchObject({
      code: 0,
      stdout: `no local platform runs in ${local.dir}; nothing to stop\n`,
    });
  });

  it("up starts it in the background and returns once it is ready; a second up says so and exits 0", async () => {
    const up = await local.cli(["local", "up"]);
    expect(up.code, up.stderr).toBe(0);
    const { pid } = platformProcess(local.dir);
    expect(up.stdout).toContain(`local platform up (pid ${pid}): http://127.0.0.1:`);
    expect(up.stdout).toContain(
      `tiers cpu-small, cpu-large\ndata: ${local.dir}; log: ${join(local.dir, "platform.log")}`,
    );
    // Ready as up returns: its connection is written and its process (not up's) runs on.
    expect(gone(pid)).toBe(false);
    const connection = connectionSchema.parse(
      JSON.parse(readFileSync(localPaths(local.dir).connection, "utf8")),
    );
    expect(connection).toMatchObject({
      pid,
      tiers: ["cpu-small", "cpu-large"],
      bucket: "crucible-workspaces",
    });

    expect(await local.cli(["local", "up", "--tiers", "cpu-small,gpu-small"])).toMatchObject({
      code: 0,
      stdout:
        `a local platform already runs in ${local.dir} (pid ${pid}, tiers cpu-small, cpu-large)\n` +
        "it does not serve gpu-small: `crucible local down`, then `crucible local up --tiers cpu-small,gpu-small`\n",
    });
    expect(platformProcess(local.dir).pid).toBe(pid);

    const status = await local.cli(["local", "status", "--json"]);
    expect(status.code).toBe(0);
    expect(statusSchema.parse(JSON.parse(status.stdout))).toMatchObject({
      pid,
      dataDir: local.dir,
      stopping: false,
      tiers: [
        { tier: "cpu-small", queued: 0, running: 0 },
        { tier: "cpu-large", queued: 0, running: 0 },
      ],
    });
    const text = await local.cli(["local", "status"]);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^local platform up \\(pid ${pid}\\) for \\d+s, since `));
    expect(text.stdout).toContain(
      "tier       queued  running\ncpu-small       0        0\ncpu-large       0        0\n",
    );
  });

  it("takes jobs submitted from another terminal: submit, status, result and logs reach it", async () => {
    const submitted = await local.cli(["submit", join(local.code, "hello"), "--tier", "cpu-small"]);
    expect(submitted.code, submitted.stderr).toBe(0);
    helloJob = jobIdOf(submitted.stdout);
    const store = storeOf(local.dir);
    await until("the hello job's envelope", () => store.getEnvelope(addressOf(helloJob)));
    const status = await local.cli(["status", helloJob]);
    expect(status.code).toBe(0);
    expect(status.stdout).toContain("succeeded");
    expect(await local.cli(["result", helloJob])).toMatchObject({
      code: 0,
      stdout: '{\n  "answer": 42\n}\n',
    });
    expect(await local.cli(["logs", helloJob])).toMatchObject({ code: 0, stdout: "hi from the job\n" });
  });

  it("down hands the running job back with its checkpoint and keeps the data; after up it resumes, and the job queued behind it runs", async () => {
    const running = await local.cli(["submit", join(local.code, "checkpointing"), "--tier", "cpu-large"]);
    expect(running.code, running.stderr).toBe(0);
    const resumed = jobIdOf(running.stdout);
    // Queued behind it: the platform runs one job per tier at a time.
    const queued = jobIdOf(
      (await local.cli(["submit", join(local.code, "hello"), "--tier", "cpu-large"])).stdout,
    );
    const store = storeOf(local.dir);
    // Stopped once it has made progress, so its SIGTERM handler is in place.
    await until("the checkpointing job's progress", async () => {
      const state = await store.getState(addressOf(resumed));
      return (state?.progress?.step ?? 0) >= 3 ? state : undefined;
    });
    const { pid } = platformProcess(local.dir);

    const down = await local.cli(["local", "down"]);
    expect(down).toMatchObject({
      code: 0,
      stdout: `local platform (pid ${pid}) stopped; its data stays in ${local.dir}\n`,
    });
    expect(nothingRuns(local.dir, pid)).toEqual(NOTHING_RUNS);
    expect(existsSync(join(local.dir, "state/queues.json"))).toBe(true);
    expect((await local.cli(["local", "status"])).code).toBe(3);
    // With no stack configured and no local platform, a job command says what it needs.
    expect(await local.cli(["status", helloJob])).toMatchObject({
      code: 2,
      stderr:
        "crucible: CRUCIBLE_BUCKET is not set: name the workspaces bucket (stack output storage.bucketName)\n",
    });

    const up = await local.cli(["local", "up"]);
    expect(up.code, up.stderr).toBe(0);
    const after = storeOf(local.dir);
    const [first, second] = await Promise.all(
      [resumed, queued].map((id) =>
        until(`${id}'s envelope`, () => after.getEnvelope(addressOf(id)), 120_000),
      ),
    );
    expect(first?.status).toBe("success");
    // From the checkpoint it wrote as it was stopped, after its third step or later.
    expect((first?.result as { resumed_from: number }).resumed_from).toBeGreaterThanOrEqual(3);
    expect(await after.getState(addressOf(resumed))).toMatchObject({
      status: "succeeded",
      attempts: 2,
      resumedFromCheckpoint: true,
    });
    expect(second).toMatchObject({ status: "success", result: { answer: 42 } });
    // The job from before the restart is still there, and the user's key from before still reads it.
    expect(await local.cli(["result", helloJob])).toMatchObject({
      code: 0,
      stdout: '{\n  "answer": 42\n}\n',
    });
  });

  it("a platform killed without down loses nothing it acknowledged; up starts again over its leftovers", async () => {
    const submitted = await local.cli(["submit", join(local.code, "hello"), "--tier", "cpu-small"]);
    const job = jobIdOf(submitted.stdout);
    const { pid } = platformProcess(local.dir);
    process.kill(pid, "SIGKILL");
    await until("the killed platform's end", () => Promise.resolve(gone(pid) || undefined), 10_000);
    // Its files are still there, but not it.
    expect(nothingRuns(local.dir, pid)).toEqual({
      ...NOTHING_RUNS,
      pidFile: true,
      connection: true,
      socket: true,
    });
    expect(await local.cli(["local", "status"])).toMatchObject({
      code: 3,
      stdout: `no local platform runs in ${local.dir}\n`,
    });

    const up = await local.cli(["local", "up"]);
    expect(up.code, up.stderr).toBe(0);
    expect(platformProcess(local.dir).pid).not.toBe(pid);
    const store = storeOf(local.dir);
    expect(await until(`${job}'s envelope`, () => store.getEnvelope(addressOf(job)))).toMatchObject({
      status: "success",
      result: { answer: 42 },
    });
    expect(await local.cli(["result", helloJob])).toMatchObject({
      code: 0,
      stdout: '{\n  "answer": 42\n}\n',
    });
    const { pid: last } = platformProcess(local.dir);
    expect((await local.cli(["local", "down"])).code).toBe(0);
    expect(nothingRuns(local.dir, last)).toEqual(NOTHING_RUNS);
  });
});
