import { createRequire } from "node:module";
import * as path from "node:path";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { pausedTier } from "../../../runtime/src/agent/budget-pause";
import { PAUSE_MARKER_PREFIX, pauseMarkerKey } from "../../../runtime/src/catalog/bucket-layout";
import {
  ENFORCED_BUDGETS_ENV,
  PAUSE_MARKERS_ENV,
  PAUSED_TAGS,
  removePauseMarker,
  type EnforcerClients,
  decide,
  findPausedGroups,
  parseBudgetNotification,
  pauseGroups,
  resumeGroups,
  type EnforcedBudget,
  type SnsEvent,
  type handle,
} from "../../../infra/budget-enforcer/handler";
import { enforcerCode } from "../../../infra/budgets";
import { ROOT } from "../../../scripts/lib/mock-engine";

/**
 * The plain-text message AWS Budgets publishes to an SNS topic, in the layout AWS sends (a captured
 * notification: header, salutation, one sentence, then one "Label: value" line per fact).
 */
function budgetsMessage(opts: {
  budget: string;
  type: "ACTUAL" | "FORECASTED";
  budgeted: string;
  threshold: string;
  amount: string;
}): string {
  return [
    "AWS Budget Notification November 24, 2026",
    "AWS Account 123456789012",
    "",
    "Dear AWS Customer,",
    "",
    `You requested that we alert you when the ${opts.type} Cost associated with your ${opts.budget} budget is greater than ${opts.threshold} for the current month. The ${opts.type} Cost associated with this budget is ${opts.amount}. You can find additional details below and by accessing the AWS Budgets dashboard [1].`,
    "",
    `Budget Name: ${opts.budget}`,
    "Budget Type: Cost",
    `Budgeted Amount: ${opts.budgeted}`,
    `Alert Type: ${opts.type}`,
    `Alert Threshold: > ${opts.threshold}`,
    `${opts.type} Amount: ${opts.amount}`,
    "",
    "[1] https://console.aws.amazon.com/billing/home#/budgets",
    "",
  ].join("\n");
}

const BUCKET = "crucible-workspaces";

const ENFORCED: Record<string, EnforcedBudget> = {
  "crucible-prod-gpu-small": {
    tier: "gpu-small",
    asgNames: ["crucible-prod-gpu-small-a", "crucible-prod-gpu-small-b"],
  },
  "crucible-prod-gpu-large": { tier: "gpu-large", asgNames: ["crucible-prod-gpu-large"] },
};

const gpuSmall = (type: "ACTUAL" | "FORECASTED", threshold: string, amount: string) =>
  budgetsMessage({ budget: "crucible-prod-gpu-small", type, budgeted: "$9,000.00", threshold, amount });

describe("reading an AWS Budgets notification", () => {
  it("takes the budget, the alert type and the amounts, commas and all", () => {
    expect(parseBudgetNotification(gpuSmall("ACTUAL", "$7,200.00", "$7,254.31"))).toEqual({
      budgetName: "crucible-prod-gpu-small",
      alertType: "ACTUAL",
      budgetedUsd: 9000,
      thresholdUsd: 7200,
    });
  });

  it("is not fooled by other messages on the topic", () => {
    const alarm = JSON.stringify({ AlarmName: "crucible-prod-dlq", NewStateValue: "ALARM" });
    expect(parseBudgetNotification(alarm)).toBeUndefined();
    expect(parseBudgetNotification("Budget Name: x\nAlert Type: ACTUAL")).toBeUndefined();
  });
});

