import { spawn, type ChildProcess } from "node:child_process";
import * as path from "node:path";
import * as grpc from "@grpc/grpc-js";
import { Empty } from "google-protobuf/google/protobuf/empty_pb";
import { Struct } from "google-protobuf/google/protobuf/struct_pb";
import { cruciblePolicies } from "../../policies/pack";
import { AnalyzerClient } from "@pulumi/pulumi/proto/analyzer_grpc_pb";
import * as proto from "@pulumi/pulumi/proto/analyzer_pb";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { policyPackConfig, stackConfig } from "../../scripts/lib/policy-config";
import { UNKNOWN_VALUE, urnOf } from "./run-policy";

/**
 * The pack as the Pulumi CLI runs it: `policies/index.ts` started as its own process, spoken to over
 * the analyzer gRPC protocol (info, configure, analyze, analyzeStack) with requests built the way
 * the engine builds them.
 */

let pack: ChildProcess;
let client: AnalyzerClient;

function unary<T>(start: (done: (err: grpc.ServiceError | null, res: T) => void) => unknown): Promise<T> {
  return new Promise<T>((resolve, reject) => start((err, res) => (err ? reject(err) : resolve(res))));
}

/** The four calls the engine makes, as promises. */
const rpc = {
  info: () => unary<proto.AnalyzerInfo>((done) => client.getAnalyzerInfo(new Empty(), done)),
  configure: (req: proto.ConfigureAnalyzerRequest) => unary<Empty>((done) => client.configure(req, done)),
  analyze: (req: proto.AnalyzeRequest) => unary<proto.AnalyzeResponse>((done) => client.analyze(req, done)),
  analyzeStack: (req: proto.AnalyzeStackRequest) =>
    unary<proto.AnalyzeResponse>((done) => client.analyzeStack(req, done)),
};

function options(): proto.AnalyzerResourceOptions {
  const o = new proto.AnalyzerResourceOptions();
  o.setCustomtimeouts(new proto.AnalyzerResourceOptions.CustomTimeouts());
  return o;
}

function provider(environment: string): proto.AnalyzerProviderResource {
  const p = new proto.AnalyzerProviderResource();
  p.setType("pulumi:providers:aws");
  p.setName("aws");
  p.setUrn("urn:pulumi:dev::crucible::pulumi:providers:aws::aws");
  const tags = { "crucible:environment": environment, "crucible:owner": "o", "crucible:cost-center": "c" };
  p.setProperties(Struct.fromJavaScript({ defaultTags: JSON.stringify({ tags }) }));
  return p;
}

function analyzeRequest(type: string, name: string, props: Record<string, unknown>): proto.AnalyzeRequest {
  const req = new proto.AnalyzeRequest();
  req.setType(type);
  req.setName(name);
  req.setUrn(urnOf(type, name));
  req.setProperties(Struct.fromJavaScript(props as Record<string, never>));
  req.setOptions(options());
  req.setProvider(provider("dev"));
  return req;
}

function stackResource(
  type: string,
  name: string,
  props: Record<string, unknown>,
  deps: Record<string, string[]> = {},
) {
  const r = new proto.AnalyzerResource();
  r.setType(type);
  r.setName(name);
  r.setUrn(urnOf(type, name));
  r.setProperties(Struct.fromJavaScript(props as Record<string, never>));
  r.setOptions(options());
  r.setProvider(provider("dev"));
  for (const [prop, urns] of Object.entries(deps)) {
    const d = new proto.AnalyzerPropertyDependencies();
    d.setUrnsList(urns);
    r.getPropertydependenciesMap().set(prop, d);
  }
  return r;
}

async function configure(advisory: boolean): Promise<void> {
  const req = new proto.ConfigureAnalyzerRequest();
  for (const [name, entry] of Object.entries(policyPackConfig(stackConfig("dev"), { advisory }))) {
    const { enforcementLevel, ...settings } = entry as { enforcementLevel: string } & Record<string, never>;
    const c = new proto.PolicyConfig();
    c.setEnforcementlevel(
      enforcementLevel === "advisory" ? proto.EnforcementLevel.ADVISORY : proto.EnforcementLevel.MANDATORY,
    );
    c.setProperties(Struct.fromJavaScript(settings));
    req.getPolicyconfigMap().set(name, c);
  }
  await rpc.configure(req);
}

const diagnostics = (res: proto.AnalyzeResponse) =>
  res.getDiagnosticsList().map((d) => ({
    policy: d.getPolicyname(),
    message: d.getMessage(),
    level: d.getEnforcementlevel(),
    urn: d.getUrn(),
  }));

