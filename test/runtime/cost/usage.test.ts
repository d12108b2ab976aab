import { DeleteObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseUsageFlags } from "../../../runtime/src/cli/commands/usage";
import type { LedgerEntry } from "../../../runtime/src/cost/ledger";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import { parseSchedulingPolicy } from "../../../runtime/src/catalog/scheduling";
import { SpendTracker } from "../../../runtime/src/cost/spend";
import type { UsageWindow } from "../../../runtime/src/cost/usage";
import {
  budgetsFor,
  buildUsage,
  csvField,
  formatUsd,
  periodWindow,
  renderUsage,
  sinceWindow,
  toCsv,
} from "../../../runtime/src/cost/usage";
import { crucible } from "../../support/cli";
import { entry, LEDGER, NOW } from "../../support/ledger-fixture";

const month = periodWindow("month", NOW);
const byUser = (window: UsageWindow = month, budgets?: Record<string, number>) =>
  buildUsage(LEDGER, { by: "user", window, ...(budgets && { budgets }) });

describe("usage periods (UTC)", () => {
  it("a month is the calendar month: its first instant in, the previous month's last millisecond out", () => {
    expect(month).toEqual({
      from: new Date("2026-03-01T00:00:00.000Z"),
      to: new Date("2026-04-01T00:00:00.000Z"),
      label: "month 2026-03 (UTC)",
    });
    expect(byUser().entries.map((e) => `${e.jobId}/${e.attempt}`)).toEqual([
      "job-b/1",
      "job-c/1",
      "job-a/2",
      "job-a/1",
    ]);
  });

  it("a week is the ISO week from Monday: Sunday 23:59:59.999 before it is out", () => {
    const week = periodWindow("week", NOW);
    expect(week).toEqual({
      from: new Date("2026-03-16T00:00:00.000Z"),
      to: new Date("2026-03-23T00:00:00.000Z"),
      label: "week 2026-W12 (2026-03-16 to 2026-03-22, UTC)",
    });
    expect(byUser(week).entries.map((e) => `${e.jobId}/${e.attempt}`)).toEqual(["job-a/2", "job-a/1"]);
  });

  it.each([
    // 1 January 2027 is a Friday: its week is the last of 2026, which had 53.
    ["2027-01-01T08:00:00Z", "week 2026-W53 (2026-12-28 to 2027-01-03, UTC)"],
    // 29 December 2025 is a Monday whose Thursday is 1 January 2026: week 1 of 2026.
    ["2025-12-29T00:00:00Z", "week 2026-W01 (2025-12-29 to 2026-01-04, UTC)"],
    ["2026-03-22T23:59:59.999Z", "week 2026-W12 (2026-03-16 to 2026-03-22, UTC)"],
  ])("the ISO week of %s is %s", (at, label) => {
    expect(periodWindow("week", new Date(at)).label).toBe(label);
  });

  it("a day is the UTC day; --since has no end", () => {
    expect(byUser(periodWindow("day", NOW)).entries.map((e) => e.jobId)).toEqual(["job-a"]);
    const since = sinceWindow(new Date("2026-03-15T23:59:59.999Z"));
    expect(since.label).toBe("since 2026-03-15T23:59:59.999Z");
    expect(byUser(since).entries.map((e) => e.jobId)).toEqual(["job-c", "job-a", "job-a", "job-e"]);
  });

  it("refuses an entry whose end is not a timestamp rather than dropping its cost", () => {
    expect(() =>
      buildUsage([entry({ jobId: "job-x", endedAt: "yesterday", costUsd: 1 })], {
        by: "user",
        window: month,
      }),
    ).toThrow('ledger entry of job job-x attempt 1 has endedAt "yesterday", which is not a timestamp');
  });
});

