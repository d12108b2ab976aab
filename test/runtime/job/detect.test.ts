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
