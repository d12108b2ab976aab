import { describe, expect, it } from "vitest";
import { iamNoIfExistsConditions } from "../../policies/iam-conditions";
import { messages, validateResource, type TestResource } from "./run-policy";

const rolePolicy = (...Statement: object[]): TestResource => ({
  type: "aws:iam/rolePolicy:RolePolicy",
  name: "ci-deploy",
  props: { role: "r", policy: JSON.stringify({ Version: "2012-10-17", Statement }) },
});

describe("iam-no-if-exists-conditions", () => {
  const policy = iamNoIfExistsConditions();

  it("passes tag conditions with plain operators, and IfExists on reads only", async () => {
    const o = await validateResource(
      policy,
      rolePolicy(
        {
          Effect: "Allow",
          Action: ["ec2:CreateVpc"],
          Resource: "*",
          Condition: { StringEquals: { "aws:RequestTag/crucible:environment": "dev" } },
        },
        {
          Effect: "Allow",
          Action: ["ec2:DescribeVpcs"],
          Resource: "*",
          Condition: { StringEqualsIfExists: { "aws:ResourceTag/crucible:environment": "dev" } },
        },
      ),
    );
    expect(o.violations).toEqual([]);
  });

  it("fails IAM and write actions under an IfExists operator", async () => {
    const o = await validateResource(
      policy,
      rolePolicy({
        Sid: "Tagged",
        Effect: "Allow",
        Action: ["ec2:DeleteVpc", "iam:GetRole"],
        Resource: "*",
        Condition: { StringEqualsIfExists: { "aws:ResourceTag/crucible:environment": "dev" } },
      }),
    );
    expect(messages(o)).toEqual([
      "ci-deploy: statement Tagged grants ec2:DeleteVpc, iam:GetRole under StringEqualsIfExists, which also matches requests and resources without the key; use the operator without IfExists (with aws:RequestTag for creates, aws:ResourceTag otherwise).",
    ]);
  });
});
