import { z } from "zod";

/**
 * Validation errors as a person fixes them: one line per problem, naming the `crucible:` key, what it
 * must be and what it got (never a secret's value), and for an unknown key the keys allowed there. Reads
 * zod's issues and walks its schema classes, so it is the one place that depends on zod's internals.
 */

/** A stack configuration that failed validation; its message lists every problem, one per line. */
export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid stack configuration:\n  ${problems.join("\n  ")}`);
    this.name = "ConfigError";
  }
}

function keyPath(path: readonly PropertyKey[]): string {
  const [head, ...rest] = path;
  let out = `crucible:${String(head ?? "")}`;
  for (const p of rest) out += typeof p === "number" ? `[${p}]` : `.${String(p)}`;
  return out;
}

function describe(value: unknown): string {
  if (value === undefined) return "nothing";
  const text = JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** The keys a strict object at `path` under `root` accepts, to name them when an unknown one appears. */
function allowedKeysAt(root: z.ZodType, path: readonly PropertyKey[]): string[] {
  let schema: z.ZodType = root;
  for (const p of path) {
    schema = unwrapped(schema);
    if (schema instanceof z.ZodObject) schema = (schema.shape as Record<string, z.ZodType>)[String(p)]!;
    else if (schema instanceof z.ZodArray) schema = schema.element as z.ZodType;
    else if (schema instanceof z.ZodRecord) schema = schema.valueType as z.ZodType;
    else return [];
  }
  schema = unwrapped(schema);
  return schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
}

/**
 * The schema inside optional, defaulted and piped wrappers (the runtime's policy defaults its sections), and
 * a union's object option where it has one (`crucible:environments.index` is a name or `{ url }`).
 */
function unwrapped(schema: z.ZodType): z.ZodType {
  for (;;) {
    if (
      schema instanceof z.ZodOptional ||
      schema instanceof z.ZodDefault ||
      schema instanceof z.ZodPrefault ||
      schema instanceof z.ZodPipe
    ) {
      schema = schema instanceof z.ZodPipe ? (schema.in as z.ZodType) : (schema.unwrap() as z.ZodType);
    } else if (schema instanceof z.ZodUnion) {
      const object = (schema.options as z.ZodType[]).map(unwrapped).find((o) => o instanceof z.ZodObject);
      if (!object) return schema;
      schema = object;
    } else {
      return schema;
    }
  }
}

/** Settings whose values an error must never print. */
const SECRET_KEYS = new Set(["kubeconfig"]);

/** One problem line (or one per unknown key) for an issue of parsing with `root`, keyed by its `crucible:` path. */
export function formatIssue(issue: z.core.$ZodIssue, root: z.ZodType): string[] {
  if (issue.code === "unrecognized_keys") {
    const allowed = allowedKeysAt(root, issue.path);
    return issue.keys.map(
      (k) => `${keyPath([...issue.path, k])} is not a known setting; allowed here: ${allowed.join(", ")}`,
    );
  }
  // A record's key (a user or project name) failed its own schema: say what that schema allows.
  if (issue.code === "invalid_key") {
    return issue.issues.map((i) => `${keyPath(issue.path)} ${i.message}, got ${describe(issue.input)}`);
  }
  if (issue.code === "invalid_type" && issue.input === undefined) {
    return [`${keyPath(issue.path)} is required (${issue.message.replace(/^Invalid input: /, "")})`];
  }
  const secret = SECRET_KEYS.has(String(issue.path.at(-1))) && issue.input !== undefined;
  const got = secret ? "a secret (not shown)" : describe(issue.input);
  return [`${keyPath(issue.path)} ${issue.message}, got ${got}`];
}
