import { beforeAll, describe, expect, it } from "vitest";
import { FAST_SCALE_ENV } from "../../../infra/fast-scaler/handler";
import { fastScaleJobsPerNode, fastScalerCode } from "../../../infra/fleet/fast-scale";
import { declaredFleet } from "../../support/fleet-plan";
import { STACKS, configWith, readStackConfig, runStack, type Plan } from "../../support/harness";
import { MOCK_ACCOUNT_ID } from "../../../scripts/lib/mock-engine";
import { evaluate, type Document } from "../../support/iam-evaluator";

/**
 * The fast scale-out path (infra/fleet/fast-scale.ts) on every stack: a function woken by new jobs'
 * spec.json in the workspaces bucket, allowed to read its tiers' queues and raise only the stack's groups.
 * Its handler is tested in test/infra/fast-scaler/handler.test.ts.
 */

const T = {
  component: "crucible:fleet:FastScale",
  fn: "aws:lambda/function:Function",
  invokeConfig: "aws:lambda/functionEventInvokeConfig:FunctionEventInvokeConfig",
  permission: "aws:lambda/permission:Permission",
  notification: "aws:s3/bucketNotification:BucketNotification",
  role: "aws:iam/role:Role",
  rolePolicy: "aws:iam/rolePolicy:RolePolicy",
  logGroup: "aws:cloudwatch/logGroup:LogGroup",
} as const;

/** Jobs a node takes: the largest type's slots (cpu-small 0.5 vCPU on 4-vCPU nodes) or target tracking's 4. */
const JOBS_PER_NODE: Record<string, number> = {
  "cpu-small": 8,
  "cpu-large": 4,
  "gpu-small": 1,
  "gpu-medium": 1,
  "gpu-large": 1,
};

describe.each(STACKS)("%s stack fast scale-out", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const { tiers, environment, groupName, queueField, workspacesBucket } = declaredFleet(stack, () => plan);
  const functionName = `crucible-${environment}-fast-scale`;
  const region = readStackConfig(stack)["aws:region"];

  it("declares the function, its role, log, invoke settings, permission and notification in one component", () => {
    const component = plan.get(T.component, "fast-scale");
    const children = plan.childrenOf(component.urn).map((r) => `${r.type} ${r.name}`);
    expect(children.sort()).toEqual(
      [T.fn, T.invokeConfig, T.permission, T.notification, T.role, T.rolePolicy, T.logGroup]
        .map((t) => `${t} fast-scale`)
        .sort(),
    );
  });

  it("runs one invocation at a time, drops stale events, never retries, and knows each tier's group and queues", () => {
    const fn = plan.get(T.fn, "fast-scale").inputs;
    expect(fn).toMatchObject({
      name: functionName,
      runtime: "nodejs20.x",
      handler: "index.handler",
      reservedConcurrentExecutions: 1,
      timeout: 30,
      loggingConfig: { logFormat: "Text", logGroup: `/aws/lambda/${functionName}` },
    });
    const env = (fn.environment as { variables: Record<string, string> }).variables;
    expect(JSON.parse(env[FAST_SCALE_ENV]!)).toEqual({
      settleSeconds: 2,
      groups: tiers.map((tier) => ({
        tier,
        asgName: groupName(tier),
        queueUrls: Object.values(queueField(tier, "url")),
        jobsPerNode: JOBS_PER_NODE[tier],
      })),
    });
    expect(plan.get(T.invokeConfig, "fast-scale").inputs).toMatchObject({
      functionName,
      maximumRetryAttempts: 0,
      maximumEventAgeInSeconds: 60,
    });
  });

  it("ships the handler transpiled on its own", async () => {
    const code = plan.get(T.fn, "fast-scale").inputs.code as {
      assets: Promise<Record<string, { text: Promise<string> }>>;
    };
    const assets = await code.assets;
    expect(Object.keys(assets)).toEqual(["index.js"]);
    expect(await assets["index.js"]!.text).toBe(fastScalerCode());
  });

  it("is woken by new spec.json objects under workspaces/ of this stack's bucket only", () => {
    const bucket = workspacesBucket();
    const fnArn = plan.get(T.fn, "fast-scale").state.arn;
    expect(plan.get(T.notification, "fast-scale").inputs).toEqual({
      bucket: bucket.state.bucket,
      lambdaFunctions: [
        {
          lambdaFunctionArn: fnArn,
          events: ["s3:ObjectCreated:*"],
          filterPrefix: "workspaces/",
          filterSuffix: "/spec.json",
        },
      ],
    });
    expect(plan.get(T.permission, "fast-scale").inputs).toEqual({
      action: "lambda:InvokeFunction",
      function: functionName,
      principal: "s3.amazonaws.com",
      sourceArn: bucket.state.arn,
      sourceAccount: MOCK_ACCOUNT_ID,
    });
    // S3 keeps one notification configuration per bucket: a second declaration would replace this one.
    expect(plan.ofType(T.notification)).toHaveLength(1);
  });

  it("may read its tiers' queues and group sizes, raise only the stack's groups, and write its log", () => {
    const policy = doc(plan.get(T.rolePolicy, "fast-scale").inputs.policy);
    const logGroupArn = plan.get(T.logGroup, "fast-scale").state.arn as string;
    expect(policy).toEqual({
      Version: "2012-10-17",
      Statement: [
        {
          Sid: "ReadQueueDepth",
          Effect: "Allow",
          Action: "sqs:GetQueueAttributes",
          Resource: tiers.flatMap((t) => Object.values(queueField(t, "arn"))),
        },
        {
          Sid: "ReadGroupSizes",
          Effect: "Allow",
          Action: "autoscaling:DescribeAutoScalingGroups",
          Resource: "*",
        },
        {
          Sid: "RaiseOwnGroups",
          Effect: "Allow",
          Action: "autoscaling:SetDesiredCapacity",
          Resource: tiers.map(
            (t) =>
              `arn:aws:autoscaling:${region}:${MOCK_ACCOUNT_ID}:autoScalingGroup:*:autoScalingGroupName/${groupName(t)}`,
          ),
        },
        {
          Sid: "WriteOwnLogs",
          Effect: "Allow",
          Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
          Resource: `${logGroupArn}:*`,
        },
      ],
    });
    const role = plan.get(T.role, "fast-scale").inputs;
    expect(JSON.parse(role.assumeRolePolicy as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        { Effect: "Allow", Principal: { Service: "lambda.amazonaws.com" }, Action: "sts:AssumeRole" },
      ],
    });
    // Bound like every other role the stack declares.
    expect(role.permissionsBoundary).toBe(plan.outputs.permissionsBoundaryArn);
    expect(plan.outputs.fastScaleFunctionArn).toBe(plan.get(T.fn, "fast-scale").state.arn);
  });
});

