import { describe, expect, it } from "vitest";
import type { JobQueue, ReceivedJob } from "../../../runtime/src/queue/job-queue";
import { PriorityQueues } from "../../../runtime/src/queue/priority-queues";
import type { Priority } from "../../../runtime/src/catalog/scheduling";
import { PRIORITIES } from "../../../runtime/src/catalog/scheduling";

/** A queue that always has work, recording which class each receive went to first and with what wait. */
function recordingQueues(
  nonEmpty: readonly Priority[],
  weights?: Record<Priority, number>,
  onReceive?: (priority: Priority, wait: number) => void,
): { queues: PriorityQueues; calls: [Priority, number][] } {
  const calls: [Priority, number][] = [];
  const make = (priority: Priority): JobQueue =>
    ({
      queueUrl: `https://sqs.example/${priority}`,
      priority,
      receive: (_max: number, wait: number) => {
        calls.push([priority, wait]);
        onReceive?.(priority, wait);
        const got = nonEmpty.includes(priority) ? [{ messageId: priority } as ReceivedJob] : [];
        return Promise.resolve(got);
      },
    }) as unknown as JobQueue;
  const byPriority = Object.fromEntries(PRIORITIES.map((p) => [p, make(p)])) as Record<Priority, JobQueue>;
  return { queues: new PriorityQueues(byPriority, weights), calls };
}

async function takeN(queues: PriorityQueues, n: number): Promise<string[]> {
  const taken: string[] = [];
  for (let i = 0; i < n; i++) taken.push(...(await queues.receive(1, 20)).map((m) => m.messageId));
  return taken;
}

describe("PriorityQueues", () => {
  it("leads with each class in proportion to its weight (6/3/1), interleaved rather than in bursts", async () => {
    const { queues } = recordingQueues(["high", "normal", "low"]);
    expect(await takeN(queues, 10)).toEqual([
      "high",
      "normal",
      "high",
      "high",
      "normal",
      "high",
      "low",
      "high",
      "normal",
      "high",
    ]);
  });

  it("falls through empty classes from the highest down, so low work is taken only when nothing above waits or on its turn", async () => {
    const { queues } = recordingQueues(["high", "low"]);
    const taken = await takeN(queues, 20);
    // Normal's turns (3 in 10) go to high, the next class down from the top; low keeps its 1 in 10.
    expect(taken.filter((p) => p === "low")).toHaveLength(2);
    expect(taken.filter((p) => p === "high")).toHaveLength(18);
  });

  it("looks at every class without waiting first, then long-polls each with the wait shared out", async () => {
    const { queues, calls } = recordingQueues([]);
    expect(await queues.receive(2, 20)).toEqual([]);
    expect(calls).toEqual([
      ["high", 0],
      ["normal", 0],
      ["low", 0],
      ["high", 7],
      ["normal", 7],
      ["low", 7],
    ]);
  });

  it("once stopped, lets the receive in flight end but polls no further class", async () => {
    const stop = new AbortController();
    const { queues, calls } = recordingQueues([], undefined, (priority, wait) => {
      if (priority === "high" && wait > 0) stop.abort();
    });
    expect(await queues.receive(2, 20, stop.signal)).toEqual([]);
    expect(calls).toEqual([
      ["high", 0],
      ["normal", 0],
      ["low", 0],
      ["high", 7],
    ]);
  });

  it("with one queue for every class (a platform without priority queues), long-polls it alone", async () => {
    const { queues: three, calls } = recordingQueues(["normal"]);
    const single = PriorityQueues.single(three.get("normal"));
    expect(single.queueUrls).toEqual(["https://sqs.example/normal"]);
    await single.receive(1, 20);
    expect(calls).toEqual([["normal", 20]]);
  });

  it("honours configured weights: equal weights take turns", async () => {
    const { queues } = recordingQueues(["high", "normal", "low"], { high: 1, normal: 1, low: 1 });
    expect(await takeN(queues, 6)).toEqual(["high", "normal", "low", "high", "normal", "low"]);
  });
});
