import { describe, expect, it } from "vitest";
import type { Envelope } from "../../../runtime/src/job/contract";
import { admitJob, launchInput, redactSecrets } from "../../../runtime/src/job/job-request";
import { InvalidJobError } from "../../../runtime/src/job/job-spec";

const address = { project: "lab", user: "ada", jobId: "job-1" };
const arrival = { address, tier: "cpu-large", priority: "normal" } as const;

function refusal(raw: unknown): { field: string; message: string } {
  try {
    admitJob(raw, arrival);
  } catch (error) {
    if (error instanceof InvalidJobError) return { field: error.field, message: error.message };
    throw error;
  }
  throw new Error("admitted");
}

describe("admitJob: spec.json against the queue it arrived on", () => {
  it("admits what a submitter may choose, with the queue's tier and priority and the tier's timeout", () => {
    const job = admitJob(
      { jobId: "job-1", env: { SEED: "1" }, imageFamily: "ml-cpu", resumeFrom: "job-0", preemptible: false },
      arrival,
    );
    expect(job).toEqual({
      spec: {
        jobId: "job-1",
        env: { SEED: "1" },
        imageFamily: "ml-cpu",
        resumeFrom: "job-0",
        preemptible: false,
      },
      tier: "cpu-large",
      priority: "normal",
      timeoutSeconds: 600,
    });
    expect(
      launchInput(job, { jobId: "job-1", codeZip: "/s/code.zip", workspaceDir: "/s/workspace" }),
    ).toEqual({
      jobId: "job-1",
      code: "/s/code.zip",
      workspaceDir: "/s/workspace",
      tier: "cpu-large",
      env: { SEED: "1" },
      timeoutSeconds: 600,
      imageFamily: "ml-cpu",
    });
  });

  it.each([
    [
      { jobId: "job-1", datasetsDir: "/etc" },
      "datasetsDir",
      /^spec.json has unknown field\(s\) datasetsDir; known: jobId, tier, priority, env,/,
    ],
    [{ jobId: "job-1", image: "alpine" }, "image", /unknown field\(s\) image/],
    [{ jobId: "job-2" }, "jobId", /^jobId must be the job's own id job-1, got "job-2"$/],
    [{ jobId: "job-1", tier: "gpu-large" }, "tier", /^tier must be cpu-large, the tier of the queue/],
    [{ jobId: "job-1", priority: "high" }, "priority", /^priority must be normal, the class of the queue/],
    [
      { jobId: "job-1", timeoutSeconds: 601 },
      "timeoutSeconds",
      /^timeoutSeconds must be at most 600 for tier cpu-large, got 601$/,
    ],
    [
      { jobId: "job-1", imageFamily: "ml-cuda" },
      "imageFamily",
      /^imageFamily must be one of cpu, ml-cpu on tier cpu-large/,
    ],
    [
      { jobId: "job-1", resumeFrom: "../../bo/jobs/x" },
      "resumeFrom",
      /^resumeFrom must be 3-63 lowercase letters/,
    ],
    [{ jobId: "job-1", resumeFrom: "job-1" }, "resumeFrom", /^resumeFrom must name an earlier job/],
    [
      { jobId: "job-1", resumeStep: 1200 },
      "resumeStep",
      /^resumeStep 1200 needs resumeFrom, the earlier job whose checkpoint of that step to start from$/,
    ],
    [{ jobId: "job-1", resumeFrom: "job-0", resumeStep: -1 }, "resumeStep", /^resumeStep/],
    [[1, 2], "spec", /^spec.json must be a JSON object/],
  ])("refuses %j naming %s", (raw, field, message) => {
    const { field: named, message: text } = refusal(raw);
    expect(named).toBe(field);
    expect(text).toMatch(message);
  });

  it("never repeats an environment value back, even in the refusal", () => {
    const secret = "k".repeat(40_000);
    const { field, message } = refusal({ jobId: "job-1", env: { TOKEN: secret } });
    expect(field).toBe("env.TOKEN");
    expect(message).toBe(
      "env.TOKEN must be at most 32768 characters, got 40000 (the value is not shown: it may be a secret)",
    );
  });
});

describe("redactSecrets", () => {
  const envelope = {
    jobId: "job-1",
    status: "error",
    reason: "exception",
    error: { type: "RuntimeError", message: "bad token hunter22x", traceback: "at hunter22x" },
    exitCode: 1,
    executionTime: 1,
    timestamp: "2026-12-03T00:00:00Z",
    systemInfo: { jobId: "job-1", tier: "cpu-large", image: "i", node: "n" },
    resources: {},
    logs: { stdout: "hunter22x and 42", stderr: "hunter22xhunter22x", truncated: false },
  } satisfies Envelope;

  it("blanks every env value of six characters or more out of the logs and error", () => {
    expect(redactSecrets(envelope, { TOKEN: "hunter22x", N: "42" })).toMatchObject({
      error: { message: "bad token [redacted]", traceback: "at [redacted]" },
      logs: { stdout: "[redacted] and 42", stderr: "[redacted][redacted]" },
    });
  });
});
