import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import yazl from "yazl";
import { createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { detect, detectSources } from "../../../runtime/src/job/detect";
import { writeRepeatedZip } from "../../support/zip-bomb";

const main = (text: string) => [{ name: "main.py", text }];

describe("detectSources", () => {
  it("suggests the smallest tier and the slim image for plain code", () => {
    const found = detectSources(main("import json\n\ndef main():\n    return 1\n"));
    expect(found).toMatchObject({ tier: "cpu-small", family: "cpu", image: "crucible/cpu:py3.13" });
    expect(found.needs).toEqual({ torch: false, gpu: false });
  });

  it("puts PyTorch on CPU in ml-cpu, on a tier with room for it", () => {
    const found = detectSources(main("import os\nimport torch\n"));
    expect(found).toMatchObject({ tier: "cpu-large", family: "ml-cpu", needs: { torch: true, gpu: false } });
    expect(found.reasons[0]).toBe("main.py:2 imports torch: needs an image with PyTorch");
  });

  it.each([
    ["x = model.cuda()", "moves tensors to the GPU with .cuda()"],
    ["x = t.to('cuda')", "moves tensors to the GPU with .to('cuda')"],
    ['x = t.to("cuda:0")', "moves tensors to the GPU with .to('cuda')"],
    ["ok = torch.cuda.is_available()", "uses torch.cuda"],
  ])("sends CUDA use (%s) to a GPU tier with the CUDA image", (line, why) => {
    const found = detectSources(main(`import torch\n${line}\n`));
    expect(found).toMatchObject({ tier: "gpu-small", family: "ml-cuda", needs: { gpu: true, torch: true } });
    expect(found.reasons).toContain(`main.py:2 ${why}: needs a GPU tier`);
  });

  it("warns about frameworks no image provides", () => {
    const found = detectSources(
      main("import tensorflow as tf\nfrom transformers import AutoModel\nimport jax\n"),
    );
    expect(found.tier).toBe("gpu-small");
    expect(found.warnings).toEqual([
      "main.py:2 imports transformers, which no image of the matrix installs",
      "main.py:1 imports tensorflow, which no image of the matrix installs (they provide PyTorch)",
      "main.py:3 imports jax, which no image of the matrix installs (they provide PyTorch)",
      "add to requirements.txt (one a line): tensorflow, transformers, jax; the platform builds them into the job's environment before it runs, as jobs have no network",
    ]);
    expect(found.requirements).toEqual(["tensorflow", "transformers", "jax"]);
  });

  it("puts PyTorch's libraries in the ML image, on a tier with room for PyTorch", () => {
    for (const line of [
      "import torchvision.transforms as T",
      "from torchaudio import transforms",
      "from safetensors.torch import load_file",
    ]) {
      const found = detectSources(main(`import json\n${line}\n`));
      expect(found, line).toMatchObject({ tier: "cpu-large", family: "ml-cpu", needs: { torch: true } });
      expect(found.reasons[0], line).toMatch(/^main\.py:2 imports [\w.]+: needs an image with PyTorch$/);
    }
  });

  it("puts tokenizers without PyTorch in the ML image on the smallest tier", () => {
    const found = detectSources(main("import tiktoken\nimport sentencepiece as spm\n"));
    expect(found).toMatchObject({ tier: "cpu-small", family: "ml-cpu", needs: { torch: false, gpu: false } });
    expect(found.reasons).toEqual([
      "main.py:1 imports tiktoken: needs an ML image (ml-cpu or ml-cuda)",
      "main.py:2 imports sentencepiece: needs an ML image (ml-cpu or ml-cuda)",
    ]);
    expect(found.packages).toEqual(["sentencepiece", "tiktoken"]);
    const onGpu = detectSources(main("import tiktoken\nimport torch\nx = torch.zeros(2).cuda()\n"));
    expect(onGpu.family).toBe("ml-cuda");
  });

  it("keeps plots and progress bars in the cpu image", () => {
    const found = detectSources(
      main("import seaborn as sns\nfrom tqdm import tqdm\nimport sklearn.datasets\nfrom PIL import Image\n"),
    );
    expect(found).toMatchObject({ tier: "cpu-small", family: "cpu", warnings: [], requirements: [] });
    expect(found.packages).toEqual(["pillow", "scikit-learn", "seaborn", "tqdm"]);
  });

  it("suggests the requirements.txt lines for packages no image installs, by their index names", () => {
    const found = detectSources(
      main(
        [
          "import os, wandb",
          "from datasets import load_dataset",
          "import accelerate",
          "import yaml",
          "import cv2",
          "import datasets.utils",
        ].join("\n"),
      ),
    );
    expect(found.requirements).toEqual([
      "wandb",
      "datasets",
      "accelerate",
      "pyyaml",
      "opencv-python-headless",
    ]);
    expect(found.warnings).toEqual([
      "main.py:1 imports wandb, which no image of the matrix installs",
      "main.py:2 imports datasets, which no image of the matrix installs",
      "main.py:3 imports accelerate, which no image of the matrix installs",
      "main.py:4 imports yaml, which no image of the matrix installs",
      "main.py:5 imports cv2, which no image of the matrix installs",
      "add to requirements.txt (one a line): wandb, datasets, accelerate, pyyaml, opencv-python-headless; the platform builds them into the job's environment before it runs, as jobs have no network",
    ]);
    // accelerate is built on PyTorch: the environment goes on the ML image.
    expect(found).toMatchObject({ family: "ml-cpu", needs: { torch: true } });
    expect(found.reasons).toContain(
      "main.py:3 imports accelerate (built on PyTorch): needs an image with PyTorch",
    );
  });

  it("suggests nothing requirements.txt lists, nor the job's own modules, optional imports or the standard library", () => {
    const found = detectSources([
      ...main(
        [
          "from __future__ import annotations",
          "import json, collections.abc",
          "import model",
          "from utils.io import read",
          "from . import sibling",
          "import wandb",
          "import transformers",
          "try:",
          "    import mlflow",
          "except ImportError:",
          "    mlflow = None",
          "def main():",
          "    import einops",
          '    """',
          "    from the start: import nothing",
          "    import this and that, please.",
          '    """',
        ].join("\n"),
      ),
      { name: "model.py", text: "import numpy\n" },
      { name: "utils/io.py", text: "def read(): pass\n" },
      { name: "requirements.txt", text: "# tracking\nWandB>=0.19  # the dashboard\ntransformers==4.51.*\n" },
    ]);
    expect(found.requirements).toEqual(["einops"]);
    expect(found.packages).toEqual(["einops", "numpy", "transformers", "wandb"]);
    expect(found.warnings).toEqual([
      "main.py:7 imports transformers, which no image of the matrix installs",
      "main.py:13 imports einops, which no image of the matrix installs",
      "add to requirements.txt (one a line): einops; the platform builds them into the job's environment before it runs, as jobs have no network",
    ]);
  });

  it("reads requirements.txt naming the ML images' packages", () => {
    const found = detectSources([
      ...main("def main(): pass\n"),
      { name: "requirements.txt", text: "tiktoken>=0.9\ntorchvision\n" },
    ]);
    expect(found).toMatchObject({ family: "ml-cpu", needs: { torch: true } });
    expect(found.reasons.slice(0, 2)).toEqual([
      "requirements.txt:2 requires torchvision: needs an image with PyTorch",
      "requirements.txt:1 requires tiktoken: needs an ML image (ml-cpu or ml-cuda)",
    ]);
  });

  it("sizes large allocations from literal shapes and dtypes", () => {
    const found = detectSources(main("import numpy as np\na = np.zeros((20_000, 20_000))\n"));
    // 3.2e9 bytes of float64 plus the interpreter: more than cpu-small's 512 MiB, within cpu-large's 4 GiB.
    expect(found.tier).toBe("cpu-large");
    expect(found.needs.memoryBytes).toBe(20_000 * 20_000 * 8 + 120 * 2 ** 20);
    expect(found.reasons[0]).toBe("main.py:2 allocates np.zeros((20_000, 20_000)), about 3.0 GiB");
    const half = detectSources(main("import numpy as np\na = np.ones((20000, 20000), dtype=np.float16)\n"));
    expect(half.tier).toBe("cpu-large");
    expect(half.needs.memoryBytes).toBe(20_000 * 20_000 * 2 + 120 * 2 ** 20);
    const torchDims = detectSources(main("import torch\nw = torch.randn(10**5, 10**4)\n"));
    expect(torchDims.needs.memoryBytes).toBe(1e9 * 4 + 600 * 2 ** 20);
  });

  it("warns when no tier holds the allocation, and picks the largest", () => {
    const found = detectSources(main("import numpy as np\nx = np.zeros((100000, 100000))\n"));
    expect(found.tier).toBe("gpu-medium");
    expect(found.warnings[0]).toMatch(
      /^about 75 GiB at peak, more than any tier allows \(largest: gpu-medium with 30 GiB\)/,
    );
  });

  it("ignores comments and sizes it cannot know", () => {
    const found = detectSources(main("# import torch\n# x.cuda()\nn = 5\na = np.zeros((n, n))  # .cuda()\n"));
    expect(found).toMatchObject({ tier: "cpu-small", needs: { torch: false, gpu: false } });
  });

  it("reads requirements.txt", () => {
    const found = detectSources([
      ...main("def main(): pass\n"),
      { name: "requirements.txt", text: "numpy\ntorch==2.6\n" },
    ]);
    expect(found.needs.torch).toBe(true);
    expect(found.reasons[0]).toBe("requirements.txt:2 requires torch: needs an image with PyTorch");
  });
});

describe("detect", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "crucible-detect-"));
    const zip = new yazl.ZipFile();
    zip.addBuffer(Buffer.from("import torch\nmodel.cuda()\n"), "main.py");
    zip.addBuffer(Buffer.from("ignored"), "data.bin");
    zip.end();
    await pipeline(zip.outputStream, createWriteStream(join(dir, "code.zip")));
    await writeFile(join(dir, "job.py"), "import torch\n");
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it("reads a zip, a .py file and a directory", async () => {
    expect((await detect(join(dir, "code.zip"))).tier).toBe("gpu-small");
    expect((await detect(join(dir, "job.py"))).family).toBe("ml-cpu");
    expect((await detect("runtime/templates/numpy")).tier).toBe("cpu-small");
  });

  it("names a path that does not exist", async () => {
    await expect(detect(join(dir, "nope"))).rejects.toThrow(`code: ${join(dir, "nope")} does not exist`);
  });

  it("reads 16 MiB of sources at most, from the start, and says what it left unread", async () => {
    const zip = join(dir, "many.zip");
    await writeRepeatedZip(
      zip,
      { count: 1, name: () => "main.py", data: Buffer.from("import torch\nx = torch.zeros(1).cuda()\n") },
      { count: 999, name: (i) => `pkg/m${i}.py`, data: Buffer.from("y = 1\n".repeat(43_690)) },
    );
    const reading = { bytesRead: 0, unread: 0 };
    const found = await detect(zip, reading);
    expect(found.tier).toBe("gpu-small");
    expect(reading.bytesRead).toBeLessThanOrEqual(16 * 2 ** 20);
    expect(reading.unread).toBe(935);
    expect(found.warnings).toEqual([
      "935 source file(s) not read: detection reads at most 1.0 MiB a file and 16 MiB in all, so it may miss what they use",
    ]);
  });

  it("refuses a zip bomb, naming the limit", async () => {
    const zip = join(dir, "bomb.zip");
    await writeRepeatedZip(zip, { count: 10_000, name: (i) => `m${i}.py`, data: Buffer.alloc(2 ** 20) });
    await expect(detect(zip)).rejects.toThrow(/more than the 256 MiB \(268435456 bytes\) allowed/);
  });
});
