import Dockerode from "dockerode";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Envelope, JobSpecInput, ProgressEvent } from "../../runtime/src/job/contract";
import { DockerEngine } from "../../runtime/src/launch/docker/container-engine";
import { DockerLauncher } from "../../runtime/src/launch/docker/docker-launcher";
import type { ImageFamily } from "../../runtime/src/catalog/image-matrix";
import { IMAGE_MATRIX, imageRef } from "../../runtime/src/catalog/image-matrix";
import { LABELS } from "../../runtime/src/launch/sandbox";
import { makeZip, runRunner } from "./runner-harness";

const docker = new Dockerode();
const engine = new DockerEngine(docker, pino({ level: "silent" }));
const launcher = new DockerLauncher({ docker, logger: pino({ level: "silent" }), graceSeconds: 1 });
const CPU = imageRef("cpu");
const ML_CPU = imageRef("ml-cpu");
const MB = 1000 * 1000;

let root: string;
let counter = 0;
const nextId = (): string => `img-${process.pid}-${++counter}`;

/** Runs a job whose directory holds `files` (main.py at least) through the real launcher. */
async function runJob(
  files: Record<string, string>,
  extra: Partial<JobSpecInput> = {},
  onProgress?: (event: ProgressEvent) => void,
): Promise<Envelope> {
  const jobId = nextId();
  const dir = join(root, jobId);
  await mkdir(dir);
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), text);
  return launcher.run(
    { jobId, code: dir, tier: "cpu-small", image: CPU, ...extra },
    onProgress ? { onProgress } : {},
  );
}

const main = (...lines: string[]): Record<string, string> => ({ "main.py": lines.join("\n") + "\n" });

/** Runs a command in a family's image, outside the job sandbox, as the image's own user. */
async function inImage(family: ImageFamily, script: string): Promise<{ code: number; output: string }> {
  const ctx = { jobId: nextId() };
  const id = await engine.create(
    {
      Image: imageRef(family),
      Entrypoint: ["/bin/sh", "-c", script],
      NetworkDisabled: true,
      HostConfig: { NetworkMode: "none" },
      Labels: { [LABELS.managed]: "true", [LABELS.jobId]: ctx.jobId },
    },
    ctx,
  );
  try {
    let output = "";
    const attached = await engine.attach(id, ctx, (_stream, chunk) => (output += chunk.toString()));
    await engine.start(id, ctx);
    const code = await engine.wait(id, ctx);
    await attached.ended;
    return { code, output };
  } finally {
    await engine.remove(id, ctx);
  }
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-images-test-"));
});

afterAll(() => rm(root, { recursive: true, force: true }));

