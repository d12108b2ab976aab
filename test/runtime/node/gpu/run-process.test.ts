import { describe, expect, it } from "vitest";
import { processRunner } from "../../../../runtime/src/node/gpu/run-process";
import { logger } from "./fakes";

describe("processRunner", () => {
  const runner = processRunner(logger);
  const node = (script: string) => [process.execPath, ["-e", script]] as const;

  it("returns the exit code and each stream, cut at maxBytes", async () => {
    const [file, args] = node(
      "process.stdout.write('o'.repeat(100000)); process.stderr.write('err'); process.exit(3)",
    );
    expect(await runner.run(file, args, { timeoutMs: 20_000, maxBytes: 1000 })).toEqual({
      exitCode: 3,
      stdout: "o".repeat(1000),
      stderr: "err",
    });
  });

  it("kills a program that runs past its deadline, and rejects one that cannot start", async () => {
    const [file, args] = node("setInterval(() => undefined, 1000)");
    await expect(runner.run(file, args, { timeoutMs: 200, maxBytes: 1000 })).rejects.toThrow(
      `${process.execPath} ran past its 200 ms limit and was killed`,
    );
    await expect(
      runner.run("/nonexistent/nvidia-smi", [], { timeoutMs: 1000, maxBytes: 1000 }),
    ).rejects.toMatchObject({ code: "ENOENT" });
  });
});
