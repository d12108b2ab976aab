import { beforeAll, describe, expect, it } from "vitest";
import { DEPLOY_SESSION_SECONDS } from "../../infra/ci";
import { isReadOnlyAction } from "../../policies/lib";
import { MOCK_ACCOUNT_ID } from "../../scripts/lib/mock-engine";
import { STACKS, configProblems, configWith, runStack, type Plan } from "../support/harness";

const PROVIDER = "aws:iam/openIdConnectProvider:OpenIdConnectProvider";
const ROLE = "aws:iam/role:Role";
const ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy";
const GITHUB_PROVIDER_ARN = `arn:aws:iam::${MOCK_ACCOUNT_ID}:oidc-provider/token.actions.githubusercontent.com`;

interface Statement {
  Sid?: string;
  Effect: "Allow" | "Deny";
  Principal?: Record<string, string>;
  Action: string | string[];
  Resource?: string | string[];
  Condition?: Record<string, Record<string, unknown>>;
}
const statements = (text: unknown) => (JSON.parse(text as string) as { Statement: Statement[] }).Statement;
const list = (v: string | string[] | undefined) => (v === undefined ? [] : Array.isArray(v) ? v : [v]);
const sid = (doc: Statement[], name: string) => doc.find((s) => s.Sid === name)!;

const WANT = {
  dev: {
    declaresProvider: true,
    /** Project ci in crucible:access: the smoke role may become its submitter. */
    smokeSubmits: true,
    deploy: ["repo:acme/crucible:environment:dev"],
    smoke: ["repo:acme/crucible:environment:dev", "repo:acme/crucible:ref:refs/heads/main"],
  },
  // Staging shares dev's account, whose provider the dev stack declares.
  staging: {
    declaresProvider: false,
    smokeSubmits: true,
    deploy: ["repo:acme/crucible:environment:staging"],
    smoke: ["repo:acme/crucible:environment:staging"],
  },
  prod: {
    declaresProvider: true,
    // Prod runs no smoke job: its smoke role may do nothing.
    smokeSubmits: false,
    deploy: ["repo:acme/crucible:environment:prod"],
    smoke: ["repo:acme/crucible:environment:prod"],
  },
} as const;

/** The trust policy a CI role must have: GitHub's tokens for STS, with exactly these subjects. */
const trust = (subjects: readonly string[], providerArn = GITHUB_PROVIDER_ARN) => [
  {
    Sid: "GitHubActions",
    Effect: "Allow",
    Principal: { Federated: providerArn },
    Action: "sts:AssumeRoleWithWebIdentity",
    Condition: {
      StringEquals: {
        "token.actions.githubusercontent.com:aud": "sts.amazonaws.com",
        "token.actions.githubusercontent.com:sub": subjects,
      },
    },
  },
];

