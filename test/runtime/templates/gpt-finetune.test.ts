import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Envelope } from "../../../runtime/src/job/contract";
import { envelopeSchema, PROGRESS_PREFIX } from "../../../runtime/src/job/contract";
import { imageRef } from "../../../runtime/src/catalog/image-matrix";
import { crucible } from "../../support/cli";

const TEMPLATES = join(__dirname, "../../../runtime/templates");
const FINETUNE = join(TEMPLATES, "gpt-finetune");
const ENV = ["--env", "FINETUNE_CONFIG=tiny"];
/** The tiny config's length (runtime/templates/gpt-finetune/main.py). */
const ITERS = 150;
/** The base: nanogpt's tiny config, shortened. */
const BASE_ITERS = 100;

interface FineTuned {
  readonly iterations: number;
  readonly resumed_from: number | null;
  readonly base: { file: string; iter: number; reused: number; tokens_from_characters: number } | null;
  readonly vocab_size: number;
  readonly final_loss: number;
  readonly final_val_loss: number;
  readonly loss_curve: [number, number][];
  readonly sample: string;
}

interface Reported {
  readonly step?: number;
  readonly loss?: number;
  readonly val_loss?: number;
}

let root: string;

function reports(stdout: string): Reported[] {
  return stdout
    .split("\n")
    .filter((line) => line.startsWith(PROGRESS_PREFIX))
    .map((line) => JSON.parse(line.slice(PROGRESS_PREFIX.length)) as Reported);
}

const lastStep = (stdout: string): number => Math.max(0, ...reports(stdout).map((r) => r.step ?? 0));

function envelopeOf(stdout: string): Envelope {
  return envelopeSchema.parse(JSON.parse(stdout));
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-finetune-test-"));
});

afterAll(() => rm(root, { recursive: true, force: true }));

describe("the gpt-finetune template in the ml-cpu image, through crucible run", () => {
  it("is estimated from a short calibration run", async () => {
    const estimated = await crucible(["estimate", FINETUNE, "--tier", "cpu-large", ...ENV, "--json"]);
    expect(estimated.code, estimated.stderr).toBe(0);
    const estimate = JSON.parse(estimated.stdout) as { steps: number; seconds: number };
    expect(estimate.steps).toBe(ITERS);
    expect(estimate.seconds).toBeGreaterThan(0);
  }, 300_000);

  it("fine-tunes nanogpt's checkpoint, checkpoints on Ctrl-C, resumes, and the loss falls as its README says", async () => {
    // nanogpt's checkpoint lands in the workspace's checkpoints/, where --resume-from would put it too.
    const workspace = join(root, "chain");
    const base = await crucible([
      "run",
      join(TEMPLATES, "nanogpt"),
      "--tier",
      "cpu-large",
      "--workspace",
      workspace,
      "--env",
      "NANOGPT_CONFIG=tiny",
      "--env",
      `NANOGPT_MAX_ITERS=${BASE_ITERS}`,
      "--json",
    ]);
    expect(base.code, base.stderr).toBe(0);
    expect(await readdir(join(workspace, "checkpoints"))).toEqual(["latest.pt"]);

    let stoppedAfter = 0;
    const first = await crucible(
      ["run", FINETUNE, "--tier", "cpu-large", "--workspace", workspace, "--grace", "20", ...ENV],
      (out, child) => {
        // Past the first periodic checkpoint (every 50), so the one SIGTERM writes is a later one.
        if (stoppedAfter === 0 && lastStep(out) >= 70) {
          stoppedAfter = lastStep(out);
          child.kill("SIGINT");
        }
      },
    );
    expect(first.code, first.stderr).toBe(130);
    expect(first.stdout).toContain(`fine-tuning latest.pt (nanogpt, iteration ${BASE_ITERS})`);
    const savedAt = Number(/SIGTERM: checkpoint saved at iteration (\d+)/.exec(first.stdout)?.[1]);
    expect(savedAt).toBeGreaterThanOrEqual(stoppedAfter);
    expect(savedAt).toBeLessThan(ITERS);
    expect((await readdir(join(workspace, "checkpoints"))).sort()).toEqual(["finetune.pt", "latest.pt"]);
    // README: from the base, validation loss starts well below ln 513 = 6.24, an untrained model's...
    const start = reports(first.stdout).find((r) => r.step === 0)!;
    expect(start.val_loss).toBeLessThan(6.0);

    const second = await crucible([
      "run",
      FINETUNE,
      "--tier",
      "cpu-large",
      "--workspace",
      workspace,
      ...ENV,
      "--json",
    ]);
    expect(second.code, second.stderr).toBe(0);
    const envelope = envelopeOf(second.stdout);
    expect(envelope.systemInfo.image).toBe(imageRef("ml-cpu"));
    const tuned = envelope.result as FineTuned;
    expect(tuned.resumed_from).toBe(savedAt);
    expect(tuned.iterations).toBe(ITERS);
    expect(tuned.loss_curve[0]![0]).toBeGreaterThan(savedAt);
    // The base is recorded in the fine-tune's own checkpoint, so the resumed run still names it.
    expect(tuned.base).toMatchObject({ file: "latest.pt", iter: BASE_ITERS });
    expect(tuned.base!.reused).toBeGreaterThan(0);
    expect(tuned.vocab_size).toBe(513);
    // ...and falls below 4.6 in the tiny config's 150 iterations.
    expect(tuned.final_val_loss).toBeLessThan(4.6);
    expect(tuned.final_val_loss).toBeLessThan(start.val_loss! - 0.8);
    expect(tuned.sample.startsWith("ROMEO:\n")).toBe(true);
    expect(envelope.metrics).toMatchObject({ loss: tuned.final_loss, val_loss: tuned.final_val_loss });
  }, 600_000);
});
