import { describe, expect, it } from "vitest";
import { iamNoInlineAdminPolicies, iamNoWildcardActions, iamNodeRolesScoped } from "../../policies/iam";
import { messages, urnOf, validateResource, validateStack, type TestResource } from "./run-policy";

const ROLE = "aws:iam/role:Role";
const ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy";
const doc = (...Statement: object[]) => JSON.stringify({ Version: "2012-10-17", Statement });
const trust = (service: string) =>
  doc({ Effect: "Allow", Principal: { Service: service }, Action: "sts:AssumeRole" });
const nodeRole = (props: Record<string, unknown> = {}): TestResource => ({
  type: ROLE,
  name: "fleet-gpu-small-role",
  props: {
    name: "fleet-gpu-small-role-abc",
    arn: "arn:aws:iam::1:role/fleet-gpu-small-role-abc",
    assumeRolePolicy: trust("ec2.amazonaws.com"),
    ...props,
  },
});
const rolePolicy = (name: string, policy: string): TestResource => ({
  type: ROLE_POLICY,
  name,
  props: { role: "fleet-gpu-small-role-abc", policy },
});

describe("iam-no-wildcard-actions", () => {
  const policy = iamNoWildcardActions();

  it("passes named actions", async () => {
    const o = await validateResource(
      policy,
      rolePolicy("p", doc({ Effect: "Allow", Action: ["sqs:ReceiveMessage"], Resource: "arn:aws:sqs:x" })),
    );
    expect(o.violations).toEqual([]);
  });

  it('fails Action "*" in a managed policy and in a role\'s inline policy', async () => {
    const star = doc({ Sid: "All", Effect: "Allow", Action: "*", Resource: "arn:aws:s3:::b" });
    const managed = await validateResource(policy, {
      type: "aws:iam/policy:Policy",
      name: "managed",
      props: { policy: star },
    });
    expect(messages(managed)).toEqual([
      'managed: statement All allows Action "*"; list the actions it needs.',
    ]);
    const inline = await validateResource(
      policy,
      nodeRole({ inlinePolicies: [{ name: "inline", policy: star }] }),
    );
    expect(messages(inline)).toEqual([
      'fleet-gpu-small-role (inlinePolicies[0] "inline"): statement All allows Action "*"; list the actions it needs.',
    ]);
  });

  it("ignores Deny statements", async () => {
    const o = await validateResource(
      policy,
      rolePolicy("p", doc({ Effect: "Deny", Action: "*", Resource: "*" })),
    );
    expect(o.violations).toEqual([]);
  });
});

describe("iam-no-inline-admin-policies", () => {
  const policy = iamNoInlineAdminPolicies();

  it("passes a scoped inline policy", async () => {
    const o = await validateResource(
      policy,
      rolePolicy("p", doc({ Effect: "Allow", Action: "iam:PassRole", Resource: "arn:aws:iam::1:role/x" })),
    );
    expect(o.violations).toEqual([]);
  });

  it('fails iam:* on "*" inline', async () => {
    const o = await validateResource(
      policy,
      rolePolicy("p", doc({ Sid: "Admin", Effect: "Allow", Action: "iam:*", Resource: "*" })),
    );
    expect(messages(o)).toEqual([
      'p: statement Admin grants administrator access (iam:* on "*"); grant named actions on named resources.',
    ]);
  });

  it("fails AdministratorAccess attached to a role", async () => {
    const o = await validateResource(policy, {
      type: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
      name: "admin",
      props: { role: "r", policyArn: "arn:aws:iam::aws:policy/AdministratorAccess" },
    });
    expect(messages(o)).toEqual([
      "admin: attaches arn:aws:iam::aws:policy/AdministratorAccess; attach a policy with the actions it needs.",
    ]);
  });
});

describe("iam-node-roles-scoped", () => {
  const policy = iamNodeRolesScoped();
  const scoped = doc(
    {
      Effect: "Allow",
      Action: ["sqs:ReceiveMessage", "sqs:DeleteMessage"],
      Resource: "arn:aws:sqs:us-east-1:1:jobs",
    },
    { Effect: "Allow", Action: ["ecr:GetAuthorizationToken", "cloudwatch:PutMetricData"], Resource: "*" },
  );

  it("passes writes on named resources and reads or star-only actions on *", async () => {
    expect((await validateStack(policy, [nodeRole(), rolePolicy("node", scoped)])).violations).toEqual([]);
  });

  it('fails a node role\'s policy that writes on "*", reporting the policy', async () => {
    const wide = doc({ Effect: "Allow", Action: ["s3:PutObject", "s3:GetObject"], Resource: "*" });
    const o = await validateStack(policy, [nodeRole(), rolePolicy("node", wide)]);
    expect(o.violations).toEqual([
      {
        message:
          'node role fleet-gpu-small-role: policy node allows s3:PutObject on Resource "*"; name the queues, buckets or groups it writes to.',
        urn: urnOf(ROLE_POLICY, "node"),
      },
    ]);
  });

  it("accepts writes on * that a condition confines to the tier's tagged resources", async () => {
    const abac = doc({
      Effect: "Allow",
      Action: ["autoscaling:CompleteLifecycleAction", "autoscaling:SetInstanceHealth"],
      Resource: "*",
      Condition: { StringEquals: { "autoscaling:ResourceTag/crucible:tier": "gpu-small" } },
    });
    expect((await validateStack(policy, [nodeRole(), rolePolicy("node", abac)])).violations).toEqual([]);
  });

  it("follows attachments to managed policies", async () => {
    const wide = doc({ Effect: "Allow", Action: "autoscaling:SetDesiredCapacity", Resource: "*" });
    const o = await validateStack(policy, [
      nodeRole(),
      {
        type: "aws:iam/policy:Policy",
        name: "managed",
        props: { arn: "arn:aws:iam::1:policy/managed", policy: wide },
      },
      {
        type: "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
        name: "attach",
        props: { role: "fleet-gpu-small-role-abc", policyArn: "arn:aws:iam::1:policy/managed" },
      },
    ]);
    expect(messages(o)).toEqual([
      'node role fleet-gpu-small-role: policy managed allows autoscaling:SetDesiredCapacity on Resource "*"; name the queues, buckets or groups it writes to.',
    ]);
  });

  it("leaves roles other services assume alone", async () => {
    const wide = doc({ Effect: "Allow", Action: "autoscaling:SetDesiredCapacity", Resource: "*" });
    const lambda = nodeRole({ assumeRolePolicy: trust("lambda.amazonaws.com") });
    expect((await validateStack(policy, [lambda, rolePolicy("fn", wide)])).violations).toEqual([]);
  });
});
