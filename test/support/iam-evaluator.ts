import type { IamRequest } from "./record-calls";

/**
 * A small IAM policy evaluator for the node role's documents: explicit Deny over Allow over the implicit
 * deny; Action/NotAction, Resource/NotResource with `*` and `?`; policy variables; and a fixed set of
 * condition operators. Anything it cannot judge exactly (an operator, a set operator, a condition key the
 * request model does not know, a principal other than `*`) throws {@link UnsupportedPolicyError}: an
 * evaluator that guesses could prove a permission that IAM would refuse.
 */

export interface Statement {
  readonly Sid?: string;
  readonly Effect: "Allow" | "Deny";
  readonly Action?: string | readonly string[];
  readonly NotAction?: string | readonly string[];
  readonly Resource?: string | readonly string[];
  readonly NotResource?: string | readonly string[];
  readonly Principal?: unknown;
  readonly Condition?: Readonly<Record<string, Readonly<Record<string, unknown>>>>;
}

export interface Document {
  readonly Version?: string;
  readonly Statement: Statement | readonly Statement[];
}

/** A policy document with where it came from, for messages. */
export interface NamedPolicy {
  readonly name: string;
  readonly document: Document;
}

export class UnsupportedPolicyError extends Error {
  override readonly name = "UnsupportedPolicyError";
}

const STATEMENT_KEYS = new Set([
  "Sid",
  "Effect",
  "Action",
  "NotAction",
  "Resource",
  "NotResource",
  "Principal",
  "Condition",
]);

export const statementsOf = (doc: Document): readonly Statement[] =>
  Array.isArray(doc.Statement) ? (doc.Statement as readonly Statement[]) : [doc.Statement as Statement];

const list = (v: string | readonly string[] | undefined): readonly string[] =>
  v === undefined ? [] : typeof v === "string" ? [v] : v;

/** A statement's name in messages: its Sid, else its position. */
export const statementName = (policy: NamedPolicy, index: number): string =>
  `${policy.name}#${statementsOf(policy.document)[index]?.Sid ?? index}`;

/** `*` any run of characters, `?` one; everything else literal. */
const compiled = new Map<string, RegExp>();
export function globMatch(pattern: string, value: string, ignoreCase = false): boolean {
  const cacheKey = `${ignoreCase ? "i" : "s"}${pattern}`;
  const cached = compiled.get(cacheKey);
  if (cached) return cached.test(value);
  const source = pattern
    .split("")
    .map((c) => (c === "*" ? ".*" : c === "?" ? "." : c.replace(/[.+^${}()|[\]\\]/g, "\\$&")))
    .join("");
  const regex = new RegExp(`^${source}$`, ignoreCase ? "is" : "s");
  compiled.set(cacheKey, regex);
  return regex.test(value);
}

/**
 * ARN matching as IAM does it for Resource and ArnLike: the first five colon-separated segments each on
 * their own (a wildcard never crosses a colon there), the resource part (which may hold colons) whole.
 * A pattern of fewer segments (other than `*`) throws; a resource that is not an ARN (`*`) is matched whole.
 */
export function arnMatch(pattern: string, arn: string): boolean {
  if (pattern === "*") return true;
  const split = (s: string): string[] | undefined => {
    const parts = s.split(":");
    return parts.length < 6 ? undefined : [...parts.slice(0, 5), parts.slice(5).join(":")];
  };
  const p = split(pattern);
  const a = split(arn);
  if (!a) return globMatch(pattern, arn);
  // Whether IAM lets such a pattern's wildcards cross segments is not settled here: refuse to guess.
  if (!p) throw new UnsupportedPolicyError(`ARN pattern ${pattern} has fewer than six segments`);
  return p.every((segment, i) => globMatch(segment, a[i]!));
}

