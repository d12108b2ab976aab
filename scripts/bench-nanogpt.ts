/**
 * `npm run bench:nanogpt -- [--config gpu] [--max-iters N] [--python python3 | --image IMAGE]`: trains the
 * nanogpt template outside the platform twice — as shipped (bf16 autocast, fused attention and
 * torch.compile on CUDA) and as a plain eager fp32 baseline (NANOGPT_FAST=0) — and prints ms/iteration,
 * tokens/s and the best validation loss of each, the speed-up over the baseline measured in the same run,
 * and, for the `gpu` config, the ratio to a widely used reference implementation of the same model
 * (about 13.6 ms/iteration and best validation loss near 1.46 on one H100 with torch.compile).
 *
 * With `--python` (default python3) it needs PyTorch there (a GPU machine); with `--image` it runs inside
 * a local image of the matrix (e.g. crucible/ml-cpu:torch2.6-py3.13) on the CPU.
 */
import { Command } from "commander";
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { z } from "zod";
import { numberFlag } from "./lib/flags";

const run = promisify(execFile);
const TEMPLATE = join(__dirname, "../runtime/templates/nanogpt");
const REFERENCE_GPU_MS_PER_ITER = 13.6;

const resultSchema = z.object({
  iterations: z.number(),
  best_val_loss: z.number(),
  ms_per_iter: z.number(),
  tokens_per_s: z.number().nullable(),
  device: z.string(),
  fast: z.boolean(),
});
type Result = z.infer<typeof resultSchema>;

interface Options {
  readonly config: string;
  readonly maxIters?: number;
  readonly python: string;
  readonly image?: string;
}

async function train(options: Options, fast: boolean): Promise<Result> {
  const scratch = await mkdtemp(join(tmpdir(), "crucible-bench-nanogpt-"));
  const env: Record<string, string> = {
    NANOGPT_CONFIG: options.config,
    NANOGPT_FAST: fast ? "1" : "0",
    ...(options.maxIters !== undefined && { NANOGPT_MAX_ITERS: String(options.maxIters) }),
  };
  try {
    const command = options.image
      ? {
          file: "docker",
          args: [
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python3",
            "-v",
            `${TEMPLATE}:/template:ro`,
            "-e",
            "CRUCIBLE_WORKSPACE=/tmp/workspace",
            ...Object.entries(env).flatMap(([k, v]) => ["-e", `${k}=${v}`]),
            options.image,
            "/template/main.py",
          ],
          env: process.env,
        }
      : {
          file: options.python,
          args: [join(TEMPLATE, "main.py")],
          env: { ...process.env, ...env, CRUCIBLE_WORKSPACE: scratch },
        };
    const { stdout } = await run(command.file, command.args, {
      env: command.env,
      maxBuffer: 64 * 1024 * 1024,
    });
    // The result is the last JSON object printed; progress lines come before it.
    const json = stdout.slice(stdout.lastIndexOf("\n{") + 1);
    return resultSchema.parse(JSON.parse(json));
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const opts = new Command("bench:nanogpt")
    .description("nanogpt as shipped against an eager fp32 baseline, measured in the same run")
    .option("--config <name>", "tiny, cpu or gpu", "gpu")
    .option(
      "--max-iters <n>",
      "iterations per run (default: the config's)",
      numberFlag("--max-iters", "a whole number above 0", (n) => Number.isInteger(n) && n > 0),
    )
    .option("--python <command>", "a Python with PyTorch", "python3")
    .option("--image <image>", "run inside this local image instead (CPU)")
    .parse()
    .opts<Options>();
  if (!["tiny", "cpu", "gpu"].includes(opts.config)) {
    throw new Error(`--config must be one of tiny, cpu, gpu, got "${opts.config}"`);
  }
  const fast = await train(opts, true);
  const baseline = await train(opts, false);
  const line = (label: string, r: Result) =>
    `  ${label.padEnd(34)} ${r.ms_per_iter.toFixed(2).padStart(9)} ms/iter ${String(
      r.tokens_per_s ?? "-",
    ).padStart(12)} tokens/s   best val loss ${r.best_val_loss.toFixed(4)}`;
  console.log(`nanogpt ${opts.config}, ${fast.iterations} iterations on ${fast.device}`);
  console.log(line("as shipped (compile, bf16 on CUDA)", fast));
  console.log(line("baseline (eager fp32)", baseline));
  console.log(`  speed-up over baseline = ${(baseline.ms_per_iter / fast.ms_per_iter).toFixed(2)}x`);
  if (opts.config === "gpu" && fast.device === "cuda") {
    console.log(
      `  ratio to the reference ${REFERENCE_GPU_MS_PER_ITER} ms/iter (H100) = ${(
        fast.ms_per_iter / REFERENCE_GPU_MS_PER_ITER
      ).toFixed(3)} (goal < 1.0 at best val loss <= 1.50: ${fast.best_val_loss <= 1.5 ? "met" : "not met"})`,
    );
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
});
