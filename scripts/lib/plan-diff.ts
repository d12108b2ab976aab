/**
 * What changed between two offline plans (`npm run plan -- --stack <s> --json`), as a reviewer reads it:
 * resources added, removed and changed (with the inputs that changed), and stack outputs that changed.
 * CI writes it for every stack into a pull request's job summary, against main's plan.
 */

import type { Plan } from "./mock-engine";

/** The JSON `npm run plan -- --json` prints. */
export interface PlanJson {
  readonly stack: string;
  readonly resources: readonly {
    readonly type: string;
    readonly name: string;
    readonly parent?: string;
    readonly inputs: Record<string, unknown>;
  }[];
  readonly outputs: Record<string, unknown>;
}

/** A plan as `npm run plan -- --json` prints it: the custom resources' inputs, and the outputs. */
export function toPlanJson(plan: Plan): PlanJson {
  const resources = plan.resources
    .filter((r) => r.custom)
    .map(({ type, name, inputs, parent }) => ({ type, name, parent, inputs }));
  return { stack: plan.stack, resources, outputs: plan.outputs };
}

/** One input of a changed resource, or one stack output, before and after. */
export interface ValueChange {
  readonly key: string;
  /** Undefined when the key was added. */
  readonly before: unknown;
  /** Undefined when the key was removed. */
  readonly after: unknown;
}

export interface ResourceChange {
  readonly type: string;
  readonly name: string;
  readonly changes: readonly ValueChange[];
}

export interface PlanDiff {
  readonly stack: string;
  readonly added: readonly { readonly type: string; readonly name: string }[];
  readonly removed: readonly { readonly type: string; readonly name: string }[];
  readonly changed: readonly ResourceChange[];
  readonly outputs: readonly ValueChange[];
}

/** JSON with object keys sorted, so equal values compare equal whatever their key order. */
export function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    typeof v === "object" && v !== null && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => a.localeCompare(b)))
      : v,
  );
}

const keyOf = (r: { type: string; name: string }) => `${r.type}::${r.name}`;
const byTypeThenName = (a: { type: string; name: string }, b: { type: string; name: string }) =>
  a.type.localeCompare(b.type) || a.name.localeCompare(b.name);

/** The keys of two records whose values differ (added and removed keys included), in sorted order. */
function changedKeys(before: Record<string, unknown>, after: Record<string, unknown>): ValueChange[] {
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  return keys
    .filter((k) => canonical(before[k]) !== canonical(after[k]))
    .map((key) => ({ key, before: before[key], after: after[key] }));
}

/** Reads and checks a plan file's JSON; `where` names the file in errors. */
export function parsePlan(text: string, where: string): PlanJson {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${where}: not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  const plan = value as Partial<PlanJson> | null;
  if (
    typeof plan !== "object" ||
    plan === null ||
    typeof plan.stack !== "string" ||
    !Array.isArray(plan.resources) ||
    typeof plan.outputs !== "object" ||
    plan.outputs === null
  ) {
    throw new Error(`${where}: not a plan; write one with npm run plan -- --stack <stack> --json`);
  }
  return plan as PlanJson;
}

/**
 * The plan with every mention of the checkout it ran in (`root`, an absolute path: Docker build contexts
 * and Dockerfiles) replaced by `<repo>`, so plans of two checkouts compare by what they declare.
 */
export function withoutRoot(plan: PlanJson, root: string): PlanJson {
  const strip = (value: unknown): unknown => {
    if (typeof value === "string") return value.split(root).join("<repo>");
    if (Array.isArray(value)) return value.map(strip);
    if (typeof value === "object" && value !== null) {
      return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, strip(v)]));
    }
    return value;
  };
  return strip(plan) as PlanJson;
}

export function diffPlans(base: PlanJson, head: PlanJson): PlanDiff {
  if (base.stack !== head.stack) {
    throw new Error(`the plans are of different stacks: ${base.stack} and ${head.stack}`);
  }
  const before = new Map(base.resources.map((r) => [keyOf(r), r]));
  const after = new Map(head.resources.map((r) => [keyOf(r), r]));
  const added = head.resources.filter((r) => !before.has(keyOf(r)));
  const removed = base.resources.filter((r) => !after.has(keyOf(r)));
  const changed: ResourceChange[] = [];
  for (const r of head.resources) {
    const old = before.get(keyOf(r));
    if (!old) continue;
    const changes = changedKeys(old.inputs, r.inputs);
    if ((old.parent ?? "") !== (r.parent ?? "")) {
      changes.push({ key: "(parent)", before: old.parent, after: r.parent });
    }
    if (changes.length > 0) changed.push({ type: r.type, name: r.name, changes });
  }
  const pick = ({ type, name }: { type: string; name: string }) => ({ type, name });
  return {
    stack: head.stack,
    added: added.map(pick).sort(byTypeThenName),
    removed: removed.map(pick).sort(byTypeThenName),
    changed: changed.sort(byTypeThenName),
    outputs: changedKeys(base.outputs, head.outputs),
  };
}

/** Longest value shown in full; longer ones (policy documents, user data) are only named. */
const SHOWN_VALUE_CHARS = 80;
/** Rows of the resource table; a job summary holds at most 1 MiB. */
const MAX_ROWS = 200;

const cell = (text: string) => text.replace(/\|/g, "\\|").replace(/\r?\n/g, " ");
const code = (text: string) => `\`${text.replace(/`/g, "'")}\``;

function describeChange(c: ValueChange): string {
  if (c.before === undefined) return `${code(c.key)} added`;
  if (c.after === undefined) return `${code(c.key)} removed`;
  const [from, to] = [canonical(c.before), canonical(c.after)];
  return from.length <= SHOWN_VALUE_CHARS && to.length <= SHOWN_VALUE_CHARS
    ? `${code(c.key)}: ${code(from)} → ${code(to)}`
    : `${code(c.key)} changed`;
}

/** The diff as GitHub-flavoured markdown, headed with the stack and what it was compared against. */
export function renderDiff(diff: PlanDiff, against = "main"): string {
  const { stack, added, removed, changed, outputs } = diff;
  const counts = `${added.length} to add, ${changed.length} to change, ${removed.length} to remove`;
  if (added.length + removed.length + changed.length + outputs.length === 0) {
    return `### Plan of ${code(stack)}: no changes against ${against}\n`;
  }
  const lines = [`### Plan of ${code(stack)} against ${against}: ${counts}`, ""];
  const rows = [
    ...added.map((r) => ["+", r.type, r.name, ""]),
    ...removed.map((r) => ["-", r.type, r.name, ""]),
    ...changed.map((r) => ["~", r.type, r.name, r.changes.map(describeChange).join("<br>")]),
  ];
  if (rows.length > 0) {
    lines.push("| | type | name | inputs |", "| --- | --- | --- | --- |");
    for (const [op, type, name, what] of rows.slice(0, MAX_ROWS)) {
      lines.push(`| ${op} | ${cell(code(type!))} | ${cell(code(name!))} | ${cell(what!)} |`);
    }
    if (rows.length > MAX_ROWS) lines.push("", `... and ${rows.length - MAX_ROWS} more resources.`);
  }
  if (outputs.length > 0) {
    lines.push("", `Outputs: ${outputs.map(describeChange).join(", ")}`);
  }
  return `${lines.join("\n")}\n`;
}
