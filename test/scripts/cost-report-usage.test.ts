import { DeleteObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { parseXML } from "@aws-sdk/xml-builder";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalPlatform } from "../../runtime/src/local/local-platform";
import { buildUsage, periodWindow, readLedgerDir, renderUsage } from "../../runtime/src/cost/usage";
import type { CostReport, LedgerUsage } from "../../scripts/lib/cost-report";
import { buildReport, parseMonth, renderReport, spendChartOf } from "../../scripts/lib/cost-report";
import { ROOT } from "../../scripts/lib/mock-engine";
import { spendChartSvg } from "../../scripts/lib/spend-chart";
import { runStack, type Plan } from "../support/harness";
import { LEDGER, NOW, entry } from "../support/ledger-fixture";

const MARCH = new Date("2026-03-01T00:00:00Z");
/** What the fixture ledger spent in March 2026, by every scope a stack budget can have. */
const SPENT: Record<string, number> = {
  environment: 4.829,
  "gpu-large": 4.024,
  "gpu-small": 0.789,
  "cpu-large": 0.016,
  "project:vision": 4.813,
  "project:nlp": 0.016,
  "user:bob": 4.04,
  "user:ada": 0.789,
};
/** What the fixture ledger spent by the end of each day of March up to the 18th. */
const CUMULATIVE = [...Array<number>(14).fill(0.016), 4.04, 4.303, 4.303, 4.829];

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crucible-ledger-"));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

/** Writes files under a fresh directory and returns it. */
async function tree(name: string, files: Record<string, string>): Promise<string> {
  const root = join(dir, name);
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(root, path, ".."), { recursive: true });
    await writeFile(join(root, path), text);
  }
  return root;
}

const synced = (entries = LEDGER) =>
  Object.fromEntries(
    entries.map((e) => [
      `${e.project}/${e.user}/jobs/${e.jobId}/ledger/${e.attempt}.json`,
      JSON.stringify(e),
    ]),
  );

describe("--ledger <dir>", () => {
  it("reads a bucket sync's ledger entries and ignores the jobs' other files", async () => {
    const root = await tree("sync", {
      ...synced(),
      "vision/ada/jobs/job-a/spec.json": '{"tier": "gpu-small"}',
      "vision/ada/jobs/job-a/state.json": "not even JSON",
    });
    const entries = await readLedgerDir(root);
    expect(entries.map((e) => `${e.jobId}/${e.attempt}`).sort()).toEqual(
      LEDGER.map((e) => `${e.jobId}/${e.attempt}`).sort(),
    );
  });

  it("reads a sync of finance's ledger partitions, alone or beside the jobs' copies, counting each entry once", async () => {
    const partitions = Object.fromEntries(
      LEDGER.map((e) => [
        `${e.endedAt.slice(0, 7)}/${e.project}/${e.user}/${e.jobId}/${e.attempt}.json`,
        JSON.stringify(e),
      ]),
    );
    const ids = (entries: readonly { jobId: string; attempt: number }[]) =>
      entries.map((e) => `${e.jobId}/${e.attempt}`).sort();
    const want = ids(LEDGER);
    // `aws s3 sync s3://<bucket>/ledger/ <dir>`
    expect(ids(await readLedgerDir(await tree("partitions", partitions)))).toEqual(want);
    // `aws s3 sync s3://<bucket>/ <dir>`: both copies of every entry.
    const whole = await tree("whole-bucket", {
      ...Object.fromEntries(Object.entries(partitions).map(([path, text]) => [`ledger/${path}`, text])),
      ...Object.fromEntries(Object.entries(synced()).map(([path, text]) => [`workspaces/${path}`, text])),
    });
    expect(ids(await readLedgerDir(whole))).toEqual(want);
  });

  it("reads a `crucible usage --format json` export, counting an entry found twice once", async () => {
    const exported = renderUsage(
      buildUsage(LEDGER, { by: "user", window: periodWindow("month", NOW) }),
      "json",
    );
    const root = await tree("export", { "march.json": exported, ...synced(LEDGER.slice(0, 1)) });
    const entries = await readLedgerDir(root);
    expect(entries).toHaveLength(4);
    expect(entries).toEqual(expect.arrayContaining(LEDGER.slice(0, 4)));
  });

  it("fails on a ledger file that does not parse, naming the file and the field", async () => {
    const root = await tree("bad", {
      "nlp/bob/jobs/job-b/ledger/1.json": JSON.stringify({ ...LEDGER[2], costUsd: "cheap" }),
    });
    await expect(readLedgerDir(root)).rejects.toThrow(
      `ledger ${join(root, "nlp/bob/jobs/job-b/ledger/1.json")}: costUsd Invalid input: expected number, received string`,
    );
  });
});

