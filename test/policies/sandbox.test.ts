import { specialSecretSig, specialSigKey } from "@pulumi/pulumi/runtime/rpc";
import { describe, expect, it } from "vitest";
import { kubernetesSandboxFacts } from "../../runtime/src/launch/kubernetes/kubernetes-job";
import {
  agentConfigSandboxed,
  asgTiersHaveAgentConfig,
  kubernetesAgentsSandboxed,
} from "../../policies/sandbox";
import {
  UNKNOWN_VALUE,
  messages,
  urnOf,
  validateResource,
  validateStack,
  type TestResource,
} from "./run-policy";

const PARAM = "aws:ssm/parameter:Parameter";
const facts = {
  networkMode: "none",
  readonlyRootfs: true,
  privileged: false,
  capDrop: ["ALL"],
  capAdd: ["KILL", "SETGID", "SETUID"],
  perJobUser: true,
  noNewPrivileges: true,
  dockerSocketMounted: false,
  gpuCount: 1,
  memoryMiB: 14336,
  pidsLimit: 1024,
};
const agentConfig = (sandbox: object, name = "/crucible/dev/gpu-small/agent-config"): TestResource => ({
  type: PARAM,
  name: "fleet-gpu-small-agent-config",
  props: {
    name,
    type: "String",
    value: JSON.stringify({
      tier: "gpu-small",
      queues: { high: "https://sqs/h", normal: "https://sqs/n", low: "https://sqs/l" },
      bucket: "b",
      images: {},
      sandbox,
    }),
  },
});

describe("agent-config-sandboxed", () => {
  const policy = agentConfigSandboxed();

  it("passes a sandbox with no network, no socket, no privileges", async () => {
    expect((await validateResource(policy, agentConfig(facts))).violations).toEqual([]);
  });

  it("reads a value the SDK marked secret, as the engine unwraps it for policies", async () => {
    const param = agentConfig(facts);
    const secret = { [specialSigKey]: specialSecretSig, value: param.props.value };
    expect(
      (await validateResource(policy, { ...param, props: { ...param.props, value: secret } })).violations,
    ).toEqual([]);
  });

  it("fails host networking and a mounted Docker socket", async () => {
    const o = await validateResource(
      policy,
      agentConfig({ ...facts, networkMode: "host", dockerSocketMounted: true }),
    );
    expect(messages(o)).toEqual([
      'fleet-gpu-small-agent-config: jobs must get no network; sandbox.networkMode is "host", must be "none".',
      "fleet-gpu-small-agent-config: jobs must never see the Docker socket; sandbox.dockerSocketMounted must be false.",
    ]);
  });

  it("passes a sandbox that adds no capabilities at all", async () => {
    const { capAdd: _none, ...withoutCaps } = facts;
    expect((await validateResource(policy, agentConfig(withoutCaps))).violations).toEqual([]);
  });

  it("fails privileges, capabilities beyond the supervisor's, kept capabilities and privilege gain", async () => {
    const o = await validateResource(
      policy,
      agentConfig({
        ...facts,
        privileged: true,
        capDrop: [],
        capAdd: ["SETUID", "SYS_ADMIN", "SYS_PTRACE"],
        noNewPrivileges: false,
      }),
    );
    expect(messages(o)).toEqual([
      "fleet-gpu-small-agent-config: jobs must not run privileged; sandbox.privileged must be false.",
      'fleet-gpu-small-agent-config: jobs must drop every capability; sandbox.capDrop is [], must include "ALL".',
      'fleet-gpu-small-agent-config: jobs may keep only the supervisor\'s capabilities (KILL, SETGID, SETUID); remove ["SYS_ADMIN","SYS_PTRACE"] from sandbox.capAdd.',
      "fleet-gpu-small-agent-config: jobs must not gain privileges; sandbox.noNewPrivileges must be true.",
    ]);
  });

  it("fails a config without sandbox facts", async () => {
    const o = await validateResource(policy, {
      ...agentConfig(facts),
      props: { name: "/crucible/dev/gpu-small/agent-config", value: "{}" },
    });
    expect(messages(o)).toEqual([
      'fleet-gpu-small-agent-config: /crucible/dev/gpu-small/agent-config must be JSON with a "sandbox" object (sandboxFacts(tier) from runtime/src/launch/sandbox.ts).',
    ]);
  });

  it("does not apply to other parameters, and leaves an unknown value to the engine's advisory note", async () => {
    expect((await validateResource(policy, agentConfig({}, "/crucible/dev/other"))).notApplicable).toBe(
      "not an agent config parameter",
    );
    const pending = await validateResource(policy, {
      ...agentConfig(facts),
      props: { name: "/crucible/dev/gpu-small/agent-config", value: UNKNOWN_VALUE.string },
    });
    expect(pending.violations).toEqual([]);
    expect(pending.unknown).toBe("string value at .value can't be known during preview");
  });
});

