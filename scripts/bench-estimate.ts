/**
 * `npm run bench:estimate -- [--repeats N] [--iters N]`: how close `crucible estimate` comes to the run it
 * predicts. Each repeat estimates the nanogpt template (tiny config, cpu-large) and then runs it through
 * `crucible run` in the same sandbox, and prints the estimated and measured seconds and their ratio; the
 * summary is the median ratio and its spread. The run measured right after its own estimate is the
 * baseline, so a machine's load shows up in both. Needs Docker and the ml-cpu image (npm test builds it).
 */
import { Command } from "commander";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { z } from "zod";
import { envelopeSchema } from "../runtime/src/job/contract";
import { numberFlag } from "./lib/flags";

const run = promisify(execFile);
const CLI = join(__dirname, "../runtime/src/cli/bin/crucible.ts");
const TEMPLATE = join(__dirname, "../runtime/templates/nanogpt");
const JOB = [TEMPLATE, "--tier", "cpu-large", "--env", "NANOGPT_CONFIG=tiny"];

async function crucible(args: readonly string[]): Promise<unknown> {
  const { stdout } = await run(process.execPath, ["--import", "tsx", CLI, ...args, "--json"], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(stdout) as unknown;
}

const wholePositive = (flag: string) =>
  numberFlag(flag, "a whole number > 0", (n) => Number.isInteger(n) && n > 0);

const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

async function main(): Promise<void> {
  const opts = new Command("bench-estimate")
    .option("--repeats <n>", "estimate-and-run pairs", wholePositive("--repeats"), 3)
    .option("--iters <n>", "training iterations of each run", wholePositive("--iters"), 150)
    .parse()
    .opts<{ repeats: number; iters: number }>();
  const ratios: number[] = [];
  console.log(`nanogpt tiny on cpu-large, ${opts.iters} iterations, ${opts.repeats} repeats`);
  for (let i = 1; i <= opts.repeats; i++) {
    const estimate = z
      .object({ seconds: z.number() })
      .parse(await crucible(["estimate", ...JOB, "--iters", String(opts.iters)]));
    const workspace = await mkdtemp(join(tmpdir(), "crucible-bench-estimate-"));
    try {
      const envelope = envelopeSchema.parse(
        await crucible(["run", ...JOB, "--env", `NANOGPT_MAX_ITERS=${opts.iters}`, "--workspace", workspace]),
      );
      if (envelope.status !== "success")
        throw new Error(`run ${i} failed: ${JSON.stringify(envelope.error)}`);
      const ratio = estimate.seconds / envelope.executionTime;
      ratios.push(ratio);
      console.log(
        `  ${i}: estimated ${estimate.seconds.toFixed(1)} s, ran ${envelope.executionTime.toFixed(1)} s, ratio ${ratio.toFixed(3)}`,
      );
    } finally {
      await rm(workspace, { recursive: true, force: true });
    }
  }
  console.log(
    `estimate/run: median ${median(ratios).toFixed(3)}, range ${Math.min(...ratios).toFixed(3)}-${Math.max(...ratios).toFixed(3)} (1.0 is exact)`,
  );
}

main().catch((error: unknown) => {
  console.error(`bench-estimate: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
