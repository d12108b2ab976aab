import type { V1Job, V1Pod } from "@kubernetes/client-node" with { "resolution-mode": "import" };
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  jobEndOf,
  kubernetesOutcome,
  pendingProblem,
  runnerFromMessage,
} from "../../../../runtime/src/launch/kubernetes/kubernetes-launcher";
import { effectiveTier } from "../../../../runtime/src/launch/sandbox";

/** Pod and Job objects as the API server serves them (kubectl get -o json shape). */
function fixture<T>(name: string): T {
  return JSON.parse(
    readFileSync(join(__dirname, "../../../fixtures/kubernetes", `${name}.json`), "utf8"),
  ) as T;
}
const pod = (name: string) => fixture<V1Pod>(`pod-${name}`);
const job = (name: string) => fixture<V1Job>(`job-${name}`);

const prepared = { tier: effectiveTier("cpu-small").tier, timeoutSeconds: 30, image: "crucible/cpu:py3.13" };
const DIGEST = "sha256:3f1d0c9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c";
const outcome = (
  p: V1Pod | undefined,
  j: V1Job | undefined,
  stop?: Parameters<typeof kubernetesOutcome>[0]["stop"],
) => kubernetesOutcome({ pod: p, job: j, stop, prepared, graceSeconds: 10 });

describe("envelope fields from recorded pod states", () => {
  it("a completed pod: success with the runner's result, times and digest", () => {
    expect(outcome(pod("succeeded"), job("complete"))).toEqual({
      status: "success",
      result: { answer: 42 },
      exitCode: 0,
      executionTime: 5,
      resources: { peakMemoryBytes: 16203776, cpuSeconds: 0.146 },
      python: "3.13.5",
      imageDigest: DIGEST,
    });
  });

  it("an exception: the runner's error", () => {
    expect(outcome(pod("exception"), job("failed"))).toEqual({
      status: "error",
      reason: "exception",
      error: {
        type: "ValueError",
        message: "bad input",
        traceback:
          'Traceback (most recent call last):\n  File "/tmp/crucible/code/main.py", line 3, in main\nValueError: bad input\n',
      },
      exitCode: 1,
      executionTime: 5,
      resources: { peakMemoryBytes: 15000000, cpuSeconds: 0.1 },
      python: "3.13.5",
      imageDigest: DIGEST,
    });
  });

  it("OOMKilled: oom, whatever the exit code says", () => {
    expect(outcome(pod("oomkilled"), job("failed"))).toEqual({
      status: "error",
      reason: "oom",
      error: {
        type: "OutOfMemory",
        message: "the job used more than its 512 MiB memory limit (tier cpu-small) and was killed",
      },
      exitCode: 137,
      executionTime: 5,
      resources: {},
      imageDigest: DIGEST,
    });
  });

  it("the Job's DeadlineExceeded: timeout, with the pod's SIGTERM exit", () => {
    expect(outcome(pod("deadline-killed"), job("deadline-exceeded"))).toEqual({
      status: "error",
      reason: "timeout",
      error: {
        type: "Timeout",
        message: "the job ran past its 30 s limit (tier cpu-small); it got SIGTERM and 10 s before SIGKILL",
      },
      exitCode: 143,
      executionTime: 30,
      resources: {},
      imageDigest: DIGEST,
    });
  });

  it("DeadlineExceeded before the container started: timeout that says the wait counted", () => {
    expect(outcome(pod("unschedulable"), job("deadline-exceeded"))).toEqual({
      status: "error",
      reason: "timeout",
      error: {
        type: "Timeout",
        message:
          "the job did not start before its Job's deadline (tier cpu-small, a 30 s limit): its pod waited for a node, its image or its files until the cluster gave it up",
      },
      exitCode: null,
      executionTime: 0,
      resources: {},
    });
  });

  it("a nonzero exit without a termination message: exit_code", () => {
    expect(outcome(pod("exit-nonzero-no-message"), job("failed"))).toEqual({
      status: "error",
      reason: "exit_code",
      error: {
        type: "ExitCode",
        message: "the job exited with code 3; the container left no termination message",
      },
      exitCode: 3,
      executionTime: 5,
      resources: {},
      imageDigest: DIGEST,
    });
  });

  it("a termination message cut at 4 KiB: no result, and says why", () => {
    const p = pod("truncated-message");
    const message = p.status?.containerStatuses?.[0]?.state?.terminated?.message ?? "";
    expect(Buffer.byteLength(message)).toBe(4096);
    expect(outcome(p, job("complete"))).toEqual({
      status: "error",
      reason: "invalid_job",
      error: {
        type: "NoRunnerResult",
        message:
          "crucible/cpu:py3.13 exited without a usable /crucible/output/runner.json (runner.json was cut at the 4096 bytes Kubernetes keeps of a termination message); is it a Crucible job image?",
      },
      exitCode: 0,
      executionTime: 5,
      resources: {},
      imageDigest: DIGEST,
    });
  });

  it("a stop that reached the job: its reason, over the exit it caused", () => {
    expect(outcome(pod("deadline-killed"), undefined, { reason: "cancelled", graceSeconds: 3 })).toEqual({
      status: "error",
      reason: "cancelled",
      error: {
        type: "Stopped",
        message: "the job was stopped (cancelled); it got SIGTERM and 3 s to checkpoint before SIGKILL",
      },
      exitCode: 143,
      executionTime: 30,
      resources: {},
      imageDigest: DIGEST,
    });
  });
});

describe("why a pod has not started", () => {
  it("ImagePullBackOff: an image problem worth waiting on", () => {
    expect(pendingProblem(pod("image-pull-backoff"))).toEqual({
      kind: "image",
      reason: "ImagePullBackOff",
      message: 'Back-off pulling image "registry.example/nope:1"',
      hopeless: false,
    });
  });

  it("CreateContainerConfigError: hopeless at once", () => {
    expect(pendingProblem(pod("create-container-config-error"))).toEqual({
      kind: "config",
      reason: "CreateContainerConfigError",
      message:
        'container has runAsNonRoot and image will run as root (pod: "crucible-fx-job-1-a1b2c-x7k2p_crucible-dev(5e0c2d8b)", container: job)',
      hopeless: true,
    });
  });

  it("Unschedulable: the scheduler's message", () => {
    expect(pendingProblem(pod("unschedulable"))).toEqual({
      kind: "unschedulable",
      reason: "Unschedulable",
      message:
        "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.",
      hopeless: false,
    });
  });

  it("a running or finished pod has no problem", () => {
    expect(pendingProblem(pod("succeeded"))).toBeUndefined();
  });
});

describe("the Job's end", () => {
  it("reads Complete, Failed and DeadlineExceeded from the conditions", () => {
    expect(jobEndOf(job("complete"))).toEqual({ finished: true, deadlineExceeded: false });
    expect(jobEndOf(job("failed"))).toEqual({ finished: true, deadlineExceeded: false });
    expect(jobEndOf(job("deadline-exceeded"))).toEqual({ finished: true, deadlineExceeded: true });
    expect(jobEndOf(undefined)).toEqual({ finished: false, deadlineExceeded: false });
  });

  it("an empty termination message is no result", () => {
    expect(runnerFromMessage("")).toEqual({ problem: "the container left no termination message" });
  });
});