describe("--month", () => {
  it("takes this month or an earlier one", () => {
    expect(parseMonth("2026-03", NOW)).toEqual(MARCH);
    expect(() => parseMonth("2026-3", NOW)).toThrow('--month must be a month such as 2026-03, got "2026-3"');
    expect(() => parseMonth("2026-04", NOW)).toThrow(
      '--month must not be in the future (now 2026-03), got "2026-04"',
    );
  });
});

describe("prod cost report with the fixture ledger for March 2026, on the 18th", () => {
  let plan: Plan;
  let report: CostReport & { usage: LedgerUsage };
  beforeAll(async () => {
    plan = await runStack("prod");
    const built = buildReport(plan, new Map(), {
      source: "ledger directory L",
      entries: LEDGER,
      month: MARCH,
      now: NOW,
    });
    report = { ...built, usage: built.usage! };
  });

  it("totals the month by tier and project, and measures each stack budget in its scope", () => {
    expect(report.usage.month).toBe("2026-03");
    expect(report.usage.byTier.rows.map((r) => [r.key, r.attempts, r.jobs, r.costUsd])).toEqual([
      ["gpu-large", 1, 1, 4.024],
      ["gpu-small", 2, 1, 0.789],
      ["cpu-large", 1, 1, 0.016],
    ]);
    expect(report.usage.byProject.rows.map((r) => [r.key, r.costUsd])).toEqual([
      ["vision", 4.813],
      ["nlp", 0.016],
    ]);
    // Every budget the stack declares, measured in its own scope; prod has one for bob, whom the ledger knows.
    expect(report.budgets.map((b) => b.scope)).toContain("user:bob");
    expect(report.usage.budgets).toEqual(
      report.budgets.map((b) => {
        const usedUsd = SPENT[b.scope] ?? 0;
        return {
          name: b.name,
          scope: b.scope,
          limitUsd: b.limitUsd,
          usedUsd,
          percent: Math.round((usedUsd / b.limitUsd) * 1000) / 10,
        };
      }),
    );
    expect(report.usage.budgets.find((b) => b.scope === "user:bob")).toMatchObject({
      usedUsd: 4.04,
      percent: 0.2,
    });
    expect(report.usage.cumulativeDailyUsd).toEqual(CUMULATIVE);
  });

  it("a past month is charted to its last day", () => {
    const april = buildReport(plan, new Map(), {
      source: "L",
      entries: LEDGER,
      month: new Date("2026-04-01T00:00:00Z"),
      now: new Date("2026-06-01T00:00:00Z"),
    });
    expect(april.usage?.cumulativeDailyUsd).toEqual(Array<number>(30).fill(0.5));
  });

  it("markdown: a usage section with both tables and the budgets", () => {
    const md = renderReport(report, "md");
    const section = md.slice(md.indexOf("## Usage"));
    expect(section).toContain("| crucible-prod-gpu-large | gpu-large | $6,000.00 | $4.0240 | 0.1 % |\n");
    expect(section).toContain("| crucible-prod-user-bob | user:bob | $2,500.00 | $4.0400 | 0.2 % |\n");
    expect(section).toBe(
      [
        "## Usage (cost ledger, 2026-03, UTC)",
        "",
        "From ledger directory L: $4.8290 in 2026-03 (attempts 4, jobs 3).",
        "",
        "| tier | attempts | jobs | hours | cost (USD) | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        "| gpu-large | 1 | 1 | 2.00 | 4.0240 | 83.3 % |",
        "| gpu-small | 2 | 1 | 1.50 | 0.7890 | 16.3 % |",
        "| cpu-large | 1 | 1 | 0.17 | 0.0160 | 0.3 % |",
        "| **total** | **4** | **3** | **3.67** | **4.8290** | **100.0 %** |",
        "",
        "| project | attempts | jobs | hours | cost (USD) | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        "| vision | 3 | 2 | 3.50 | 4.8130 | 99.7 % |",
        "| nlp | 1 | 1 | 0.17 | 0.0160 | 0.3 % |",
        "| **total** | **4** | **3** | **3.67** | **4.8290** | **100.0 %** |",
        "",
        "| user | attempts | jobs | hours | cost (USD) | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        "| bob | 2 | 2 | 2.17 | 4.0400 | 83.7 % |",
        "| ada | 2 | 1 | 1.50 | 0.7890 | 16.3 % |",
        "| **total** | **4** | **3** | **3.67** | **4.8290** | **100.0 %** |",
        "",
        "| budget | covers | limit | spent | used |",
        "| --- | --- | --- | --- | --- |",
        ...report.usage.budgets.map(
          (b) =>
            `| ${b.name} | ${b.scope} | $${b.limitUsd.toLocaleString("en-US")}.00 | $${b.usedUsd.toFixed(4)} | ${b.percent} % |`,
        ),
        "",
      ].join("\n"),
    );
  });

  it("csv: usage rows whose amounts add up to the month's spend", () => {
    const lines = renderReport(report, "csv").trimEnd().split("\n");
    const usage = lines.filter((l) => l.startsWith("usage-"));
    expect(usage).toEqual([
      'usage-tier,gpu-large,"2026-03; attempts 1, jobs 1, hours 2.00",4.0240',
      'usage-tier,gpu-small,"2026-03; attempts 2, jobs 1, hours 1.50",0.7890',
      'usage-tier,cpu-large,"2026-03; attempts 1, jobs 1, hours 0.17",0.0160',
      'usage-project,vision,"2026-03; attempts 3, jobs 2, hours 3.50",4.8130',
      'usage-project,nlp,"2026-03; attempts 1, jobs 1, hours 0.17",0.0160',
      'usage-user,bob,"2026-03; attempts 2, jobs 2, hours 2.17",4.0400',
      'usage-user,ada,"2026-03; attempts 2, jobs 1, hours 1.50",0.7890',
      ...report.usage.budgets.map(
        (b) =>
          `usage-budget,${b.name},2026-03; ${b.percent} % of ${b.limitUsd.toFixed(2)},${b.usedUsd.toFixed(4)}`,
      ),
    ]);
    expect(usage).toContain("usage-budget,crucible-prod-user-bob,2026-03; 0.2 % of 2500.00,4.0400");
    const units = (section: string) =>
      usage
        .filter((l) => l.startsWith(`${section},`))
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(",") + 1).replace(".", "")), 0);
    expect(units("usage-tier")).toBe(48_290);
    expect(units("usage-project")).toBe(48_290);
    expect(units("usage-user")).toBe(48_290);
  });

  it("json: the usage reads back; without a ledger there is no usage key and markdown says none was given", () => {
    expect(JSON.parse(renderReport(report, "json"))).toEqual(report);
    const bare = buildReport(plan, new Map());
    expect(JSON.parse(renderReport(bare, "json"))).not.toHaveProperty("usage");
    expect(renderReport(bare, "md")).toMatch(
      /estimate errs high\.\n\n## Usage \(cost ledger\)\n\nNo ledger given: pass `--ledger <dir>` or set `CRUCIBLE_BUCKET` to read the stack's bucket\.\n$/,
    );
    expect(renderReport(bare, "csv")).not.toContain("usage-");
  });

  it("the chart: the month's title and the environment budget", () => {
    expect(spendChartOf(report)).toEqual({
      title: "Spend of stack prod, March 2026",
      month: MARCH,
      cumulativeUsd: CUMULATIVE,
      budgetUsd: 25000,
    });
  });
});