describe("the enforcement decision", () => {
  it("does nothing at 50 % or 80 % ACTUAL", () => {
    expect(decide(gpuSmall("ACTUAL", "$4,500.00", "$4,611.02"), ENFORCED)).toEqual({
      action: "none",
      reason: "crucible-prod-gpu-small: ACTUAL alert at 50 % of the budget",
    });
    expect(decide(gpuSmall("ACTUAL", "$7,200.00", "$7,254.31"), ENFORCED).action).toBe("none");
  });

  it("pauses exactly the tier's groups at 100 % ACTUAL", () => {
    expect(decide(gpuSmall("ACTUAL", "$9,000.00", "$9,001.87"), ENFORCED)).toEqual({
      action: "pause",
      tier: "gpu-small",
      budget: "crucible-prod-gpu-small",
      asgNames: ["crucible-prod-gpu-small-a", "crucible-prod-gpu-small-b"],
      reason: "crucible-prod-gpu-small: ACTUAL spend reached 100 % of $9000.00",
    });
    const large = budgetsMessage({
      budget: "crucible-prod-gpu-large",
      type: "ACTUAL",
      budgeted: "$6,000.00",
      threshold: "$7,200.00",
      amount: "$7,300.00",
    });
    expect(decide(large, ENFORCED)).toMatchObject({ action: "pause", asgNames: ["crucible-prod-gpu-large"] });
  });

  it("never pauses on a forecast, even past 100 %", () => {
    expect(decide(gpuSmall("FORECASTED", "$9,000.00", "$12,400.00"), ENFORCED)).toEqual({
      action: "none",
      reason: "crucible-prod-gpu-small: a FORECASTED alert never pauses a tier",
    });
  });

  it("leaves budgets that are not enforced (the environment's, another stack's) alone", () => {
    const env = budgetsMessage({
      budget: "crucible-prod",
      type: "ACTUAL",
      budgeted: "$25,000.00",
      threshold: "$25,000.00",
      amount: "$25,100.00",
    });
    expect(decide(env, ENFORCED)).toEqual({ action: "none", reason: "budget crucible-prod is not enforced" });
    expect(decide("hello", ENFORCED)).toEqual({ action: "none", reason: "not an AWS Budgets notification" });
  });
});

/** An Auto Scaling API in memory: groups with sizes and tags, and the calls made to it. */
function fakeAutoScaling(
  groups: Record<string, { min: number; max: number; desired: number }>,
  initialTags: Record<string, Record<string, string>> = {},
) {
  const tags = new Map<string, Map<string, string>>(
    Object.keys(groups).map((n) => [n, new Map(Object.entries(initialTags[n] ?? {}))]),
  );
  /** DescribeAutoScalingGroups filters: `tag-key` (has the key) and `tag:<key>` (has one of the values). */
  const matches = (name: string, filters: { Name: string; Values: string[] }[]) =>
    filters.every(({ Name, Values }) =>
      Name === "tag-key"
        ? Values.some((k) => tags.get(name)!.has(k))
        : Values.includes(tags.get(name)!.get(Name.replace(/^tag:/, "")) ?? ""),
    );
  const calls: string[] = [];
  const send = (command: { constructor: { name: string }; input: unknown }): Promise<unknown> => {
    const name = command.constructor.name;
    const input = command.input as Record<string, unknown>;
    calls.push(name);
    switch (name) {
      case "DescribeAutoScalingGroupsCommand":
        return Promise.resolve({
          AutoScalingGroups: ((input.AutoScalingGroupNames as string[] | undefined) ?? Object.keys(groups))
            .filter((n) => groups[n])
            .filter((n) =>
              matches(n, (input.Filters as { Name: string; Values: string[] }[] | undefined) ?? []),
            )
            .map((n) => ({
              AutoScalingGroupName: n,
              MinSize: groups[n]!.min,
              MaxSize: groups[n]!.max,
              DesiredCapacity: groups[n]!.desired,
              Tags: [...tags.get(n)!].map(([Key, Value]) => ({ Key, Value })),
            })),
        });
      case "CreateOrUpdateTagsCommand":
        for (const t of input.Tags as { ResourceId: string; Key: string; Value: string }[])
          tags.get(t.ResourceId)!.set(t.Key, t.Value);
        return Promise.resolve({});
      case "DeleteTagsCommand":
        for (const t of input.Tags as { ResourceId: string; Key: string }[])
          tags.get(t.ResourceId)!.delete(t.Key);
        return Promise.resolve({});
      case "UpdateAutoScalingGroupCommand": {
        const g = groups[input.AutoScalingGroupName as string]!;
        Object.assign(g, { min: input.MinSize, max: input.MaxSize, desired: input.DesiredCapacity });
        return Promise.resolve({});
      }
      default:
        return Promise.reject(new Error(`unexpected ${name}`));
    }
  };
  return { groups, tags, calls, client: { send } as unknown as Parameters<typeof pauseGroups>[0] };
}