describe("the job runner in the cpu image", () => {
  it("returns main()'s value with numpy and pandas values as JSON", async () => {
    const envelope = await runJob(
      main(
        "import numpy as np, pandas as pd, datetime",
        "def main():",
        "    a = np.arange(6).reshape(2, 3)",
        "    return {",
        '        "sum": a.sum(), "mean": np.float32(2.5), "matrix": a, "flag": np.bool_(True),',
        '        "nan": float("nan"), "frame": pd.DataFrame({"x": [1, 2], "y": ["a", "b"]}),',
        '        "series": pd.Series([0.5], index=["p"]), "when": datetime.date(2026, 1, 2), "pair": (1, 2),',
        "    }",
      ),
    );
    expect(envelope.status).toBe("success");
    expect(envelope.result).toEqual({
      sum: 15,
      mean: 2.5,
      matrix: [
        [0, 1, 2],
        [3, 4, 5],
      ],
      flag: true,
      nan: null,
      frame: [
        { x: 1, y: "a" },
        { x: 2, y: "b" },
      ],
      series: { p: 0.5 },
      when: "2026-01-02",
      pair: [1, 2],
    });
    expect(envelope.systemInfo.python).toMatch(/^3\.13\./);
    expect(envelope.resources.peakMemoryBytes).toBeGreaterThan(10 * MB);
    expect(envelope.resources.cpuSeconds).toBeGreaterThan(0);
  });

  it("reports an exception with its type, message and the job's own traceback", async () => {
    const envelope = await runJob(
      main("def helper(x):", "    return 1 / x", "", "def main():", "    return helper(0)"),
    );
    expect(envelope).toMatchObject({
      status: "error",
      reason: "exception",
      exitCode: 1,
      error: { type: "ZeroDivisionError", message: "division by zero" },
    });
    expect(envelope.error?.traceback).toContain('main.py", line 2, in helper');
    expect(envelope.error?.traceback).not.toContain("run_job.py");
  });

  it("refuses a result that is not JSON, naming where it is", async () => {
    const envelope = await runJob(
      main("class Model: pass", "def main():", '    return {"scores": [1, 2], "model": Model()}'),
    );
    expect(envelope).toMatchObject({
      status: "error",
      reason: "exception",
      error: { type: "ResultNotSerializable" },
    });
    expect(envelope.error?.message).toContain("result['model'] is a main.Model");
  });

  it("reports main.py without main() as an invalid job", async () => {
    const envelope = await runJob(main("def run():", "    return 1"));
    expect(envelope).toMatchObject({
      status: "error",
      reason: "invalid_job",
      exitCode: 2,
      error: { type: "InvalidJob" },
    });
    expect(envelope.error?.message).toContain("main.py defines no main() function");
  });

  it("checks requirements.txt against the image: what is there passes, what is not is named", async () => {
    const ok = await runJob({
      ...main("def main():", "    return 1"),
      "requirements.txt": "numpy>=2  # from the image\nscipy\npandas ; python_version < '3'\n",
    });
    expect(ok.status).toBe("success");
    const missing = await runJob({
      ...main("def main():", "    return 1"),
      "requirements.txt": "numpy<2\ntorch>=2.0\n--index-url https://pypi.org/simple\n",
    });
    expect(missing).toMatchObject({ status: "error", reason: "invalid_job" });
    expect(missing.error?.message).toMatch(/numpy<2 is wanted, 2\.\d+\.\d+ is installed/);
    expect(missing.error?.message).toContain("torch is not installed in this image");
    expect(missing.error?.message).toContain("options are not supported; jobs run offline");
  });

  it("offers the progress helper, whose reports reach the launcher", async () => {
    const events: ProgressEvent[] = [];
    const envelope = await runJob(
      main(
        "from crucible import progress",
        "def main():",
        "    for step in range(1, 4):",
        "        progress(step=step, total=3, loss=1.0 / step)",
        '    return "done"',
      ),
      {},
      (event) => events.push(event),
    );
    expect(envelope.status).toBe("success");
    expect(events.filter((e) => e.source === "protocol").map((e) => e.step)).toEqual([1, 2, 3]);
    expect(envelope.metrics).toEqual({ loss: 1 / 3 });
  });
});

describe("the runner's own defences against hostile archives", () => {
  const mainPy = { name: "main.py", data: "def main():\n    return 1\n" };

  it.each([
    ["a '../' path", { name: "../escape.py", data: "x = 1\n" }, "climbs out of the archive with '..'"],
    ["an absolute path", { name: "/tmp/escape.py", data: "x = 1\n" }, "is an absolute path"],
    [
      "a link out of the directory",
      { name: "data", data: "/etc", mode: 0o120777 },
      "outside the code directory",
    ],
    [
      "a relative link climbing out",
      { name: "up", data: "../..", mode: 0o120777 },
      "outside the code directory",
    ],
  ])("refuses %s as an invalid job", async (_what, hostile, message) => {
    const run = await runRunner(CPU, await makeZip([mainPy, hostile]), nextId());
    expect(run.exitCode).toBe(2);
    expect(run.runner.result).toMatchObject({
      status: "error",
      reason: "invalid_job",
      error: { type: "InvalidArchive" },
    });
    expect(run.runner.result?.error?.message).toContain(message);
  });

  it("refuses a zip bomb before it fills the job's /tmp", async () => {
    const bomb = await makeZip([mainPy, { name: "data.bin", data: Buffer.alloc(200 * MB) }]);
    expect(bomb.length).toBeLessThan(MB);
    const run = await runRunner(CPU, bomb, nextId());
    expect(run.runner.result).toMatchObject({ status: "error", reason: "invalid_job" });
    expect(run.runner.result?.error?.message).toMatch(/more than the \d+ allowed|zip bomb/);
  });

  it("refuses an archive with more entries than allowed", async () => {
    const many = Array.from({ length: 10_001 }, (_, i) => ({ name: `f/${i}.txt`, data: "" }));
    const run = await runRunner(CPU, await makeZip([mainPy, ...many]), nextId());
    expect(run.runner.result?.error?.message).toContain("10002 entries, more than the 10000 allowed");
  });

  it("runs a well-formed archive with a link that stays inside", async () => {
    const run = await runRunner(
      CPU,
      await makeZip([
        {
          name: "main.py",
          data: "import pathlib\ndef main():\n    return pathlib.Path('alias/v.txt').read_text()\n",
        },
        { name: "data/v.txt", data: "inside" },
        { name: "alias", data: "data", mode: 0o120777 },
      ]),
      nextId(),
    );
    expect(run.output).toBe("");
    expect(run.runner.result).toMatchObject({ status: "success", result: "inside" });
  });
});