describe("usage aggregation", () => {
  it("counts attempts, distinct jobs, time, cost and share by user, most expensive first", () => {
    const report = byUser();
    expect(report.rows).toEqual([
      { key: "bob", attempts: 2, jobs: 2, seconds: 7800, hours: 2.16667, costUsd: 4.04, sharePercent: 83.7 },
      { key: "ada", attempts: 2, jobs: 1, seconds: 5400, hours: 1.5, costUsd: 0.789, sharePercent: 16.3 },
    ]);
    expect(report.total).toEqual({ attempts: 4, jobs: 3, seconds: 13200, hours: 3.66667, costUsd: 4.829 });
    expect(report.window).toEqual({
      from: "2026-03-01T00:00:00.000Z",
      to: "2026-04-01T00:00:00.000Z",
      label: "month 2026-03 (UTC)",
    });
  });

  it.each([
    [
      "tier",
      [
        ["gpu-large", 4.024],
        ["gpu-small", 0.789],
        ["cpu-large", 0.016],
      ],
    ],
    [
      "project",
      [
        ["vision", 4.813],
        ["nlp", 0.016],
      ],
    ],
    [
      "priority",
      [
        ["low", 4.024],
        ["high", 0.789],
        ["normal", 0.016],
      ],
    ],
  ] as const)("by %s", (by, expected) => {
    expect(buildUsage(LEDGER, { by, window: month }).rows.map((r) => [r.key, r.costUsd])).toEqual(expected);
  });

  it("sums money in ten-thousandths of a dollar, so 0.1 + 0.2 + 0.0001 is 0.3001", () => {
    const cents = ["0.1", "0.2", "0.0001"].map((usd, i) =>
      entry({ jobId: `job-${i}`, user: `u${i}`, endedAt: "2026-03-02T00:00:00Z", costUsd: Number(usd) }),
    );
    const report = buildUsage(cents, { by: "user", window: month });
    expect(0.1 + 0.2 + 0.0001).not.toBe(0.3001);
    expect(report.total.costUsd).toBe(0.3001);
    expect(report.rows.map((r) => r.key)).toEqual(["u1", "u0", "u2"]);
    expect(formatUsd(report.total.costUsd)).toBe("0.3001");
  });

  it("ties on cost are ordered by name", () => {
    const tied = ["zoe", "al"].map((user) =>
      entry({ jobId: `job-${user}`, user, endedAt: "2026-03-02T00:00:00Z", costUsd: 1 }),
    );
    expect(buildUsage(tied, { by: "user", window: month }).rows.map((r) => [r.key, r.sharePercent])).toEqual([
      ["al", 50],
      ["zoe", 50],
    ]);
  });

  it("reports each configured budget of the kind grouped by, spent or not", () => {
    expect(byUser(month, { ada: 10, zed: 5 }).budgets).toEqual([
      { kind: "user", name: "ada", limitUsd: 10, usedUsd: 0.789, percent: 7.9 },
      { kind: "user", name: "zed", limitUsd: 5, usedUsd: 0, percent: 0 },
    ]);
    expect(buildUsage(LEDGER, { by: "tier", window: month, budgets: { ada: 10 } }).budgets).toEqual([]);
  });

  it("measures budgets only over a month and only when no other filter leaves a group partial", () => {
    const policy = parseSchedulingPolicy(
      JSON.stringify({ budgets: { users: { ada: 10, bob: 20 }, projects: { vision: 100 } } }),
    );
    expect(budgetsFor(policy, { by: "user", month: true })).toEqual({ ada: 10, bob: 20 });
    expect(budgetsFor(policy, { by: "user", month: true, user: "bob" })).toEqual({ bob: 20 });
    expect(budgetsFor(policy, { by: "project", month: true, project: "vision" })).toEqual({ vision: 100 });
    expect(budgetsFor(policy, { by: "user", month: true, project: "vision" })).toBeUndefined();
    expect(budgetsFor(policy, { by: "project", month: true, user: "ada" })).toBeUndefined();
    expect(budgetsFor(policy, { by: "tier", month: true })).toBeUndefined();
    expect(budgetsFor(policy, { by: "user", month: false })).toBeUndefined();
  });
});