describe("pausing and resuming a tier's groups", () => {
  it("records the previous sizes as tags, zeroes the group, and resumes to exactly them", async () => {
    const api = fakeAutoScaling({ a: { min: 1, max: 24, desired: 3 }, b: { min: 0, max: 4, desired: 0 } });
    const paused = await pauseGroups(api.client, ["a", "b", "gone"]);
    expect(paused).toEqual([
      {
        asgName: "a",
        outcome: "paused",
        before: { minSize: 1, maxSize: 24, desiredCapacity: 3 },
        after: { minSize: 0, maxSize: 0, desiredCapacity: 0 },
      },
      {
        asgName: "b",
        outcome: "paused",
        before: { minSize: 0, maxSize: 4, desiredCapacity: 0 },
        after: { minSize: 0, maxSize: 0, desiredCapacity: 0 },
      },
      { asgName: "gone", outcome: "missing" },
    ]);
    expect(Object.fromEntries(api.tags.get("a")!)).toEqual({
      [PAUSED_TAGS.max]: "24",
      [PAUSED_TAGS.min]: "1",
      [PAUSED_TAGS.desired]: "3",
    });
    expect(api.groups.a).toEqual({ min: 0, max: 0, desired: 0 });

    const resumed = await resumeGroups(api.client, ["a", "b"]);
    expect(resumed.map((c) => [c.asgName, c.outcome, c.after])).toEqual([
      ["a", "resumed", { minSize: 1, maxSize: 24, desiredCapacity: 3 }],
      ["b", "resumed", { minSize: 0, maxSize: 4, desiredCapacity: 0 }],
    ]);
    expect(api.groups).toEqual({ a: { min: 1, max: 24, desired: 3 }, b: { min: 0, max: 4, desired: 0 } });
    expect(api.tags.get("a")!.size).toBe(0);
  });

  it("a repeated notification never overwrites the sizes to restore", async () => {
    const api = fakeAutoScaling({ a: { min: 1, max: 24, desired: 3 } });
    await pauseGroups(api.client, ["a"]);
    const again = await pauseGroups(api.client, ["a"]);
    expect(again).toEqual([
      { asgName: "a", outcome: "already-paused", before: { minSize: 0, maxSize: 0, desiredCapacity: 0 } },
    ]);
    expect(api.tags.get("a")!.get(PAUSED_TAGS.max)).toBe("24");
  });

  it("finds a tier's paused groups by their tags, optionally in one environment", async () => {
    const group = { min: 0, max: 0, desired: 0 };
    const paused = { [PAUSED_TAGS.max]: "4" };
    const api = fakeAutoScaling(
      { dev: { ...group }, staging: { ...group }, running: { ...group }, other: { ...group } },
      {
        dev: { ...paused, "crucible:tier": "gpu-small", "crucible:environment": "dev" },
        staging: { ...paused, "crucible:tier": "gpu-small", "crucible:environment": "staging" },
        running: { "crucible:tier": "gpu-small", "crucible:environment": "dev" },
        other: { ...paused, "crucible:tier": "gpu-large", "crucible:environment": "dev" },
      },
    );
    expect(await findPausedGroups(api.client, "gpu-small")).toEqual(["dev", "staging"]);
    expect(await findPausedGroups(api.client, "gpu-small", "staging")).toEqual(["staging"]);
    expect(await findPausedGroups(api.client, "cpu-small")).toEqual([]);
  });

  it("resuming a group that was never paused changes nothing", async () => {
    const api = fakeAutoScaling({ a: { min: 1, max: 24, desired: 3 } });
    expect((await resumeGroups(api.client, ["a"]))[0]!.outcome).toBe("not-paused");
    expect(api.calls).toEqual(["DescribeAutoScalingGroupsCommand"]);
  });
});

