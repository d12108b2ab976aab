import {
  AutoScalingClient,
  DescribeAutoScalingGroupsCommand,
  SetDesiredCapacityCommand,
} from "@aws-sdk/client-auto-scaling";
import { GetQueueAttributesCommand, SQSClient } from "@aws-sdk/client-sqs";

/**
 * The fast scale-out path: a Lambda the workspaces bucket invokes when a job's `spec.json` is written
 * (`crucible submit` writes it just before it sends the job's message), which raises each tier's group
 * to the nodes its queued and running jobs need, in seconds rather than the minutes the queue-depth
 * metrics and target tracking take. Target tracking stays the authoritative path, and the only one that
 * scales in: this one only ever raises a group, never past its maximum, and only to what the queues
 * show.
 *
 * Researchers write the objects that trigger it, so it reads nothing of the event: not the object, not
 * its key. The event only says "look now"; what it does follows from the queues' depth and the groups'
 * sizes alone, which it reads itself. A burst of events therefore asks for the same need over and over,
 * and the need is set once: {@link raiseToNeed} calls SetDesiredCapacity only when the need is above the
 * desired capacity it has just read, and invocations run one at a time (reserved concurrency 1, and
 * {@link serialized} within an execution environment), so no two read the same size and both raise it.
 *
 * This file is the Lambda's code as deployed (infra/fleet/fast-scale.ts transpiles it on its own,
 * unbundled), so it imports nothing but the AWS SDK that the nodejs20.x runtime provides.
 */

/** The Lambda's environment variable: {@link FastScaleSettings} as JSON. */
export const FAST_SCALE_ENV = "CRUCIBLE_FAST_SCALE";

/** One tier's group and what sizes it. */
export interface ScaledGroup {
  readonly tier: string;
  readonly asgName: string;
  /** Every priority queue of the tier: their waiting and running jobs all need a slot on a node. */
  readonly queueUrls: readonly string[];
  /** Jobs one node takes (infra/fleet/fast-scale.ts `fastScaleJobsPerNode`); may be fractional. */
  readonly jobsPerNode: number;
}

export interface FastScaleSettings {
  readonly groups: readonly ScaledGroup[];
  /**
   * Seconds before a second look. The event can arrive before the job's message is counted (the submitter
   * sends it after `spec.json`, and SQS's counts are approximate), so a look that finds nothing to do looks
   * once more after this. 0: one look.
   */
  readonly settleSeconds: number;
}

/** Nodes that `jobs` waiting and running jobs need, never more than the group's maximum. */
export function needOf(jobs: number, jobsPerNode: number, maxSize: number): number {
  return Math.max(0, Math.min(maxSize, Math.ceil(jobs / jobsPerNode)));
}

/** What one look did to one group. */
export interface GroupStep {
  readonly tier: string;
  readonly asgName: string;
  readonly outcome: "raised" | "met" | "missing" | "failed";
  /** Visible plus in-flight messages over the tier's queues. */
  readonly jobs?: number;
  readonly need?: number;
  readonly desired?: number;
  readonly maxSize?: number;
  readonly error?: string;
}

export interface FastScaleClients {
  readonly sqs: Pick<SQSClient, "send">;
  readonly autoscaling: Pick<AutoScalingClient, "send">;
}

/** Waiting (visible) and running (in flight: the agent holds a running job's message) over the queues. */
async function jobsIn(sqs: FastScaleClients["sqs"], queueUrls: readonly string[]): Promise<number> {
  const counts = await Promise.all(
    queueUrls.map(async (QueueUrl) => {
      const { Attributes: a = {} } = await sqs.send(
        new GetQueueAttributesCommand({
          QueueUrl,
          AttributeNames: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        }),
      );
      return (
        Number(a.ApproximateNumberOfMessages ?? 0) + Number(a.ApproximateNumberOfMessagesNotVisible ?? 0)
      );
    }),
  );
  return counts.reduce((sum, n) => sum + n, 0);
}

/**
 * One look: every tier's jobs and every group's size, then SetDesiredCapacity (HonorCooldown false: a
 * scale-out must not wait for the last one's cooldown) on each group whose need is above its desired
 * capacity. A group at or above its need is left alone: this path never lowers a group.
 */