describe("usage formats", () => {
  const report = byUser(month, { ada: 10, zed: 5 });

  it("table", () => {
    expect(renderUsage(report, "table")).toBe(
      [
        "usage by user, month 2026-03 (UTC)",
        "",
        "USER   ATTEMPTS  JOBS  HOURS  COST (USD)    SHARE",
        "bob           2     2   2.17      4.0400   83.7 %",
        "ada           2     1   1.50      0.7890   16.3 %",
        "TOTAL         4     3   3.67      4.8290  100.0 %",
        "",
        "budgets used this month: user ada $0.7890 of $10.00 (7.9 %), user zed $0.0000 of $5.00 (0.0 %)",
        "",
      ].join("\n"),
    );
  });

  it("md", () => {
    expect(renderUsage(report, "md")).toBe(
      [
        "## usage by user, month 2026-03 (UTC)",
        "",
        "| user | attempts | jobs | hours | cost (USD) | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        "| bob | 2 | 2 | 2.17 | 4.0400 | 83.7 % |",
        "| ada | 2 | 1 | 1.50 | 0.7890 | 16.3 % |",
        "| **total** | **4** | **3** | **3.67** | **4.8290** | **100.0 %** |",
        "",
        "budgets used this month: user ada $0.7890 of $10.00 (7.9 %), user zed $0.0000 of $5.00 (0.0 %)",
        "",
      ].join("\n"),
    );
  });

  it("csv: a header and one row per group, no totals row", () => {
    expect(renderUsage(report, "csv")).toBe(
      [
        "user,attempts,jobs,seconds,hours,cost_usd,share_percent",
        "bob,2,2,7800,2.1667,4.0400,83.7",
        "ada,2,1,5400,1.5000,0.7890,16.3",
        "",
      ].join("\n"),
    );
  });

  it("json: the report, with the entries it counted", () => {
    const parsed = JSON.parse(renderUsage(report, "json")) as typeof report;
    expect(parsed).toEqual({ ...report, entries: report.entries.map((e) => ({ ...e })) });
    expect(parsed.entries).toHaveLength(4);
  });

  it("an empty period says so", () => {
    const empty = buildUsage([], { by: "project", window: periodWindow("day", NOW) });
    expect(renderUsage(empty, "table")).toBe("usage by project, day 2026-03-18 (UTC): no ledger entries\n");
    expect(renderUsage(empty, "csv")).toBe("project,attempts,jobs,seconds,hours,cost_usd,share_percent\n");
  });

  it("quotes CSV fields per RFC 4180", () => {
    expect(csvField('say "hi", then\nleave')).toBe('"say ""hi"", then\nleave"');
    expect(csvField("a\rb")).toBe('"a\rb"');
    expect(csvField("plain")).toBe("plain");
    expect(
      toCsv([
        ["a,b", 1.5],
        ["c", ""],
      ]),
    ).toBe('"a,b",1.5\nc,\n');
  });

  it("escapes a pipe in a Markdown cell", () => {
    const odd = buildUsage(
      [entry({ jobId: "job-p", user: "a|b", endedAt: "2026-03-02T00:00:00Z", costUsd: 1 })],
      {
        by: "user",
        window: month,
      },
    );
    expect(renderUsage(odd, "md")).toContain("| a\\|b | 1 | 1 | 0.02 | 1.0000 | 100.0 % |");
  });
});

describe("usage flags", () => {
  it("defaults to the month by user as a table", () => {
    expect(parseUsageFlags({}, NOW)).toEqual({ by: "user", window: month, month: true, format: "table" });
  });

  it("reads --since as a UTC date or a timestamp with its offset", () => {
    expect(parseUsageFlags({ since: "2026-03-10" }, NOW)).toMatchObject({
      window: { from: new Date("2026-03-10T00:00:00Z") },
      month: false,
    });
    expect(parseUsageFlags({ since: "2026-03-10T12:00:00+02:00" }, NOW).window.from).toEqual(
      new Date("2026-03-10T10:00:00Z"),
    );
    expect(parseUsageFlags({ period: "month", by: "project", project: "vision" }, NOW)).toEqual({
      by: "project",
      window: month,
      month: true,
      project: "vision",
      format: "table",
    });
  });

  it.each([
    [{ by: "team" }, '--by must be one of user, project, tier, priority, got "team"'],
    [{ period: "year" }, '--period must be one of day, week, month, got "year"'],
    [{ format: "xlsx" }, '--format must be one of table, md, csv, json, got "xlsx"'],
    [
      { since: "last tuesday" },
      '--since must be a date such as 2026-03-01 (UTC) or a timestamp such as 2026-03-01T09:00:00Z, got "last tuesday"',
    ],
    [
      { since: "2026-03-19" },
      '--since must not be in the future (now 2026-03-18T12:00:00.000Z), got "2026-03-19"',
    ],
    [
      { since: "2026-03-01", period: "week" },
      "--since and --period exclude each other: --since starts the window at a date, --period at the start of this day, week or month",
    ],
    [{ project: "Vision!" }, '--project must be lowercase letters, digits and dashes, got "Vision!"'],
    [
      { user: "Ada Lovelace" },
      '--user must be lowercase letters, digits, dots and dashes, got "Ada Lovelace"',
    ],
  ])("refuses %j", (flags, message) => {
    expect(() => parseUsageFlags(flags, NOW)).toThrow(
      expect.objectContaining({ name: "UsageError", message }),
    );
  });
});