beforeAll(async () => {
  pack = spawn(process.execPath, ["--import", "tsx", "index.ts"], {
    cwd: path.resolve(__dirname, "..", "..", "policies"),
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  pack.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
  const port = await new Promise<string>((resolve, reject) => {
    pack.stdout!.once("data", (d: Buffer) => resolve(d.toString().trim()));
    pack.once("exit", (code) => reject(new Error(`the pack exited with ${code}: ${stderr}`)));
  });
  client = new AnalyzerClient(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
}, 120_000);

afterAll(() => {
  client?.close();
  pack?.kill();
});

describe("the pack over the analyzer protocol", () => {
  it("announces every policy, mandatory, with the config schemas the CLI validates against", async () => {
    const info = await rpc.info();
    expect(info.getName()).toBe("crucible");
    expect(info.getSupportsconfig()).toBe(true);
    const policies = info.getPoliciesList();
    // Every policy of the pack, as the program declares it, crossed the process boundary.
    expect(policies.map((p) => p.getName()).sort()).toEqual(
      cruciblePolicies()
        .map((p) => p.name)
        .sort(),
    );
    expect(new Set(policies.map((p) => p.getEnforcementlevel()))).toEqual(
      new Set([proto.EnforcementLevel.MANDATORY]),
    );
    const cap = policies.find((p) => p.getName() === "asg-max-within-cap")!.getConfigschema()!;
    expect(cap.getRequiredList()).toEqual(["maxInstancesPerTier"]);
    expect(cap.getProperties()!.toJavaScript()).toMatchObject({
      maxInstancesPerTier: { type: "integer", minimum: 1 },
    });
  });

  it("reports a launch template without IMDSv2 as a mandatory violation", async () => {
    await configure(false);
    const lt = { metadataOptions: { httpTokens: "optional" }, tags: { "crucible:component": "fleet" } };
    const res = await rpc.analyze(analyzeRequest("aws:ec2/launchTemplate:LaunchTemplate", "lt", lt));
    expect(diagnostics(res)).toContainEqual({
      policy: "launch-templates-require-imdsv2",
      message: expect.stringContaining('lt: set metadataOptions.httpTokens to "required".') as string,
      level: proto.EnforcementLevel.MANDATORY,
      // The engine attaches the resource's URN to resource-policy diagnostics itself.
      urn: "",
    });
  });

  it("reports the same violation as advisory with the dev --advisory config", async () => {
    await configure(true);
    const lt = { metadataOptions: { httpTokens: "optional" }, tags: { "crucible:component": "fleet" } };
    const res = await rpc.analyze(analyzeRequest("aws:ec2/launchTemplate:LaunchTemplate", "lt", lt));
    const imds = diagnostics(res).find((d) => d.policy === "launch-templates-require-imdsv2");
    expect(imds?.level).toBe(proto.EnforcementLevel.ADVISORY);
  });

  it("checks the cap it was configured with, and notes (not fails) a value unknown during preview", async () => {
    await configure(false);
    const tags = ["environment", "owner", "cost-center", "component", "tier"].map((k) => ({
      key: `crucible:${k}`,
      value: k === "tier" ? "cpu-small" : "x",
      propagateAtLaunch: true,
    }));
    const over = await rpc.analyze(
      analyzeRequest("aws:autoscaling/group:Group", "g", { maxSize: 5, minSize: 0, tags }),
    );
    expect(diagnostics(over).map((d) => d.message)).toEqual([
      expect.stringContaining("g: maxSize 5 exceeds the environment's cap of 4; lower it to at most 4."),
    ]);
    const pending = await rpc.analyze(
      analyzeRequest("aws:autoscaling/group:Group", "g", { maxSize: UNKNOWN_VALUE.number, minSize: 0, tags }),
    );
    expect(diagnostics(pending)).toEqual([
      expect.objectContaining({ policy: "asg-max-within-cap", level: proto.EnforcementLevel.ADVISORY }),
    ]);
    expect(diagnostics(pending)[0]!.message).toContain("can't run policy 'asg-max-within-cap'");
  });

  it("joins a bucket and its public-access block by property dependency in analyzeStack", async () => {
    await configure(false);
    const req = new proto.AnalyzeStackRequest();
    const bucketUrn = urnOf("aws:s3/bucket:Bucket", "ws");
    req.setResourcesList([
      stackResource("aws:s3/bucket:Bucket", "ws", { bucket: UNKNOWN_VALUE.string }),
      stackResource("aws:s3/bucket:Bucket", "other", { bucket: UNKNOWN_VALUE.string }),
      stackResource(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        "ws",
        { bucket: UNKNOWN_VALUE.string },
        { bucket: [bucketUrn] },
      ),
    ]);
    const res = await rpc.analyzeStack(req);
    const pab = diagnostics(res).filter((d) => d.policy === "s3-buckets-have-public-access-blocks");
    expect(pab).toEqual([
      expect.objectContaining({
        urn: urnOf("aws:s3/bucket:Bucket", "other"),
        level: proto.EnforcementLevel.MANDATORY,
      }),
    ]);
  });
});
