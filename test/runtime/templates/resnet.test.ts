import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Envelope } from "../../../runtime/src/job/contract";
import { envelopeSchema, PROGRESS_PREFIX } from "../../../runtime/src/job/contract";
import { imageRef } from "../../../runtime/src/catalog/image-matrix";
import { crucible } from "../../support/cli";

const TEMPLATE = join(__dirname, "../../../runtime/templates/resnet");
const ENV = ["--env", "RESNET_CONFIG=tiny"];
/** The tiny config's length (runtime/templates/resnet/main.py). */
const STEPS = 300;

interface Trained {
  readonly steps: number;
  readonly resumed_from: number | null;
  readonly final_loss: number;
  readonly val_loss: number;
  readonly val_accuracy: number;
  readonly best_val_accuracy: number;
  readonly loss_curve: [number, number][];
  readonly evaluations: [number, number, number][];
}

interface Reported {
  readonly step?: number;
  readonly loss?: number;
  readonly val_accuracy?: number;
}

let root: string;

/** What the job reported through the progress protocol so far. */
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
  root = await mkdtemp(join(tmpdir(), "crucible-resnet-test-"));
});

afterAll(() => rm(root, { recursive: true, force: true }));

describe("the resnet template in the ml-cpu image, through crucible run", () => {
  it("is estimated from a short calibration run", async () => {
    const estimated = await crucible(["estimate", TEMPLATE, "--tier", "cpu-large", ...ENV, "--json"]);
    expect(estimated.code, estimated.stderr).toBe(0);
    const estimate = JSON.parse(estimated.stdout) as { steps: number; seconds: number; costUsd: number };
    // The job reports its total, so no --iters is needed.
    expect(estimate.steps).toBe(STEPS);
    expect(estimate.seconds).toBeGreaterThan(0);
    expect(estimate.costUsd).toBeGreaterThan(0);
  }, 300_000);

  it("checkpoints on Ctrl-C, resumes from it, and the loss falls as its README says", async () => {
    const workspace = join(root, "resumed");
    let stoppedAfter = 0;
    const first = await crucible(
      ["run", TEMPLATE, "--tier", "cpu-large", "--workspace", workspace, "--grace", "20", ...ENV],
      (out, child) => {
        // Past the first periodic checkpoint (every 50), so the one SIGTERM writes is a later one.
        if (stoppedAfter === 0 && lastStep(out) >= 70) {
          stoppedAfter = lastStep(out);
          child.kill("SIGINT");
        }
      },
    );
    expect(first.code, first.stderr).toBe(130);
    const savedAt = Number(/SIGTERM: checkpoint saved at step (\d+)/.exec(first.stdout)?.[1]);
    expect(savedAt).toBeGreaterThanOrEqual(stoppedAfter);
    expect(savedAt).toBeLessThan(STEPS);
    expect(await readdir(join(workspace, "checkpoints"))).toContain("latest.pt");
    // README: the training loss starts near ln 10 = 2.3 (ten classes, label smoothing 0.1)...
    const firstLoss = reports(first.stdout).find((r) => r.loss !== undefined)!;
    expect(firstLoss.step).toBe(10);
    expect(firstLoss.loss).toBeGreaterThan(1.6);

    const second = await crucible([
      "run",
      TEMPLATE,
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
    const resumed = envelope.result as Trained;
    expect(resumed.resumed_from).toBe(savedAt);
    expect(resumed.steps).toBe(STEPS);
    expect(resumed.loss_curve[0]![0]).toBeGreaterThan(savedAt);
    // ...and falls below 1.1 (one augmented batch, label smoothing keeps it above ~0.5); validation loss
    // ends below 0.5 and accuracy above 90 %.
    expect(resumed.final_loss).toBeLessThan(1.1);
    expect(resumed.val_loss).toBeLessThan(0.5);
    expect(resumed.val_accuracy).toBeGreaterThan(0.9);
    expect(envelope.metrics).toMatchObject({ loss: resumed.final_loss, val_accuracy: resumed.val_accuracy });
  }, 600_000);
});