describe("crucible usage against the embedded S3 server", () => {
  let platform: LocalPlatform;
  const env = (): NodeJS.ProcessEnv => ({
    ...platform.env(),
  });

  beforeAll(async () => {
    platform = await startLocalPlatform({ tiers: [], logger: pino({ level: "silent" }) });
    for (const e of LEDGER) await platform.store.putLedgerEntry(e);
  });

  afterAll(() => platform.stop());

  it("--by user --format csv: rows from the bucket that add up to the total", async () => {
    const done = await crucible(
      ["usage", "--by", "user", "--format", "csv", "--since", "2026-03-01"],
      undefined,
      env(),
    );
    // Not stderr: the AWS SDK may warn there about the Node version.
    expect(done.code).toBe(0);
    const [header, ...rows] = done.stdout
      .trimEnd()
      .split("\n")
      .map((line) => line.split(","));
    expect(header).toEqual(["user", "attempts", "jobs", "seconds", "hours", "cost_usd", "share_percent"]);
    // Since March 1st, with no end: job-e of April 1st counts, job-d of February 28th does not.
    expect(rows).toEqual([
      ["bob", "2", "2", "7800", "2.1667", "4.0400", "75.8"],
      ["ada", "2", "1", "5400", "1.5000", "0.7890", "14.8"],
      ["cy", "1", "1", "60", "0.0167", "0.5000", "9.4"],
    ]);
    const units = rows.reduce((sum, row) => sum + Number(row[5]!.replace(".", "")), 0);
    expect(units).toBe(53_290);
    const json = await crucible(["usage", "--since", "2026-03-01", "--format", "json"], undefined, env());
    expect((JSON.parse(json.stdout) as { total: { costUsd: number } }).total.costUsd).toBe(5.329);
  });

  it("--user narrows to one user across projects", async () => {
    const done = await crucible(
      ["usage", "--by", "project", "--user", "bob", "--format", "csv", "--since", "2026-01-01"],
      undefined,
      env(),
    );
    expect(done.stdout).toBe(
      "project,attempts,jobs,seconds,hours,cost_usd,share_percent\nvision,1,1,7200,2.0000,4.0240,99.6\nnlp,1,1,600,0.1667,0.0160,0.4\n",
    );
  });

  it("bad flags and a missing bucket are usage errors (exit 2) that say what is allowed", async () => {
    expect(await crucible(["usage", "--by", "team"], undefined, env())).toMatchObject({
      code: 2,
      stdout: "",
      stderr: 'crucible: --by must be one of user, project, tier, priority, got "team"\n',
    });
    expect(await crucible(["usage"], undefined, { ...env(), CRUCIBLE_BUCKET: "" })).toMatchObject({
      code: 2,
      stderr:
        "crucible: CRUCIBLE_BUCKET is not set: name the workspaces bucket (stack output storage.bucketName)\n",
    });
    expect(
      await crucible(["usage"], undefined, {
        ...env(),
        CRUCIBLE_SCHEDULING: '{"budgets": {"users": {"ada": -1}}}',
      }),
    ).toMatchObject({
      code: 2,
      stderr: "crucible: CRUCIBLE_SCHEDULING.budgets.users.ada must be a positive amount of US dollars\n",
    });
  });
});