/** Replaces `${key}` policy variables from the request; a key the request model does not know throws. */
function substitute(text: string, request: IamRequest, where: string): string | undefined {
  let missing = false;
  const out = text.replace(/\$\{([^}]*)\}/g, (_m, key: string) => {
    if (key === "*" || key === "?" || key === "$") return key;
    const [name, fallback] = key.split(/\s*,\s*'/);
    if (!request.knownKeys.has(name!) && fallback === undefined)
      throw new UnsupportedPolicyError(
        `${where}: policy variable \${${key}} is not modelled for ${request.call}`,
      );
    const value = request.context[name!] ?? fallback?.replace(/'$/, "");
    if (value === undefined) missing = true;
    return value ?? "";
  });
  return missing ? undefined : out;
}

type Matcher = (pattern: string, value: string) => boolean;
const NEGATED = new Set([
  "StringNotEquals",
  "StringNotEqualsIgnoreCase",
  "StringNotLike",
  "ArnNotEquals",
  "ArnNotLike",
]);
const OPERATORS: Readonly<Record<string, Matcher>> = {
  StringEquals: (p, v) => p === v,
  StringNotEquals: (p, v) => p === v,
  StringEqualsIgnoreCase: (p, v) => p.toLowerCase() === v.toLowerCase(),
  StringNotEqualsIgnoreCase: (p, v) => p.toLowerCase() === v.toLowerCase(),
  StringLike: (p, v) => globMatch(p, v),
  StringNotLike: (p, v) => globMatch(p, v),
  ArnEquals: (p, v) => arnMatch(p, v),
  ArnLike: (p, v) => arnMatch(p, v),
  ArnNotEquals: (p, v) => arnMatch(p, v),
  ArnNotLike: (p, v) => arnMatch(p, v),
  Bool: (p, v) => p.toLowerCase() === v.toLowerCase(),
};

/** Checks what can be checked without a request: operators, set operators, statement keys, effects. */
export function validatePolicy(policy: NamedPolicy): void {
  if (policy.document.Version !== "2012-10-17")
    throw new UnsupportedPolicyError(`${policy.name}: Version must be 2012-10-17 (policy variables need it)`);
  statementsOf(policy.document).forEach((s, i) => {
    const where = statementName(policy, i);
    for (const key of Object.keys(s))
      if (!STATEMENT_KEYS.has(key)) throw new UnsupportedPolicyError(`${where}: unknown element ${key}`);
    if (s.Effect !== "Allow" && s.Effect !== "Deny")
      throw new UnsupportedPolicyError(`${where}: Effect ${String(s.Effect)}`);
    if ((s.Action === undefined) === (s.NotAction === undefined))
      throw new UnsupportedPolicyError(`${where}: exactly one of Action and NotAction`);
    if ((s.Resource === undefined) === (s.NotResource === undefined))
      throw new UnsupportedPolicyError(`${where}: exactly one of Resource and NotResource`);
    for (const operator of Object.keys(s.Condition ?? {})) {
      if (/^For(Any|All)Value:/.test(operator))
        throw new UnsupportedPolicyError(
          `${where}: set operator ${operator} (no multivalued key is modelled)`,
        );
      const bare = operator.replace(/IfExists$/, "");
      if (bare !== "Null" && !OPERATORS[bare])
        throw new UnsupportedPolicyError(`${where}: condition operator ${operator} is not supported`);
    }
  });
}

function principalMatches(principal: unknown, where: string): boolean {
  if (principal === undefined || principal === "*") return true;
  if (typeof principal === "object" && principal !== null) {
    const aws = (principal as Record<string, unknown>).AWS;
    if (Object.keys(principal).length === 1 && (aws === "*" || (Array.isArray(aws) && aws.includes("*"))))
      return true;
  }
  throw new UnsupportedPolicyError(`${where}: Principal ${JSON.stringify(principal)} is not supported`);
}

function conditionsHold(s: Statement, request: IamRequest, where: string): boolean {
  for (const [operator, block] of Object.entries(s.Condition ?? {})) {
    const ifExists = operator.endsWith("IfExists");
    const bare = operator.replace(/IfExists$/, "");
    for (const [key, raw] of Object.entries(block)) {
      if (!request.knownKeys.has(key))
        throw new UnsupportedPolicyError(
          `${where}: condition key ${key} (${operator}) is not modelled for ${request.call}; model it in test/support/record-calls.ts`,
        );
      const values = (Array.isArray(raw) ? raw : [raw]).map(String);
      const actual = request.context[key];
      if (bare === "Null") {
        if (values.length !== 1 || !["true", "false"].includes(values[0]!))
          throw new UnsupportedPolicyError(`${where}: Null takes "true" or "false"`);
        if ((actual === undefined) !== (values[0] === "true")) return false;
        continue;
      }
      if (actual === undefined) {
        // An absent key: IfExists and the negated operators hold, the others do not.
        if (ifExists || NEGATED.has(bare)) continue;
        return false;
      }
      const matcher = OPERATORS[bare]!;
      const patterns = values.map((v) => substitute(v, request, where));
      const any = patterns.some((p) => p !== undefined && matcher(p, actual));
      if (NEGATED.has(bare) ? any : !any) return false;
    }
  }
  return true;
}

/** Whether statement `s` applies to the request (action, resource, principal, conditions). */
export function statementApplies(
  s: Statement,
  request: IamRequest,
  where: string,
  resourcePolicy = false,
): boolean {
  const actionHit = (patterns: readonly string[]) => patterns.some((p) => globMatch(p, request.action, true));
  if (s.Action !== undefined ? !actionHit(list(s.Action)) : actionHit(list(s.NotAction))) return false;
  const resourceHit = (patterns: readonly string[]) =>
    patterns.some((p) => {
      const expanded = substitute(p, request, where);
      return expanded !== undefined && arnMatch(expanded, request.resource);
    });
  if (s.Resource !== undefined ? !resourceHit(list(s.Resource)) : resourceHit(list(s.NotResource)))
    return false;
  if (resourcePolicy) {
    if (!principalMatches(s.Principal, where)) return false;
  } else if (s.Principal !== undefined) {
    throw new UnsupportedPolicyError(`${where}: an identity policy statement with a Principal`);
  }
  return conditionsHold(s, request, where);
}

export interface Decision {
  readonly allowed: boolean;
  /** Why, in a line: the deny that applied, the layer that does not allow, or the allowing statements. */
  readonly reason: string;
  /** The identity statements that allow it: `[policy index, statement index]`. */
  readonly allowedBy: readonly (readonly [number, number])[];
}

/**
 * IAM's decision for a role's request within one account: any applicable Deny (identity, boundary or
 * resource policy) refuses; otherwise the identity policies must allow it and, with a permissions boundary,
 * the boundary must too. Resource policies contribute their Denies only (the role's own grant is proven).
 */
export function evaluate(
  request: IamRequest,
  layers: {
    readonly identity: readonly NamedPolicy[];
    readonly boundary?: NamedPolicy;
    readonly resource?: readonly NamedPolicy[];
  },
): Decision {
  const all: [NamedPolicy, boolean][] = [
    ...layers.identity.map((p): [NamedPolicy, boolean] => [p, false]),
    ...(layers.boundary ? [[layers.boundary, false] as [NamedPolicy, boolean]] : []),
    ...(layers.resource ?? []).map((p): [NamedPolicy, boolean] => [p, true]),
  ];
  for (const [policy, isResource] of all)
    for (const [i, s] of statementsOf(policy.document).entries())
      if (s.Effect === "Deny" && statementApplies(s, request, statementName(policy, i), isResource))
        return { allowed: false, reason: `denied by ${statementName(policy, i)}`, allowedBy: [] };
  const allowedBy: [number, number][] = [];
  layers.identity.forEach((policy, p) =>
    statementsOf(policy.document).forEach((s, i) => {
      if (s.Effect === "Allow" && statementApplies(s, request, statementName(policy, i)))
        allowedBy.push([p, i]);
    }),
  );
  if (allowedBy.length === 0)
    return { allowed: false, reason: "no identity policy statement allows it", allowedBy };
  if (layers.boundary) {
    const { boundary } = layers;
    const within = statementsOf(boundary.document).some(
      (s, i) => s.Effect === "Allow" && statementApplies(s, request, statementName(boundary, i)),
    );
    if (!within)
      return { allowed: false, reason: `outside the permissions boundary ${boundary.name}`, allowedBy };
  }
  return {
    allowed: true,
    reason: `allowed by ${allowedBy.map(([p, i]) => statementName(layers.identity[p]!, i)).join(", ")}`,
    allowedBy,
  };
}
