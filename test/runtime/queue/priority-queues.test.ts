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

/** Queues that are empty at a quick look and whose long polls end only when the test says. */
function longPollingQueues(holdMs?: number): {
  queues: PriorityQueues;
  calls: [Priority, number][];
  arrive: (priority: Priority, messageId?: string) => void;
  fail: (priority: Priority, error: Error) => void;
  released: string[];
} {
  const calls: [Priority, number][] = [];
  const released: string[] = [];
  const polls = new Map<Priority, { resolve: (m: ReceivedJob[]) => void; reject: (e: Error) => void }>();
  const queuesBy = {} as Record<Priority, JobQueue>;
  for (const priority of PRIORITIES) {
    queuesBy[priority] = {
      queueUrl: `https://sqs.example/${priority}`,
      priority,
      receive: (_max: number, wait: number) => {
        calls.push([priority, wait]);
        if (wait === 0) return Promise.resolve([]);
        return new Promise<ReceivedJob[]>((resolve, reject) => polls.set(priority, { resolve, reject }));
      },
      release: (handle: string) => {
        released.push(handle);
        return Promise.resolve();
      },
    } as unknown as JobQueue;
  }
  const settle = (
    priority: Priority,
  ): { resolve: (m: ReceivedJob[]) => void; reject: (e: Error) => void } => {
    const poll = polls.get(priority);
    if (!poll) throw new Error(`no long poll of ${priority} in flight`);
    polls.delete(priority);
    return poll;
  };
  return {
    queues: new PriorityQueues(queuesBy, undefined, holdMs),
    calls,
    released,
    arrive: (priority, messageId) =>
      settle(priority).resolve(
        messageId === undefined
          ? []
          : [{ messageId, receiptHandle: messageId, queue: queuesBy[priority] } as unknown as ReceivedJob],
      ),
    fail: (priority, error) => settle(priority).reject(error),
  };
}

/** Waits, turn by turn of the event loop, until `condition` holds (at most a second). */
async function until(condition: () => boolean): Promise<void> {
  const deadline = Date.now() + 1000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await new Promise((resolve) => setImmediate(resolve));
  }
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

  it("looks at every class without waiting first, then long-polls all of them at once with the whole wait", async () => {
    const { queues, calls } = recordingQueues([]);
    expect(await queues.receive(2, 20)).toEqual([]);
    expect(calls).toEqual([
      ["high", 0],
      ["normal", 0],
      ["low", 0],
      ["high", 20],
      ["normal", 20],
      ["low", 20],
    ]);
  });

  it("once stopped, polls no further class and returns without waiting out the polls in flight", async () => {
    const stop = new AbortController();
    const { queues, calls, arrive } = longPollingQueues();
    const receiving = queues.receive(2, 20, stop.signal);
    await until(() => calls.length === 6);
    stop.abort();
    expect(await receiving).toEqual([]);
    expect(await queues.receive(2, 20, stop.signal)).toEqual([]);
    expect(calls).toHaveLength(6);
    for (const p of PRIORITIES) arrive(p);
    await queues.drain();
  });

  it("takes a job on a lower class as it arrives, while the other classes' long polls still wait", async () => {
    const { queues, calls, arrive } = longPollingQueues();
    const receiving = queues.receive(1, 20);
    await until(() => calls.length === 6);
    arrive("low", "job");
    expect((await receiving).map((m) => m.messageId)).toEqual(["job"]);
  });

  it("carries the polls in flight into the next receive, hands out what they bring first, and polls no class twice", async () => {
    const { queues, calls, arrive, released } = longPollingQueues();
    const first = queues.receive(1, 20);
    await until(() => calls.length === 6);
    arrive("normal", "n1");
    expect((await first).map((m) => m.messageId)).toEqual(["n1"]);
    const second = queues.receive(1, 20);
    await until(() => calls.length === 8);
    // Only normal is looked at and polled again: high and low still have their first polls in flight.
    expect(calls.slice(6)).toEqual([
      ["normal", 0],
      ["normal", 20],
    ]);
    arrive("high", "h1");
    expect((await second).map((m) => m.messageId)).toEqual(["h1"]);
    expect(released).toEqual([]);
    arrive("low", "l1");
    arrive("normal", "n2");
    await Promise.resolve();
    // Both came while no receive asked: the next hands out the higher class and releases the other.
    expect((await queues.receive(1, 20)).map((m) => m.messageId)).toEqual(["n2"]);
    expect(released).toEqual(["l1"]);
  });

  it("releases what a carried poll brings when no receive asks for it in time (the agent is full)", async () => {
    const { queues, calls, arrive, released } = longPollingQueues(10);
    const first = queues.receive(1, 20);
    await until(() => calls.length === 6);
    arrive("high", "h1");
    await first;
    arrive("low", "l1");
    await until(() => released.length === 1);
    expect(released).toEqual(["l1"]);
  });

  it("once told the agent is full, releases what it holds and what carried polls bring at once, until the next receive", async () => {
    const { queues, calls, arrive, released } = longPollingQueues(60_000);
    const first = queues.receive(1, 20);
    await until(() => calls.length === 6);
    arrive("low", "l1");
    await first;
    arrive("normal", "n1");
    await Promise.resolve();
    expect(released).toEqual([]);
    queues.full();
    expect(released).toEqual(["n1"]);
    arrive("high", "h1");
    await until(() => released.length === 2);
    expect(released).toEqual(["n1", "h1"]);
    // A receive means a free slot again: what its polls bring is handed out, not released.
    const second = queues.receive(1, 20);
    await until(() => calls.length === 12);
    arrive("high", "h2");
    expect((await second).map((m) => m.messageId)).toEqual(["h2"]);
    expect(released).toEqual(["n1", "h1"]);
  });

  it("drain waits out the polls in flight and releases what they bring", async () => {
    const { queues, calls, arrive, released } = longPollingQueues();
    const first = queues.receive(1, 20);
    await until(() => calls.length === 6);
    arrive("normal", "n1");
    await first;
    let drained = false;
    const draining = queues.drain().then(() => (drained = true));
    await Promise.resolve();
    expect(drained).toBe(false);
    arrive("high", "h1");
    arrive("low");
    await draining;
    expect(released).toEqual(["h1"]);
  });

  it("fails a receive whose poll fails, and polls that class afresh on the next", async () => {
    const { queues, calls, arrive, fail } = longPollingQueues();
    const first = queues.receive(1, 20);
    await until(() => calls.length === 6);
    fail("normal", new Error("normal down"));
    await expect(first).rejects.toThrow("normal down");
    const second = queues.receive(1, 20);
    await until(() => calls.length === 8);
    expect(calls.slice(6)).toEqual([
      ["normal", 0],
      ["normal", 20],
    ]);
    arrive("normal", "n1");
    expect((await second).map((m) => m.messageId)).toEqual(["n1"]);
    arrive("high");
    arrive("low");
    await queues.drain();
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