describe.each(STACKS)("the %s stack's CI access", (stack) => {
  const want = WANT[stack];
  let plan: Plan;
  let deploy: Statement[];
  let preview: Statement[];
  let smoke: Statement[];
  let boundaryArn: string;
  beforeAll(async () => {
    plan = await runStack(stack);
    deploy = statements(plan.get(ROLE_POLICY, "ci-deploy").inputs.policy);
    preview = statements(plan.get(ROLE_POLICY, "ci-preview").inputs.policy);
    const smokePolicy = plan.ofType(ROLE_POLICY).find((p) => p.name === "ci-smoke");
    smoke = smokePolicy ? statements(smokePolicy.inputs.policy) : [];
    boundaryArn = `arn:aws:iam::${MOCK_ACCOUNT_ID}:policy/crucible-${stack}-permissions-boundary`;
  });

  it(
    want.declaresProvider
      ? "declares the account's GitHub OIDC provider for STS, tagged as CI's"
      : "uses the account's existing GitHub OIDC provider and declares none",
    () => {
      const providers = plan.ofType(PROVIDER);
      if (!want.declaresProvider) {
        expect(providers).toEqual([]);
        return;
      }
      expect(providers.map((p) => p.inputs)).toEqual([
        {
          url: "https://token.actions.githubusercontent.com",
          clientIdLists: ["sts.amazonaws.com"],
          tags: { "crucible:component": "ci" },
        },
      ]);
    },
  );

  it("lets only jobs in the stack's GitHub environment assume the deploy role (no branch push)", () => {
    const role = plan.get(ROLE, "ci-deploy").inputs;
    expect(role.name).toBe(`crucible-${stack}-ci-deploy`);
    expect(statements(role.assumeRolePolicy)).toEqual(trust(want.deploy));
    expect(role.maxSessionDuration).toBe(DEPLOY_SESSION_SECONDS);
    expect(role.tags).toEqual({ "crucible:component": "ci" });
  });

  it("lets only pull requests assume the preview role", () => {
    const role = plan.get(ROLE, "ci-preview").inputs;
    expect(role.name).toBe(`crucible-${stack}-ci-preview`);
    expect(statements(role.assumeRolePolicy)).toEqual(trust(["repo:acme/crucible:pull_request"]));
  });

  it("gives the preview role only reads, and no data: no object, message or foreign parameter", () => {
    expect(preview.every((s) => s.Effect === "Allow")).toBe(true);
    const actions = preview.flatMap((s) => list(s.Action));
    expect(actions.filter((a) => !isReadOnlyAction(a))).toEqual([]);
    for (const data of ["s3:GetObject", "sqs:ReceiveMessage", "secretsmanager:GetSecretValue"])
      expect(actions).not.toContain(data);
    expect(list(sid(preview, "ReadPlatformParameters").Resource)).toEqual([
      `arn:aws:ssm:${String(plan.outputs.region)}::parameter/aws/service/*`,
      `arn:aws:ssm:${String(plan.outputs.region)}:${MOCK_ACCOUNT_ID}:parameter/crucible/${stack}/*`,
    ]);
  });

  it("grants the deploy role the preview role's reads, and never Action * or iam:*", () => {
    expect(deploy.slice(0, preview.length)).toEqual(preview);
    const allowed = deploy.filter((s) => s.Effect === "Allow").flatMap((s) => list(s.Action));
    expect(allowed.filter((a) => a === "*" || a === "*:*" || a === "iam:*")).toEqual([]);
  });

  it("writes on Resource * only where the action has no resource, or under this environment's tag", () => {
    const unscoped = deploy.filter(
      (s) =>
        s.Effect === "Allow" &&
        list(s.Resource).includes("*") &&
        s.Condition === undefined &&
        list(s.Action).some((a) => !isReadOnlyAction(a)),
    );
    expect(unscoped.map((s) => [s.Sid, s.Action])).toEqual([
      ["AccountWideLogPolicies", ["logs:PutResourcePolicy", "logs:DeleteResourcePolicy"]],
    ]);
    const env = "crucible:environment";
    expect(sid(deploy, "CreateTaggedForThisEnvironment").Condition).toEqual({
      StringEquals: { [`aws:RequestTag/${env}`]: stack },
    });
    expect(sid(deploy, "ManageTaggedForThisEnvironment").Condition).toEqual({
      StringEquals: { [`aws:ResourceTag/${env}`]: stack },
    });
    expect(sid(deploy, "RetagTaggedForThisEnvironment").Condition).toEqual({
      StringEquals: { [`aws:ResourceTag/${env}`]: stack },
      "ForAllValues:StringNotEquals": { "aws:TagKeys": [env] },
    });
    expect(sid(deploy, "TagNewResourcesForThisEnvironment").Condition).toEqual({
      Null: { [`aws:ResourceTag/${env}`]: "true" },
      StringEquals: { [`aws:RequestTag/${env}`]: stack },
    });
  });

  it("uses no ...IfExists condition anywhere (they also match untagged resources)", () => {
    for (const doc of [deploy, preview, smoke])
      for (const s of doc)
        expect(
          Object.keys(s.Condition ?? {}).filter((op) => op.endsWith("IfExists")),
          s.Sid,
        ).toEqual([]);
  });

  it("names, by ARN, the resources the program names after the environment or the stack", () => {
    const region = String(plan.outputs.region);
    const at = `${region}:${MOCK_ACCOUNT_ID}`;
    expect(list(sid(deploy, "NamedResources").Resource)).toEqual([
      `arn:aws:ecr:${at}:repository/crucible/${stack}/*`,
      `arn:aws:ssm:${at}:parameter/crucible/${stack}/*`,
      `arn:aws:logs:${at}:log-group:/crucible/${stack}/*`,
      `arn:aws:logs:${at}:log-group:/aws/lambda/crucible-${stack}-*`,
      `arn:aws:logs:${at}:log-group:/aws/events/crucible-${stack}-*`,
      `arn:aws:lambda:${at}:function:crucible-${stack}-*`,
      `arn:aws:autoscaling:${at}:autoScalingGroup:*:autoScalingGroupName/crucible-${stack}-*`,
      `arn:aws:budgets::${MOCK_ACCOUNT_ID}:budget/crucible-${stack}`,
      `arn:aws:budgets::${MOCK_ACCOUNT_ID}:budget/crucible-${stack}-*`,
      `arn:aws:cloudwatch::${MOCK_ACCOUNT_ID}:dashboard/crucible-${stack}`,
      `arn:aws:codeartifact:${at}:domain/crucible-${stack}`,
      `arn:aws:codeartifact:${at}:repository/crucible-${stack}/*`,
    ]);
    // What the stack declares really has those names.
    const names = plan.resources.map((r) => r.inputs.name).filter((n): n is string => typeof n === "string");
    expect(names).toContain(`crucible-${stack}`);
    expect(names.filter((n) => n.startsWith(`crucible-${stack}-`)).length).toBeGreaterThan(0);
  });

  it("creates roles and writes their policies only with the program's boundary, changes no trust policy, and passes roles only to EC2 and Lambda", () => {
    const tag = { "aws:ResourceTag/crucible:environment": stack };
    expect(plan.outputs.permissionsBoundaryArn).toBe(boundaryArn);
    expect(sid(deploy, "CreateRolesWithTheBoundary")).toMatchObject({
      Action: "iam:CreateRole",
      Condition: {
        StringEquals: {
          "aws:RequestTag/crucible:environment": stack,
          "iam:PermissionsBoundary": boundaryArn,
        },
      },
    });
    expect(sid(deploy, "RolePoliciesWithinTheBoundary")).toMatchObject({
      Action: ["iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:PutRolePermissionsBoundary"],
      Condition: { StringEquals: { ...tag, "iam:PermissionsBoundary": boundaryArn } },
    });
    expect(sid(deploy, "ManageRolesOfThisEnvironment").Condition).toEqual({ StringEquals: tag });
    // Every allowed action that writes a role's permissions is conditioned on the boundary.
    for (const s of deploy.filter((x) => x.Effect === "Allow")) {
      const writes = list(s.Action).filter((a) =>
        [
          "iam:CreateRole",
          "iam:PutRolePolicy",
          "iam:AttachRolePolicy",
          "iam:PutRolePermissionsBoundary",
        ].includes(a),
      );
      if (writes.length > 0)
        expect(s.Condition?.StringEquals?.["iam:PermissionsBoundary"], s.Sid).toBe(boundaryArn);
    }
    const allowed = deploy.filter((s) => s.Effect === "Allow").flatMap((s) => list(s.Action));
    expect(allowed).not.toContain("iam:UpdateAssumeRolePolicy");
    expect(sid(deploy, "NoRoleWithoutTheBoundary")).toMatchObject({
      Effect: "Deny",
      Action: "iam:DeleteRolePermissionsBoundary",
    });
    expect(sid(deploy, "PassRolesToNodesAndTheEnforcer").Condition).toEqual({
      StringEquals: { ...tag, "iam:PassedToService": ["ec2.amazonaws.com", "lambda.amazonaws.com"] },
    });
    // The program attaches no managed policy; the deploy role may only detach the one earlier versions did.
    expect(plan.ofType("aws:iam/rolePolicyAttachment:RolePolicyAttachment")).toEqual([]);
    expect(sid(deploy, "DetachTheNodesFormerManagedPolicies")).toMatchObject({
      Action: "iam:DetachRolePolicy",
      Condition: {
        StringEquals: { ...tag, "iam:PermissionsBoundary": boundaryArn },
        ArnEquals: { "iam:PolicyARN": ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"] },
      },
    });
    expect(deploy.filter((s) => list(s.Action).includes("iam:AttachRolePolicy"))).toEqual([]);
  });

  it("denies the deploy role any change to CI's own roles, the boundary and the OIDC provider", () => {
    const deny = deploy.filter((s) => s.Effect === "Deny");
    expect(deny.map((s) => s.Sid)).toEqual(["NoChangesToCiAccess", "NoRoleWithoutTheBoundary"]);
    expect(list(deny[0]!.Resource)).toEqual([
      `arn:aws:iam::${MOCK_ACCOUNT_ID}:role/crucible-*-ci-*`,
      `arn:aws:iam::${MOCK_ACCOUNT_ID}:policy/crucible-*-permissions-boundary`,
      GITHUB_PROVIDER_ARN,
    ]);
    expect(list(deny[0]!.Action)).toEqual(
      expect.arrayContaining(["iam:Put*", "iam:Attach*", "iam:Update*", "iam:PassRole"]),
    );
  });

  it("gives the deploy role no object at all", () => {
    expect(
      deploy.filter((s) => list(s.Resource).some((r) => r.startsWith("arn:aws:s3:::") && r.includes("/"))),
    ).toEqual([]);
    const buckets = sid(deploy, "WorkspaceBuckets");
    expect(list(buckets.Action).filter((a) => a.includes("Object"))).toEqual([]);
    const bucket = String(
      plan.outputs.storage && (plan.outputs.storage as { bucketName: string }).bucketName,
    );
    expect(bucket).toMatch(/^workspaces-/);
  });

  it(
    want.smokeSubmits
      ? "lets the smoke role only become project ci's submitter (assume it, tag the session), nothing of S3 or SQS"
      : "gives the smoke role no policy where no project ci exists to submit as",
    () => {
      const role = plan.get(ROLE, "ci-smoke").inputs;
      expect(role.name).toBe(`crucible-${stack}-ci-smoke`);
      expect(statements(role.assumeRolePolicy)).toEqual(trust(want.smoke));
      const submitters = plan.outputs.access as { submitterRoleArns: Record<string, string> };
      expect(smoke).toEqual(
        want.smokeSubmits
          ? [
              {
                Sid: "AssumeCiSubmitter",
                Effect: "Allow",
                Action: ["sts:AssumeRole", "sts:TagSession"],
                Resource: submitters.submitterRoleArns.ci,
              },
            ]
          : [],
      );
      expect(submitters.submitterRoleArns.ci === undefined).toBe(!want.smokeSubmits);
      if (!want.smokeSubmits) return;
      // The submitter trusts the smoke role by its ARN, as user ci only, and is declared after it.
      const submitter = plan.get(ROLE, "submitters-ci");
      expect(submitter.state.arn).toBe(submitters.submitterRoleArns.ci);
      expect(statements(submitter.inputs.assumeRolePolicy)).toEqual([
        {
          Sid: "Userci",
          Effect: "Allow",
          Principal: { AWS: plan.get(ROLE, "ci-smoke").state.arn },
          Action: ["sts:AssumeRole", "sts:TagSession"],
          Condition: {
            StringEquals: { "sts:RoleSessionName": "ci", "aws:RequestTag/crucible-user": "ci" },
            "ForAllValues:StringEquals": { "aws:TagKeys": ["crucible-user"] },
          },
        },
      ]);
      const order = plan.resources.map((r) => r.urn);
      expect(order.indexOf(plan.get(ROLE, "ci-smoke").urn)).toBeLessThan(order.indexOf(submitter.urn));
    },
  );

  it("fits IAM's limit of 10,240 characters of inline policy per role", () => {
    for (const name of ["ci-deploy", "ci-preview", ...(want.smokeSubmits ? ["ci-smoke"] : [])]) {
      const text = JSON.stringify(JSON.parse(plan.get(ROLE_POLICY, name).inputs.policy as string));
      expect(text.replace(/\s/g, "").length, name).toBeLessThan(10_240);
    }
  });

  it("gives every role but CI's own the boundary, and the boundary every action those roles' policies grant", () => {
    const boundary = statements(plan.get("aws:iam/policy:Policy", "permissions-boundary").inputs.policy);
    // STS only for CodeArtifact's bearer token (what a job environment's index token needs), and only
    // under the condition that it is for CodeArtifact: no credential of any other service comes of it.
    const bearer = boundary.filter((s) => list(s.Action).includes("sts:GetServiceBearerToken"));
    expect(bearer.map((s) => [list(s.Action), s.Condition])).toEqual([
      [
        ["sts:GetServiceBearerToken"],
        { StringEquals: { "sts:AWSServiceName": "codeartifact.amazonaws.com" } },
      ],
    ]);
    const bounded = boundary.flatMap((s) => list(s.Action));
    const others = boundary.filter((s) => !bearer.includes(s)).flatMap((s) => list(s.Action));
    expect(others.filter((a) => /^(iam|sts|organizations|lambda|ec2:(Run|Create|Modify))/.test(a))).toEqual(
      [],
    );
    const roles = plan.ofType(ROLE).filter((r) => !/^ci-/.test(r.name));
    expect(roles.length).toBeGreaterThan(0);
    for (const role of roles) {
      expect(role.inputs.permissionsBoundary, role.name).toBe(boundaryArn);
      const policies = plan
        .ofType(ROLE_POLICY)
        .filter((p) => p.inputs.role === role.state.name || p.inputs.role === role.state.id);
      expect(policies.length, role.name).toBeGreaterThan(0);
      for (const p of policies)
        for (const st of statements(p.inputs.policy).filter((x) => x.Effect === "Allow"))
          for (const action of list(st.Action)) expect(bounded, `${p.name} ${action}`).toContain(action);
    }
    for (const ci of plan.ofType(ROLE).filter((r) => /^ci-/.test(r.name)))
      expect(ci.inputs.permissionsBoundary).toBeUndefined();
  });

  it("exports the roles and what they trust for the workflows", () => {
    expect(plan.outputs.ci).toEqual({
      oidcProviderArn: GITHUB_PROVIDER_ARN,
      previewRoleArn: `arn:aws:iam::${MOCK_ACCOUNT_ID}:role/crucible-${stack}-ci-preview`,
      deployRoleArn: `arn:aws:iam::${MOCK_ACCOUNT_ID}:role/crucible-${stack}-ci-deploy`,
      smokeRoleArn: `arn:aws:iam::${MOCK_ACCOUNT_ID}:role/crucible-${stack}-ci-smoke`,
      subjects: { deploy: want.deploy, preview: ["repo:acme/crucible:pull_request"], smoke: want.smoke },
    });
  });
});

describe("without crucible:ci", () => {
  it.each(STACKS)("the %s stack declares no CI access at all", async (stack) => {
    const plan = await runStack(stack, configWith(stack, { "crucible:ci": undefined }));
    expect(
      plan.resources.filter((r) => r.type.startsWith("crucible:ci:") || r.name.startsWith("ci-")),
    ).toEqual([]);
    expect(plan.ofType(PROVIDER)).toEqual([]);
    expect(plan.outputs.ci).toBeUndefined();
  });
});

describe("crucible:ci settings", () => {
  it("trusts the GitHub environments and branch it is given, and a provider named by ARN", async () => {
    const providerArn = "arn:aws:iam::210987654321:oidc-provider/token.actions.githubusercontent.com";
    const plan = await runStack(
      "dev",
      configWith("dev", {
        "crucible:ci": {
          github: {
            repository: "acme/crucible",
            branch: "release/2026",
            environments: ["dev", "dev-eu"],
            oidcProvider: providerArn,
          },
        },
      }),
    );
    expect(plan.ofType(PROVIDER)).toEqual([]);
    expect(statements(plan.get(ROLE, "ci-deploy").inputs.assumeRolePolicy)).toEqual(
      trust(["repo:acme/crucible:environment:dev", "repo:acme/crucible:environment:dev-eu"], providerArn),
    );
    expect(statements(plan.get(ROLE, "ci-smoke").inputs.assumeRolePolicy)).toEqual(
      trust(
        [
          "repo:acme/crucible:environment:dev",
          "repo:acme/crucible:environment:dev-eu",
          "repo:acme/crucible:ref:refs/heads/release/2026",
        ],
        providerArn,
      ),
    );
  });

  it.each([
    [
      { repository: "crucible" },
      'crucible:ci.github.repository must be a GitHub repository as owner/name, such as acme/crucible, got "crucible"',
    ],
    [
      { repository: "acme/*" },
      'crucible:ci.github.repository must be a GitHub repository as owner/name, such as acme/crucible, got "acme/*"',
    ],
    [
      { repository: "acme/crucible", branch: "*" },
      'crucible:ci.github.branch must be a branch name such as main (letters, digits, ., _, - and /, no wildcards), got "*"',
    ],
    [
      { repository: "acme/crucible", environments: [] },
      "crucible:ci.github.environments must name at least one GitHub environment, got []",
    ],
    [
      { repository: "acme/crucible", oidcProvider: "create" },
      'crucible:ci.github.oidcProvider must be "declare", "existing" or the ARN of the account\'s GitHub OIDC provider (arn:aws:iam::<account>:oidc-provider/token.actions.githubusercontent.com), got "create"',
    ],
    [
      { repository: "acme/crucible", role: "admin" },
      "crucible:ci.github.role is not a known setting; allowed here: repository, branch, environments, oidcProvider",
    ],
  ])("rejects %j, naming the key and what is allowed", (github, message) => {
    expect(configProblems("prod", { "crucible:ci": { github } })).toEqual([message]);
  });

  it("refuses a GitHub environment that belongs to another stack", () => {
    expect(
      configProblems("prod", {
        "crucible:ci": { github: { repository: "acme/crucible", environments: ["prod", "staging"] } },
      }),
    ).toEqual([
      'crucible:ci.github.environments[1] must not be another stack\'s environment (this stack is prod): its jobs would deploy here, got "staging"',
    ]);
  });

  it("requires the repository", () => {
    expect(configProblems("prod", { "crucible:ci": { github: {} } })).toEqual([
      "crucible:ci.github.repository is required (expected string, received undefined)",
    ]);
  });
});