describe.each(STACKS)("%s stack fast scale-out role, as IAM decides", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const { tiers, environment, groupName, queueField, workspacesBucket } = declaredFleet(stack, () => plan);
  const region = readStackConfig(stack)["aws:region"];
  const group = (name: string) =>
    `arn:aws:autoscaling:${region}:${MOCK_ACCOUNT_ID}:autoScalingGroup:0000:autoScalingGroupName/${name}`;
  /** The role's inline policy within the stack's permissions boundary (no resource policy grants it anything). */
  const decide = (action: string, resource: string) =>
    evaluate(
      { action, resource, context: {}, knownKeys: new Set(), call: `${action} ${resource}` },
      {
        identity: [{ name: "fast-scale", document: doc(plan.get(T.rolePolicy, "fast-scale").inputs.policy) }],
        boundary: {
          name: "permissions-boundary",
          document: doc(plan.get("aws:iam/policy:Policy", "permissions-boundary").inputs.policy),
        },
      },
    );

  it("allows every call the handler makes: queue depths, group sizes, and raising each of the stack's groups", () => {
    for (const tier of tiers) {
      for (const arn of Object.values(queueField(tier, "arn")))
        expect(decide("sqs:GetQueueAttributes", arn)).toMatchObject({ allowed: true });
      expect(decide("autoscaling:SetDesiredCapacity", group(groupName(tier)))).toMatchObject({
        allowed: true,
      });
    }
    expect(decide("autoscaling:DescribeAutoScalingGroups", "*")).toMatchObject({ allowed: true });
  });

  it("refuses another environment's groups, any other change to a group, the jobs and the bucket", () => {
    const other = environment === "prod" ? "staging" : "prod";
    const queueArn = Object.values(queueField(tiers[0]!, "arn"))[0]!;
    const bucketArn = workspacesBucket().state.arn as string;
    for (const [action, resource] of [
      ["autoscaling:SetDesiredCapacity", group(`crucible-${other}-${tiers[0]}`)],
      ["autoscaling:UpdateAutoScalingGroup", group(groupName(tiers[0]!))],
      ["sqs:ReceiveMessage", queueArn],
      ["sqs:SendMessage", queueArn],
      ["s3:GetObject", `${bucketArn}/workspaces/lab/ada/jobs/j1/spec.json`],
    ] as const)
      expect(decide(action, resource), `${action} ${resource}`).toMatchObject({ allowed: false });
  });
});

function doc(policy: unknown): Document {
  return JSON.parse(policy as string) as Document;
}

describe("a stack that turns the fast path off", () => {
  it("declares none of it", async () => {
    const plan = await runStack(
      "staging",
      configWith("staging", { "crucible:fleet": fleetWith({ enabled: false }) }),
    );
    expect(plan.ofType(T.component)).toEqual([]);
    expect(plan.ofType(T.notification)).toEqual([]);
    expect(plan.outputs.fastScaleFunctionArn).toBeUndefined();
  });
});

describe("jobs per node", () => {
  it("is the largest type's slots, or target tracking's jobs per instance when that is more", () => {
    expect(
      fastScaleJobsPerNode("cpu-small", {
        instanceTypes: ["m6i.large", "m6i.xlarge"],
        targetJobsPerInstance: 4,
      }),
    ).toBe(8);
    expect(
      fastScaleJobsPerNode("cpu-large", { instanceTypes: ["m6i.large"], targetJobsPerInstance: 0.5 }),
    ).toBe(1);
    expect(
      fastScaleJobsPerNode("cpu-large", { instanceTypes: ["m6i.xlarge"], targetJobsPerInstance: 3 }),
    ).toBe(3);
    expect(
      fastScaleJobsPerNode("gpu-small", { instanceTypes: ["g4dn.4xlarge"], targetJobsPerInstance: 1 }),
    ).toBe(1);
  });
});

/** Staging's `crucible:fleet` with `fastScale` set. */
function fleetWith(fastScale: Record<string, unknown>): Record<string, unknown> {
  const fleet = JSON.parse(configWith("staging", {})["crucible:fleet"]!) as Record<string, unknown>;
  return { ...fleet, fastScale: { settleSeconds: 2, ...fastScale } };
}
