import { beforeAll, describe, expect, it } from "vitest";
import { parseSenders } from "../../runtime/src/catalog/senders";
import {
  STACKS,
  configProblems,
  configWith,
  runStack,
  type DeclaredResource,
  type Plan,
} from "../support/harness";

const T = {
  component: "crucible:access:Submitters",
  role: "aws:iam/role:Role",
  rolePolicy: "aws:iam/rolePolicy:RolePolicy",
  queue: "aws:sqs/queue:Queue",
  bucket: "aws:s3/bucket:Bucket",
  key: "aws:kms/key:Key",
  template: "aws:ec2/launchTemplate:LaunchTemplate",
  deployment: "kubernetes:apps/v1:Deployment",
};
type PriorityName = "high" | "normal" | "low";

/** Each stack file's `crucible:access`, written out by hand with the defaults applied. */
const EXPECTED: Record<
  (typeof STACKS)[number],
  {
    kms: boolean;
    projects: Record<string, { users: Record<string, string>; tiers: string[]; priorities: PriorityName[] }>;
  }
> = {
  dev: {
    kms: false,
    projects: {
      ci: {
        users: { ci: "arn:aws:iam::123456789012:role/crucible-dev-ci-smoke" },
        tiers: ["cpu-small"],
        priorities: ["normal", "low"],
      },
      nanogpt: {
        users: { alice: "arn:aws:iam::123456789012:user/alice", bob: "arn:aws:iam::123456789012:user/bob" },
        tiers: ["cpu-small", "cpu-large", "gpu-small"],
        priorities: ["normal", "low"],
      },
    },
  },
  staging: {
    kms: true,
    projects: {
      ci: {
        users: { ci: "arn:aws:iam::123456789012:role/crucible-staging-ci-smoke" },
        tiers: ["cpu-small"],
        priorities: ["normal", "low"],
      },
      nanogpt: {
        users: { alice: "arn:aws:iam::123456789012:user/alice" },
        tiers: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium"],
        priorities: ["normal", "low"],
      },
    },
  },
  prod: {
    kms: true,
    projects: {
      "llm-pretrain": {
        users: {
          alice: "arn:aws:iam::210987654321:user/alice",
          "ravi.k": "arn:aws:iam::210987654321:user/ravi.k",
        },
        tiers: ["gpu-medium", "gpu-large"],
        priorities: ["high", "normal", "low"],
      },
      "vision-eval": {
        users: { bob: "arn:aws:iam::210987654321:user/bob" },
        tiers: ["cpu-small", "cpu-large", "gpu-small"],
        priorities: ["normal", "low"],
      },
    },
  },
};

const doc = (text: unknown) => JSON.parse(text as string) as { Version: string; Statement: unknown[] };

