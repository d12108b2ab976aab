import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  canonical,
  diffPlans,
  parsePlan,
  renderDiff,
  toPlanJson,
  withoutRoot,
  type PlanJson,
} from "../../scripts/lib/plan-diff";
import { ROOT } from "../../scripts/lib/mock-engine";
import { configWith, readStackConfig, runStack } from "../support/harness";

const QUEUE = "aws:sqs/queue:Queue";
const ROLE = "aws:iam/role:Role";

const plan = (resources: PlanJson["resources"], outputs: Record<string, unknown> = {}): PlanJson => ({
  stack: "dev",
  resources,
  outputs,
});

describe("diffPlans", () => {
  const base = plan(
    [
      {
        type: QUEUE,
        name: "queues-cpu-small",
        parent: "urn:q",
        inputs: { visibilityTimeoutSeconds: 120, tags: { a: "1", b: "2" } },
      },
      { type: QUEUE, name: "queues-gpu-small", parent: "urn:q", inputs: { visibilityTimeoutSeconds: 120 } },
      { type: ROLE, name: "fleet-node", parent: "urn:f", inputs: { assumeRolePolicy: "{}" } },
    ],
    { region: "us-east-1", queues: { a: 1 } },
  );

  it("finds nothing between a plan and itself, or the same values in another key order", () => {
    const reverseKeys = (v: unknown): unknown =>
      typeof v === "object" && v !== null && !Array.isArray(v)
        ? Object.fromEntries(
            Object.entries(v)
              .reverse()
              .map(([k, x]) => [k, reverseKeys(x)]),
          )
        : v;
    const reordered = plan(
      [...base.resources]
        .reverse()
        .map((r) => ({ ...r, inputs: reverseKeys(r.inputs) as Record<string, unknown> })),
      reverseKeys(base.outputs) as Record<string, unknown>,
    );
    const none = { stack: "dev", added: [], removed: [], changed: [], outputs: [] };
    expect(diffPlans(base, base)).toEqual(none);
    expect(diffPlans(base, reordered)).toEqual(none);
    expect(canonical({ b: 1, a: [{ d: 1, c: 2 }] })).toBe(canonical({ a: [{ c: 2, d: 1 }], b: 1 }));
  });

  it("lists added, removed and changed resources (by type and name) and changed outputs", () => {
    const head = plan(
      [
        {
          type: QUEUE,
          name: "queues-cpu-small",
          parent: "urn:q",
          inputs: { visibilityTimeoutSeconds: 300, tags: { a: "1", b: "2" }, delaySeconds: 5 },
        },
        { type: ROLE, name: "fleet-node", parent: "urn:other", inputs: { assumeRolePolicy: "{}" } },
        { type: ROLE, name: "ci-deploy", parent: "urn:ci", inputs: {} },
      ],
      { region: "us-east-1", queues: { a: 2 }, ci: { deployRoleArn: "arn" } },
    );
    expect(diffPlans(base, head)).toEqual({
      stack: "dev",
      added: [{ type: ROLE, name: "ci-deploy" }],
      removed: [{ type: QUEUE, name: "queues-gpu-small" }],
      // Sorted by type, then name.
      changed: [
        {
          type: ROLE,
          name: "fleet-node",
          changes: [{ key: "(parent)", before: "urn:f", after: "urn:other" }],
        },
        {
          type: QUEUE,
          name: "queues-cpu-small",
          changes: [
            { key: "delaySeconds", before: undefined, after: 5 },
            { key: "visibilityTimeoutSeconds", before: 120, after: 300 },
          ],
        },
      ],
      outputs: [
        { key: "ci", before: undefined, after: { deployRoleArn: "arn" } },
        { key: "queues", before: { a: 1 }, after: { a: 2 } },
      ],
    });
  });

  it("refuses plans of two different stacks", () => {
    expect(() => diffPlans(base, { ...base, stack: "prod" })).toThrow(
      "the plans are of different stacks: dev and prod",
    );
  });
});

