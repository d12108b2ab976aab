import Dockerode from "dockerode";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { envelopeSchema } from "../../../runtime/src/job/contract";
import { imageRef } from "../../../runtime/src/catalog/image-matrix";
import { TIER_NAMES, TIERS } from "../../../runtime/src/catalog/tiers";
import { buildCli } from "../../../runtime/src/cli";
import { crucible } from "../../support/cli";

const IMAGE = process.env.CRUCIBLE_TEST_JOB_IMAGE ?? imageRef("cpu");
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crucible-cli-test-"));
  for (const [name, code] of [
    ["hello", 'def main():\n    print("hi from the job")\n    return {"answer": 42}\n'],
    ["fails", 'def main():\n    raise RuntimeError("nope")\n'],
    ["waits", 'import time\ndef main():\n    print("ready", flush=True)\n    time.sleep(60)\n'],
  ] as const) {
    await mkdir(join(dir, name));
    await writeFile(join(dir, name, "main.py"), code);
  }
});

afterAll(() => rm(dir, { recursive: true, force: true }));

describe("crucible CLI", () => {
  it("tiers: prints every tier with its price and dataset cache", async () => {
    const { code, stdout } = await crucible(["tiers"]);
    expect(code).toBe(0);
    for (const name of TIER_NAMES) {
      const line = stdout.split("\n").find((l) => l.startsWith(`${name} `));
      expect(line, name).toContain(`$${TIERS[name].onDemandHourlyUsd.toFixed(3)}`);
      // The largest dataset its jobs may name: what `submit --dataset` refusals are measured against.
      expect(line, name).toContain(`  ${TIERS[name].datasetCacheGiB} GiB  `);
    }
    const json = await crucible(["tiers", "--json"]);
    expect((JSON.parse(json.stdout) as { name: string }[]).map((t) => t.name)).toEqual([...TIER_NAMES]);
  });

  it("detect: suggests a tier and image with reasons", async () => {
    const { code, stdout } = await crucible(["detect", "runtime/templates/nanogpt", "--json"]);
    expect(code).toBe(0);
    expect(JSON.parse(stdout)).toMatchObject({
      tier: "gpu-small",
      family: "ml-cuda",
      needs: { torch: true, gpu: true },
    });
    const text = await crucible(["detect", join(dir, "hello")]);
    expect(text.stdout).toContain(`image: ${imageRef("cpu")}`);
  });

  it.each([
    [["run", "/nonexistent/job"], "crucible: code: /nonexistent/job does not exist"],
    [
      ["run", "HELLO", "--tier", "huge"],
      'crucible: --tier must be one of cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large, got "huge"',
    ],
    [
      ["run", "HELLO", "--tier", "cpu-small", "--timeout", "31"],
      "crucible: timeoutSeconds must be at most 30 for tier cpu-small, got 31",
    ],
    [["run", "HELLO", "--timeout", "soon"], 'must be a whole number of seconds greater than 0, got "soon"'],
    [["run", "HELLO", "--env", "HOME=/root"], 'crucible: env name "HOME" is reserved for the runtime'],
    [["run", "HELLO", "--env", "NOEQUALS"], 'must be NAME=VALUE with NAME like MY_VAR, got "NOEQUALS"'],
    [["detect", "/nonexistent/job"], "crucible: code: /nonexistent/job does not exist"],
    [["launch"], "error: unknown command 'launch'"],
  ])("rejects bad input %j with exit code 2 and a clear message", async (args, message) => {
    const { code, stderr } = await crucible(args.map((a) => a.replace("HELLO", join(dir, "hello"))));
    expect(code).toBe(2);
    expect(stderr).toContain(message);
  });

  it("run --json: prints the envelope and exits 0 on success", async () => {
    const { code, stdout } = await crucible(["run", join(dir, "hello"), "--image", IMAGE, "--json"]);
    expect(code).toBe(0);
    const envelope = envelopeSchema.parse(JSON.parse(stdout));
    expect(envelope).toMatchObject({
      status: "success",
      result: { answer: 42 },
      systemInfo: { tier: "cpu-small" },
    });
    expect(envelope.logs.stdout).toBe("hi from the job\n");
  });

  it("run: streams the job's output, prints the result, and exits 1 when the job fails", async () => {
    const ok = await crucible(["run", join(dir, "hello"), "--image", IMAGE]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain("hi from the job\n");
    expect(ok.stdout).toContain('"answer": 42');
    const failed = await crucible(["run", join(dir, "fails"), "--image", IMAGE, "--json"]);
    expect(failed.code).toBe(1);
    expect(JSON.parse(failed.stdout)).toMatchObject({
      reason: "exception",
      error: { type: "RuntimeError", message: "nope" },
    });
  });

  it("run: Ctrl-C cancels the job cleanly and leaves no container", async () => {
    const result = await crucible(
      ["run", join(dir, "waits"), "--image", IMAGE, "--grace", "1"],
      (out, child) => {
        if (out.includes("ready")) child.kill("SIGINT");
      },
    );
    expect(result.code).toBe(130);
    expect(result.stderr).toContain("failed (cancelled)");
    const jobId = /job (run-[a-z0-9-]+) failed/.exec(result.stderr)?.[1];
    expect(jobId).toBeDefined();
    const left = await new Dockerode().listContainers({
      all: true,
      filters: JSON.stringify({ label: [`crucible.job-id=${jobId}`] }),
    });
    expect(left).toEqual([]);
  });
});

describe("crucible submit refuses what a platform job may not ask for, before it touches the stack", () => {
  const stack = {
    CRUCIBLE_BUCKET: "b",
    CRUCIBLE_QUEUES: JSON.stringify({ "cpu-small": "https://sqs.us-east-1.amazonaws.com/1/q" }),
  };

  it.each([
    [
      ["--image-family", "alpine"],
      'crucible: --image-family must be one of cpu, ml-cpu, ml-cuda, got "alpine" (a platform job runs only the node\'s pinned images)',
    ],
    [
      ["--resume-from", "bob/job-1"],
      'crucible: --resume-from must be the id of one of your own jobs, optionally with @STEP, got "bob/job-1" (jobs of other users cannot be resumed from)',
    ],
    [
      ["--dataset", "corpus"],
      'crucible: --dataset must be NAME@VERSION such as shakespeare@1 (VERSION a whole number from 1), got "corpus"',
    ],
    [
      ["--resume-from", "job-1@latest"],
      'crucible: --resume-from job-1@latest: the step after "@" must be a whole number such as job-1@1200, got "latest"',
    ],
  ])("%j", async (flags, message) => {
    const { code, stderr } = await crucible(
      ["submit", join(dir, "hello"), "--tier", "cpu-small", ...flags],
      undefined,
      stack,
    );
    expect(code).toBe(2);
    expect(stderr).toContain(message);
  });
});

describe("loading the command line", () => {
  const names = (program: { commands: readonly { name(): string }[] }) =>
    program.commands.map((c) => c.name());

  it("loads only the module of the command named, and every module for help or an unknown command", async () => {
    const all = names(await buildCli());
    expect(all).toEqual(
      expect.arrayContaining([
        "run",
        "tiers",
        "init",
        "submit",
        "agent",
        "local",
        "usage",
        "ls",
        "logs",
        "metrics",
        "pull",
      ]),
    );
    expect(names(await buildCli(["node", "crucible", "tiers"]))).toEqual(["tiers"]);
    expect(names(await buildCli(["node", "crucible", "status", "job-1"]))).toEqual([
      "status",
      "result",
      "cancel",
    ]);
    expect(names(await buildCli(["node", "crucible", "logs", "job-1"]))).toEqual(["logs"]);
    for (const argv of [
      ["node", "crucible", "--help"],
      ["node", "crucible", "nonsense"],
    ])
      expect(names(await buildCli(argv))).toEqual(all);
    // Each command, named, finds the module that defines it.
    for (const name of all) expect(names(await buildCli(["node", "crucible", name]))).toContain(name);
  });
});
