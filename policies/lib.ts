import * as policySdk from "@pulumi/policy";
import type {
  PolicyProviderResource,
  PolicyResource,
  StackValidation,
  StackValidationArgs,
} from "@pulumi/policy";
import { COST_TAGS } from "@crucible/runtime/catalog";

/**
 * Helpers every policy family shares: values that may be unknown during preview, tags, IAM-style
 * policy documents, and the join between a resource and the resources that configure it (a bucket
 * and its public-access block, a repository and its lifecycle policy, a role and its policies).
 */

/**
 * What @pulumi/policy exports from its proxy module; its typings declare that module empty, so the
 * two are typed here.
 */
export const sdkProxy = policySdk as unknown as {
  readonly UnknownValueError: new (...args: never[]) => Error;
  readonly unknownCheckingProxy: <T extends object>(value: T) => T;
};

/** Stands for a value the engine cannot know during preview (it depends on a resource not yet created). */
export const UNKNOWN: unique symbol = Symbol("unknown during preview");
export type Maybe<T> = T | typeof UNKNOWN;

/**
 * Reads through the engine's unknown-checking proxy: a read that touches a value unknown during
 * preview yields {@link UNKNOWN} instead of aborting the whole policy, so an unknown is never taken
 * for a violation. Read down to the value you compare, inside `read`.
 */
export function known<T>(read: () => T): Maybe<T> {
  try {
    return read();
  } catch (err) {
    if (err instanceof sdkProxy.UnknownValueError) return UNKNOWN;
    throw err;
  }
}

export function asList<T>(value: T | readonly T[] | undefined | null): T[] {
  if (value === undefined || value === null) return [];
  return Array.isArray(value) ? [...(value as readonly T[])] : [value as T];
}

