import { describe, expect, it } from "vitest";
import { iamNoWildcardTrust } from "../../policies/iam-trust";
import { messages, validateResource, type TestResource } from "./run-policy";

const role = (...Statement: object[]): TestResource => ({
  type: "aws:iam/role:Role",
  name: "r",
  props: { assumeRolePolicy: JSON.stringify({ Version: "2012-10-17", Statement }) },
});
const PROVIDER = "arn:aws:iam::1:oidc-provider/token.actions.githubusercontent.com";
const github = (condition: object) => ({
  Sid: "GitHubActions",
  Effect: "Allow",
  Principal: { Federated: PROVIDER },
  Action: "sts:AssumeRoleWithWebIdentity",
  Condition: condition,
});

describe("iam-no-wildcard-trust", () => {
  const policy = iamNoWildcardTrust();

  it("passes a service, a named AWS principal and an OIDC trust with an exact sub", async () => {
    for (const r of [
      role({ Effect: "Allow", Principal: { Service: "ec2.amazonaws.com" }, Action: "sts:AssumeRole" }),
      role({ Effect: "Allow", Principal: { AWS: "arn:aws:iam::1:role/alice" }, Action: "sts:AssumeRole" }),
      role(
        github({
          StringEquals: {
            "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
            "token.actions.githubusercontent.com:sub": ["repo:acme/crucible:pull_request"],
          },
        }),
      ),
    ])
      expect((await validateResource(policy, r)).violations).toEqual([]);
  });

  it('fails Principal "*" and the AWS principal "*"', async () => {
    const o = await validateResource(
      policy,
      role(
        { Sid: "Anyone", Effect: "Allow", Principal: "*", Action: "sts:AssumeRole" },
        {
          Sid: "AnyAccount",
          Effect: "Allow",
          Principal: { AWS: ["arn:aws:iam::1:root", "*"] },
          Action: "sts:AssumeRole",
        },
      ),
    );
    expect(messages(o)).toEqual([
      'r: trust statement Anyone trusts Principal "*" (anyone); name the principals, and for OIDC the exact sub.',
      'r: trust statement AnyAccount trusts the AWS principal "*" (any account); name the principals, and for OIDC the exact sub.',
    ]);
  });

  it("fails an OIDC trust with no sub condition, or a sub of *", async () => {
    const none = await validateResource(
      policy,
      role(github({ StringEquals: { "token.actions.githubusercontent.com:aud": "sts.amazonaws.com" } })),
    );
    expect(messages(none)).toEqual([
      `r: trust statement GitHubActions trusts ${PROVIDER} with no condition on the token's sub; name the principals, and for OIDC the exact sub.`,
    ]);
    const any = await validateResource(
      policy,
      role(github({ StringLike: { "token.actions.githubusercontent.com:sub": "*" } })),
    );
    expect(messages(any)).toEqual([
      `r: trust statement GitHubActions trusts ${PROVIDER} for any sub ("*"); name the principals, and for OIDC the exact sub.`,
    ]);
  });
});
