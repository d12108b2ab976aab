import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { SourceReading } from "../../../runtime/src/job/code-source";
import {
  CodeError,
  MAX_CODE_ARCHIVE_BYTES,
  MAX_CODE_BYTES,
  MAX_CODE_FILES,
  MAX_DETECTION_BYTES,
  MAX_SOURCE_BYTES,
  packageCode,
  readSources,
} from "../../../runtime/src/job/code-source";
import { writeRepeatedZip } from "../../support/zip-bomb";

const MiB = 2 ** 20;
let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crucible-code-source-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const mainPy = { count: 1, name: () => "main.py", data: Buffer.from("def main():\n    return 1\n") };
const reading = (): SourceReading => ({ bytesRead: 0, unread: 0 });

describe("code limits", () => {
  it("are the runner's: crucible_archive.py extracts no more than the CLI and agent accept", async () => {
    const python = await readFile("images/runner/crucible_archive.py", "utf8");
    const constant = (name: string): number => {
      const value = new RegExp(`^${name} = (.+)$`, "m").exec(python)?.[1];
      if (!value) throw new Error(`crucible_archive.py defines no ${name}`);
      return Number(execFileSync("python3", ["-c", `print(${value})`], { encoding: "utf8" }).trim());
    };
    expect(constant("MAX_CODE_BYTES")).toBe(MAX_CODE_BYTES);
    expect(constant("MAX_CODE_FILES")).toBe(MAX_CODE_FILES);
    expect(python).toContain("max_bytes = min(max_bytes, MAX_CODE_BYTES)");
    expect(python).toContain("max_files = min(max_files, MAX_CODE_FILES)");
  });

  it("size a code archive for its files stored uncompressed, and bound detection", () => {
    expect(MAX_CODE_BYTES).toBe(256 * MiB);
    expect(MAX_CODE_ARCHIVE_BYTES).toBe(288 * MiB);
    expect(MAX_SOURCE_BYTES).toBe(MiB);
    expect(MAX_DETECTION_BYTES).toBe(16 * MiB);
  });
});

describe("packageCode", () => {
  it("refuses a code.zip over the archive limit before opening it, naming its size and the limit", async () => {
    const big = join(dir, "big.zip");
    await writeFile(big, "");
    await truncate(big, 300 * MiB);
    const out = join(dir, "out-big.zip");
    await expect(packageCode(big, "zip", out)).rejects.toThrow(
      new CodeError(
        "code: big.zip is 300 MiB (314572800 bytes), more than the 288 MiB (301989888 bytes) allowed for a job's code archive; pass data as a dataset directory",
      ),
    );
    expect(existsSync(out)).toBe(false);
  });

  it("refuses a code.zip that declares more than the code limit", async () => {
    const zip = join(dir, "declares.zip");
    await writeRepeatedZip(zip, mainPy, {
      count: 300,
      name: (i) => `data/${i}.bin`,
      data: Buffer.alloc(MiB),
    });
    await expect(packageCode(zip, "zip", join(dir, "out-declares.zip"))).rejects.toThrow(
      /^code: declares\.zip expands to 300\.0 MiB \(314572825 bytes\), more than the 256 MiB \(268435456 bytes\) allowed/,
    );
  });
});

describe("packageCode on entry names", () => {
  it("refuses an entry that would land outside the code directory, as the runner would, naming it", async () => {
    for (const [name, why] of [
      ["../x.py", 'climbs out of the archive with ".."'],
      ["lib/../../x.py", 'climbs out of the archive with ".."'],
      ["/etc/x.py", "is an absolute path"],
      ["C:/x.py", "is an absolute path"],
      ["lib\\x.py", "has a backslash or NUL"],
    ]) {
      const zip = join(dir, "names.zip");
      await writeRepeatedZip(zip, mainPy, { count: 1, name: () => name!, data: Buffer.from("x = 1\n") });
      const refused = packageCode(zip, "zip", join(dir, "out-names.zip"));
      await expect(refused, name).rejects.toBeInstanceOf(CodeError);
      await expect(refused, name).rejects.toThrow(`code: names.zip entry ${JSON.stringify(name)} ${why}`);
    }
  });

  it("accepts entries inside it, ./ and empty segments included", async () => {
    const zip = join(dir, "inside.zip");
    await writeRepeatedZip(zip, mainPy, {
      count: 1,
      name: () => "./lib//x.py",
      data: Buffer.from("x = 1\n"),
    });
    await packageCode(zip, "zip", join(dir, "out-inside.zip"));
    expect(existsSync(join(dir, "out-inside.zip"))).toBe(true);
  });
});