describe("kubernetes-agents-sandboxed", () => {
  const policy = kubernetesAgentsSandboxed();
  const deployment = (annotations: Record<string, string> | undefined, role = "agent"): TestResource => ({
    type: "kubernetes:apps/v1:Deployment",
    name: "kubernetes-agent-gpu-small",
    props: {
      metadata: {
        name: "crucible-agent-gpu-small",
        labels: { "crucible.dev/role": role, "crucible.dev/tier": "gpu-small" },
        ...(annotations && { annotations }),
      },
    },
  });
  const published = (sandbox: object) => ({ "crucible.dev/sandbox-facts": JSON.stringify(sandbox) });

  it("passes the facts the launcher's pods have", async () => {
    const o = await validateResource(policy, deployment(published(kubernetesSandboxFacts("gpu-small"))));
    expect(o.violations).toEqual([]);
  });

  it("fails a network, privileges, any capability kept (even the supervisor's) and privilege gain", async () => {
    const o = await validateResource(
      policy,
      deployment(
        published({
          ...kubernetesSandboxFacts("gpu-small"),
          networkMode: "default",
          privileged: true,
          capAdd: ["KILL"],
          noNewPrivileges: false,
        }),
      ),
    );
    expect(messages(o)).toEqual([
      'kubernetes-agent-gpu-small: jobs must get no network; sandbox.networkMode is "default", must be "none".',
      "kubernetes-agent-gpu-small: jobs must not run privileged; sandbox.privileged must be false.",
      'kubernetes-agent-gpu-small: jobs may keep no capability (their runner runs as the job\'s own uid); remove ["KILL"] from sandbox.capAdd.',
      "kubernetes-agent-gpu-small: jobs must not gain privileges; sandbox.noNewPrivileges must be true.",
    ]);
  });

  it("fails an agent that publishes no facts, naming the annotation", async () => {
    expect(messages(await validateResource(policy, deployment(undefined)))).toEqual([
      "kubernetes-agent-gpu-small: an agent Deployment must publish its job pods' sandbox facts as JSON in the crucible.dev/sandbox-facts annotation (kubernetesSandboxFacts(tier) from runtime/src/launch/kubernetes/kubernetes-job.ts).",
    ]);
  });

  it("does not apply to other Deployments", async () => {
    expect((await validateResource(policy, deployment(undefined, "device-plugin"))).notApplicable).toBe(
      "not a Crucible agent Deployment",
    );
  });
});

describe("asg-tiers-have-agent-config", () => {
  const policy = asgTiersHaveAgentConfig();
  const group = (tier?: string): TestResource => ({
    type: "aws:autoscaling/group:Group",
    name: `fleet-${tier ?? "untagged"}`,
    props: { maxSize: 1, tags: tier ? [{ key: "crucible:tier", value: tier, propagateAtLaunch: true }] : [] },
  });

  it("passes a tier whose parameter exists", async () => {
    const o = await validateStack(policy, [group("gpu-small"), agentConfig(facts)], { environment: "dev" });
    expect(o.violations).toEqual([]);
  });

  it("fails a tier without its parameter, naming the parameter", async () => {
    const o = await validateStack(policy, [group("gpu-small"), group("cpu-small"), agentConfig(facts)], {
      environment: "dev",
    });
    expect(o.violations).toEqual([
      {
        message:
          'Auto Scaling group fleet-cpu-small runs tier cpu-small but the stack declares no SSM parameter /crucible/dev/cpu-small/agent-config: write it with the tier\'s queues, bucket, images and sandboxFacts("cpu-small").',
        urn: urnOf("aws:autoscaling/group:Group", "fleet-cpu-small"),
      },
    ]);
  });

  it("looks the parameter up in the configured environment", async () => {
    const o = await validateStack(policy, [group("gpu-small"), agentConfig(facts)], { environment: "prod" });
    expect(messages(o)[0]).toMatch(/no SSM parameter \/crucible\/prod\/gpu-small\/agent-config/);
  });

  it("fails a group without a tier tag", async () => {
    const o = await validateStack(policy, [group()], { environment: "dev" });
    expect(messages(o)).toEqual([
      "Auto Scaling group fleet-untagged: tag it crucible:tier=<tier> so its agent config can be found.",
    ]);
  });
});
