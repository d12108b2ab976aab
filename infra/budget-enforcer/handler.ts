import {
  AutoScalingClient,
  CreateOrUpdateTagsCommand,
  DeleteTagsCommand,
  DescribeAutoScalingGroupsCommand,
  UpdateAutoScalingGroupCommand,
} from "@aws-sdk/client-auto-scaling";
import { DeleteObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";

/**
 * The budget enforcer: an SNS-triggered Lambda that pauses a tier when the tier's budget reports ACTUAL
 * spend at or above 100 %, and the resume that undoes it. A pause first writes the tier's pause marker to
 * the workspaces bucket (agents on nodes that scale-in protection keeps alive stop taking jobs when they
 * see it: runtime/src/agent/budget-pause.ts), then sets the tier's groups to 0.
 *
 * This file is the Lambda's code as deployed (infra/budgets.ts transpiles it on its own, unbundled),
 * so it imports nothing but the AWS SDK that the nodejs20.x runtime provides.
 */

/** Group tags holding the sizes a pause replaced, so a resume restores exactly them. */
export const PAUSED_TAGS = {
  max: "crucible:budget-paused-max",
  min: "crucible:budget-paused-min",
  desired: "crucible:budget-paused-desired",
} as const;

/** The Lambda's environment variable: budget name → the tier it covers and that tier's groups. */
export const ENFORCED_BUDGETS_ENV = "CRUCIBLE_ENFORCED_BUDGETS";

/**
 * The Lambda's environment variable: where pause markers go, `{"bucket": ..., "prefix": "_control/paused/"}`.
 * The prefix is runtime/src/catalog/bucket-layout.ts `PAUSE_MARKER_PREFIX`, handed over here because this file
 * may import nothing but the AWS SDK. A tier's marker is `<prefix><tier>`.
 */
export const PAUSE_MARKERS_ENV = "CRUCIBLE_PAUSE_MARKERS";

export interface PauseMarkers {
  readonly bucket: string;
  readonly prefix: string;
}

export interface EnforcedBudget {
  readonly tier: string;
  readonly asgNames: readonly string[];
}

/** The fields of an AWS Budgets notification the decision reads. */
export interface BudgetNotice {
  readonly budgetName: string;
  readonly alertType: "ACTUAL" | "FORECASTED";
  readonly budgetedUsd: number;
  readonly thresholdUsd: number;
}

export type Decision =
  | { readonly action: "none"; readonly reason: string }
  | {
      readonly action: "pause";
      readonly tier: string;
      readonly budget: string;
      readonly asgNames: readonly string[];
      readonly reason: string;
    };

function field(text: string, label: string): string | undefined {
  const match = new RegExp(`^${label}:[ \\t]*(.+?)\\s*$`, "m").exec(text);
  return match?.[1];
}

function dollars(value: string | undefined): number | undefined {
  const match = value === undefined ? null : /\$\s*([\d,]+(?:\.\d+)?)/.exec(value);
  return match ? Number(match[1]!.replace(/,/g, "")) : undefined;
}

/**
 * Reads the plain-text message AWS Budgets publishes to SNS ("Budget Name: ...", "Budgeted Amount:
 * $250.00", "Alert Type: ACTUAL", "Alert Threshold: > $250.00", ...). Anything else (an alarm, a
 * test message) is not a budget notification: undefined.
 */
export function parseBudgetNotification(text: string): BudgetNotice | undefined {
  const budgetName = field(text, "Budget Name");
  const alertType = field(text, "Alert Type");
  const budgetedUsd = dollars(field(text, "Budgeted Amount"));
  const thresholdUsd = dollars(field(text, "Alert Threshold"));
  if (!budgetName || budgetedUsd === undefined || thresholdUsd === undefined) return undefined;
  if (alertType !== "ACTUAL" && alertType !== "FORECASTED") return undefined;
  return { budgetName, alertType, budgetedUsd, thresholdUsd };
}

/**
 * What to do about one SNS message: pause a tier's groups only for an ACTUAL alert whose threshold is
 * the whole budget (the message states the threshold in dollars, so 100 % means threshold ≥ budget)
 * of a budget that covers an enforced tier. Forecasts and earlier thresholds only notify people.
 */
export function decide(message: string, enforced: Readonly<Record<string, EnforcedBudget>>): Decision {
  const notice = parseBudgetNotification(message);
  if (!notice) return { action: "none", reason: "not an AWS Budgets notification" };
  const budget = enforced[notice.budgetName];
  if (!budget) return { action: "none", reason: `budget ${notice.budgetName} is not enforced` };
  if (notice.alertType !== "ACTUAL") {
    return {
      action: "none",
      reason: `${notice.budgetName}: a ${notice.alertType} alert never pauses a tier`,
    };
  }
  const percent = (Math.round(notice.thresholdUsd * 100) / Math.round(notice.budgetedUsd * 100)) * 100;
  if (percent < 100) {
    return {
      action: "none",
      reason: `${notice.budgetName}: ACTUAL alert at ${percent.toFixed(0)} % of the budget`,
    };
  }
  return {
    action: "pause",
    tier: budget.tier,
    budget: notice.budgetName,
    asgNames: budget.asgNames,
    reason: `${notice.budgetName}: ACTUAL spend reached ${percent.toFixed(0)} % of $${notice.budgetedUsd.toFixed(2)}`,
  };
}

/** What a pause or resume did to one group. */
export interface GroupChange {
  readonly asgName: string;
  readonly outcome: "paused" | "already-paused" | "resumed" | "not-paused" | "missing";
  readonly before?: { readonly minSize: number; readonly maxSize: number; readonly desiredCapacity: number };
  readonly after?: { readonly minSize: number; readonly maxSize: number; readonly desiredCapacity: number };
}

type Sender = Pick<AutoScalingClient, "send">;

async function describe(client: Sender, asgNames: readonly string[]) {
  const out = await client.send(
    new DescribeAutoScalingGroupsCommand({ AutoScalingGroupNames: [...asgNames] }),
  );
  return out.AutoScalingGroups ?? [];
}

/**
 * Sets each group's min, max and desired capacity to 0 after recording the previous sizes as group
 * tags. A group that already carries the tags is left alone, so a repeated notification never
 * overwrites the sizes to restore with zeros.
 */
export async function pauseGroups(client: Sender, asgNames: readonly string[]): Promise<GroupChange[]> {
  const groups = await describe(client, asgNames);
  const changes: GroupChange[] = [];
  for (const asgName of asgNames) {
    const group = groups.find((g) => g.AutoScalingGroupName === asgName);
    if (!group) {
      changes.push({ asgName, outcome: "missing" });
      continue;
    }
    const before = {
      minSize: group.MinSize ?? 0,
      maxSize: group.MaxSize ?? 0,
      desiredCapacity: group.DesiredCapacity ?? 0,
    };
    if (group.Tags?.some((t) => t.Key === PAUSED_TAGS.max)) {
      changes.push({ asgName, outcome: "already-paused", before });
      continue;
    }
    const tag = (Key: string, value: number) => ({
      ResourceId: asgName,
      ResourceType: "auto-scaling-group",
      Key,
      Value: String(value),
      PropagateAtLaunch: false,
    });
    await client.send(
      new CreateOrUpdateTagsCommand({
        Tags: [
          tag(PAUSED_TAGS.max, before.maxSize),
          tag(PAUSED_TAGS.min, before.minSize),
          tag(PAUSED_TAGS.desired, before.desiredCapacity),
        ],
      }),
    );
    const after = { minSize: 0, maxSize: 0, desiredCapacity: 0 };
    await client.send(
      new UpdateAutoScalingGroupCommand({
        AutoScalingGroupName: asgName,
        MinSize: after.minSize,
        MaxSize: after.maxSize,
        DesiredCapacity: after.desiredCapacity,
      }),
    );
    changes.push({ asgName, outcome: "paused", before, after });
  }
  return changes;
}

/** Restores the sizes a pause recorded and removes the record; groups never paused are left alone. */
export async function resumeGroups(client: Sender, asgNames: readonly string[]): Promise<GroupChange[]> {
  const groups = await describe(client, asgNames);
  const changes: GroupChange[] = [];
  for (const asgName of asgNames) {
    const group = groups.find((g) => g.AutoScalingGroupName === asgName);
    if (!group) {
      changes.push({ asgName, outcome: "missing" });
      continue;
    }
    const saved = (key: string) => group.Tags?.find((t) => t.Key === key)?.Value;
    const before = {
      minSize: group.MinSize ?? 0,
      maxSize: group.MaxSize ?? 0,
      desiredCapacity: group.DesiredCapacity ?? 0,
    };
    const max = saved(PAUSED_TAGS.max);
    if (max === undefined) {
      changes.push({ asgName, outcome: "not-paused", before });
      continue;
    }
    const after = {
      minSize: Number(saved(PAUSED_TAGS.min) ?? 0),
      maxSize: Number(max),
      desiredCapacity: Number(saved(PAUSED_TAGS.desired) ?? 0),
    };
    await client.send(
      new UpdateAutoScalingGroupCommand({
        AutoScalingGroupName: asgName,
        MinSize: after.minSize,
        MaxSize: after.maxSize,
        DesiredCapacity: after.desiredCapacity,
      }),
    );
    await client.send(
      new DeleteTagsCommand({
        Tags: Object.values(PAUSED_TAGS).map((Key) => ({
          ResourceId: asgName,
          ResourceType: "auto-scaling-group",
          Key,
        })),
      }),
    );
    changes.push({ asgName, outcome: "resumed", before, after });
  }
  return changes;
}

/**
 * The groups of a tier that carry a pause record (`--tier` of `npm run budget-resume`), optionally
 * only those of one environment. Relies on the groups' `crucible:tier` / `crucible:environment` tags.
 */
export async function findPausedGroups(
  client: Sender,
  tier: string,
  environment?: string,
): Promise<string[]> {
  const Filters = [
    { Name: "tag-key", Values: [PAUSED_TAGS.max] },
    { Name: "tag:crucible:tier", Values: [tier] },
    ...(environment ? [{ Name: "tag:crucible:environment", Values: [environment] }] : []),
  ];
  const names: string[] = [];
  let NextToken: string | undefined;
  do {
    const page = await client.send(new DescribeAutoScalingGroupsCommand({ Filters, NextToken }));
    names.push(
      ...(page.AutoScalingGroups ?? []).flatMap((g) =>
        g.AutoScalingGroupName ? [g.AutoScalingGroupName] : [],
      ),
    );
    NextToken = page.NextToken;
  } while (NextToken);
  return names;
}

type ObjectSender = Pick<S3Client, "send">;

/**
 * Writes the tier's pause marker (JSON: reason, budget, at). Written on every pause notification, so the
 * marker always holds the latest reason; agents only test that it exists.
 */
export async function writePauseMarker(
  s3: ObjectSender,
  markers: PauseMarkers,
  tier: string,
  marker: { readonly reason: string; readonly budget: string; readonly at: string },
): Promise<string> {
  const key = `${markers.prefix}${tier}`;
  await s3.send(
    new PutObjectCommand({
      Bucket: markers.bucket,
      Key: key,
      Body: JSON.stringify(marker),
      ContentType: "application/json",
    }),
  );
  return key;
}

/** Removes the tier's pause marker (a resume); removing one that is not there is not an error. */
export async function removePauseMarker(
  s3: ObjectSender,
  markers: PauseMarkers,
  tier: string,
): Promise<string> {
  const key = `${markers.prefix}${tier}`;
  await s3.send(new DeleteObjectCommand({ Bucket: markers.bucket, Key: key }));
  return key;
}

/** Reads where pause markers go from the Lambda's environment; missing, the enforcer cannot fail closed. */
export function pauseMarkersFrom(env: NodeJS.ProcessEnv): PauseMarkers {
  const raw = env[PAUSE_MARKERS_ENV];
  if (!raw)
    throw new Error(
      `${PAUSE_MARKERS_ENV} is not set; the enforcer cannot tell agents to stop taking jobs, so it refuses to run`,
    );
  const value = JSON.parse(raw) as Partial<PauseMarkers>;
  if (typeof value.bucket !== "string" || !value.bucket || typeof value.prefix !== "string" || !value.prefix)
    throw new Error(
      `${PAUSE_MARKERS_ENV} must be JSON such as {"bucket": "...", "prefix": "_control/paused/"}`,
    );
  return { bucket: value.bucket, prefix: value.prefix };
}

/** The clients the enforcer uses. */
export interface EnforcerClients {
  readonly autoScaling: Sender;
  readonly s3: ObjectSender;
}

/** The part of an SNS event the handler reads. */
export interface SnsEvent {
  readonly Records: readonly { readonly Sns: { readonly Message: string; readonly MessageId?: string } }[];
}

/** Reads the enforced budgets from the Lambda's environment; a malformed value is a deployment bug. */
export function enforcedBudgetsFrom(env: NodeJS.ProcessEnv): Record<string, EnforcedBudget> {
  const raw = env[ENFORCED_BUDGETS_ENV];
  if (!raw)
    throw new Error(`${ENFORCED_BUDGETS_ENV} is not set; the enforcer cannot tell which groups to pause`);
  return JSON.parse(raw) as Record<string, EnforcedBudget>;
}

const log = (entry: Record<string, unknown>) => console.log(JSON.stringify(entry));

/** Handles one SNS event: one decision per record, every decision and change logged as JSON. */
export async function handle(
  event: SnsEvent,
  clients: EnforcerClients,
  env: NodeJS.ProcessEnv,
  now: () => Date = () => new Date(),
): Promise<Decision[]> {
  const enforced = enforcedBudgetsFrom(env);
  const markers = pauseMarkersFrom(env);
  const decisions: Decision[] = [];
  for (const record of event.Records) {
    const decision = decide(record.Sns.Message, enforced);
    decisions.push(decision);
    log({ event: "decision", messageId: record.Sns.MessageId, ...decision });
    if (decision.action !== "pause") continue;
    // The marker first: protected nodes keep running (and receiving) after the groups go to 0.
    const key = await writePauseMarker(clients.s3, markers, decision.tier, {
      reason: decision.reason,
      budget: decision.budget,
      at: now().toISOString(),
    });
    log({ event: "marker", tier: decision.tier, bucket: markers.bucket, key });
    const changes = await pauseGroups(clients.autoScaling, decision.asgNames);
    for (const change of changes) log({ event: "pause", tier: decision.tier, ...change });
    log({
      event: "paused",
      tier: decision.tier,
      resume: `npm run budget-resume -- --tier ${decision.tier} --bucket ${markers.bucket} --asg ${decision.asgNames.join(",")}`,
    });
  }
  return decisions;
}

let clients: EnforcerClients | undefined;

/** The Lambda entry point (`index.handler`); the clients are reused across invocations of a container. */
export async function handler(event: SnsEvent): Promise<void> {
  clients ??= { autoScaling: new AutoScalingClient({}), s3: new S3Client({}) };
  await handle(event, clients, process.env);
}
