import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import pino from "pino";
import { describe, expect, it } from "vitest";
import type { Agent } from "../../../runtime/src/agent/agent";
import type { Envelope } from "../../../runtime/src/job/contract";
import { submitJob } from "../../../runtime/src/job/submit";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { crucible } from "../../support/cli";
import { localAgent, next, useLocalPlatform } from "../../support/local-agents";

const logger = pino({ level: "silent" });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
const TIER = "cpu-large";
const local = useLocalPlatform(TIER, logger, { visibilityTimeoutSeconds: 5 });
let counter = 0;

function newAgent(): Agent {
  return localAgent(local.platform, TIER, launcher, logger, { concurrency: 2, logFlushSeconds: 1 });
}

async function submit(code: string): Promise<JobAddress> {
  const jobId = `logs-${process.pid}-${++counter}`;
  const dir = join(local.root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), code);
  const ada = local.platform.as("demo", "ada");
  return submitJob(ada.store, ada.queue(TIER), {
    path: dir,
    address: { project: "demo", user: "ada", jobId },
    spec: { jobId, tier: TIER, imageFamily: "cpu", env: { TOKEN: "s3cret-value" } },
    quotaGiB: 1,
  });
}

/** The CLI as a user in another process: ada by default, with her own credentials. */
const as = (user = "ada"): NodeJS.ProcessEnv => ({
  ...local.platform.as("demo", user).env(),
  CRUCIBLE_PROJECT: "demo",
  CRUCIBLE_USER: user,
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true",
});

