import { describe, expect, it } from "vitest";
import type { CommandResult, CommandRunner } from "../../../../runtime/src/node/gpu/run-process";
import { nvidiaSmiUsage } from "../../../../runtime/src/node/gpu/gpu-usage";
import { settle } from "./fakes";

/** A runner answering every command with `answer`, recording what it was asked. */
function runner(answer: CommandResult | Error): CommandRunner & { calls: string[][] } {
  const calls: string[][] = [];
  return {
    calls,
    run: (file, args) => {
      calls.push([file, ...args]);
      return settle(answer);
    },
  };
}

const ok = (stdout: string): CommandResult => ({ exitCode: 0, stdout, stderr: "" });

describe("nvidiaSmiUsage", () => {
  it("asks nvidia-smi for utilisation and memory in use, and averages and sums them over the GPUs", async () => {
    const commands = runner(ok("0, NVIDIA A10G, 90, 10000\n1, NVIDIA A10G, 40, 2000\n"));
    expect(await nvidiaSmiUsage(commands)()).toEqual({ utilPercent: 65, memoryMiB: 12000 });
    expect(commands.calls).toEqual([
      ["nvidia-smi", "--query-gpu=index,name,utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
    ]);
  });

  it("leaves out a GPU that does not report both numbers", async () => {
    const commands = runner(ok("0, Tesla T4, [N/A], 300\n1, Tesla T4, 12, 500\n"));
    expect(await nvidiaSmiUsage(commands)()).toEqual({ utilPercent: 12, memoryMiB: 500 });
  });

  it("has no sample when nvidia-smi fails, cannot run or finds no GPU", async () => {
    const failing = { exitCode: 9, stdout: "", stderr: "No devices were found" };
    expect(await nvidiaSmiUsage(runner(failing))()).toBeUndefined();
    expect(await nvidiaSmiUsage(runner(new Error("spawn nvidia-smi ENOENT")))()).toBeUndefined();
    expect(await nvidiaSmiUsage(runner(ok("")))()).toBeUndefined();
  });
});