interface Node {
  readonly [attribute: string]: string;
}
const list = <T>(value: T | T[] | undefined): T[] =>
  value === undefined ? [] : Array.isArray(value) ? value : [value];

describe("spend chart SVG", () => {
  const title = 'Spend of "prod" <&> March';
  const svg = spendChartSvg({ title, month: MARCH, cumulativeUsd: CUMULATIVE, budgetUsd: 5 });
  const root = (parseXML(svg) as { svg: Record<string, unknown> }).svg;
  const texts = (cls: string) =>
    list(root.text as Node[])
      .filter((t) => t.class === cls)
      .map((t) => t["#text"]);
  // The plot spans x 80–690 (day 1 to 31) and y 300–50 ($0 to the top tick, $6 here).
  const x = (day: number) => Math.round((80 + ((day - 1) / 30) * 610) * 100) / 100;
  const y = (usd: number) => Math.round((300 - (usd / 6) * 250) * 100) / 100;

  it("is an SVG document with its title escaped", () => {
    expect(
      svg.startsWith('<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" '),
    ).toBe(true);
    expect(svg).toContain("Spend of &quot;prod&quot; &lt;&amp;&gt; March");
    // Every ampersand starts an entity: a bare one is not XML.
    expect(svg.match(/&(?!(amp|lt|gt|quot|apos);)/g)).toBeNull();
    expect(root).toMatchObject({ width: "720", height: "360", viewBox: "0 0 720 360", title });
    expect(texts("title")).toEqual([title]);
  });

  it("labels both axes, with round ticks up past the budget", () => {
    expect(texts("x-label")).toEqual(["day of March 2026 (UTC)"]);
    expect(texts("y-label")).toEqual(["cumulative spend (USD)"]);
    expect(texts("x-tick")).toEqual(["1", "5", "10", "15", "20", "25", "31"]);
    expect(texts("y-tick")).toEqual(["$0", "$2", "$4", "$6"]);
    expect(
      list(root.text as Node[])
        .filter((t) => t.class === "x-tick")
        .map((t) => Number(t.x)),
    ).toEqual([1, 5, 10, 15, 20, 25, 31].map(x));
  });

  it("draws the budget as a dashed line at its height", () => {
    const budget = list(root.line as Node[]).find((l) => l.class === "budget");
    expect(budget).toMatchObject({
      x1: "80",
      x2: "690",
      y1: "91.67",
      y2: "91.67",
      "stroke-dasharray": "6 4",
    });
    expect(texts("budget-label")).toEqual(["monthly budget $5"]);
  });

  it("plots the cumulative spend of each day so far, exactly", () => {
    const points = (root.polyline as Node).points!.split(" ").map((p) => p.split(",").map(Number));
    expect(points).toEqual(CUMULATIVE.map((usd, i) => [x(i + 1), y(usd)]));
    expect(points.at(-1)).toEqual([425.67, 98.79]);
    const circles = list(root.circle as Node[]);
    expect(circles.map((c) => c.title)).toEqual(
      CUMULATIVE.map((usd, i) => `2026-03-${String(i + 1).padStart(2, "0")}: $${usd.toFixed(4)}`),
    );
    expect(circles.map((c) => [Number(c.cx), Number(c.cy)])).toEqual(points);
  });

  it("without spend or a budget the axis still has a scale", () => {
    const empty = (
      parseXML(spendChartSvg({ title: "t", month: MARCH, cumulativeUsd: [0] })) as {
        svg: { text: Node[]; line: Node[] };
      }
    ).svg;
    expect(empty.text.filter((t) => t.class === "y-tick").map((t) => t["#text"])).toEqual(["$0", "$0.25"]);
    expect(empty.line.some((l) => l.class === "budget")).toBe(false);
  });
});

