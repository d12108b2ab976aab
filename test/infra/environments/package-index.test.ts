import { beforeAll, describe, expect, it } from "vitest";
import { MOCK_ACCOUNT_ID } from "../../../scripts/lib/mock-engine";
import { STACKS, configWith, runStack, type Plan } from "../../support/harness";

/** The package index job environments are built from (infra/environments/package-index.ts), per stack. */

const T = {
  component: "crucible:environments:PackageIndex",
  domain: "aws:codeartifact/domain:Domain",
  repository: "aws:codeartifact/repository:Repository",
  permissions: "aws:codeartifact/repositoryPermissionsPolicy:RepositoryPermissionsPolicy",
  domainPermissions: "aws:codeartifact/domainPermissions:DomainPermissions",
  template: "aws:ec2/launchTemplate:LaunchTemplate",
  rolePolicy: "aws:iam/rolePolicy:RolePolicy",
} as const;

/** The agent's environment in a tier's user data (`-e KEY='value'` lines). */
function agentEnv(plan: Plan, tier: string): Record<string, string> {
  const script = Buffer.from(
    plan.get(T.template, `fleet-${tier}-node`).inputs.userData as string,
    "base64",
  ).toString();
  const env: Record<string, string> = {};
  for (const m of script.matchAll(/^\s+-e ([A-Z_]+)='([^']*)' \\$/gm)) env[m[1]!] = m[2]!;
  return env;
}

const sids = (plan: Plan, tier: string): string[] =>
  (
    JSON.parse(plan.get(T.rolePolicy, `fleet-${tier}-node`).inputs.policy as string) as {
      Statement: { Sid: string }[];
    }
  ).Statement.map((s) => s.Sid);

describe.each(STACKS)("%s stack's package index", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });

  it("declares a CodeArtifact domain named for the environment, under the PackageIndex component", () => {
    const component = plan.get(T.component, "environments");
    const domains = plan.ofType(T.domain);
    expect(domains.map((d) => d.inputs)).toEqual([
      { domain: `crucible-${stack}`, tags: { "crucible:component": "environments" } },
    ]);
    for (const r of [...domains, ...plan.ofType(T.repository)]) expect(r.parent).toBe(component.urn);
  });

  it("proxies PyPI through a store repository, which the nodes' repository has as its only upstream", () => {
    const [store, nodes] = ["environments-pypi-store", "environments-pypi"].map((n) =>
      plan.get(T.repository, n),
    );
    expect(plan.ofType(T.repository)).toHaveLength(2);
    expect(store!.inputs).toEqual({
      domain: `crucible-${stack}`,
      repository: "pypi-store",
      description: "PyPI, proxied and cached for job environments (external connection public:pypi)",
      externalConnections: { externalConnectionName: "public:pypi" },
      tags: { "crucible:component": "environments" },
    });
    expect(nodes!.inputs).toEqual({
      domain: `crucible-${stack}`,
      repository: "pypi",
      description: "What nodes build job environments from (read-only): PyPI through pypi-store",
      upstreams: [{ repositoryName: "pypi-store" }],
      tags: { "crucible:component": "environments" },
    });
  });

  it("grants no one anything through a repository or domain policy", () => {
    expect(plan.ofType(T.permissions)).toEqual([]);
    expect(plan.ofType(T.domainPermissions)).toEqual([]);
  });

  it("exports what the agents read", () => {
    const nodes = plan.get(T.repository, "environments-pypi");
    const domain = plan.get(T.domain, "environments-domain");
    expect(plan.outputs.environments).toEqual({
      packageIndex: `codeartifact://crucible-${stack}/${MOCK_ACCOUNT_ID}/pypi`,
      allow: null,
      deny: stack === "dev" ? ["tensorflow"] : [],
      codeArtifact: {
        domain: `crucible-${stack}`,
        domainOwner: MOCK_ACCOUNT_ID,
        domainArn: domain.state.arn,
        repository: "pypi",
        repositoryArn: nodes.state.arn,
      },
    });
  });
});

describe("an existing index, and none", () => {
  const url = "https://pypi.internal.example.com/simple/";
  let withUrl: Plan;
  let withNone: Plan;
  beforeAll(async () => {
    withUrl = await runStack(
      "dev",
      configWith("dev", { "crucible:environments": { index: { url }, allow: ["numpy", "torch"], deny: [] } }),
    );
    withNone = await runStack("dev", configWith("dev", { "crucible:environments": { index: "none" } }));
  });

  it("hands the agent the URL and the allowed packages, and declares no CodeArtifact", () => {
    expect(withUrl.ofType(T.domain)).toEqual([]);
    expect(withUrl.ofType(T.repository)).toEqual([]);
    expect(agentEnv(withUrl, "cpu-small")).toMatchObject({
      CRUCIBLE_PACKAGE_INDEX: url,
      CRUCIBLE_PACKAGE_ALLOW: '["numpy","torch"]',
      CRUCIBLE_PACKAGE_DENY: "[]",
    });
    expect(withUrl.outputs.environments).toEqual({
      packageIndex: url,
      allow: ["numpy", "torch"],
      deny: [],
      codeArtifact: null,
    });
  });

  it("grants environments' S3 but no CodeArtifact with a URL; nothing of either with none", () => {
    const s3Only = sids(withUrl, "cpu-small").filter((s) => /Environments|PackageIndex/.test(s));
    expect(s3Only).toEqual(["BuildEnvironments", "ListEnvironments"]);
    expect(sids(withNone, "cpu-small").filter((s) => /Environments|PackageIndex/.test(s))).toEqual([]);
  });

  it("gives the agent no package index with none", () => {
    const env = agentEnv(withNone, "cpu-small");
    expect(env.CRUCIBLE_PACKAGE_INDEX).toBeUndefined();
    expect(env.CRUCIBLE_PACKAGE_ALLOW).toBeUndefined();
    expect(env.CRUCIBLE_PACKAGE_DENY).toBeUndefined();
    expect(withNone.ofType(T.domain)).toEqual([]);
    expect(withNone.outputs.environments).toEqual({
      packageIndex: null,
      allow: null,
      deny: [],
      codeArtifact: null,
    });
  });
});