describe("the code the Lambda runs", () => {
  // A real S3 API (the local platform's embedded server), so the marker is a real object.
  let server: { port: number; stop(): Promise<void>; createBucket(name: string): void } | undefined;
  let s3: S3Client | undefined;
  beforeAll(async () => {
    const { startFauxqs } = await import("fauxqs");
    server = await startFauxqs({ port: 0, host: "127.0.0.1", logger: false, defaultRegion: "us-east-1" });
    server.createBucket(BUCKET);
    s3 = new S3Client({
      endpoint: `http://127.0.0.1:${server.port}`,
      region: "us-east-1",
      forcePathStyle: true,
      credentials: { accessKeyId: "test", secretAccessKey: "test" },
    });
  });
  afterAll(async () => {
    s3?.destroy();
    await server?.stop();
  });
  const clients = (autoScaling: EnforcerClients["autoScaling"]): EnforcerClients => ({
    autoScaling,
    s3: s3!,
  });
  const envWithMarkers = (): NodeJS.ProcessEnv => ({
    [ENFORCED_BUDGETS_ENV]: JSON.stringify({
      "crucible-prod-gpu-small": { tier: "gpu-small", asgNames: ["crucible-prod-gpu-small-a"] },
    }),
    [PAUSE_MARKERS_ENV]: JSON.stringify({ bucket: BUCKET, prefix: PAUSE_MARKER_PREFIX }),
  });

  /** Loads the transpiled handler the way Lambda does, recording what it requires. */
  function loadDeployed(): { mod: { handle: typeof handle }; required: string[] } {
    const required: string[] = [];
    const realRequire = createRequire(path.join(ROOT, "package.json"));
    const requireRecorded = (id: string): unknown => {
      required.push(id);
      return realRequire(id) as unknown;
    };
    const module = { exports: {} as Record<string, unknown> };
    // eslint-disable-next-line @typescript-eslint/no-implied-eval -- evaluating the artifact is the point
    const load = new Function("require", "module", "exports", enforcerCode()) as (
      req: (id: string) => unknown,
      mod: { exports: unknown },
      exp: unknown,
    ) => void;
    load(requireRecorded, module, module.exports);
    return { mod: module.exports as unknown as { handle: typeof handle }, required };
  }

  it("needs nothing but the AWS SDK the nodejs20.x runtime ships", () => {
    expect(loadDeployed().required).toEqual(["@aws-sdk/client-auto-scaling", "@aws-sdk/client-s3"]);
  });

  it("writes the tier's pause marker before it sets the groups to 0, and the resume removes it", async () => {
    const { mod } = loadDeployed();
    const api = fakeAutoScaling({ "crucible-prod-gpu-small-a": { min: 1, max: 24, desired: 2 } });
    const order: string[] = [];
    const recorded = {
      autoScaling: { send: (c: never) => (order.push("autoscaling"), api.client.send(c)) },
      s3: { send: (c: never) => (order.push("s3"), s3!.send(c)) },
    } as unknown as EnforcerClients;
    const event: SnsEvent = {
      Records: [{ Sns: { MessageId: "m2", Message: gpuSmall("ACTUAL", "$9,000.00", "$9,001.87") } }],
    };
    const at = new Date("2026-11-24T08:00:00.000Z");
    await mod.handle(event, recorded, envWithMarkers(), () => at);
    expect(order[0]).toBe("s3");
    expect(api.groups["crucible-prod-gpu-small-a"]).toEqual({ min: 0, max: 0, desired: 0 });
    const want = {
      reason: "crucible-prod-gpu-small: ACTUAL spend reached 100 % of $9000.00",
      budget: "crucible-prod-gpu-small",
      at: at.toISOString(),
    };
    // The object the agents read, at the key the runtime defines, read by the runtime's own reader.
    const body = await s3!.send(new GetObjectCommand({ Bucket: BUCKET, Key: pauseMarkerKey("gpu-small") }));
    expect(JSON.parse(await body.Body!.transformToString())).toEqual(want);
    expect(await pausedTier(s3!, BUCKET, "gpu-small")).toEqual(want);
    expect(await pausedTier(s3!, BUCKET, "gpu-large")).toBeUndefined();

    await removePauseMarker(s3!, { bucket: BUCKET, prefix: PAUSE_MARKER_PREFIX }, "gpu-small");
    expect(await pausedTier(s3!, BUCKET, "gpu-small")).toBeUndefined();
    // A second resume is a no-op.
    await removePauseMarker(s3!, { bucket: BUCKET, prefix: PAUSE_MARKER_PREFIX }, "gpu-small");
  });

  it("refuses to run without somewhere to write pause markers (it would fail open)", async () => {
    const { mod } = loadDeployed();
    const env = { ...envWithMarkers(), [PAUSE_MARKERS_ENV]: undefined };
    await expect(mod.handle({ Records: [] }, clients(fakeAutoScaling({}).client), env)).rejects.toThrow(
      `${PAUSE_MARKERS_ENV} is not set`,
    );
  });

  it("pauses the groups named in its environment when the 100 % ACTUAL notification arrives", async () => {
    const { mod } = loadDeployed();
    const api = fakeAutoScaling({ "crucible-prod-gpu-small-a": { min: 1, max: 24, desired: 2 } });
    const event: SnsEvent = {
      Records: [
        { Sns: { MessageId: "m1", Message: gpuSmall("ACTUAL", "$4,500.00", "$4,611.02") } },
        { Sns: { MessageId: "m2", Message: gpuSmall("ACTUAL", "$9,000.00", "$9,001.87") } },
      ],
    };
    const decisions = await mod.handle(event, clients(api.client), envWithMarkers());
    expect(decisions.map((d) => d.action)).toEqual(["none", "pause"]);
    expect(api.groups["crucible-prod-gpu-small-a"]).toEqual({ min: 0, max: 0, desired: 0 });
  });

  it("refuses to run without the enforced budgets in its environment", async () => {
    const { mod } = loadDeployed();
    await expect(mod.handle({ Records: [] }, clients(fakeAutoScaling({}).client), {})).rejects.toThrow(
      `${ENFORCED_BUDGETS_ENV} is not set`,
    );
  });
});