/** JSON documents arrive as text (what `JSON.stringify` produced) or, in @pulumi/aws 7, as objects. */
export function parseJson(value: unknown): unknown {
  if (typeof value !== "string") return value;
  try {
    return JSON.parse(value) as unknown;
  } catch {
    return undefined;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

// ---------------------------------------------------------------------------------------------
// Tags

/** Tags as a map, from the map most resources take or the `{ key, value }` list Auto Scaling groups take. */
export function tagMap(tags: unknown): Record<string, string> {
  if (Array.isArray(tags)) {
    const out: Record<string, string> = {};
    for (const t of tags as unknown[]) {
      if (isRecord(t) && typeof t.key === "string") out[t.key] = String(t.value);
    }
    return out;
  }
  if (!isRecord(tags)) return {};
  return Object.fromEntries(Object.entries(tags).map(([k, v]) => [k, String(v)]));
}

/**
 * The AWS provider's `defaultTags.tags`. Provider inputs reach the pack as they are stored: nested
 * settings as JSON text, or as objects.
 */
export function providerDefaultTags(provider: PolicyProviderResource | undefined): Record<string, string> {
  if (!provider || !provider.type.startsWith("pulumi:providers:aws")) return {};
  const tags = known(() => {
    const defaults = parseJson(provider.props.defaultTags);
    return isRecord(defaults) ? tagMap(defaults.tags) : {};
  });
  return tags === UNKNOWN ? {} : tags;
}

/** The `crucible:tier` of a resource: its tags, or the tags it gives the instances it launches. */
export function tierTag(props: Record<string, unknown>): Maybe<string | undefined> {
  return known(() => {
    const own = tagMap(props.tags)[COST_TAGS.tier];
    if (own !== undefined) return own;
    for (const spec of asList(props.tagSpecifications as unknown[] | undefined)) {
      const tier = isRecord(spec) ? tagMap(spec.tags)[COST_TAGS.tier] : undefined;
      if (tier !== undefined) return tier;
    }
    return undefined;
  });
}

// ---------------------------------------------------------------------------------------------
// Policy documents (IAM, bucket, key policies)

export interface Statement {
  readonly Sid?: string;
  readonly Effect?: string;
  readonly Principal?: unknown;
  readonly Action?: string | string[];
  readonly NotAction?: string | string[];
  readonly Resource?: string | string[];
  readonly Condition?: Record<string, Record<string, unknown>>;
}

/** The statements of a policy document, or undefined when the text is not a policy document. */
export function statementsOf(document: unknown): Statement[] | undefined {
  const doc = parseJson(document);
  if (!isRecord(doc) || doc.Statement === undefined) return undefined;
  return asList(doc.Statement as Statement | Statement[]).filter(isRecord);
}

export const actionsOf = (s: Statement): string[] => asList(s.Action).map(String);
export const resourcesOf = (s: Statement): string[] => asList(s.Resource).map(String);

/** True for an action that only reads (`Get*`, `List*`, `Describe*` ...), by the verb after the service. */
export function isReadOnlyAction(action: string): boolean {
  const verb = action.split(":")[1] ?? "";
  return /^(Get|List|Describe|BatchGet|Head|View|Lookup)/.test(verb);
}

// ---------------------------------------------------------------------------------------------
// Joins between a resource and the resources that configure it

/** Resource classes whose instances a policy treats alike (a bucket is `Bucket` or the older `BucketV2`). */
export type ResourceClass = abstract new (...args: never[]) => unknown;

export const typeOf = (cls: ResourceClass): string => {
  const type = (cls as { __pulumiType?: unknown }).__pulumiType;
  if (typeof type !== "string") throw new Error(`${cls.name} is not a Pulumi resource class`);
  return type;
};

export const ofTypes = (resources: readonly PolicyResource[], classes: readonly ResourceClass[]) => {
  const types = new Set(classes.map(typeOf));
  return resources.filter((r) => types.has(r.type));
};

/** Which targets each configuring resource points at, and whether some pointer could not be read. */
export interface Join {
  /** The configuring resources that point at `target`. */
  of(target: PolicyResource): PolicyResource[];
  /**
   * True when some configuring resource's pointer is unknown (preview of a new stack) and the engine
   * gave no property dependency: a target without configuration may then just be unresolved.
   */
  readonly undecided: boolean;
}

/**
 * Joins `targets` with the `configuring` resources whose `prop` refers to them: first by the
 * engine's property dependencies (known even when the value is not), else by value, comparing
 * with what `keysOf` says identifies a target (its name, id, URL or ARN).
 */
export function join(
  targets: readonly PolicyResource[],
  configuring: readonly PolicyResource[],
  prop: string,
  keysOf: (target: PolicyResource) => readonly unknown[],
): Join {
  const byTarget = new Map<PolicyResource, PolicyResource[]>();
  const attach = (t: PolicyResource, c: PolicyResource) => byTarget.set(t, [...(byTarget.get(t) ?? []), c]);
  const targetKeys = targets.map((target) => ({ target, keys: keysOf(target) }));
  const someTargetKeyUnknown = targetKeys.some(({ keys }) => keys.length === 0);
  let undecided = false;
  for (const c of configuring) {
    const deps = (c.propertyDependencies?.[prop] ?? []).filter((d) => targets.includes(d));
    if (deps.length > 0) {
      deps.forEach((t) => attach(t, c));
      continue;
    }
    const value = known(() => c.props[prop] as unknown);
    if (value === UNKNOWN) {
      undecided = true;
      continue;
    }
    const matches = targetKeys.filter(({ keys }) => keys.includes(value));
    matches.forEach(({ target }) => attach(target, c));
    if (matches.length === 0 && someTargetKeyUnknown) undecided = true;
  }
  return { of: (t) => byTarget.get(t) ?? [], undecided };
}

/**
 * Reads a property of a target for {@link join}: the keys must be read through {@link known}, since
 * a target's name may itself be unknown during preview.
 */
export function keys(r: PolicyResource, ...props: string[]): unknown[] {
  return props.map((p) => known(() => r.props[p] as unknown)).filter((v) => v !== UNKNOWN && v !== undefined);
}

/** A stack validation that only runs where the stack has at least one resource of the given classes. */
export function forStacksWith(
  classes: readonly ResourceClass[],
  validate: (args: StackValidationArgs, report: (message: string, urn?: string) => void) => void,
): StackValidation {
  return (args, report) => {
    if (ofTypes(args.resources, classes).length === 0) {
      args.notApplicable(`the stack declares no ${classes.map(typeOf).join(" or ")}`);
    }
    validate(args, report);
  };
}
