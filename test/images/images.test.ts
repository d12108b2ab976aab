import Dockerode from "dockerode";
import { readFileSync } from "node:fs";
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
import { PROVIDED_MODULES, STANDARD_LIBRARY } from "../../runtime/src/job/detect";
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
    // Budgets in MB, checked after every addition (npm run images -- build prints each size).
    const budget = { cpu: 450, "ml-cpu": 1300, agent: 450 }[family];
    expect(config.Size / MB, `${family} is ${(config.Size / MB).toFixed(1)} MB`).toBeLessThan(budget);
  });
});

describe("what the cpu and ml-cpu images install", () => {
  /** Each family's importable top-level modules outside the standard library, and the standard library. */
  async function modules(family: ImageFamily): Promise<{ installed: string[]; stdlib: string[] }> {
    const { code, output } = await inImage(
      family,
      "python3 -c \"import json, pkgutil, sys; print(json.dumps({'installed': sorted({m.name for m in pkgutil.iter_modules()} - set(sys.stdlib_module_names)), 'stdlib': sorted(sys.stdlib_module_names)}))\"",
    );
    expect(code, output).toBe(0);
    return JSON.parse(output) as { installed: string[]; stdlib: string[] };
  }

  /**
   * Installed but not in detect's table: Python's own test modules, and what Debian's PyTorch brings that
   * PyPI's does not (so ml-cuda may lack it, and detect suggests it as a requirement).
   */
  const INCIDENTAL: Record<"cpu" | "ml-cpu", string[]> = {
    cpu: ["sitecustomize", "test", "xxlimited", "xxlimited_35", "xxsubtype"],
    "ml-cpu": [
      "autocommand",
      "chardet",
      "expecttest",
      "hypothesis",
      "inflect",
      "more_itertools",
      "pkg_resources",
      "psutil",
      "sortedcontainers",
      "torchgen",
      "torio",
      "typeguard",
      "yaml",
    ],
  };

  it.each(["cpu", "ml-cpu"] as const)(
    "%s: detect's table of what the images install is what this one installs",
    async (family) => {
      const { installed, stdlib } = await modules(family);
      expect([...STANDARD_LIBRARY].sort()).toEqual(stdlib.filter((m) => !m.startsWith("_")));
      const listed = [...PROVIDED_MODULES]
        .filter(([, p]) => family === "ml-cpu" || !p.ml)
        .map(([name]) => name);
      const incidental = family === "cpu" ? INCIDENTAL.cpu : [...INCIDENTAL.cpu, ...INCIDENTAL["ml-cpu"]];
      const present = installed.filter((m) => !m.startsWith("_") && !incidental.includes(m));
      // Namespace packages, which pkgutil does not list.
      const namespaces = ["mpl_toolkits", "tiktoken_ext"];
      expect(present.sort()).toEqual(listed.filter((m) => !namespaces.includes(m)).sort());
    },
  );

  it("cpu: plots with seaborn and shows progress with tqdm", async () => {
    const { code, output } = await inImage(
      "cpu",
      'python3 -c "import seaborn, tqdm; from tqdm import tqdm as bar; print(seaborn.__version__, sum(bar(range(3), disable=True)))"',
    );
    expect(code, output).toBe(0);
    expect(output).toMatch(/^0\.13\.\d+ 3\n$/);
  });

  it("ml-cpu: torchvision, torchaudio, safetensors, tiktoken and sentencepiece work offline", async () => {
    const script = [
      "import io, torch, torchvision, torchaudio, tiktoken, sentencepiece",
      "from torchvision.transforms import v2",
      "from torchvision.io import decode_png, encode_png",
      "from safetensors.torch import load, save",
      "x = torch.arange(12, dtype=torch.float32).reshape(1, 3, 4)",
      "assert v2.Resize((8, 8), antialias=True)(x).shape == (1, 8, 8)",
      "img = torch.randint(0, 255, (3, 8, 8), dtype=torch.uint8)",
      "assert torch.equal(decode_png(encode_png(img)), img)",
      "assert torchaudio.transforms.Spectrogram(n_fft=64)(torch.randn(1, 800)).shape[0] == 1",
      "assert torch.equal(load(save({'x': x}))['x'], x)",
      "enc = tiktoken.Encoding('t', pat_str=r'\\S+|\\s+', mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})",
      "assert enc.decode(enc.encode('offline')) == 'offline'",
      "from torchvision.io import _video_opt",
      "print(torchvision.__version__, torchaudio.__version__, sentencepiece.__version__, _video_opt._HAS_VIDEO_OPT)",
    ].join("\n");
    const { code, output } = await inImage("ml-cpu", `python3 - <<'EOF'\n${script}\nEOF`);
    expect(code, output).toBe(0);
    // torchvision comes without FFmpeg (images/ml-cpu/Dockerfile): everything but its video reader.
    expect(output).toMatch(/^0\.21\.\d+ 2\.6\.\d+ 0\.2\.\d+ False\n$/);
  });
});

describe("ml-cuda's requirements", () => {
  const lines = (path: string): string[] =>
    readFileSync(join(__dirname, "../..", path), "utf8")
      .split("\n")
      .map((line) => line.trim())
      .filter((line) => line && !line.startsWith("#"));

  it("install what the cpu and ml-cpu images install, so the families stay alike", () => {
    const requirements = lines("images/ml-cuda/requirements.txt").map((r) => /^[\w.-]+/.exec(r)![0]);
    const debian = { "python3-sklearn": "scikit-learn" } as Record<string, string>;
    const wanted = [
      ...lines("images/cpu/packages.txt"),
      ...lines("images/ml-cpu/packages.txt"),
      "python3-torchvision",
    ]
      .filter((p) => p.startsWith("python3-") && p !== "python3-torch")
      .map((p) => debian[p] ?? p.slice("python3-".length));
    expect(requirements.sort()).toEqual(wanted.sort());
  });

  it("pins torchvision and torchaudio to the releases built for the matrix's torch", () => {
    const torch = IMAGE_MATRIX["ml-cuda"].axes.torch!;
    const minor = Number(torch.split(".")[1]);
    const requirements = lines("images/ml-cuda/requirements.txt");
    // torchvision 0.N pairs with torch 2.(N-15): 0.21 with 2.6.
    expect(requirements).toContain(`torchvision==0.${minor + 15}.*`);
    expect(requirements).toContain(`torchaudio==${torch}.*`);
    expect(IMAGE_MATRIX["ml-cpu"].axes.torch).toBe(torch);
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