/** The environment a node's boot script hands its agent (`-e KEY='value'` lines). */
function bootEnv(template: DeclaredResource): Record<string, string> {
  const script = Buffer.from(template.inputs.userData as string, "base64").toString("utf8");
  const env: Record<string, string> = {};
  for (const line of script.split("\n")) {
    const m = /^ {2}-e ([A-Z_]+)='(.*)' \\$/.exec(line);
    if (m) env[m[1]!] = m[2]!.replace(/'"'"'/g, "'");
  }
  return env;
}

describe.each(STACKS)("%s stack submitters", (stack) => {
  const want = EXPECTED[stack];
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const role = (project: string) => plan.get(T.role, `submitters-${project}`);
  const queueArn = (tier: string, p: PriorityName) =>
    plan.get(T.queue, p === "normal" ? `queues-${tier}` : `queues-${tier}-${p}`).state.arn as string;
  const region = () => plan.outputs.region as string;

  it("declares one role and one inline policy per project, in the component", () => {
    const component = plan.get(T.component, "submitters");
    const children = plan.childrenOf(component.urn);
    expect(children.filter((r) => r.type === T.role).map((r) => r.name)).toEqual(
      Object.keys(want.projects).map((p) => `submitters-${p}`),
    );
    expect(children.filter((r) => r.type === T.rolePolicy).map((r) => r.name)).toEqual(
      Object.keys(want.projects).map((p) => `submitters-${p}`),
    );
    expect(children.filter((r) => r.type !== T.role && r.type !== T.rolePolicy)).toEqual([]);
  });

  it("names CI's smoke role, exactly as infra/ci.ts declares it, as project ci's one user (ci)", () => {
    const ci = want.projects.ci;
    const outputs = plan.outputs as { ci?: { smokeRoleArn: string } };
    if (!ci) {
      // No smoke job here: no principal outside the stack's users.
      expect(Object.values(want.projects).flatMap((p) => Object.values(p.users))).not.toContain(
        outputs.ci?.smokeRoleArn,
      );
      return;
    }
    expect(ci.users).toEqual({ ci: outputs.ci!.smokeRoleArn });
    expect(ci.users.ci).toBe(`arn:aws:iam::123456789012:role/crucible-${stack}-ci-smoke`);
    // Only the cpu-small queues the smoke job uses, at the default priority classes.
    expect(ci).toMatchObject({ tiers: ["cpu-small"], priorities: ["normal", "low"] });
  });

  it("lets each user assume their project's role only as themselves: session name and tag", () => {
    for (const [project, access] of Object.entries(want.projects)) {
      expect(role(project).inputs.permissionsBoundary).toBe(plan.outputs.permissionsBoundaryArn);
      expect(doc(role(project).inputs.assumeRolePolicy)).toEqual({
        Version: "2012-10-17",
        Statement: Object.entries(access.users).map(([user, principal]) => ({
          Sid: `User${user.replace(".", "X2e")}`,
          Effect: "Allow",
          Principal: { AWS: principal },
          Action: ["sts:AssumeRole", "sts:TagSession"],
          Condition: {
            StringEquals: { "sts:RoleSessionName": user, "aws:RequestTag/crucible-user": user },
            "ForAllValues:StringEquals": { "aws:TagKeys": ["crucible-user"] },
          },
        })),
      });
    }
  });

  it("confines each role to its user's own prefixes, its project's queues, a read of its ledger and of the pre-cached datasets", () => {
    const bucketArn = plan.get(T.bucket, "workspaces-workspaces").state.arn as string;
    const datasetsArn = plan.get(T.bucket, "workspaces-datasets").state.arn as string;
    for (const [project, access] of Object.entries(want.projects)) {
      const own = `workspaces/${project}/\${aws:PrincipalTag/crucible-user}/*`;
      const ownDatasets = `users/${project}/\${aws:PrincipalTag/crucible-user}/*`;
      const policy = plan.get(T.rolePolicy, `submitters-${project}`);
      expect(policy.inputs.role).toBe(role(project).id);
      expect(doc(policy.inputs.policy)).toEqual({
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "OwnJobs",
            Effect: "Allow",
            Action: ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
            Resource: `${bucketArn}/${own}`,
          },
          {
            Sid: "ListOwnJobs",
            Effect: "Allow",
            Action: "s3:ListBucket",
            Resource: bucketArn,
            Condition: { StringLike: { "s3:prefix": [own] } },
          },
          {
            Sid: "ReadProjectLedger",
            Effect: "Allow",
            Action: "s3:GetObject",
            Resource: `${bucketArn}/ledger/????-??/${project}/*`,
          },
          {
            Sid: "ListProjectLedger",
            Effect: "Allow",
            Action: "s3:ListBucket",
            Resource: bucketArn,
            Condition: { StringLike: { "s3:prefix": [`ledger/????-??/${project}/*`] } },
          },
          {
            Sid: "OwnDatasets",
            Effect: "Allow",
            Action: ["s3:GetObject", "s3:PutObject"],
            Resource: `${datasetsArn}/${ownDatasets}`,
          },
          {
            Sid: "DropOwnChangedBlobs",
            Effect: "Allow",
            Action: "s3:DeleteObject",
            Resource: `${datasetsArn}/${ownDatasets.replace(/\*$/, "blobs/*")}`,
          },
          {
            Sid: "ReadPrecachedDatasets",
            Effect: "Allow",
            Action: "s3:GetObject",
            Resource: `${datasetsArn}/precached/*`,
          },
          {
            Sid: "ListDatasets",
            Effect: "Allow",
            Action: "s3:ListBucket",
            Resource: datasetsArn,
            Condition: { StringLike: { "s3:prefix": [ownDatasets, "precached/*"] } },
          },
          {
            Sid: "SendJobs",
            Effect: "Allow",
            Action: ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
            Resource: access.tiers.flatMap((t) => access.priorities.map((p) => queueArn(t, p))),
          },
          ...(want.kms
            ? [
                {
                  Sid: "WorkspacesKey",
                  Effect: "Allow",
                  Action: ["kms:Decrypt", "kms:GenerateDataKey"],
                  Resource: plan.get(T.key, "workspaces-key").state.arn,
                  Condition: { StringEquals: { "kms:ViaService": `s3.${region()}.amazonaws.com` } },
                },
              ]
            : []),
        ],
      });
      // The ledger is read-only to submitters: no statement writes under ledger/.
      const writes = (
        doc(policy.inputs.policy).Statement as { Action: string | string[]; Resource: unknown }[]
      ).filter((st) => [st.Action].flat().some((a) => /Put|Delete/.test(a)));
      expect(JSON.stringify(writes)).not.toContain("ledger/");
      // Dataset versions are immutable: deletes reach only the submitter's own blobs (a file that changed
      // while it was pushed), never a manifest; nothing writes precached/.
      const statements = doc(policy.inputs.policy).Statement as {
        Action: string | string[];
        Resource: unknown;
      }[];
      const onDatasets = statements.filter((st) => JSON.stringify(st.Resource).includes(datasetsArn));
      const deletes = onDatasets.filter((st) => [st.Action].flat().some((a) => /Delete/.test(a)));
      expect(deletes.map((st) => JSON.stringify(st.Resource))).toEqual([
        expect.stringMatching(/\/users\/[^/]+\/\$\{aws:PrincipalTag\/crucible-user\}\/blobs\/\*"$/),
      ]);
      expect(JSON.stringify(writes)).not.toContain("precached/");
    }
  });

  it(
    want.kms
      ? "uses one key for both buckets, so the key statement covers the datasets"
      : "needs no key: both buckets use S3-managed keys",
    () => {
      const sse = plan.ofType(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
      );
      const keyOf = (name: string) => {
        const bucket = plan.get(T.bucket, name);
        const [rule] = sse.find((c) => c.inputs.bucket === bucket.state.bucket)!.inputs.rules as {
          applyServerSideEncryptionByDefault: { sseAlgorithm: string; kmsMasterKeyId?: string };
        }[];
        return rule!.applyServerSideEncryptionByDefault;
      };
      const key = plan.ofType(T.key).find((k) => k.name === "workspaces-key");
      for (const name of ["workspaces-workspaces", "workspaces-datasets"])
        expect(keyOf(name), name).toEqual(
          want.kms ? { sseAlgorithm: "aws:kms", kmsMasterKeyId: key!.state.arn } : { sseAlgorithm: "AES256" },
        );
    },
  );

  it("exports each project's role ARN", () => {
    expect(plan.outputs.access).toEqual({
      submitterRoleArns: Object.fromEntries(Object.keys(want.projects).map((p) => [p, role(p).state.arn])),
    });
  });

  it("hands every node's agent its own role and the submitters of the projects that may use its tier", () => {
    const templates = plan.ofType(T.template);
    expect(templates.length).toBeGreaterThan(0);
    for (const template of templates) {
      const tier = /^fleet-(.+)-node$/.exec(template.name)![1]!;
      const node = plan.get(T.role, `fleet-${tier}-node`);
      expect(node.state.uniqueId).toMatch(/^AROA[0-9A-Z]{17}$/);
      expect(parseSenders(bootEnv(template).CRUCIBLE_SENDERS)).toEqual({
        agents: [node.state.uniqueId as string],
        submitters: Object.fromEntries(
          Object.entries(want.projects)
            .filter(([, access]) => access.tiers.includes(tier))
            .map(([project]) => [role(project).state.uniqueId as string, project]),
        ),
      });
    }
  });
});