describe("the ledger in the bucket", () => {
  let platform: LocalPlatform;

  beforeAll(async () => {
    platform = await startLocalPlatform({ tiers: [], logger: pino({ level: "silent" }) });
    for (const e of LEDGER) await platform.store.putLedgerEntry(e);
  });

  afterAll(() => platform.stop());

  async function keys(prefix: string): Promise<string[]> {
    const page = await platform.s3.send(
      new ListObjectsV2Command({ Bucket: platform.bucket, Prefix: prefix }),
    );
    return (page.Contents ?? []).map((o) => o.Key!).sort();
  }

  const ids = (entries: readonly LedgerEntry[]): string[] =>
    entries.map((e) => `${e.jobId}/${e.attempt}`).sort();

  it("files each entry in finance's partition of the UTC month it ended in, never under the job", async () => {
    // The job's prefix is its submitter's to write: nothing there could be trusted as a charge.
    expect(await keys("workspaces/")).toEqual([]);
    expect(await keys("ledger/")).toEqual([
      // job-d ended in the last millisecond of February, job-e in the first of April.
      "ledger/2026-02/nlp/ada/job-d/1.json",
      "ledger/2026-03/nlp/bob/job-b/1.json",
      "ledger/2026-03/vision/ada/job-a/1.json",
      "ledger/2026-03/vision/ada/job-a/2.json",
      "ledger/2026-03/vision/bob/job-c/1.json",
      "ledger/2026-04/nlp/cy/job-e/1.json",
    ]);
  });

  it("reads only the months asked for, and one user across projects", async () => {
    const march = { since: new Date("2026-03-01T00:00:00Z"), until: new Date("2026-03-31T23:59:59.999Z") };
    expect(ids(await platform.store.ledgerEntries(march))).toEqual([
      "job-a/1",
      "job-a/2",
      "job-b/1",
      "job-c/1",
    ]);
    expect(ids(await platform.store.ledgerEntries({ ...march, user: "bob" }))).toEqual([
      "job-b/1",
      "job-c/1",
    ]);
    expect(ids(await platform.store.ledgerEntries({ ...march, project: "nlp" }))).toEqual(["job-b/1"]);
    // Without a month: every partition.
    expect(ids(await platform.store.ledgerEntries({ project: "nlp" }))).toEqual([
      "job-b/1",
      "job-d/1",
      "job-e/1",
    ]);
    expect(ids(await platform.store.ledgerEntries({ user: "ada" }))).toEqual([
      "job-a/1",
      "job-a/2",
      "job-d/1",
    ]);
  });

  it("outlives the workspaces: with every job file expired, the month still adds up", async () => {
    for (const key of await keys("workspaces/"))
      await platform.s3.send(new DeleteObjectCommand({ Bucket: platform.bucket, Key: key }));
    const done = await crucible(
      ["usage", "--since", "2026-03-01", "--format", "json"],
      undefined,
      platform.env(),
    );
    expect(done.code).toBe(0);
    expect((JSON.parse(done.stdout) as { total: { costUsd: number } }).total.costUsd).toBe(5.329);
  });

  it("month-to-date spend reads each entry once, then only what was added", async () => {
    const now = new Date("2026-03-20T00:00:00Z");
    const spend = new SpendTracker(platform.store, { users: { bob: 10 }, projects: {} }, 0, () => now);
    const bob = { project: "nlp", user: "bob", jobId: "job-x" };
    expect(await spend.standings(bob)).toEqual([{ kind: "user", name: "bob", limitUsd: 10, spentUsd: 4.04 }]);
    const gets: string[] = [];
    platform.s3.middlewareStack.add(
      (next, context) => (args) => {
        if (context.commandName === "GetObjectCommand") gets.push((args.input as { Key: string }).Key);
        return next(args);
      },
      { step: "initialize", name: "countLedgerGets" },
    );
    try {
      await platform.store.putLedgerEntry(entry({ ...bob, endedAt: "2026-03-19T00:00:00Z", costUsd: 1.5 }));
      const [standing] = await spend.standings(bob);
      expect(standing!.spentUsd).toBeCloseTo(5.54, 10);
      expect(gets).toEqual(["ledger/2026-03/nlp/bob/job-x/1.json"]);
    } finally {
      platform.s3.middlewareStack.remove("countLedgerGets");
    }
  });
});