describe("readSources on hostile zips", () => {
  it("refuses a 10,000-entry bomb declaring 10 GiB without inflating a byte", async () => {
    const zip = join(dir, "bomb.zip");
    const onDisk = await writeRepeatedZip(zip, mainPy, {
      count: MAX_CODE_FILES - 1,
      name: (i) => `pkg/m${i}.py`,
      data: Buffer.alloc(MiB, 0x20),
    });
    expect(onDisk).toBeLessThan(16 * MiB);
    const read = reading();
    const heap = process.memoryUsage().heapUsed;
    const started = performance.now();
    await expect(readSources(zip, "zip", read)).rejects.toThrow(
      /^code: bomb\.zip expands to 9999\.\d MiB \(\d+ bytes\), more than the 256 MiB \(268435456 bytes\) allowed/,
    );
    expect(read).toEqual({ bytesRead: 0, unread: 0 });
    expect(performance.now() - started).toBeLessThan(10_000);
    expect(process.memoryUsage().heapUsed - heap).toBeLessThan(64 * MiB);
  });

  it("refuses entries that inflate past their declared size, reading no more than declared", async () => {
    const zip = join(dir, "liar.zip");
    await writeRepeatedZip(zip, {
      count: MAX_CODE_FILES,
      name: (i) => (i === 0 ? "main.py" : `pkg/m${i}.py`),
      data: Buffer.alloc(MiB, 0x20),
      declaredSize: 100,
    });
    const read = reading();
    await expect(readSources(zip, "zip", read)).rejects.toThrow(
      "code: liar.zip entry main.py inflates past the 100 bytes its header declares; refusing it as a zip bomb",
    );
    expect(read.bytesRead).toBe(0);
  });

  it("contains a 10,000-entry zip within its declared limit: reads 16 MiB in all, counts the rest", async () => {
    const zip = join(dir, "many.zip");
    // 9,999 modules of 24 KiB: 234 MiB declared (within the code limit), 14 times the detection bound.
    await writeRepeatedZip(zip, mainPy, {
      count: MAX_CODE_FILES - 1,
      name: (i) => `pkg/m${i}.py`,
      data: Buffer.from("x = 1\n".repeat(4096)),
    });
    const read = reading();
    const heap = process.memoryUsage().heapUsed;
    const sources = await readSources(zip, "zip", read);
    expect(read.bytesRead).toBeLessThanOrEqual(MAX_DETECTION_BYTES);
    expect(read.bytesRead).toBe(sources.reduce((sum, s) => sum + Buffer.byteLength(s.text), 0));
    expect(sources[0]?.name).toBe("main.py");
    expect(sources.length + read.unread).toBe(MAX_CODE_FILES);
    expect(read.unread).toBeGreaterThan(9_000);
    expect(process.memoryUsage().heapUsed - heap).toBeLessThan(4 * MAX_DETECTION_BYTES);
  });

  it("skips sources over the per-file limit, in directories too, and reads no links", async () => {
    const code = join(dir, "code-dir");
    await rm(code, { recursive: true, force: true });
    execFileSync("mkdir", ["-p", code]);
    await writeFile(join(code, "main.py"), "import torch\n");
    await writeFile(join(code, "huge.py"), "");
    await truncate(join(code, "huge.py"), MAX_SOURCE_BYTES + 1);
    const read = reading();
    expect(await readSources(code, "directory", read)).toEqual([{ name: "main.py", text: "import torch\n" }]);
    expect(read).toEqual({ bytesRead: 13, unread: 1 });
  });
});