export async function raiseToNeed(
  clients: FastScaleClients,
  groups: readonly ScaledGroup[],
): Promise<GroupStep[]> {
  if (groups.length === 0) return [];
  const [jobs, described] = await Promise.all([
    Promise.all(groups.map((g) => jobsIn(clients.sqs, g.queueUrls))),
    clients.autoscaling.send(
      new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: groups.map((g) => g.asgName) }),
    ),
  ]);
  const steps: GroupStep[] = [];
  for (const [i, group] of groups.entries()) {
    const { tier, asgName } = group;
    const found = described.AutoScalingGroups?.find((g) => g.AutoScalingGroupName === asgName);
    if (!found || found.DesiredCapacity === undefined || found.MaxSize === undefined) {
      steps.push({ tier, asgName, outcome: "missing" });
      continue;
    }
    const sizes = { jobs: jobs[i]!, desired: found.DesiredCapacity, maxSize: found.MaxSize };
    // A budget pause sets the maximum to 0 (infra/budget-enforcer): the need follows it down to nothing.
    const need = needOf(sizes.jobs, group.jobsPerNode, sizes.maxSize);
    if (need <= sizes.desired) {
      steps.push({ tier, asgName, outcome: "met", need, ...sizes });
      continue;
    }
    try {
      await clients.autoscaling.send(
        new SetDesiredCapacityCommand({
          AutoScalingGroupName: asgName,
          DesiredCapacity: need,
          HonorCooldown: false,
        }),
      );
      steps.push({ tier, asgName, outcome: "raised", need, ...sizes });
    } catch (error) {
      // One group's refusal (a scaling activity in progress, a throttle) must not keep the others waiting;
      // the next event, or target tracking, tries again.
      steps.push({ tier, asgName, outcome: "failed", need, ...sizes, error: (error as Error).message });
    }
  }
  return steps;
}

/**
 * A look, and when it raised nothing, a second one `settleSeconds` later: the message of the job whose
 * `spec.json` woke it may not have been sent, or counted, yet.
 */
export async function look(
  clients: FastScaleClients,
  settings: FastScaleSettings,
  sleep: (ms: number) => Promise<void> = (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
): Promise<GroupStep[]> {
  const first = await raiseToNeed(clients, settings.groups);
  if (settings.settleSeconds <= 0 || first.some((s) => s.outcome === "raised")) return first;
  await sleep(settings.settleSeconds * 1000);
  return [...first, ...(await raiseToNeed(clients, settings.groups))];
}

let queue: Promise<unknown> = Promise.resolve();

/**
 * Runs `task` after every task handed in before it has finished. Lambda gives an execution environment one
 * event at a time and reserved concurrency 1 allows one environment; this holds the same order for any other
 * caller (tests, a second handler in the same process), so two looks never read the same desired capacity.
 */
export function serialized<T>(task: () => Promise<T>): Promise<T> {
  const run = queue.then(task, task);
  queue = run.catch(() => undefined);
  return run;
}

/** Reads and checks the settings infra hands over; a malformed value fails loudly at the first event. */
export function parseSettings(raw: string | undefined): FastScaleSettings {
  const parsed = JSON.parse(raw ?? "null") as Partial<FastScaleSettings> | null;
  const fail = (what: string): never => {
    throw new Error(`${FAST_SCALE_ENV}: ${what}, got ${raw ?? "nothing"}`);
  };
  if (!parsed || !Array.isArray(parsed.groups)) return fail("must be JSON with a groups list");
  for (const g of parsed.groups as readonly (Partial<ScaledGroup> | null)[]) {
    if (typeof g?.tier !== "string" || typeof g.asgName !== "string" || !Array.isArray(g.queueUrls))
      fail("each group must have a tier, an asgName and queueUrls");
    if (typeof g?.jobsPerNode !== "number" || !(g.jobsPerNode > 0))
      fail("each group's jobsPerNode must be positive");
  }
  const settle = parsed.settleSeconds ?? 0;
  if (typeof settle !== "number" || settle < 0) fail("settleSeconds must be a number of seconds, 0 or more");
  return { groups: parsed.groups, settleSeconds: settle };
}

/** One event, with `clients`: the looks it asks for, logged one line per group. */
export async function handle(_event: unknown, clients: FastScaleClients): Promise<{ steps: GroupStep[] }> {
  const settings = parseSettings(process.env[FAST_SCALE_ENV]);
  const steps = await serialized(() => look(clients, settings));
  for (const step of steps) console.log(JSON.stringify(step));
  return { steps };
}

let defaultClients: FastScaleClients | undefined;

/** The Lambda's entry point. The event is not read: see the top of this file. */
export async function handler(event: unknown): Promise<{ steps: GroupStep[] }> {
  defaultClients ??= { sqs: new SQSClient({}), autoscaling: new AutoScalingClient({}) };
  return handle(event, defaultClients);
}
