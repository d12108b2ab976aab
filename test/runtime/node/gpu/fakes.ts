import { readFileSync } from "node:fs";
import { join } from "node:path";
import pino from "pino";
import type { ProbeFacts } from "../../../../runtime/src/node/gpu/probe";

/** What the GPU health tests share: a silent logger, the nvidia-smi fixtures, fakes' answers. */
export const logger = pino({ level: "silent" });
export const fixture = (name: string): string =>
  readFileSync(join(__dirname, "../../../fixtures/nvidia-smi", name), "utf8");

/** A fake's answer: resolves with a value, rejects with an error. */
export const settle = <T>(answer: T | Error): Promise<T> =>
  answer instanceof Error ? Promise.reject(answer) : Promise.resolve(answer);

/** What the probe measures on `count` healthy GPUs in the matrix's ml-cuda image. */
export const goodProbe = (name: string, count = 1): ProbeFacts => ({
  torch: "2.6.0+cu126",
  torchCuda: "12.6",
  cudaAvailable: true,
  devices: Array.from({ length: count }, () => ({ name, maxRelativeError: 3.1e-7 })),
});
