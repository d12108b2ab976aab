import type { JobQueue, ReceivedJob } from "./job-queue";
import type { Priority } from "../catalog/scheduling";
import { DEFAULT_SCHEDULING, PRIORITIES } from "../catalog/scheduling";

/**
 * A tier's queues, one per priority class, read by weighted polling: each receive first looks at a class
 * picked by smooth weighted round robin (with weights 6/3/1, `high` leads 6 of every 10 receives, `low`
 * 1), then at the others from the highest down. So a backlog of high-priority work goes first, and low
 * still gets a turn every few receives instead of starving behind it.
 */
export class PriorityQueues {
  private readonly credit = new Map<Priority, number>();
  /** Each distinct queue once, with the classes it serves (a one-queue platform serves all three). */
  private readonly distinct: readonly JobQueue[];

  constructor(
    private readonly byPriority: Readonly<Record<Priority, JobQueue>>,
    private readonly weights: Readonly<Record<Priority, number>> = DEFAULT_SCHEDULING.weights,
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
   * Up to `max` jobs from the first class in this turn's order that has any. A quick look at each class
   * first (no wait), so waiting work is found at once; when all are empty, a long poll of each in turn
   * with the wait shared out, so an idle agent still makes few requests and notices new work within
   * `waitSeconds`. Once `stop` is aborted no further class is polled; the receive in flight is left to
   * end, since an abandoned one still counts as a delivery towards the dead-letter queue.
   */
  async receive(max: number, waitSeconds: number, stop?: AbortSignal): Promise<ReceivedJob[]> {
    const order = this.nextOrder();
    if (order.length === 1) return order[0]!.receive(max, waitSeconds);
    for (const queue of order) {
      if (stop?.aborted) return [];
      const received = await queue.receive(max, 0);
      if (received.length > 0) return received;
    }
    const share = Math.max(1, Math.ceil(waitSeconds / order.length));
    for (const queue of order) {
      if (stop?.aborted) return [];
      const received = await queue.receive(max, share);
      if (received.length > 0) return received;
    }
    return [];
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