describe("Kubernetes agents' senders", () => {
  it("are the agent's own IRSA role, the tier's node role and the tier's submitters", async () => {
    const issuer = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE";
    const plan = await runStack(
      "dev",
      configWith("dev", {
        "crucible:kubernetes": {
          enabled: true,
          kubeconfig: "apiVersion: v1\nclusters: []\n",
          oidc: {
            issuerUrl: `https://${issuer}`,
            providerArn: `arn:aws:iam::123456789012:oidc-provider/${issuer}`,
          },
        },
      }),
    );
    const uniqueId = (name: string) => plan.get(T.role, name).state.uniqueId as string;
    for (const [tier, projects] of [
      ["cpu-small", ["ci", "nanogpt"]],
      ["gpu-small", ["nanogpt"]],
    ] as const) {
      const deployment = plan.get(T.deployment, `kubernetes-agent-${tier}`);
      const spec = deployment.inputs.spec as {
        template: { spec: { containers: { env: { name: string; value: string }[] }[] } };
      };
      const env = spec.template.spec.containers[0]!.env.find((e) => e.name === "CRUCIBLE_SENDERS")!;
      expect(parseSenders(env.value)).toEqual({
        agents: [uniqueId(`kubernetes-agent-${tier}-irsa`), uniqueId(`fleet-${tier}-node`)],
        submitters: Object.fromEntries(projects.map((p) => [uniqueId(`submitters-${p}`), p])),
      });
    }
  });
});