describe("ml-cpu", () => {
  it("trains a small torch model on CPU", async () => {
    const envelope = await runJob(
      main(
        "import torch",
        "def main():",
        "    torch.manual_seed(0)",
        "    x = torch.randn(256, 8)",
        "    y = x @ torch.arange(8.0) + 1",
        "    model = torch.nn.Linear(8, 1)",
        "    opt = torch.optim.SGD(model.parameters(), lr=0.05)",
        "    losses = []",
        "    for _ in range(50):",
        "        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)",
        "        opt.zero_grad(); loss.backward(); opt.step()",
        "        losses.append(loss.item())",
        '    return {"first": losses[0], "last": losses[-1], "torch": torch.__version__}',
      ),
      { image: ML_CPU, tier: "cpu-large" },
    );
    expect(envelope.status).toBe("success");
    const result = envelope.result as { first: number; last: number; torch: string };
    expect(result.last).toBeLessThan(result.first / 10);
    expect(result.torch.startsWith(`${IMAGE_MATRIX["ml-cpu"].axes.torch}.`)).toBe(true);
  });
});

describe.each(["cpu", "ml-cpu", "agent"] as const)("the %s image", (family) => {
  let config: Dockerode.ImageInspectInfo;

  beforeAll(async () => {
    config = await docker.getImage(imageRef(family)).inspect();
  });

  it("runs a job image as a non-root user (the agent as root, to give each job a uid) and carries the OCI labels of its matrix entry", () => {
    expect(config.Config.User).toBe(IMAGE_MATRIX[family].runsJobs ? "1000:1000" : "0:0");
    const labels = config.Config.Labels;
    expect(labels["org.opencontainers.image.title"]).toBe(`crucible/${family}`);
    expect(labels["org.opencontainers.image.source"]).toMatch(/^https:\/\//);
    expect(labels["dev.crucible.family"]).toBe(family);
    for (const [axis, value] of Object.entries(IMAGE_MATRIX[family].axes)) {
      expect(labels[`dev.crucible.${axis}`], axis).toBe(value);
    }
  });

  it("has no compiler, no package manager and no pip", async () => {
    const { code, output } = await inImage(
      family,
      "for tool in gcc cc c++ g++ clang tcc make apt apt-get dpkg pip pip3 npm; do command -v $tool; done;" +
        " python3 -m pip --version 2>/dev/null; python3 -m ensurepip --version 2>/dev/null; exit 0",
    );
    expect(code).toBe(0);
    expect(output).toBe("");
  });

  it("sets offline mode for jobs and stays within its size budget", () => {
    if (IMAGE_MATRIX[family].runsJobs) {
      for (const variable of [
        "HF_HUB_OFFLINE=1",
        "TRANSFORMERS_OFFLINE=1",
        "HF_DATASETS_OFFLINE=1",
        "PIP_NO_INDEX=1",
      ]) {
        expect(config.Config.Env).toContain(variable);
      }
    }
    const budget = { cpu: 450, "ml-cpu": 1300, agent: 450 }[family];
    expect(config.Size / MB).toBeLessThan(budget);
  });
});

describe("the agent image", () => {
  it("runs the crucible CLI with Node from Debian", async () => {
    const { code, output } = await inImage(
      "agent",
      "node --version && node /opt/crucible/runtime/dist/cli/bin/crucible.js tiers",
    );
    expect(code).toBe(0);
    expect(output).toMatch(new RegExp(`^v${IMAGE_MATRIX.agent.axes.node}\\.`));
    expect(output).toContain("gpu-large");
  });
});
