import { describe, expect, it } from "vitest";
import { codeartifactNodesReadOnly } from "../../policies/codeartifact";
import { messages, validateStack, type TestResource } from "./run-policy";

const doc = (...Statement: object[]) => JSON.stringify({ Version: "2012-10-17", Statement });
const NODE_ARN = "arn:aws:iam::1:role/fleet-cpu-small-node-abc";
const nodeRole: TestResource = {
  type: "aws:iam/role:Role",
  name: "fleet-cpu-small-node",
  props: {
    name: "fleet-cpu-small-node-abc",
    arn: NODE_ARN,
    assumeRolePolicy: doc({
      Effect: "Allow",
      Principal: { Service: "ec2.amazonaws.com" },
      Action: "sts:AssumeRole",
    }),
  },
};
const rolePolicy = (...statements: object[]): TestResource => ({
  type: "aws:iam/rolePolicy:RolePolicy",
  name: "fleet-cpu-small-node",
  props: { role: "fleet-cpu-small-node-abc", policy: doc(...statements) },
});
const repositoryPolicy = (...statements: object[]): TestResource => ({
  type: "aws:codeartifact/repositoryPermissionsPolicy:RepositoryPermissionsPolicy",
  name: "pypi-policy",
  props: { domain: "crucible-dev", repository: "pypi", policyDocument: doc(...statements) },
});
const READ = {
  Sid: "ReadPackageIndex",
  Effect: "Allow",
  Action: ["codeartifact:GetRepositoryEndpoint", "codeartifact:ReadFromRepository"],
  Resource: "arn:aws:codeartifact:us-east-1:1:repository/crucible-dev/pypi",
};

describe("codeartifact-nodes-read-only", () => {
  const policy = codeartifactNodesReadOnly();

  it("passes a node role that reads and a repository policy that lets a publisher role publish", async () => {
    const o = await validateStack(policy, [
      nodeRole,
      rolePolicy(READ),
      repositoryPolicy({
        Sid: "Publisher",
        Effect: "Allow",
        Principal: { AWS: "arn:aws:iam::1:role/release" },
        Action: "codeartifact:PublishPackageVersion",
        Resource: "*",
      }),
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails a node role that may publish, naming it and the fix", async () => {
    const o = await validateStack(policy, [
      nodeRole,
      rolePolicy(READ, { Sid: "Publish", Effect: "Allow", Action: "codeartifact:Publish*", Resource: "*" }),
    ]);
    expect(messages(o)).toEqual([
      "node role policy fleet-cpu-small-node: statement Publish allows codeartifact:Publish*; nodes only read the package proxy: grant codeartifact:ReadFromRepository and GetRepositoryEndpoint only.",
    ]);
  });

  it("fails a repository policy letting everyone or a node role publish", async () => {
    const o = await validateStack(policy, [
      nodeRole,
      repositoryPolicy(
        { Sid: "Anyone", Effect: "Allow", Principal: "*", Action: "codeartifact:*", Resource: "*" },
        {
          Sid: "Nodes",
          Effect: "Allow",
          Principal: { AWS: [NODE_ARN] },
          Action: ["codeartifact:PutPackageMetadata"],
          Resource: "*",
        },
      ),
    ]);
    expect(messages(o)).toEqual([
      "CodeArtifact policy pypi-policy: statement Anyone lets everyone (*) codeartifact:*; nodes only read the package proxy: remove the statement or name a publisher role instead.",
      `CodeArtifact policy pypi-policy: statement Nodes lets ${NODE_ARN} codeartifact:PutPackageMetadata; nodes only read the package proxy: remove the statement or name a publisher role instead.`,
    ]);
  });
});
