import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import * as pulumi from "@pulumi/pulumi";
import { parse as parseYaml } from "yaml";
import { IMAGE_FAMILIES } from "../../runtime/src/catalog/image-matrix";

/**
 * Runs the real Pulumi program of a stack under Pulumi's mock engine: no CLI, no cloud. The program,
 * its config file and its code are exactly what `pulumi preview` runs; only the engine answering
 * resource registrations and data-source calls is replaced, with answers shaped like AWS's.
 */

export const ROOT = path.resolve(__dirname, "..", "..");
export const STACKS = ["dev", "staging", "prod"] as const;
export const MOCK_ACCOUNT_ID = "123456789012";

export interface DeclaredResource {
  readonly urn: string;
  readonly type: string;
  readonly name: string;
  readonly custom: boolean;
  /** The id the mock engine gave a custom resource (what other resources' inputs name it by). */
  readonly id: string | undefined;
  /** URN of the parent; the stack itself for top-level resources. */
  readonly parent: string | undefined;
  /** Provider reference (`<provider urn>::<id>`) a custom resource was registered with; undefined for components. */
  readonly provider: string | undefined;
  readonly inputs: Record<string, unknown>;
  /** What the mock engine answered: the inputs plus the ids and ARNs AWS would assign. */
  readonly state: Record<string, unknown>;
}

export interface Plan {
  readonly stack: string;
  readonly resources: readonly DeclaredResource[];
  readonly outputs: Record<string, unknown>;
  ofType(type: string): DeclaredResource[];
  /** The resource of that type and name; throws when absent so a test names what is missing. */
  get(type: string, name: string): DeclaredResource;
  /** Resources whose ancestors include the given URN. */
  childrenOf(urn: string): DeclaredResource[];
}

/** Reads `Pulumi.<stack>.yaml` into the flat `namespace:key` → string map the engine hands programs. */
export function readStackConfig(stack: string, root = ROOT): Record<string, string> {
  const file = path.join(root, `Pulumi.${stack}.yaml`);
  const doc = parseYaml(readFileSync(file, "utf8")) as { config?: Record<string, unknown> } | null;
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(doc?.config ?? {})) {
    if (typeof value === "object" && value !== null && "secure" in value) {
      throw new Error(`${file}: ${key} is an encrypted secret, which the offline plan cannot decrypt`);
    }
    out[key] = typeof value === "string" ? value : JSON.stringify(value);
  }
  return out;
}

const AZS: Record<string, number> = {
  "us-east-1": 6,
  "us-east-2": 3,
  "us-west-1": 2,
  "us-west-2": 4,
  "eu-west-1": 3,
  "eu-central-1": 3,
  "ap-northeast-1": 3,
};

function hex(seed: string, length: number): string {
  return createHash("sha256").update(seed).digest("hex").slice(0, length);
}

/** Ids with the prefixes AWS uses, so code that parses or matches them sees realistic values. */
const ID_PREFIXES: Record<string, string> = {
  "aws:ec2/vpc:Vpc": "vpc-",
  "aws:ec2/subnet:Subnet": "subnet-",
  "aws:ec2/securityGroup:SecurityGroup": "sg-",
  "aws:ec2/launchTemplate:LaunchTemplate": "lt-",
  "aws:ec2/internetGateway:InternetGateway": "igw-",
  "aws:ec2/natGateway:NatGateway": "nat-",
  "aws:ec2/eip:Eip": "eipalloc-",
  "aws:ec2/routeTable:RouteTable": "rtb-",
  "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce-",
  "aws:kms/key:Key": "",
};

