import { execFile } from "node:child_process";
import * as path from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { buildReport, parseGpuHours, renderReport, type CostReport } from "../../scripts/lib/cost-report";
import { ROOT } from "../../scripts/lib/mock-engine";
import { runStack, type Plan } from "../support/harness";

const PROD_TIERS = ["cpu-small", "cpu-large", "gpu-small", "gpu-medium", "gpu-large"];

describe("--gpu-hours", () => {
  it("reads tier=hours pairs", () => {
    expect([...parseGpuHours("gpu-small=200, gpu-large=12.5", PROD_TIERS)]).toEqual([
      ["gpu-small", 200],
      ["gpu-large", 12.5],
    ]);
  });

  it.each([
    ["gpu-small:200", '--gpu-hours: "gpu-small:200" is not tier=hours, such as gpu-small=200'],
    [
      "gpu-huge=3",
      '--gpu-hours: unknown tier "gpu-huge"; tiers are cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large',
    ],
    ["gpu-small=-5", '--gpu-hours: hours for gpu-small must be a non-negative number, got "-5"'],
    ["gpu-small=lots", '--gpu-hours: hours for gpu-small must be a non-negative number, got "lots"'],
    ["gpu-small=1,gpu-small=2", "--gpu-hours: tier gpu-small is given twice"],
  ])("rejects %s", (text, message) => {
    expect(() => parseGpuHours(text, PROD_TIERS)).toThrow(message);
  });

  it("rejects a tier the stack does not enable", () => {
    expect(() => parseGpuHours("gpu-large=10", ["cpu-small", "gpu-small"])).toThrow(
      "--gpu-hours: tier gpu-large is not enabled in this stack; enabled: cpu-small, gpu-small",
    );
  });
});

describe("prod cost report at gpu-small=200, gpu-medium=100, gpu-large=50", () => {
  let plan: Plan;
  let report: CostReport;
  beforeAll(async () => {
    plan = await runStack("prod");
    report = buildReport(
      plan,
      parseGpuHours("gpu-small=200,gpu-medium=100,gpu-large=50", Object.keys(plan.outputs.tiers as object)),
    );
  });

  it("prices the month: fixed costs, always-on instances, then job hours", () => {
    const nat = plan.ofType("aws:ec2/natGateway:NatGateway").length;
    const keys = plan.ofType("aws:kms/key:Key").length;
    const fixed = Math.round((nat * 0.045 * 730 + keys) * 100) / 100;
    expect(report.estimate.lines.map((l) => [l.item, l.monthlyUsd])).toEqual([
      ["fixed costs", fixed],
      ["cpu-small always-on", 56.06], // 730 h × m6i.xlarge 0.192 × 40 % (spot)
      ["gpu-small always-on", 383.98], // 730 h × g4dn.xlarge 0.526 (on-demand)
      ["gpu-small warm pool", 80], // 5 stopped × 200 GiB × $0.08 per GiB-month
      ["gpu-small jobs", 105.2], // 200 h × 0.526
      ["gpu-medium jobs", 30.08], // 100 h × 0.3008
      ["gpu-large jobs", 40.24], // 50 h × 0.8048
    ]);
    const total = Math.round((fixed + 56.06 + 383.98 + 80 + 105.2 + 30.08 + 40.24) * 100) / 100;
    expect(report.estimate.totalUsd).toBe(total);
    expect(report.estimate.percentOfBudget).toBe(Math.round((total / 25000) * 1000) / 10);
  });

  it("lists the budgets with their thresholds and subscribers", () => {
    expect(report.budgets.map((b) => [b.name, b.limitUsd, b.emails.length, b.thresholds.length])).toEqual([
      ["crucible-prod", 25000, 2, 4],
      ["crucible-prod-gpu-small", 9000, 2, 4],
      ["crucible-prod-gpu-medium", 6000, 2, 4],
      ["crucible-prod-gpu-large", 6000, 2, 4],
      // Users' and projects' limits notify at the ACTUAL thresholds only.
      ["crucible-prod-user-alice", 4000, 2, 3],
      ["crucible-prod-user-bob", 2500, 2, 3],
      ["crucible-prod-user-ravi.k", 2500, 2, 3],
      ["crucible-prod-project-llm-pretrain", 12000, 2, 3],
      ["crucible-prod-project-vision-eval", 5000, 2, 3],
    ]);
  });

  it("renders CSV rows finance can load", () => {
    const lines = renderReport(report, "csv").trimEnd().split("\n");
    expect(lines[0]).toBe("section,name,detail,amount_usd");
    expect(lines).toContain(
      'budget,crucible-prod-gpu-small,"gpu-small; ACTUAL 50 %, ACTUAL 80 %, ACTUAL 100 %, FORECASTED 100 %; SNS topic, ml-platform-alerts@example.com, finance-cloud@example.com",9000.00',
    );
    expect(lines).toContain("tier-hourly,cpu-large,expected (10 % on-demand),0.0442");
    expect(lines).toContain("estimate,gpu-small jobs,200 h × $0.5260,105.20");
    expect(lines.at(-1)).toMatch(new RegExp(`^estimate,total,.*,${report.estimate.totalUsd.toFixed(2)}$`));
  });

  it("renders JSON that reads back to the same report", () => {
    expect(JSON.parse(renderReport(report, "json"))).toEqual(report);
  });

  it("renders the markdown sections", () => {
    const md = renderReport(report, "md");
    for (const heading of [
      "# Cost report: stack prod (us-west-2)",
      "## Budgets (monthly, cost)",
      "## Tier prices (per job hour)",
      "## Fixed monthly costs (list prices)",
      "## Estimate of a month",
    ])
      expect(md).toContain(`${heading}\n`);
    expect(md).toContain("| gpu-small jobs | 200 h × $0.5260 | $105.20 |");
  });
});

describe("npm run cost-report", () => {
  const run = promisify(execFile);
  const cli = (...args: string[]) =>
    run(
      path.join(ROOT, "node_modules", ".bin", "tsx"),
      [path.join(ROOT, "scripts", "cost-report.ts"), ...args],
      {
        cwd: ROOT,
      },
    );

  it("prints the report offline, and refuses bad --gpu-hours with the reason", async () => {
    const ok = await cli("--stack", "dev", "--format", "csv", "--gpu-hours", "gpu-small=10");
    expect(ok.stdout.split("\n")[0]).toBe("section,name,detail,amount_usd");
    expect(ok.stdout).toContain("estimate,gpu-small jobs,10 h × $0.2104,2.10\n");
    await expect(cli("--stack", "dev", "--gpu-hours", "gpu-large=10")).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining(
        "--gpu-hours: tier gpu-large is not enabled in this stack; enabled: cpu-small, cpu-large, gpu-small",
      ) as unknown,
    });
  });
});
