import type {
  Policy,
  PolicyProviderResource,
  PolicyResource,
  PolicyResourceOptions,
  ResourceValidationArgs,
  ResourceValidationPolicy,
  StackValidationArgs,
  StackValidationPolicy,
} from "@pulumi/policy";
import { specialSecretSig, specialSigKey } from "@pulumi/pulumi/runtime/rpc";
import { sdkProxy } from "../../policies/lib";

const { UnknownValueError, unknownCheckingProxy } = sdkProxy;

/**
 * Runs one policy the way the policy pack's server does (@pulumi/policy 1.21 server.js), without the
 * Pulumi engine: props behind the same unknown-checking proxy, the same type fast path, the same
 * handling of "not applicable" and of values unknown during preview.
 */

/**
 * The sentinels the engine puts where a value is unknown during preview (@pulumi/policy's proxy.js
 * recognises exactly these strings; its typings do not export them).
 */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const proxy = require("@pulumi/policy/proxy") as Record<string, string>;
export const UNKNOWN_VALUE = {
  string: proxy.unknownStringValue!,
  number: proxy.unknownNumberValue!,
  boolean: proxy.unknownBooleanValue!,
  array: proxy.unknownArrayValue!,
  object: proxy.unknownObjectValue!,
};

export interface TestResource {
  readonly type: string;
  readonly name: string;
  /** Inputs for resource policies, outputs for stack policies, as the engine sends them. */
  readonly props: Record<string, unknown>;
  readonly urn?: string;
  readonly parent?: string;
  readonly provider?: PolicyProviderResource;
  /** Per property, the URNs of the resources its value came from (what the engine records). */
  readonly propertyDependencies?: Record<string, readonly string[]>;
}

export interface Outcome {
  readonly violations: { readonly message: string; readonly urn?: string }[];
  /** Why the policy said it does not apply, if it did. */
  readonly notApplicable?: string;
  /** The advisory note the engine prints when a policy read a value unknown during preview. */
  readonly unknown?: string;
}

/**
 * Props as the pack's server hands them to policies: secrets unwrapped to their plain values (what
 * @pulumi/policy's deserializeProperties does), undefined properties dropped, nothing shared with the caller.
 */
function fromWire(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(fromWire);
  if (typeof value !== "object" || value === null) return value;
  const record = value as Record<string, unknown>;
  if (record[specialSigKey] === specialSecretSig) return fromWire(record.value);
  return Object.fromEntries(
    Object.entries(record)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => [k, fromWire(v)]),
  );
}

const wireProps = (props: Record<string, unknown>) =>
  unknownCheckingProxy(fromWire(props) as Record<string, unknown>);

class NotApplicable extends Error {
  constructor(readonly reason: string) {
    super(reason);
  }
}

export const urnOf = (type: string, name: string) => `urn:pulumi:test::crucible::${type}::${name}`;

const options = (parent?: string): PolicyResourceOptions => ({
  protect: false,
  ignoreChanges: [],
  aliases: [],
  customTimeouts: { createSeconds: 0, updateSeconds: 0, deleteSeconds: 0 },
  additionalSecretOutputs: [],
  ...(parent ? { parent } : {}),
});

const isTypeOf = (type: string, cls: unknown) => (cls as { __pulumiType?: string }).__pulumiType === type;

function common(config: Record<string, unknown>) {
  return {
    stackTags: new Map<string, string>(),
    getConfig: <T extends object>() => structuredClone(config) as T,
    notApplicable: (reason?: string): never => {
      throw new NotApplicable(reason ?? "not applicable");
    },
  };
}

async function run(body: () => Promise<void> | void, violations: Outcome["violations"]): Promise<Outcome> {
  try {
    await body();
    return { violations };
  } catch (err) {
    if (err instanceof NotApplicable) return { violations, notApplicable: err.reason };
    if (err instanceof UnknownValueError) return { violations, unknown: err.message };
    throw err;
  }
}

/** Runs a resource policy on one resource; `config` is what the pack's config file gives the policy. */
export async function validateResource(
  policy: ResourceValidationPolicy,
  resource: TestResource,
  config: Record<string, unknown> = {},
): Promise<Outcome> {
  const validations = [policy.validateResource ?? []].flat();
  const fast =
    validations.length === 1 ? (validations[0] as { __pulumiType?: string }).__pulumiType : undefined;
  if (fast && fast !== resource.type) {
    return { violations: [], notApplicable: `Policy only applies to resources of type '${fast}'` };
  }
  const violations: { message: string }[] = [];
  const outcomes: Outcome[] = [];
  for (const validate of validations) {
    const props = wireProps(resource.props);
    const args: ResourceValidationArgs = {
      ...common(config),
      type: resource.type,
      props,
      urn: resource.urn ?? urnOf(resource.type, resource.name),
      name: resource.name,
      opts: options(resource.parent),
      ...(resource.provider ? { provider: resource.provider } : {}),
      isType: (cls) => isTypeOf(resource.type, cls),
      asType: ((cls: unknown) =>
        isTypeOf(resource.type, cls) ? props : undefined) as ResourceValidationArgs["asType"],
    };
    outcomes.push(await run(() => validate(args, (message) => violations.push({ message })), violations));
  }
  const applicable = outcomes.filter((o) => o.notApplicable === undefined);
  return {
    violations,
    ...(applicable.length === 0 ? { notApplicable: outcomes[0]?.notApplicable } : {}),
    ...(outcomes.find((o) => o.unknown) ? { unknown: outcomes.find((o) => o.unknown)!.unknown } : {}),
  };
}

/** Runs a stack policy over a stack's resources (outputs as props, dependencies by URN). */
export async function validateStack(
  policy: StackValidationPolicy,
  resources: readonly TestResource[],
  config: Record<string, unknown> = {},
): Promise<Outcome> {
  const built = resources.map((r) => {
    const props = wireProps(r.props);
    const resource: PolicyResource = {
      type: r.type,
      props,
      urn: r.urn ?? urnOf(r.type, r.name),
      name: r.name,
      opts: options(r.parent),
      dependencies: [],
      propertyDependencies: {},
      ...(r.provider ? { provider: r.provider } : {}),
      isType: (cls) => isTypeOf(r.type, cls),
      asType: ((cls: unknown) => (isTypeOf(r.type, cls) ? props : undefined)) as PolicyResource["asType"],
    };
    return { source: r, resource };
  });
  const byUrn = new Map(built.map(({ resource }) => [resource.urn, resource]));
  for (const { source, resource } of built) {
    if (source.parent) resource.parent = byUrn.get(source.parent);
    for (const [prop, urns] of Object.entries(source.propertyDependencies ?? {})) {
      const deps = urns.map((u) => byUrn.get(u)).filter((d): d is PolicyResource => d !== undefined);
      resource.propertyDependencies[prop] = deps;
      resource.dependencies.push(...deps.filter((d) => !resource.dependencies.includes(d)));
    }
  }
  const violations: { message: string; urn?: string }[] = [];
  const args: StackValidationArgs = { ...common(config), resources: built.map((b) => b.resource) };
  return run(
    () => policy.validateStack(args, (message, urn) => violations.push({ message, ...(urn ? { urn } : {}) })),
    violations,
  );
}

export const isStackPolicy = (p: Policy): p is StackValidationPolicy =>
  typeof (p as StackValidationPolicy).validateStack === "function";

export const messages = (o: Outcome) => o.violations.map((v) => v.message);
