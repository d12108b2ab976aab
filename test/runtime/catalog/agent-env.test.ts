import { describe, expect, it } from "vitest";
import {
  AGENT_ENV_NAMES,
  readAgentEnv,
  toAgentEnv,
  type AgentEnvValues,
} from "../../../runtime/src/catalog/agent-env";
import { schedulingPolicySchema } from "../../../runtime/src/catalog/scheduling";

const QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/crucible-dev-cpu-small";
const EVERY: AgentEnvValues = {
  tier: "cpu-small",
  launcher: "kubernetes",
  bucket: "crucible-dev-workspaces",
  workspacesPrefix: "workspaces/",
  datasetsBucket: "crucible-dev-datasets",
  packageIndex: "codeartifact://crucible-dev/123456789012/pypi",
  packageAllow: ["numpy", "torch"],
  packageDeny: ["tensorflow"],
  endpoint: "http://127.0.0.1:4566",
  region: "eu-west-1",
  queues: { "cpu-small": { high: `${QUEUE}-high`, normal: `${QUEUE}-normal`, low: `${QUEUE}-low` } },
  scheduling: schedulingPolicySchema.parse({ weights: { high: 5, normal: 4, low: 1 } }),
  senders: { agents: ["AROAEXAMPLEAGENT00000"], submitters: { AROAEXAMPLESUBMIT0000: "lab" } },
  quotaGiB: 100,
  images: { cpu: "123456789012.dkr.ecr.us-east-1.amazonaws.com/crucible/dev/cpu@sha256:" + "a".repeat(64) },
  concurrency: 2,
  heartbeatSeconds: 30,
  visibilityTimeoutSeconds: 120,
  graceSeconds: 60,
  checkpointSeconds: 300,
  workspaceMiB: 0,
  logCapMiB: 512,
  asgName: "crucible-dev-cpu-small",
  launchHook: "crucible-dev-cpu-small-launch",
  terminationHook: "crucible-dev-cpu-small-terminate",
  k8sNamespace: "crucible-dev",
  k8sKubeconfig: "/etc/crucible/kubeconfig",
  k8sPendingTimeoutSeconds: 600,
  k8sGpuNodeLabel: { key: "nvidia.com/gpu.present", value: "true" },
};

