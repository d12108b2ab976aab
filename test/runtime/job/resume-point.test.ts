import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  parseResumeFlag,
  restoresFile,
  resumePointOf,
  resumeRefusal,
} from "../../../runtime/src/job/resume-point";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import type { JobAddress } from "../../../runtime/src/store/job-store";

describe("parseResumeFlag", () => {
  it.each([
    ["train-1", { jobId: "train-1" }],
    ["train-1@1200", { jobId: "train-1", step: 1200 }],
    ["train-1@0", { jobId: "train-1", step: 0 }],
  ])("%s", (text, parsed) => {
    expect(parseResumeFlag(text)).toEqual(parsed);
  });

  it.each([
    [
      "bob/train-1",
      '--resume-from must be the id of one of your own jobs, optionally with @STEP, got "bob/train-1" (jobs of other users cannot be resumed from)',
    ],
    [
      "train-1@",
      '--resume-from train-1@: the step after "@" must be a whole number such as train-1@1200, got ""',
    ],
    [
      "train-1@-5",
      '--resume-from train-1@-5: the step after "@" must be a whole number such as train-1@1200, got "-5"',
    ],
    [
      "train-1@1e3",
      '--resume-from train-1@1e3: the step after "@" must be a whole number such as train-1@1200, got "1e3"',
    ],
    [
      "@1200",
      '--resume-from must be the id of one of your own jobs, optionally with @STEP, got "@1200" (jobs of other users cannot be resumed from)',
    ],
  ])("refuses %j", (text, message) => {
    expect(() => parseResumeFlag(text)).toThrow(message);
  });
});

describe("restoresFile", () => {
  const from = { project: "lab", user: "ada", jobId: "train-1" };

  it("keeps every file without a step, and only that step's files with one", () => {
    const names = ["step-100/model.pt", "step-200/model.pt", "ckpt_000100.pt", "latest.pt"];
    expect(names.filter(restoresFile({ from }))).toEqual(names);
    expect(names.filter(restoresFile({ from, step: 100 }))).toEqual(["step-100/model.pt", "ckpt_000100.pt"]);
  });
});

describe("resumeRefusal", () => {
  let platform: LocalPlatform;
  let dir: string;
  let jobs = 0;
  beforeAll(async () => {
    platform = await startLocalPlatform({ tiers: ["cpu-small"], logger: pino({ level: "silent" }) });
    dir = await mkdtemp(join(tmpdir(), "crucible-resume-point-"));
  });
  afterAll(async () => {
    await platform?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** One of ada's jobs with these checkpoint files stored, as the agent stores them. */
  async function jobWith(names: readonly string[]): Promise<JobAddress> {
    const job = { project: "lab", user: "ada", jobId: `resume-${++jobs}` };
    const source = join(dir, job.jobId);
    for (const name of names) {
      await mkdir(dirname(join(source, name)), { recursive: true });
      await writeFile(join(source, name), name);
    }
    await platform.store.uploadDir(job, "checkpoints", source, new Map());
    return job;
  }

  it("allows a job with checkpoints, and a step it has", async () => {
    const job = await jobWith(["step-100/model.pt", "step-200/model.pt"]);
    expect(await resumeRefusal(platform.store, { from: job })).toBeUndefined();
    expect(await resumeRefusal(platform.store, { from: job, step: 200 })).toBeUndefined();
  });

  it("names a job without checkpoints, and lists the steps there are for a step it lacks", async () => {
    const none = { project: "lab", user: "ada", jobId: "never-ran" };
    expect(await resumeRefusal(platform.store, { from: none })).toBe(
      "job never-ran has no checkpoints in lab/ada",
    );
    const job = await jobWith([
      "step-200/model.pt",
      "step-100/model.pt",
      "step-100/optim.pt",
      "tokenizer.json",
    ]);
    expect(await resumeRefusal(platform.store, { from: job, step: 150 })).toBe(
      `job ${job.jobId} has no checkpoint at step 150; it has steps 100, 200`,
    );
  });

  it("says when no file names a step, and shortens a long list of steps", async () => {
    const unnamed = await jobWith(["model.pt"]);
    expect(await resumeRefusal(platform.store, { from: unnamed, step: 5 })).toBe(
      `job ${unnamed.jobId} has no checkpoint at step 5: none of its checkpoint files names a step; resume from ${unnamed.jobId} (its latest files) instead`,
    );
    const many = await jobWith(Array.from({ length: 20 }, (_, i) => `ckpt_${(i + 1) * 10}.pt`));
    expect(await resumeRefusal(platform.store, { from: many, step: 15 })).toBe(
      `job ${many.jobId} has no checkpoint at step 15; it has steps 10, 20, 30, 40, 50, … 160, 170, 180, 190, 200 (20 in all)`,
    );
  });

  it("builds the point from the owner's own address: another user's id stays in the owner's prefix", () => {
    const owner = { project: "lab", user: "ada", jobId: "new-job" };
    expect(resumePointOf(owner, "bobs-job", 7)).toEqual({
      from: { project: "lab", user: "ada", jobId: "bobs-job" },
      step: 7,
    });
    expect(resumePointOf(owner, "old-job", undefined)).toEqual({
      from: { project: "lab", user: "ada", jobId: "old-job" },
    });
  });
});