function mockState(
  args: pulumi.runtime.MockResourceArgs,
  region: string,
): { id: string; state: Record<string, unknown> } {
  const { type, name } = args;
  const inputs = args.inputs as Record<string, unknown>;
  const seed = `${type}::${name}`;
  const [pkg, mod] = type.split(":");
  const service = (mod ?? "").split("/")[0] ?? "";
  const prefix = ID_PREFIXES[type];
  const id =
    prefix !== undefined
      ? `${prefix}${hex(seed, 17)}`
      : type === "aws:kms/key:Key"
        ? `${hex(seed, 8)}-${hex(seed + 1, 4)}-${hex(seed + 2, 4)}-${hex(seed + 3, 4)}-${hex(seed + 4, 12)}`
        : `${name}-${hex(seed, 7)}`;
  const state: Record<string, unknown> = { ...inputs };
  if (pkg === "aws") {
    const resourceName = (inputs.name as string | undefined) ?? (inputs.bucket as string | undefined) ?? id;
    state.arn ??= `arn:aws:${service}:${service === "iam" || service === "s3" ? "" : region}:${service === "s3" ? "" : MOCK_ACCOUNT_ID}:${service === "s3" ? resourceName : `${mod?.split("/")[1] ?? service}/${resourceName}`}`;
  }
  switch (type) {
    case "aws:s3/bucket:Bucket":
    case "aws:s3/bucketV2:BucketV2":
      state.bucket ??= `${name}-${hex(seed, 7)}`;
      state.arn = `arn:aws:s3:::${state.bucket as string}`;
      state.bucketRegionalDomainName = `${state.bucket as string}.s3.${region}.amazonaws.com`;
      break;
    case "aws:sqs/queue:Queue": {
      const queueName =
        (inputs.name as string | undefined) ?? `${name}-${hex(seed, 7)}${inputs.fifoQueue ? ".fifo" : ""}`;
      state.name = queueName;
      state.arn = `arn:aws:sqs:${region}:${MOCK_ACCOUNT_ID}:${queueName}`;
      state.url = `https://sqs.${region}.amazonaws.com/${MOCK_ACCOUNT_ID}/${queueName}`;
      break;
    }
    case "aws:cloudwatch/eventRule:EventRule":
      state.name ??= `${name}-${hex(seed, 7)}`;
      state.arn = `arn:aws:events:${region}:${MOCK_ACCOUNT_ID}:rule/${state.name as string}`;
      break;
    case "aws:sns/topic:Topic":
      state.name ??= `${name}-${hex(seed, 7)}`;
      state.arn = `arn:aws:sns:${region}:${MOCK_ACCOUNT_ID}:${state.name as string}`;
      break;
    case "aws:iam/role:Role":
    case "aws:iam/instanceProfile:InstanceProfile":
    case "aws:iam/policy:Policy": {
      state.name ??= `${name}-${hex(seed, 7)}`;
      const kind = type
        .split(":")[2]!
        .replace(/^[A-Z]/, (c) => c.toLowerCase())
        .replace("InstanceProfile", "instance-profile");
      state.arn = `arn:aws:iam::${MOCK_ACCOUNT_ID}:${kind === "instanceProfile" ? "instance-profile" : kind}/${state.name as string}`;
      // A role's unique id (AROA...): what SQS reports as the SenderId of its sessions.
      if (type === "aws:iam/role:Role") state.uniqueId = `AROA${hex(seed, 17).toUpperCase()}`;
      break;
    }
    case "aws:iam/openIdConnectProvider:OpenIdConnectProvider":
      state.arn = `arn:aws:iam::${MOCK_ACCOUNT_ID}:oidc-provider/${(inputs.url as string).replace(/^https:\/\//, "")}`;
      break;
    case "aws:ecr/repository:Repository":
      state.name ??= name;
      state.repositoryUrl = `${MOCK_ACCOUNT_ID}.dkr.ecr.${region}.amazonaws.com/${state.name as string}`;
      state.registryId = MOCK_ACCOUNT_ID;
      break;
    case "aws:autoscaling/group:Group":
      state.name ??= `${name}-${hex(seed, 7)}`;
      state.arn = `arn:aws:autoscaling:${region}:${MOCK_ACCOUNT_ID}:autoScalingGroup:${hex(seed, 8)}:autoScalingGroupName/${state.name as string}`;
      break;
    case "aws:ec2/launchTemplate:LaunchTemplate":
      state.latestVersion = 1;
      break;
    case "docker:index/image:Image":
      state.repoDigest = `${inputs.imageName as string}@sha256:${hex(seed, 64)}`.replace(/:[^:/@]+@/, "@");
      state.imageName = inputs.imageName;
      break;
    case "pulumi:pulumi:StackReference":
      state.outputs = upstreamOutputs(inputs.name as string);
      break;
  }
  return { id, state };
}