describe("npm run cost-report -- --ledger --chart", () => {
  const run = promisify(execFile);

  it("reads the month's partition of the stack's bucket, even after the jobs' files expired", async () => {
    const platform = await startLocalPlatform({ tiers: [], logger: pino({ level: "silent" }) });
    try {
      for (const e of LEDGER) await platform.store.putLedgerEntry(e);
      const jobFiles = await platform.s3.send(
        new ListObjectsV2Command({ Bucket: platform.bucket, Prefix: "workspaces/" }),
      );
      for (const { Key } of jobFiles.Contents ?? [])
        await platform.s3.send(new DeleteObjectCommand({ Bucket: platform.bucket, Key }));
      const out = await run(
        process.execPath,
        [
          ...["--import", "tsx", join(ROOT, "scripts", "cost-report.ts")],
          ...["--stack", "dev", "--format", "csv", "--month", "2026-03"],
        ],
        {
          cwd: ROOT,
          env: {
            ...process.env,
            ...platform.env(),
          },
        },
      );
      expect(out.stdout).toContain(
        `usage-budget,crucible-dev,2026-03; 1.2 % of 400.00,${SPENT.environment!.toFixed(4)}\n`,
      );
      expect(out.stdout).toContain(`usage-budget,crucible-dev-user-bob,2026-03; 5.1 % of 80.00,4.0400\n`);
    } finally {
      await platform.stop();
    }
  });

  it("adds the usage rows and writes the chart", async () => {
    const root = await tree(
      "cli",
      synced([...LEDGER, entry({ jobId: "job-f", endedAt: "2026-03-31T23:59:59.999Z", costUsd: 1 })]),
    );
    const chart = join(dir, "march.svg");
    const out = await run(
      process.execPath,
      [
        "--import",
        "tsx",
        join(ROOT, "scripts", "cost-report.ts"),
        ...["--stack", "dev", "--format", "csv", "--ledger", root, "--month", "2026-03", "--chart", chart],
      ],
      { cwd: ROOT },
    );
    expect(out.stdout).toContain('usage-tier,gpu-small,"2026-03; attempts 3, jobs 2, hours 1.52",1.7890\n');
    expect(out.stdout).toContain("usage-budget,crucible-dev,2026-03; 1.5 % of 400.00,5.8290\n");
    expect(out.stdout).toContain("usage-budget,crucible-dev-user-bob,2026-03; 5.1 % of 80.00,4.0400\n");
    const svg = (parseXML(await readFile(chart, "utf8")) as { svg: { polyline: Node; title: string } }).svg;
    expect(svg.title).toBe("Spend of stack dev, March 2026");
    // A past month: all 31 days, ending at the month's total.
    expect(svg.polyline.points!.split(" ")).toHaveLength(31);
    await expect(
      run(
        process.execPath,
        ["--import", "tsx", join(ROOT, "scripts", "cost-report.ts"), "--stack", "dev", "--chart", chart],
        {
          cwd: ROOT,
          env: { ...process.env, CRUCIBLE_BUCKET: "" },
        },
      ),
    ).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining(
        "--chart needs a ledger: give --ledger <dir> or set CRUCIBLE_BUCKET",
      ) as unknown,
    });
  });
});