describe("renderDiff", () => {
  it("says so when nothing changed", () => {
    expect(renderDiff({ stack: "prod", added: [], removed: [], changed: [], outputs: [] })).toBe(
      "### Plan of `prod`: no changes against main\n",
    );
  });

  it("writes a markdown table: short values in full, long ones named, pipes escaped", () => {
    const long = "x".repeat(81);
    const text = renderDiff(
      {
        stack: "prod",
        added: [{ type: ROLE, name: "ci|deploy" }],
        removed: [{ type: QUEUE, name: "queues-gpu-small" }],
        changed: [
          {
            type: QUEUE,
            name: "queues-cpu-small",
            changes: [
              { key: "policy", before: long, after: `${long}y` },
              { key: "visibilityTimeoutSeconds", before: 120, after: 300 },
              { key: "delaySeconds", before: undefined, after: 5 },
              { key: "tags", before: { a: 1 }, after: undefined },
            ],
          },
        ],
        outputs: [{ key: "ci", before: undefined, after: {} }],
      },
      "main (abc123)",
    );
    expect(text).toBe(
      [
        "### Plan of `prod` against main (abc123): 1 to add, 1 to change, 1 to remove",
        "",
        "| | type | name | inputs |",
        "| --- | --- | --- | --- |",
        "| + | `aws:iam/role:Role` | `ci\\|deploy` |  |",
        "| - | `aws:sqs/queue:Queue` | `queues-gpu-small` |  |",
        "| ~ | `aws:sqs/queue:Queue` | `queues-cpu-small` | `policy` changed<br>`visibilityTimeoutSeconds`: `120` → `300`<br>`delaySeconds` added<br>`tags` removed |",
        "",
        "Outputs: `ci` added",
        "",
      ].join("\n"),
    );
  });

  it("caps the table so a summary stays within GitHub's limit", () => {
    const added = Array.from({ length: 250 }, (_, i) => ({
      type: QUEUE,
      name: `q${String(i).padStart(3, "0")}`,
    }));
    const text = renderDiff({ stack: "dev", added, removed: [], changed: [], outputs: [] });
    expect(text.split("\n").filter((l) => l.startsWith("| + |"))).toHaveLength(200);
    expect(text).toContain("... and 50 more resources.");
  });
});

describe("parsePlan and withoutRoot", () => {
  it("names the file that is not a plan", () => {
    expect(() => parsePlan("{", "base.json")).toThrow(/^base\.json: not JSON/);
    expect(() => parsePlan('{"stack": "dev"}', "base.json")).toThrow(
      "base.json: not a plan; write one with npm run plan -- --stack <stack> --json",
    );
  });

  it("replaces the checkout's path everywhere, so two checkouts' plans compare by content", () => {
    const p = plan([
      {
        type: "docker:index/image:Image",
        name: "registry-cpu",
        inputs: { build: { context: "/w/base", dockerfile: "/w/base/images/cpu/Dockerfile" } },
      },
    ]);
    expect(withoutRoot(p, "/w/base").resources[0]!.inputs).toEqual({
      build: { context: "<repo>", dockerfile: "<repo>/images/cpu/Dockerfile" },
    });
  });
});

describe("the dev stack's real plan", () => {
  it("shows exactly a changed setting, and nothing else", async () => {
    const fleet = JSON.parse(readStackConfig("dev")["crucible:fleet"]!) as {
      tiers: Record<string, Record<string, unknown>>;
    };
    fleet.tiers["cpu-small"] = { ...fleet.tiers["cpu-small"], maxSize: 3 };
    const before = toPlanJson(await runStack("dev"));
    const after = toPlanJson(await runStack("dev", configWith("dev", { "crucible:fleet": fleet })));
    const diff = diffPlans(before, after);
    expect(diff.added).toEqual([]);
    expect(diff.removed).toEqual([]);
    expect(
      diff.changed.map((c) => [c.type, c.name, c.changes.map((x) => [x.key, x.before, x.after])]),
    ).toEqual([["aws:autoscaling/group:Group", "fleet-cpu-small-nodes", [["maxSize", 2, 3]]]]);
    expect(diff.outputs.map((o) => o.key)).toEqual(["fleet"]);
  });
});

describe("npm run plan-diff", () => {
  let dir: string;
  const run = promisify(execFile);
  const planDiff = async (...args: string[]) => {
    try {
      const { stdout } = await run(process.execPath, ["--import", "tsx", "scripts/plan-diff.ts", ...args], {
        cwd: ROOT,
      });
      return { code: 0, stdout, stderr: "" };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), "crucible-plan-diff-"));
    const image = (root: string) =>
      plan([
        { type: "docker:index/image:Image", name: "registry-cpu", inputs: { build: { context: root } } },
      ]);
    writeFileSync(path.join(dir, "base.json"), JSON.stringify(image("/ci/work/base")));
    writeFileSync(path.join(dir, "head.json"), JSON.stringify(image("/ci/work")));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("prints the markdown, with the checkouts' paths set aside", async () => {
    const [base, head] = [path.join(dir, "base.json"), path.join(dir, "head.json")];
    expect((await planDiff(base, head)).stdout).toContain("1 to change");
    expect(await planDiff(base, head, "--base-root", "/ci/work/base", "--head-root", "/ci/work")).toEqual({
      code: 0,
      stdout: "### Plan of `dev`: no changes against main\n",
      stderr: "",
    });
  });

  it("fails naming a missing file", async () => {
    const result = await planDiff(path.join(dir, "nope.json"), path.join(dir, "head.json"));
    expect(result.code).toBe(1);
    expect(result.stderr).toBe(`plan-diff: ${path.join(dir, "nope.json")}: cannot read (ENOENT)\n`);
  });
});
