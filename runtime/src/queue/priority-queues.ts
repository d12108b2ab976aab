import type { JobQueue, ReceivedJob } from "./job-queue";
import type { Priority } from "../catalog/scheduling";
import { DEFAULT_SCHEDULING, PRIORITIES } from "../catalog/scheduling";

/**
 * A tier's queues, one per priority class, read by weighted polling: each receive first looks at a class
 * picked by smooth weighted round robin (with weights 6/3/1, `high` leads 6 of every 10 receives, `low`
 * 1), then at the others from the highest down. So a backlog of high-priority work goes first, and low
 * still gets a turn every few receives instead of starving behind it.
 *
 * When every class is empty, all of them are long-polled at once, so a job queued on any class is taken
 * as soon as it arrives (long-polling one class after another left a job waiting out the other classes'
 * polls). A long poll is never abandoned: one whose receive has already returned (another class had work)
 * is carried into the next receive, and what it brings is handed out first, or released if no receive
 * asks within `holdMs`. Once the agent says it is {@link full}, what they bring is released at once
 * instead: a full agent will not ask, and a held job is invisible to every other agent and to preemption.
 * {@link drain} waits the polls out when the agent stops.
 */
export class PriorityQueues {
  private readonly credit = new Map<Priority, number>();
  /** Each distinct queue once, with the classes it serves (a one-queue platform serves all three). */
  private readonly distinct: readonly JobQueue[];
  /** Long polls in flight, one a queue at most. */
  private readonly inFlight = new Map<JobQueue, Promise<void>>();
  /** What polls brought that no receive has handed out yet. */
  private held: ReceivedJob[] = [];
  private holdTimer: NodeJS.Timeout | undefined;
  /** Why a poll failed, for the receive waiting on it. */
  private failure: Error | undefined;
  /** Wakes the receive waiting on the polls in flight. */
  private wake: (() => void) | undefined;
  /** Between {@link full} and the next receive: nothing a poll brings is held. */
  private noRoom = false;

  constructor(
    private readonly byPriority: Readonly<Record<Priority, JobQueue>>,
    private readonly weights: Readonly<Record<Priority, number>> = DEFAULT_SCHEDULING.weights,
    /** How long messages a carried poll brought wait for the next receive before they are released. */
    private readonly holdMs = 5000,
  ) {
    const seen = new Map<string, JobQueue>();
    for (const priority of PRIORITIES) {
      const queue = byPriority[priority];
      if (!seen.has(queue.queueUrl)) seen.set(queue.queueUrl, queue);
    }
    this.distinct = [...seen.values()];
  }

  /** One queue for every class: a platform without priority queues. */
  static single(queue: JobQueue): PriorityQueues {
    return new PriorityQueues({ high: queue, normal: queue, low: queue });
  }

  get(priority: Priority): JobQueue {
    return this.byPriority[priority];
  }

  get queueUrls(): string[] {
    return this.distinct.map((q) => q.queueUrl);
  }

  /**
   * Up to `max` jobs: first what an earlier receive's carried poll brought, else from the first class in
   * this turn's order that has any. A quick look at each class first (no wait), so waiting work is found
   * at once in weighted order; when all are empty, a long poll of every class at once for `waitSeconds`,
   * resolving as soon as one brings work, so an idle agent makes few requests and takes a new job as it
   * arrives. Once `stop` is aborted no further class is polled and no poll is waited for; the polls in
   * flight are left to end ({@link drain}), since an abandoned one still counts as a delivery towards the
   * dead-letter queue.
   */
  async receive(max: number, waitSeconds: number, stop?: AbortSignal): Promise<ReceivedJob[]> {
    this.noRoom = false;
    if (this.held.length > 0) return this.handOut(max);
    const order = this.nextOrder();
    if (order.length === 1) return order[0]!.receive(max, waitSeconds);
    for (const queue of order) {
      if (stop?.aborted) return [];
      if (this.inFlight.has(queue)) continue; // empty when it started, and it brings what arrives since
      const received = await queue.receive(max, 0);
      if (received.length > 0) return received;
    }
    if (this.held.length > 0) return this.handOut(max);
    if (stop?.aborted) return [];
    this.takeFailure();
    for (const queue of order) if (!this.inFlight.has(queue)) this.poll(queue, max, waitSeconds);
    const woken = new Promise<void>((resolve) => {
      this.wake = resolve;
      stop?.addEventListener("abort", this.wake, { once: true });
    });
    await woken;
    if (this.wake) stop?.removeEventListener("abort", this.wake);
    this.wake = undefined;
    const failure = this.takeFailure();
    if (this.held.length === 0 && failure) throw failure;
    return this.handOut(max);
  }

  /**
   * The agent has no free slot, so no receive comes until a job ends: what polls still in flight bring
   * goes back to its queue at once, for another agent (or this one's preemption) to see.
   */
  full(): void {
    this.noRoom = true;
    this.releaseHeld();
  }

  /** Waits out the polls in flight and releases what they and earlier ones brought (the agent is stopping). */
  async drain(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.all(this.inFlight.values());
    this.releaseHeld();
  }

  private poll(queue: JobQueue, max: number, waitSeconds: number): void {
    const polling = queue
      .receive(max, waitSeconds)
      .then(
        (received) => {
          this.held.push(...received);
        },
        (error: unknown) => {
          this.failure = error instanceof Error ? error : new Error(String(error));
        },
      )
      .finally(() => {
        this.inFlight.delete(queue);
        if (this.held.length === 0 && this.inFlight.size > 0 && this.failure === undefined) return;
        if (this.wake) this.wake();
        else if (this.noRoom) this.releaseHeld();
        else if (this.held.length > 0 && !this.holdTimer) {
          this.holdTimer = setTimeout(() => this.releaseHeld(), this.holdMs);
          this.holdTimer.unref();
        }
      });
    this.inFlight.set(queue, polling);
  }

  /** Up to `max` of the held messages, highest class first; the rest go back to their queues at once. */
  private handOut(max: number): ReceivedJob[] {
    const rank = (m: ReceivedJob): number => PRIORITIES.indexOf(m.queue.priority);
    const sorted = [...this.held].sort((a, b) => rank(a) - rank(b));
    this.held = sorted.slice(max);
    this.releaseHeld();
    return sorted.slice(0, max);
  }

  private takeFailure(): Error | undefined {
    const failure = this.failure;
    this.failure = undefined;
    return failure;
  }

  private releaseHeld(): void {
    clearTimeout(this.holdTimer);
    this.holdTimer = undefined;
    const held = this.held;
    this.held = [];
    for (const m of held) void m.queue.release(m.receiptHandle).catch(() => undefined);
  }

  /** Smooth weighted round robin over the distinct queues: the turn's lead, then the rest highest first. */
  private nextOrder(): JobQueue[] {
    if (this.distinct.length === 1) return [...this.distinct];
    const classes = PRIORITIES.filter((p) => this.distinct.includes(this.byPriority[p]));
    const total = classes.reduce((sum, p) => sum + this.weights[p], 0);
    let lead = classes[0]!;
    for (const p of classes) {
      this.credit.set(p, (this.credit.get(p) ?? 0) + this.weights[p]);
      if (this.credit.get(p)! > this.credit.get(lead)!) lead = p;
    }
    this.credit.set(lead, this.credit.get(lead)! - total);
    const first = this.byPriority[lead];
    return [first, ...this.distinct.filter((q) => q !== first)];
  }
}