describe("crucible logs, status and metrics on the local platform", () => {
  it("logs -f shows a running job's lines as it prints them, and ends with the job", async () => {
    const agent = newAgent();
    const running = agent.run();
    try {
      const address = await submit(
        [
          "import sys, time",
          "def main():",
          '    print("first line", flush=True)',
          '    print("token is s3cret-value", file=sys.stderr, flush=True)',
          "    time.sleep(300)",
        ].join("\n"),
      );
      await next(agent, "started", address.jobId);
      let stateWhenSeen: string | undefined;
      const follow = crucible(
        ["logs", "-f", address.jobId],
        (stdout) => {
          if (stateWhenSeen === undefined && stdout.includes("first line")) {
            stateWhenSeen = "seen";
            // Seen while it runs: only then is the job cancelled, which ends the follow.
            void local.platform.store.getState(address).then(async (state) => {
              stateWhenSeen = state?.status;
              await local.platform.store.requestCancel(address);
            });
          }
        },
        as(),
      );
      const done = await follow;
      expect(stateWhenSeen).toBe("running");
      expect(done).toMatchObject({ code: 0, stdout: "first line\n" });
      expect(done.stderr).toBe("token is [redacted]\n");
      expect(await local.platform.store.getState(address)).toMatchObject({ status: "cancelled" });
    } finally {
      agent.stop();
      await running;
    }
  });

  it("keeps a resumed job's whole log and metric history, its steps continuing, and shows them", async () => {
    const job = [
      "import signal, sys, time",
      "from crucible import checkpoint_dir, progress",
      "def main():",
      '    path = checkpoint_dir() / "step"',
      "    start = int(path.read_text()) if path.exists() else 0",
      "    stop = []",
      "    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))",
      "    step = start",
      "    while step < 30:",
      "        if stop:",
      "            path.write_text(str(step))",
      '            return {"stopped": step}',
      "        step += 1",
      '        print(f"step {step}", flush=True)',
      "        progress(step=step, total=30, loss=10.0 / step)",
      "        time.sleep(0.1)",
      '    print("done", file=sys.stderr, flush=True)',
      '    return {"resumed_from": start}',
    ].join("\n");
    const first = newAgent();
    const firstRun = first.run();
    const address = await submit(job);
    await new Promise<void>((resolve) =>
      first.on("progress", (a, event) => {
        if (a.jobId === address.jobId && (event.step ?? 0) >= 5) resolve();
      }),
    );
    first.stop("interrupted", 5);
    await firstRun;
    const second = newAgent();
    const secondRun = second.run();
    let envelope: Envelope;
    try {
      [, envelope] = await next<[JobAddress, Envelope]>(second, "finished", address.jobId);
    } finally {
      second.stop();
      await secondRun;
    }
    const resumedFrom = (envelope.result as { resumed_from: number }).resumed_from;
    expect(resumedFrom).toBeGreaterThanOrEqual(5);

    const logs = await crucible(["logs", address.jobId, "--stdout"], undefined, as());
    const printed = logs.stdout.trimEnd().split("\n");
    // Each attempt's lines, in order: the first up to its checkpoint, the second on from there.
    expect(printed).toEqual(Array.from({ length: 30 }, (_, i) => `step ${i + 1}`));
    expect(await crucible(["logs", address.jobId, "--tail", "2", "--stdout"], undefined, as())).toMatchObject(
      {
        code: 0,
        stdout: "step 29\nstep 30\n",
      },
    );
    expect(await crucible(["logs", address.jobId, "--stderr"], undefined, as())).toMatchObject({
      code: 0,
      stdout: "",
      stderr: "done\n",
    });
    expect(
      await crucible(["logs", address.jobId, "--since", "2099-01-01", "--stdout"], undefined, as()),
    ).toMatchObject({ code: 0, stdout: "" });

    const csv = await crucible(["metrics", address.jobId, "--format", "csv"], undefined, as());
    expect(csv.code).toBe(0);
    const rows = csv.stdout.trimEnd().split("\n");
    expect(rows[0]).toBe("time,attempt,step,total,loss");
    const points = rows.slice(1).map((row) => row.split(","));
    const attempts = points.map((p) => Number(p[1]));
    const steps = points.map((p) => Number(p[2]));
    expect(new Set(attempts)).toEqual(new Set([1, 2]));
    // Attempt 2 starts where the checkpoint left off, not at 1: the step count continues.
    const secondSteps = steps.filter((_, i) => attempts[i] === 2);
    expect(secondSteps[0]).toBe(resumedFrom + 1);
    expect(secondSteps.at(-1)).toBe(30);
    expect(points.at(-1)![4]).toBe(String(Number((10 / 30).toPrecision(4))));

    // What the job used is sampled from each attempt's start, and kept apart from what it reported.
    const used = await crucible(
      ["metrics", address.jobId, "--resources", "--format", "csv"],
      undefined,
      as(),
    );
    expect(used.code).toBe(0);
    const [header, ...samples] = used.stdout.trimEnd().split("\n");
    expect(header).toMatch(/^time,attempt,step,total,memory_mib(,cpu_cores)?$/);
    const sampled = samples.map((row) => row.split(","));
    expect(new Set(sampled.map((p) => Number(p[1])))).toEqual(new Set([1, 2]));
    expect(sampled.every((p) => p[2] === "" && Number(p[4]) > 0)).toBe(true);

    const status = await crucible(["status", address.jobId, "--json"], undefined, as());
    expect(JSON.parse(status.stdout)).toMatchObject({
      jobId: address.jobId,
      state: { status: "succeeded", attempts: 2, resumedFromCheckpoint: true },
      progress: { step: 30, total: 30, percent: 100 },
      metrics: { loss: 10 / 30 },
    });
    const text = await crucible(["status", address.jobId], undefined, as());
    expect(text.stdout).toContain("  state     succeeded, attempt 2, resumed from its checkpoints\n");
    expect(text.stdout).toContain("  progress  step 30/30 (100%)\n");
    expect(text.stdout).toMatch(/\n {2}cost {6}\$\d+\.\d{4}\n/);

    const plot = join(local.root, "loss.svg");
    expect(await crucible(["metrics", address.jobId, "--plot", plot], undefined, as())).toMatchObject({
      code: 0,
    });
    const svg = await readFile(plot, "utf8");
    expect(svg.startsWith("<svg")).toBe(true);
    expect(svg).toContain("resumed: attempt 2");
    expect(svg).toContain(`${address.jobId}: loss by step`);
  });

  it("names what is wrong: an unknown job, another user's job, a malformed --since, a metric never reported", async () => {
    const unknown = await crucible(["logs", "job-nope"], undefined, as());
    expect(unknown).toMatchObject({ code: 2 });
    expect(unknown.stderr).toBe("crucible: no job job-nope in demo/ada (see `crucible ls` for your jobs)\n");
    const address = await submit("def main():\n    return 1\n");
    const bobs = await crucible(["status", address.jobId, "--user", "ada"], undefined, as("bob"));
    expect(bobs).toMatchObject({ code: 2 });
    expect(bobs.stderr).toBe(
      `crucible: job ${address.jobId}: your credentials may not read jobs of demo/ada; you can see only your own jobs\n`,
    );
    const since = await crucible(["logs", address.jobId, "--since", "yesterday"], undefined, as());
    expect(since.code).toBe(2);
    expect(since.stderr).toContain(
      `option '--since <when>' argument 'yesterday' is invalid. must be a duration back from now (30m, 24h, 7d, 2w) or an ISO date or date-time (2026-12-01, 2026-12-01T09:30:00Z), got "yesterday"`,
    );
    const metric = await crucible(["metrics", address.jobId, "--metric", "acc"], undefined, as());
    expect(metric).toMatchObject({ code: 2 });
    expect(metric.stderr).toBe(
      `crucible: --metric acc: job ${address.jobId} reported no such metric (it reported: none yet)\n`,
    );
    const plot = await crucible(["metrics", address.jobId, "--plot", "loss.png"], undefined, as());
    expect(plot.stderr).toBe('crucible: --plot must name an .svg file, got "loss.png"\n');
    const resources = await crucible(
      ["metrics", address.jobId, "--resources", "--plot", "used.svg"],
      undefined,
      as(),
    );
    expect(resources.stderr).toBe(
      "crucible: --plot draws what the job reported against step; --resources samples have no step\n",
    );
  });
});