describe("the agent's environment", () => {
  it("reads back every value toAgentEnv writes", () => {
    expect(readAgentEnv(toAgentEnv(EVERY))).toEqual(EVERY);
  });

  it("names every field's variable, and writes them in the order given", () => {
    expect(Object.keys(EVERY).sort()).toEqual(Object.keys(AGENT_ENV_NAMES).sort());
    expect(Object.keys(toAgentEnv({ region: "us-east-1", tier: "gpu-small", bucket: "b" }))).toEqual([
      "AWS_REGION",
      "CRUCIBLE_TIER",
      "CRUCIBLE_BUCKET",
    ]);
  });

  it("writes numbers, JSON and labels as the agent has always read them", () => {
    expect(
      toAgentEnv({
        quotaGiB: 100,
        k8sGpuNodeLabel: { key: "a/b", value: "c" },
        queues: { "cpu-small": QUEUE },
      }),
    ).toEqual({
      CRUCIBLE_QUOTA_GIB: "100",
      CRUCIBLE_K8S_GPU_NODE_LABEL: "a/b=c",
      CRUCIBLE_QUEUES: JSON.stringify({ "cpu-small": QUEUE }),
    });
  });

  it("treats unset and empty alike", () => {
    expect(readAgentEnv({ CRUCIBLE_TIER: "", CRUCIBLE_BUCKET: undefined })).toEqual({});
  });

  it.each([
    [
      "CRUCIBLE_TIER",
      "huge",
      'CRUCIBLE_TIER must be a tier: cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large, got "huge"',
    ],
    ["CRUCIBLE_LAUNCHER", "podman", 'CRUCIBLE_LAUNCHER must be one of docker, kubernetes, got "podman"'],
    [
      "CRUCIBLE_ENDPOINT",
      "localhost:4566",
      'CRUCIBLE_ENDPOINT must be a URL (http:// or https://), got "localhost:4566"',
    ],
    ["AWS_REGION", "Frankfurt", 'AWS_REGION must be an AWS region such as us-east-1, got "Frankfurt"'],
    ["CRUCIBLE_QUEUES", "{", "CRUCIBLE_QUEUES must be JSON such as"],
    ["CRUCIBLE_QUEUES", '{"cpu-small": "sqs"}', "CRUCIBLE_QUEUES.cpu-small must be a queue URL"],
    [
      "CRUCIBLE_QUEUES",
      '{"huge": "https://q"}',
      "CRUCIBLE_QUEUES may name only tiers: cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large",
    ],
    [
      "CRUCIBLE_SCHEDULING",
      '{"weights": {"high": 0}}',
      "CRUCIBLE_SCHEDULING.weights.high must be a whole number from 1 to 100",
    ],
    [
      "CRUCIBLE_SENDERS",
      '{"agents": ["arn"], "submitters": {}}',
      "CRUCIBLE_SENDERS.agents.0 must be an IAM unique id",
    ],
    ["CRUCIBLE_QUOTA_GIB", "lots", 'CRUCIBLE_QUOTA_GIB must be a whole number greater than 0, got "lots"'],
    ["CRUCIBLE_QUOTA_GIB", "0", 'CRUCIBLE_QUOTA_GIB must be a whole number greater than 0, got "0"'],
    [
      "CRUCIBLE_IMAGES",
      '["cpu"]',
      "CRUCIBLE_IMAGES must be an object keyed by image families (cpu, ml-cpu, ml-cuda, agent, builder)",
    ],
    [
      "CRUCIBLE_IMAGES",
      '{"gpu": "x"}',
      "CRUCIBLE_IMAGES may name only image families: cpu, ml-cpu, ml-cuda, agent, builder",
    ],
    ["CRUCIBLE_IMAGES", '{"cpu": 1}', "CRUCIBLE_IMAGES.cpu must be an image reference"],
    [
      "CRUCIBLE_PACKAGE_INDEX",
      "ftp://mirror.example/simple",
      "CRUCIBLE_PACKAGE_INDEX must be an index URL (http:// or https://) or codeartifact://<domain>/<account>/<repository>",
    ],
    [
      "CRUCIBLE_PACKAGE_DENY",
      '"tensorflow"',
      'CRUCIBLE_PACKAGE_DENY must be a JSON array of package names, such as ["tensorflow"], got ""tensorflow""',
    ],
    ["CRUCIBLE_CONCURRENCY", "1.5", 'CRUCIBLE_CONCURRENCY must be a whole number greater than 0, got "1.5"'],
    [
      "CRUCIBLE_HEARTBEAT_SECONDS",
      "-1",
      'CRUCIBLE_HEARTBEAT_SECONDS must be a whole number greater than 0, got "-1"',
    ],
    [
      "CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS",
      "0",
      "CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS must be a whole number greater than 0",
    ],
    [
      "CRUCIBLE_GRACE_SECONDS",
      "1e3",
      'CRUCIBLE_GRACE_SECONDS must be a whole number greater than 0, got "1e3"',
    ],
    [
      "CRUCIBLE_CHECKPOINT_SECONDS",
      "soon",
      "CRUCIBLE_CHECKPOINT_SECONDS must be a whole number greater than 0",
    ],
    [
      "CRUCIBLE_WORKSPACE_MIB",
      "-5",
      'CRUCIBLE_WORKSPACE_MIB must be a whole number of MiB (0: no quota), got "-5"',
    ],
    ["CRUCIBLE_LOG_CAP_MIB", "0", "CRUCIBLE_LOG_CAP_MIB must be a whole number greater than 0"],
    [
      "CRUCIBLE_K8S_PENDING_TIMEOUT_SECONDS",
      "0",
      'CRUCIBLE_K8S_PENDING_TIMEOUT_SECONDS must be a whole number of seconds > 0, got "0"',
    ],
    [
      "CRUCIBLE_K8S_GPU_NODE_LABEL",
      "nvidia.com/gpu.present",
      'CRUCIBLE_K8S_GPU_NODE_LABEL must be a node label as key=value, such as nvidia.com/gpu.present=true, got "nvidia.com/gpu.present"',
    ],
  ])("refuses %s=%s, naming the variable, the value and what is allowed", (name, value, message) => {
    expect(() => readAgentEnv({ [name]: value })).toThrow(message);
  });

  it("refuses a group name without its lifecycle hooks", () => {
    expect(() => readAgentEnv({ CRUCIBLE_ASG_NAME: "g", CRUCIBLE_LAUNCH_HOOK: "g-launch" })).toThrow(
      "CRUCIBLE_ASG_NAME is set (g), so CRUCIBLE_LAUNCH_HOOK and CRUCIBLE_TERMINATION_HOOK must name its lifecycle hooks",
    );
  });

  it("refuses to write what the agent would refuse", () => {
    expect(() => toAgentEnv({ heartbeatSeconds: 0 })).toThrow(
      "CRUCIBLE_HEARTBEAT_SECONDS must be a whole number greater than 0",
    );
    expect(() => toAgentEnv({ images: { gpu: "x" } as AgentEnvValues["images"] })).toThrow(
      "CRUCIBLE_IMAGES may name only image families: cpu, ml-cpu, ml-cuda, agent, builder",
    );
  });
});