describe("crucible:access validation", () => {
  const alice = "arn:aws:iam::123456789012:user/alice";
  const access = (entry: Record<string, unknown>) => ({ "crucible:access": entry });

  it("accepts user and role ARNs, role paths included", () => {
    expect(
      configProblems(
        "dev",
        access({
          "team-a": {
            users: { alice, "bo.b": "arn:aws:iam::123456789012:role/people/bob" },
            tiers: ["cpu-small"],
            priorities: ["high"],
          },
        }),
      ),
    ).toEqual([]);
  });

  it.each([
    [
      "a bad project name",
      { Team_A: { users: { alice } } },
      ['crucible:access.Team_A must be lowercase letters, digits and dashes, got "Team_A"'],
    ],
    [
      "a bad user name",
      { ci: { users: { Alice: alice } } },
      ['crucible:access.ci.users.Alice must be lowercase letters, digits, dots and dashes, got "Alice"'],
    ],
    [
      "a principal that is not an ARN",
      { ci: { users: { alice: "alice" } } },
      [
        `crucible:access.ci.users.alice must be the ARN of one person's IAM user or role, such as arn:aws:iam::123456789012:user/alice (no wildcards, no assumed-role or root ARNs), got "alice"`,
      ],
    ],
    [
      "a wildcard principal",
      { ci: { users: { alice: "arn:aws:iam::123456789012:user/*" } } },
      [
        `crucible:access.ci.users.alice must be the ARN of one person's IAM user or role, such as arn:aws:iam::123456789012:user/alice (no wildcards, no assumed-role or root ARNs), got "arn:aws:iam::123456789012:user/*"`,
      ],
    ],
    [
      "an Identity Center permission set's role",
      {
        ci: {
          users: {
            alice:
              "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO_Researcher_0123",
          },
        },
      },
      [
        `crucible:access.ci.users.alice must not be an Identity Center permission set's role: everyone in the set could submit under any user name, got "arn:aws:iam::123456789012:role/aws-reserved/sso.amazonaws.com/AWSReservedSSO...`,
      ],
    ],
    [
      "an unknown tier",
      { ci: { users: { alice }, tiers: ["gpu-huge"] } },
      [
        'crucible:access.ci.tiers[0] must be one of cpu-small, cpu-large, gpu-small, gpu-medium, gpu-large, got "gpu-huge"',
      ],
    ],
    [
      "a tier the stack does not enable",
      { ci: { users: { alice }, tiers: ["gpu-large"] } },
      [
        'crucible:access.ci.tiers[0] must be a tier enabled in crucible:fleet.tiers (cpu-small, cpu-large, gpu-small), got "gpu-large"',
      ],
    ],
    [
      "an unknown priority",
      { ci: { users: { alice }, priorities: ["urgent"] } },
      ['crucible:access.ci.priorities[0] must be one of high, normal, low, got "urgent"'],
    ],
    [
      "a project without users",
      { ci: { users: {} } },
      ["crucible:access.ci.users must name at least one user, got {}"],
    ],
    [
      "an unknown key",
      { ci: { users: { alice }, groups: ["x"] } },
      ["crucible:access.ci.groups is not a known setting; allowed here: users, tiers, priorities"],
    ],
  ])("rejects %s, naming the key", (_what, entry, problems) => {
    expect(configProblems("dev", access(entry))).toEqual(problems);
  });
});