/** The account and region of every upstream stack a promoting stack references. */
export const UPSTREAM_ACCOUNT_ID = MOCK_ACCOUNT_ID;
export const UPSTREAM_REGION = "us-east-1";

/** What an upstream stack (the `promoteFrom` of a promoting stack) exports: its images by digest. */
function upstreamOutputs(stackName: string): Record<string, unknown> {
  return {
    imageRefs: Object.fromEntries(
      IMAGE_FAMILIES.map((f) => [
        f,
        `${UPSTREAM_ACCOUNT_ID}.dkr.ecr.${UPSTREAM_REGION}.amazonaws.com/crucible/${stackName.split("/").pop()}/${f}@sha256:${hex(`${stackName}/${f}`, 64)}`,
      ]),
    ),
  };
}

function mockCall(args: pulumi.runtime.MockCallArgs, region: string): Record<string, unknown> {
  const inputs = args.inputs as Record<string, unknown>;
  switch (args.token) {
    case "aws:index/getAvailabilityZones:getAvailabilityZones": {
      const count = AZS[region] ?? 3;
      const names = Array.from({ length: count }, (_, i) => `${region}${String.fromCharCode(97 + i)}`);
      const short = region.replace(/-(\w)\w*-/, (_m, c: string) => c).replace(/-/g, "");
      return { id: region, names, zoneIds: names.map((_, i) => `${short}-az${i + 1}`), state: "available" };
    }
    case "aws:ecr/getAuthorizationToken:getAuthorizationToken":
      return {
        id: region,
        authorizationToken: Buffer.from("AWS:mock-token").toString("base64"),
        userName: "AWS",
        password: "mock-token",
        proxyEndpoint: `https://${(inputs.registryId as string | undefined) ?? MOCK_ACCOUNT_ID}.dkr.ecr.${region}.amazonaws.com`,
        expiresAt: "2026-01-01T12:00:00Z",
      };
    case "aws:ec2/getPrefixList:getPrefixList": {
      // AWS-managed service prefix lists are named com.amazonaws.<region>.<service>.
      const name = (inputs.name as string | undefined) ?? `com.amazonaws.${region}.s3`;
      return { id: `pl-${hex(name, 8)}`, name, cidrBlocks: ["52.216.0.0/15", "54.231.0.0/16"] };
    }
    case "aws:ec2/getVpc:getVpc": {
      const id = inputs.id as string;
      return {
        id,
        arn: `arn:aws:ec2:${region}:${MOCK_ACCOUNT_ID}:vpc/${id}`,
        cidrBlock: `10.${parseInt(hex(id, 2), 16) % 200}.0.0/16`,
        enableDnsHostnames: true,
        enableDnsSupport: true,
        state: "available",
        ownerId: MOCK_ACCOUNT_ID,
      };
    }
    case "aws:index/getCallerIdentity:getCallerIdentity":
      return {
        accountId: MOCK_ACCOUNT_ID,
        arn: `arn:aws:iam::${MOCK_ACCOUNT_ID}:user/ci`,
        userId: "AIDAEXAMPLE",
        id: MOCK_ACCOUNT_ID,
      };
    case "aws:iam/getOpenIdConnectProvider:getOpenIdConnectProvider": {
      // The account's existing provider for the URL asked for (an account holds one per URL).
      const host = (
        (inputs.url as string | undefined) ?? "https://token.actions.githubusercontent.com"
      ).replace(/^https:\/\//, "");
      const arn = `arn:aws:iam::${MOCK_ACCOUNT_ID}:oidc-provider/${host}`;
      return {
        id: arn,
        arn,
        url: host,
        clientIdLists: ["sts.amazonaws.com"],
        thumbprintLists: [],
        tags: {},
      };
    }
    case "aws:index/getRegion:getRegion":
      return {
        id: region,
        name: region,
        region,
        endpoint: `ec2.${region}.amazonaws.com`,
        description: region,
      };
    case "aws:index/getPartition:getPartition":
      return { id: "aws", partition: "aws", dnsSuffix: "amazonaws.com", reverseDnsPrefix: "com.amazonaws" };
    case "aws:ssm/getParameter:getParameter":
      return {
        id: inputs.name,
        name: inputs.name,
        type: "String",
        value: `ami-${hex(String(inputs.name), 17)}`,
        insecureValue: `ami-${hex(String(inputs.name), 17)}`,
        version: 1,
        arn: `arn:aws:ssm:${region}::parameter${String(inputs.name)}`,
      };
    default:
      throw new Error(
        `the offline plan has no answer for data source ${args.token}; add one to scripts/lib/mock-engine.ts`,
      );
  }
}

interface RegisterRequest {
  getType(): string;
  getName(): string;
  getParent(): string;
  getCustom(): boolean;
}

interface MockMonitorLike {
  newUrn(parent: string, type: string, name: string): string;
  registerResource(req: RegisterRequest, callback: (err: unknown, resp: unknown) => void): Promise<void>;
  /** Resources read rather than registered (a stack reference) come through here. */
  readResource(
    req: Omit<RegisterRequest, "getCustom">,
    callback: (err: unknown, resp: unknown) => void,
  ): Promise<void>;
}

async function resolveDeep(value: unknown): Promise<unknown> {
  if (pulumi.Output.isInstance(value)) {
    return resolveDeep(await new Promise((resolve) => value.apply(resolve)));
  }
  if (value instanceof Promise) return resolveDeep(await value);
  if (Array.isArray(value)) return Promise.all(value.map(resolveDeep));
  if (pulumi.Resource.isInstance(value)) return "<resource>";
  if (typeof value === "object" && value !== null) {
    const entries = await Promise.all(
      Object.entries(value).map(async ([k, v]) => [k, await resolveDeep(v)] as const),
    );
    return Object.fromEntries(entries);
  }
  return value;
}

/**
 * Runs the program (`infra/index.ts`) for `stack` with `Pulumi.<stack>.yaml`, or
 * with `config` when given (tests use it to try bad values), and returns what it declares.
 */
export async function runProgram(
  stack: string,
  options: {
    readonly config?: Record<string, string>;
    /** Loads the program module; tests pass one that defeats their module cache. */
    readonly load?: () => Promise<unknown>;
  } = {},
): Promise<Plan> {
  const config = options.config ?? readStackConfig(stack);
  const region = config["aws:region"] ?? "us-east-1";
  const declared: DeclaredResource[] = [];
  const parents = new Map<string, { parent: string; type: string; name: string; custom: boolean }>();

  pulumi.runtime.setAllConfig(config);
  await pulumi.runtime.setMocks(
    {
      newResource: (args) => {
        const { id, state } = mockState(args, region);
        declared.push({
          urn: "",
          id: args.custom === false ? undefined : id,
          type: args.type,
          name: args.name,
          custom: args.custom ?? true,
          parent: undefined,
          provider: args.provider || undefined,
          inputs: args.inputs as Record<string, unknown>,
          state,
        });
        return { id, state };
      },
      call: (args) => mockCall(args, region),
    },
    "crucible",
    stack,
    false,
  );

  // The mock API hands newResource no parent; record it from the registration request instead.
  const monitor = pulumi.runtime.getMonitor() as unknown as MockMonitorLike;
  const register = monitor.registerResource.bind(monitor);
  monitor.registerResource = (req, callback) => {
    parents.set(`${req.getType()}::${req.getName()}`, {
      parent: req.getParent(),
      type: req.getType(),
      name: req.getName(),
      custom: req.getCustom(),
    });
    return register(req, callback);
  };
  const read = monitor.readResource.bind(monitor);
  monitor.readResource = (req, callback) => {
    parents.set(`${req.getType()}::${req.getName()}`, {
      parent: req.getParent(),
      type: req.getType(),
      name: req.getName(),
      custom: true,
    });
    return read(req, callback);
  };

  const load = options.load ?? (() => import(path.join(ROOT, "infra", "index.ts")));
  let exported: Record<string, unknown> = {};
  // A program that throws (bad config) must fail this call, not leave Pulumi's own promises rejected.
  let failure: unknown;
  // An apply that throws (a check that needs a data source's answer) leaves Pulumi's promises rejected
  // with no handler; the language host fails the run with it, and so does this, naming the root cause.
  const unhandled = await withUnhandledRejections(async () => {
    await pulumi.runtime.runInPulumiStack(async () => {
      try {
        const mod = (await load()) as Record<string, unknown>;
        const program = (mod.default ?? mod) as unknown;
        exported = (typeof program === "function" ? await (program as () => unknown)() : program) as Record<
          string,
          unknown
        >;
      } catch (err) {
        failure = err;
      }
      return failure ? {} : exported;
    });
    await pulumi.runtime.disconnect();
  });
  if (unhandled) {
    // The abandoned registrations would otherwise be reported as leaked promises when the process exits.
    pulumi.runtime.resetOptions("crucible", stack, 1, "", "", false, "");
  }
  failure ??= unhandled;
  if (failure instanceof Error) throw failure;
  if (failure !== undefined) throw new Error(`the program failed: ${JSON.stringify(failure)}`);
  const outputs = (await resolveDeep(
    Object.fromEntries(Object.entries(exported).filter(([k]) => k !== "default" && k !== "__esModule")),
  )) as Record<string, unknown>;

  const resources = declared.map((r) => {
    const reg = parents.get(`${r.type}::${r.name}`);
    return {
      ...r,
      urn: reg ? monitor.newUrn(reg.parent, r.type, r.name) : "",
      parent: reg?.parent || undefined,
    };
  });
  return makePlan(stack, resources, outputs);
}

/**
 * Runs `fn` owning the process's unhandled rejections, as Pulumi's language host does, and returns the
 * first. Like the host, it stops at that failure: the resource whose inputs failed never finishes
 * registering, so Pulumi would wait for it forever (the next run's `setMocks` resets that state).
 */
async function withUnhandledRejections(fn: () => Promise<void>): Promise<Error | undefined> {
  const previous = process.listeners("unhandledRejection");
  let first: Error | undefined;
  let seen = 0;
  let failed!: () => void;
  const failure = new Promise<void>((resolve) => (failed = resolve));
  const record = (reason: unknown) => {
    seen += 1;
    if (first) return;
    const message = reason instanceof Error ? reason.message : String(reason);
    // Pulumi wraps the cause once per property it was serialising.
    first = new Error(message.replace(/^(error serializing property "[^"]*": )+/, ""));
    failed();
  };
  process.removeAllListeners("unhandledRejection");
  process.on("unhandledRejection", record);
  try {
    await Promise.race([fn(), failure]);
    // Rejections are reported once the microtask queue drains: collect the rest of a failure's here.
    for (let before = -1; before !== seen;) {
      before = seen;
      await new Promise((resolve) => setImmediate(resolve));
    }
  } finally {
    process.off("unhandledRejection", record);
    for (const listener of previous) process.on("unhandledRejection", listener);
  }
  return first;
}

function makePlan(stack: string, resources: DeclaredResource[], outputs: Record<string, unknown>): Plan {
  const byUrn = new Map(resources.map((r) => [r.urn, r]));
  const isDescendant = (r: DeclaredResource, ancestor: string): boolean => {
    for (let p = r.parent; p; p = byUrn.get(p)?.parent) if (p === ancestor) return true;
    return false;
  };
  return {
    stack,
    resources,
    outputs,
    ofType: (type) => resources.filter((r) => r.type === type),
    get: (type, name) => {
      const found = resources.find((r) => r.type === type && r.name === name);
      if (!found) {
        const names = resources.filter((r) => r.type === type).map((r) => r.name);
        throw new Error(
          `stack ${stack} declares no ${type} named ${name}; it declares: ${names.join(", ") || "none"}`,
        );
      }
      return found;
    },
    childrenOf: (urn) => resources.filter((r) => isDescendant(r, urn)),
  };
}
