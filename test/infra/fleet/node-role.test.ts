import { beforeAll, describe, expect, it } from "vitest";
import { MOCK_ACCOUNT_ID } from "../../../scripts/lib/mock-engine";
import { PRIORITIES, T, declaredFleet } from "../../support/fleet-plan";
import { STACKS, runStack, type Plan } from "../../support/harness";

/** The node role's permissions (infra/fleet/node-role.ts), as each stack declares them per tier. */

interface Statement {
  Sid?: string;
  Effect: string;
  Action: string | string[];
  Resource: string | string[];
  Condition?: Record<string, Record<string, unknown>>;
}

const list = <X>(x: X | X[] | undefined): X[] => (x === undefined ? [] : Array.isArray(x) ? x : [x]);

/** An IAM resource pattern (`*` any run of characters) as a regular expression. */
const arnPattern = (pattern: string) =>
  new RegExp(
    `^${pattern
      .split("*")
      .map((p) => p.replace(/[.?+^$()[\]{}|\\/]/g, "\\$&"))
      .join(".*")}$`,
  );

describe.each(STACKS)("%s stack fleet", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const { want, tiers, environment, groupName, queue, group, logGroup, imageRefs, workspacesBucket } =
    declaredFleet(stack, () => plan);
  const statements = (tier: string): Statement[] =>
    (
      JSON.parse(plan.get(T.rolePolicy, `fleet-${tier}-node`).inputs.policy as string) as {
        Statement: Statement[];
      }
    ).Statement;
  const datasetsBucket = () => plan.get(T.bucket, "workspaces-datasets");
  /** The KMS key a bucket's default encryption names. */
  const encryptionKeyOf = (name: string): unknown => {
    const bucket = plan.get(T.bucket, name);
    const config = plan
      .ofType("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration")
      .find((c) => c.inputs.bucket === bucket.state.bucket)!;
    const [rule] = config.inputs.rules as {
      applyServerSideEncryptionByDefault: { kmsMasterKeyId?: string };
    }[];
    return rule!.applyServerSideEncryptionByDefault.kmsMasterKeyId;
  };
  const statement = (tier: string, sid: string): Statement => {
    const found = statements(tier).find((s) => s.Sid === sid);
    if (!found) throw new Error(`fleet-${tier}-node has no statement ${sid}`);
    return found;
  };

  describe("node role", () => {
    it("allows no wildcard action", () => {
      for (const tier of tiers) {
        for (const s of statements(tier)) {
          expect(s.Effect).toBe("Allow");
          for (const action of list(s.Action)) expect(action, `${tier} ${s.Sid}`).not.toMatch(/(^\*$|:\*$)/);
        }
      }
    });

    it('uses Resource "*" only for CodeArtifact\'s bearer token, the registry token, job metrics in their namespace, Session Manager and spot prices', () => {
      for (const tier of tiers) {
        const starred = statements(tier).filter((s) => list(s.Resource).includes("*"));
        for (const s of starred) expect(list(s.Resource)).toEqual(["*"]);
        expect(starred.map((s) => ({ Sid: s.Sid, Condition: s.Condition }))).toEqual([
          {
            Sid: "PackageIndexBearerToken",
            Condition: { StringEquals: { "sts:AWSServiceName": "codeartifact.amazonaws.com" } },
          },
          { Sid: "RegistryToken", Condition: undefined },
          {
            Sid: "JobMetrics",
            Condition: { StringEquals: { "cloudwatch:namespace": "Crucible/Jobs" } },
          },
          { Sid: "SessionManager", Condition: undefined },
          ...(want.tiers[tier]!.spot ? [{ Sid: "SpotPrices", Condition: undefined }] : []),
        ]);
      }
    });

    it("reaches its own tier's three priority queues, and no other queue (not even their DLQs)", () => {
      for (const tier of tiers) {
        const arns = PRIORITIES.map(
          (p) => `arn:aws:sqs:${want.region}:${MOCK_ACCOUNT_ID}:${queue(tier, p).state.name as string}`,
        );
        expect(arns).toEqual(PRIORITIES.map((p) => queue(tier, p).state.arn));
        const sqs = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("sqs:")));
        expect(sqs).toEqual([
          {
            Sid: "TierQueue",
            Effect: "Allow",
            Action: [
              "sqs:ReceiveMessage",
              "sqs:SendMessage",
              "sqs:DeleteMessage",
              "sqs:ChangeMessageVisibility",
              "sqs:GetQueueAttributes",
            ],
            Resource: arns,
          },
        ]);
        const everything = JSON.stringify(statements(tier));
        const sqsArns = plan.ofType(T.queue).map((q) => q.state.arn as string);
        for (const arn of sqsArns.filter((a) => !arns.includes(a)))
          expect(everything).not.toContain(`"${arn}"`);
      }
    });

    it("reads and writes objects only under the workspaces prefix, deletes only fair share's markers, and lists only there", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      for (const tier of tiers) {
        expect(statement(tier, "Workspaces")).toEqual({
          Sid: "Workspaces",
          Effect: "Allow",
          Action: ["s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"],
          Resource: `${bucketArn}/workspaces/*`,
        });
        expect(statement(tier, "RunningMarkers")).toEqual({
          Sid: "RunningMarkers",
          Effect: "Allow",
          Action: "s3:DeleteObject",
          Resource: `${bucketArn}/workspaces/*/_running/*`,
        });
        expect(statement(tier, "ListWorkspaces")).toEqual({
          Sid: "ListWorkspaces",
          Effect: "Allow",
          Action: "s3:ListBucket",
          Resource: bucketArn,
          Condition: { StringLike: { "s3:prefix": ["workspaces/*"] } },
        });
      }
    });

    it("writes and reads finance's ledger entries, and lists only the ledger's partitions", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      for (const tier of tiers) {
        expect(statement(tier, "Ledger")).toEqual({
          Sid: "Ledger",
          Effect: "Allow",
          Action: ["s3:PutObject", "s3:GetObject"],
          Resource: `${bucketArn}/ledger/*`,
        });
        expect(statement(tier, "ListLedger")).toEqual({
          Sid: "ListLedger",
          Effect: "Allow",
          Action: "s3:ListBucket",
          Resource: bucketArn,
          Condition: { StringLike: { "s3:prefix": ["ledger/*"] } },
        });
      }
    });

    it("reads its own tier's budget pause marker only: the one key, listed and read", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      for (const tier of tiers) {
        expect([statement(tier, "BudgetPause"), statement(tier, "ListBudgetPause")]).toEqual([
          {
            Sid: "BudgetPause",
            Effect: "Allow",
            Action: "s3:GetObject",
            Resource: `${bucketArn}/_control/paused/${tier}`,
          },
          {
            Sid: "ListBudgetPause",
            Effect: "Allow",
            Action: "s3:ListBucket",
            Resource: bucketArn,
            Condition: { StringEquals: { "s3:prefix": `_control/paused/${tier}` } },
          },
        ]);
      }
    });

    it("holds exactly the agent's statements and the node's own, in order", () => {
      for (const tier of tiers) {
        expect(statements(tier).map((s) => s.Sid)).toEqual([
          "TierQueue",
          "Workspaces",
          "RunningMarkers",
          "ListWorkspaces",
          "Ledger",
          "ListLedger",
          "BudgetPause",
          "ListBudgetPause",
          "ReadDatasets",
          "ListDatasets",
          "PublishPrecachedDatasets",
          "BuildEnvironments",
          "ListEnvironments",
          "PackageIndexToken",
          "PackageIndexBearerToken",
          "ReadPackageIndex",
          ...(want.kms ? ["WorkspacesKey"] : []),
          "RegistryToken",
          "PullImages",
          "OwnGroupLifecycle",
          "JobMetrics",
          "AgentLog",
          "SessionManager",
          ...(want.tiers[tier]!.spot ? ["SpotPrices"] : []),
        ]);
      }
    });

    it("reads every dataset, lists the datasets bucket, and writes only the pre-cached sets: never deletes there", () => {
      const datasetsArn = datasetsBucket().state.arn as string;
      for (const tier of tiers) {
        const datasets = statements(tier).filter((s) =>
          list(s.Resource).some((r) => r.startsWith(datasetsArn)),
        );
        expect(datasets).toEqual([
          { Sid: "ReadDatasets", Effect: "Allow", Action: "s3:GetObject", Resource: `${datasetsArn}/*` },
          { Sid: "ListDatasets", Effect: "Allow", Action: "s3:ListBucket", Resource: datasetsArn },
          {
            Sid: "PublishPrecachedDatasets",
            Effect: "Allow",
            Action: "s3:PutObject",
            Resource: `${datasetsArn}/precached/*`,
          },
          {
            Sid: "BuildEnvironments",
            Effect: "Allow",
            Action: ["s3:GetObject", "s3:PutObject"],
            Resource: `${datasetsArn}/environments/*`,
          },
          {
            Sid: "ListEnvironments",
            Effect: "Allow",
            Action: "s3:ListBucket",
            Resource: datasetsArn,
            Condition: { StringLike: { "s3:prefix": ["environments/*"] } },
          },
        ]);
      }
    });

    it("reaches S3 only in the workspaces bucket's prefixes and the datasets bucket", () => {
      const bucketArn = workspacesBucket().state.arn as string;
      const datasetsArn = datasetsBucket().state.arn as string;
      for (const tier of tiers) {
        const s3 = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("s3:")));
        expect(s3.flatMap((s) => list(s.Resource)).sort()).toEqual(
          [
            `${bucketArn}/workspaces/*`,
            `${bucketArn}/workspaces/*/_running/*`,
            bucketArn,
            `${bucketArn}/ledger/*`,
            bucketArn,
            `${bucketArn}/_control/paused/${tier}`,
            bucketArn,
            `${datasetsArn}/*`,
            datasetsArn,
            `${datasetsArn}/precached/*`,
            `${datasetsArn}/environments/*`,
            datasetsArn,
          ].sort(),
        );
      }
    });

    it(
      want.kms
        ? "may use the buckets' KMS key, only through S3 in its region"
        : "needs no KMS key (the buckets use S3-managed keys)",
      () => {
        for (const tier of tiers) {
          const kms = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("kms:")));
          if (!want.kms) {
            expect(kms).toEqual([]);
            expect(plan.ofType(T.key).filter((k) => k.name === "workspaces-key")).toEqual([]);
            continue;
          }
          const key = plan.get(T.key, "workspaces-key");
          // One key encrypts both buckets, so the one statement covers the datasets too.
          for (const bucket of ["workspaces-workspaces", "workspaces-datasets"])
            expect(encryptionKeyOf(bucket), bucket).toBe(key.state.arn);
          expect(kms).toEqual([
            {
              Sid: "WorkspacesKey",
              Effect: "Allow",
              Action: ["kms:Decrypt", "kms:GenerateDataKey"],
              Resource: key.state.arn,
              Condition: { StringEquals: { "kms:ViaService": `s3.${want.region}.amazonaws.com` } },
            },
          ]);
        }
      },
    );

    it("reads the stack's package proxy: a token for its domain, the nodes' repository only, never a write", () => {
      const domain = plan.get("aws:codeartifact/domain:Domain", "environments-domain");
      const repository = plan.get("aws:codeartifact/repository:Repository", "environments-pypi");
      for (const tier of tiers) {
        const codeartifact = statements(tier).filter((s) =>
          list(s.Action).some((a) => a.startsWith("codeartifact:") || a.startsWith("sts:")),
        );
        expect(codeartifact).toEqual([
          {
            Sid: "PackageIndexToken",
            Effect: "Allow",
            Action: "codeartifact:GetAuthorizationToken",
            Resource: domain.state.arn,
          },
          {
            Sid: "PackageIndexBearerToken",
            Effect: "Allow",
            Action: "sts:GetServiceBearerToken",
            Resource: "*",
            Condition: { StringEquals: { "sts:AWSServiceName": "codeartifact.amazonaws.com" } },
          },
          {
            Sid: "ReadPackageIndex",
            Effect: "Allow",
            Action: ["codeartifact:GetRepositoryEndpoint", "codeartifact:ReadFromRepository"],
            Resource: repository.state.arn,
          },
        ]);
        const store = plan.get("aws:codeartifact/repository:Repository", "environments-pypi-store");
        expect(JSON.stringify(statements(tier))).not.toContain(store.state.arn as string);
      }
    });

    it("completes lifecycle actions, sets protection and marks itself unhealthy only in its own group", () => {
      for (const tier of tiers) {
        const lifecycle = statements(tier).filter((s) =>
          list(s.Action).some((a) => a.startsWith("autoscaling:")),
        );
        expect(lifecycle).toHaveLength(1);
        expect(lifecycle[0]!.Action).toEqual([
          "autoscaling:SetInstanceProtection",
          "autoscaling:CompleteLifecycleAction",
          "autoscaling:SetInstanceHealth",
        ]);
        const resource = lifecycle[0]!.Resource as string;
        expect(resource).toBe(
          `arn:aws:autoscaling:${want.region}:${MOCK_ACCOUNT_ID}:autoScalingGroup:*:autoScalingGroupName/${groupName(tier)}`,
        );
        for (const other of tiers) {
          expect(arnPattern(resource).test(group(other).state.arn as string)).toBe(other === tier);
        }
      }
    });

    it("looks up spot prices (read-only, on every resource as IAM requires) only where its group runs spot", () => {
      for (const tier of tiers) {
        const ec2 = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("ec2:")));
        expect(ec2).toEqual(
          want.tiers[tier]!.spot
            ? [{ Sid: "SpotPrices", Effect: "Allow", Action: "ec2:DescribeSpotPriceHistory", Resource: "*" }]
            : [],
        );
      }
    });

    it("writes only to its agent's log streams, in a log group kept 30 days", () => {
      for (const tier of tiers) {
        const group = logGroup(tier);
        expect(group.inputs).toEqual({
          name: `/crucible/${environment}/${tier}/agent`,
          retentionInDays: 30,
          tags: { "crucible:component": "fleet", "crucible:tier": tier },
        });
        const logs = statements(tier).filter((s) => list(s.Action).some((a) => a.startsWith("logs:")));
        expect(logs).toEqual([
          {
            Sid: "AgentLog",
            Effect: "Allow",
            Action: ["logs:CreateLogStream", "logs:PutLogEvents"],
            Resource: `${group.state.arn as string}:*`,
          },
        ]);
      }
    });

    it("pulls from the stack's repositories and has no managed policy", () => {
      const refs = imageRefs();
      for (const tier of tiers) {
        const repositories = list(statement(tier, "PullImages").Resource);
        expect(repositories).toHaveLength(Object.keys(refs).length);
        for (const ref of Object.values(refs)) {
          const [, region, name] = /^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com\/([^@]+)@/.exec(ref)!;
          expect(repositories).toContain(`arn:aws:ecr:${region}:${MOCK_ACCOUNT_ID}:repository/${name}`);
        }
      }
      // Not AmazonSSMManagedInstanceCore: it would let a node read every SSM parameter in the account.
      expect(plan.ofType(T.attachment)).toEqual([]);
    });

    it("opens Session Manager shells, and reads no SSM parameter", () => {
      for (const tier of tiers) {
        expect(statement(tier, "SessionManager")).toEqual({
          Sid: "SessionManager",
          Effect: "Allow",
          Action: [
            "ssm:UpdateInstanceInformation",
            "ssmmessages:CreateControlChannel",
            "ssmmessages:CreateDataChannel",
            "ssmmessages:OpenControlChannel",
            "ssmmessages:OpenDataChannel",
            "ec2messages:AcknowledgeMessage",
            "ec2messages:DeleteMessage",
            "ec2messages:FailMessage",
            "ec2messages:GetEndpoint",
            "ec2messages:GetMessages",
            "ec2messages:SendReply",
          ],
          Resource: "*",
        });
        // The agent config reaches the node as environment (user data): no SSM parameter is read.
        expect(statements(tier).filter((s) => list(s.Action).some((a) => /^ssm:Get/.test(a)))).toEqual([]);
      }
    });
  });
});
