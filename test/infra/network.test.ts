import { beforeAll, describe, expect, it } from "vitest";
import { subnetLayout } from "../../infra/cidr";
import { CODEARTIFACT_ENDPOINT_SERVICES, INTERFACE_ENDPOINT_SERVICES } from "../../infra/network";
import { configProblems, configWith, runStack, type DeclaredResource, type Plan } from "../support/harness";

const T = {
  vpc: "aws:ec2/vpc:Vpc",
  subnet: "aws:ec2/subnet:Subnet",
  routeTable: "aws:ec2/routeTable:RouteTable",
  association: "aws:ec2/routeTableAssociation:RouteTableAssociation",
  igw: "aws:ec2/internetGateway:InternetGateway",
  nat: "aws:ec2/natGateway:NatGateway",
  eip: "aws:ec2/eip:Eip",
  endpoint: "aws:ec2/vpcEndpoint:VpcEndpoint",
  sg: "aws:ec2/securityGroup:SecurityGroup",
  defaultSg: "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup",
  endpointPolicy: "aws:ec2/vpcEndpointPolicy:VpcEndpointPolicy",
  endpointPolicies: "crucible:network:EndpointPolicies",
  bucket: "aws:s3/bucket:Bucket",
  queue: "aws:sqs/queue:Queue",
} as const;

/** Each stack's enabled tiers (Pulumi.<stack>.yaml), whose job queues the SQS endpoint admits. */
const TIERS = {
  dev: ["cpu-small", "cpu-large", "gpu-small"],
  staging: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium"],
  prod: ["cpu-small", "cpu-large", "gpu-small", "gpu-medium", "gpu-large"],
} as const;
const PRIORITIES = ["high", "normal", "low"] as const;

interface Rule {
  protocol: string;
  fromPort: number;
  toPort: number;
  cidrBlocks?: string[];
  prefixListIds?: string[];
}

/** What each stack file asks for, and what that must become. */
const EXPECTED = {
  dev: {
    region: "us-east-1",
    cidr: "10.20.0.0/16",
    zones: ["us-east-1a", "us-east-1b"],
    nat: "none",
    natGateways: 0,
    privateCidrs: ["10.20.0.0/19", "10.20.32.0/19"],
    publicCidrs: [] as string[],
  },
  staging: {
    region: "us-east-1",
    cidr: "10.30.0.0/16",
    zones: ["us-east-1a", "us-east-1b"],
    nat: "single",
    natGateways: 1,
    privateCidrs: ["10.30.0.0/19", "10.30.32.0/19"],
    publicCidrs: ["10.30.224.0/28"],
  },
  prod: {
    region: "us-west-2",
    cidr: "10.40.0.0/16",
    zones: ["us-west-2a", "us-west-2b", "us-west-2c"],
    nat: "onePerAz",
    natGateways: 3,
    privateCidrs: ["10.40.0.0/19", "10.40.32.0/19", "10.40.64.0/19"],
    publicCidrs: ["10.40.224.0/28", "10.40.224.16/28", "10.40.224.32/28"],
  },
} as const;

const byName = (rs: DeclaredResource[]) => [...rs].sort((a, b) => a.name.localeCompare(b.name));

describe.each(Object.entries(EXPECTED))("%s stack network", (stack, want) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const subnets = (kind: "private" | "public") =>
    byName(plan.ofType(T.subnet).filter((s) => s.name.startsWith(`network-${kind}-`)));
  const nodeGroup = () => plan.get(T.sg, "network-nodes");

  it("creates one VPC with DNS on (interface endpoints' private names need it)", () => {
    const [vpc, ...rest] = plan.ofType(T.vpc);
    expect(rest).toEqual([]);
    expect(vpc!.inputs).toMatchObject({
      cidrBlock: want.cidr,
      enableDnsSupport: true,
      enableDnsHostnames: true,
    });
  });

  it("puts one private subnet in each configured zone, and public ones only for NAT", () => {
    expect(subnets("private").map((s) => [s.inputs.availabilityZone, s.inputs.cidrBlock])).toEqual(
      want.zones.map((z, i) => [z, want.privateCidrs[i]]),
    );
    expect(subnets("public").map((s) => [s.inputs.availabilityZone, s.inputs.cidrBlock])).toEqual(
      want.publicCidrs.map((c, i) => [want.zones[i], c]),
    );
    expect(plan.ofType(T.subnet)).toHaveLength(want.privateCidrs.length + want.publicCidrs.length);
  });

  it("never maps public IPs on launch, in any subnet", () => {
    for (const s of plan.ofType(T.subnet)) expect(s.inputs.mapPublicIpOnLaunch).toBe(false);
  });

  it(`declares ${want.natGateways} NAT gateway(s), each with its own address in a public subnet`, () => {
    const nats = byName(plan.ofType(T.nat));
    expect(nats).toHaveLength(want.natGateways);
    expect(plan.ofType(T.eip).map((e) => e.inputs.domain)).toEqual(nats.map(() => "vpc"));
    const eipIds = plan.ofType(T.eip).map((e) => e.id);
    expect(nats.map((n) => n.inputs.allocationId).sort()).toEqual([...eipIds].sort());
    expect(nats.map((n) => n.inputs.subnetId)).toEqual(subnets("public").map((s) => s.id));
    // An internet gateway exists only for NAT; without NAT nothing in the VPC can reach the internet.
    expect(plan.ofType(T.igw)).toHaveLength(want.natGateways > 0 ? 1 : 0);
  });

  it("routes each private subnet's default route to a NAT in its own zone (or nowhere without NAT)", () => {
    const nats = byName(plan.ofType(T.nat));
    const natZone = new Map(
      nats.map((n) => [
        n.id,
        plan.ofType(T.subnet).find((s) => s.id === n.inputs.subnetId)!.inputs.availabilityZone,
      ]),
    );
    for (const [i, subnet] of subnets("private").entries()) {
      const assoc = plan.ofType(T.association).find((a) => a.inputs.subnetId === subnet.id)!;
      const table = plan.ofType(T.routeTable).find((t) => t.id === assoc.inputs.routeTableId)!;
      const routes = table.inputs.routes as { cidrBlock: string; natGatewayId?: string }[];
      if (want.natGateways === 0) {
        expect(routes).toEqual([]);
        continue;
      }
      expect(routes).toEqual([{ cidrBlock: "0.0.0.0/0", natGatewayId: nats[i % nats.length]!.id }]);
      if (want.nat === "onePerAz") expect(natZone.get(routes[0]!.natGatewayId)).toBe(want.zones[i]);
    }
  });

  it("sends the public subnets to the internet gateway", () => {
    const publicIds = subnets("public").map((s) => s.id);
    const tables = new Set(
      plan
        .ofType(T.association)
        .filter((a) => publicIds.includes(a.inputs.subnetId as string))
        .map((a) => a.inputs.routeTableId),
    );
    expect(tables.size).toBe(publicIds.length ? 1 : 0);
    for (const id of tables) {
      const table = plan.ofType(T.routeTable).find((t) => t.id === id)!;
      expect(table.inputs.routes).toEqual([{ cidrBlock: "0.0.0.0/0", gatewayId: plan.ofType(T.igw)[0]!.id }]);
    }
  });

  it("attaches the S3 gateway endpoint to every private route table", () => {
    const s3 = plan.get(T.endpoint, "network-s3");
    const privateTables = subnets("private").map(
      (s) => plan.ofType(T.association).find((a) => a.inputs.subnetId === s.id)!.inputs.routeTableId,
    );
    expect(s3.inputs).toMatchObject({
      serviceName: `com.amazonaws.${want.region}.s3`,
      vpcEndpointType: "Gateway",
      routeTableIds: privateTables,
    });
  });

  it(
    want.nat === "none"
      ? "reaches every AWS API the nodes use through interface endpoints (no NAT)"
      : "leaves AWS APIs to NAT: no interface endpoints",
    () => {
      const interfaces = plan.ofType(T.endpoint).filter((e) => e.inputs.vpcEndpointType === "Interface");
      if (want.nat !== "none") {
        expect(interfaces).toEqual([]);
        return;
      }
      // CodeArtifact's two: the stack's package proxy (crucible:environments.index codeartifact).
      expect(interfaces.map((e) => e.inputs.serviceName).sort()).toEqual(
        [
          "autoscaling",
          "codeartifact.api",
          "codeartifact.repositories",
          "ec2messages",
          "ecr.api",
          "ecr.dkr",
          "logs",
          "monitoring",
          "sqs",
          "ssm",
          "ssmmessages",
          "sts",
        ].map((s) => `com.amazonaws.${want.region}.${s}`),
      );
      const endpointGroup = plan.get(T.sg, "network-endpoints");
      for (const e of interfaces) {
        expect(e.inputs).toMatchObject({
          privateDnsEnabled: true,
          subnetIds: subnets("private").map((s) => s.id),
          securityGroupIds: [endpointGroup.id],
        });
      }
      expect(endpointGroup.inputs.ingress).toEqual([
        {
          protocol: "tcp",
          fromPort: 443,
          toPort: 443,
          cidrBlocks: [want.cidr],
          description: "HTTPS from the VPC",
        },
      ]);
      expect(endpointGroup.inputs.egress).toEqual([]);
    },
  );

  it("admits nothing to the nodes and lets out only HTTPS (to the VPC, S3, and the internet only with NAT)", () => {
    const nodes = nodeGroup();
    expect(nodes.inputs.ingress).toEqual([]);
    const egress = nodes.inputs.egress as Rule[];
    for (const rule of egress) expect(rule).toMatchObject({ protocol: "tcp", fromPort: 443, toPort: 443 });
    expect(egress.map((r) => r.cidrBlocks ?? r.prefixListIds)).toEqual([
      [want.cidr],
      [expect.stringMatching(/^pl-[0-9a-f]{8}$/)],
      ...(want.natGateways > 0 ? [["0.0.0.0/0"]] : []),
    ]);
  });

  it("strips every rule from the VPC's default security group", () => {
    const [group, ...rest] = plan.ofType(T.defaultSg);
    expect(rest).toEqual([]);
    expect(group!.inputs).toMatchObject({ vpcId: plan.ofType(T.vpc)[0]!.id, ingress: [], egress: [] });
  });

  it("exports the ids the fleet needs and the counts finance prices", () => {
    const network = plan.outputs.network as Record<string, unknown>;
    const interfaceEndpoints =
      want.nat === "none" ? INTERFACE_ENDPOINT_SERVICES.length + CODEARTIFACT_ENDPOINT_SERVICES.length : 0;
    expect(network).toEqual({
      vpcId: plan.ofType(T.vpc)[0]!.id,
      vpcCidr: want.cidr,
      privateSubnetIds: subnets("private").map((s) => s.id),
      nodeSecurityGroupId: nodeGroup().id,
      fixedCostCounts: {
        natGateways: want.natGateways,
        interfaceEndpoints,
        interfaceEndpointAzs: interfaceEndpoints * want.zones.length,
      },
    });
  });

  it("limits the S3 gateway endpoint to the stack's two buckets and ECR's layer bucket in its region", () => {
    const [policy, ...rest] = plan.ofType(T.endpointPolicy).filter((p) => p.name === "network-endpoints-s3");
    expect(rest).toEqual([]);
    expect(policy!.inputs.vpcEndpointId).toBe(plan.get(T.endpoint, "network-s3").id);
    const workspaces = plan.get(T.bucket, "workspaces-workspaces").state.arn as string;
    const datasets = plan.get(T.bucket, "workspaces-datasets").state.arn as string;
    expect(
      plan
        .ofType(T.bucket)
        .map((b) => b.name)
        .sort(),
    ).toEqual(["workspaces-datasets", "workspaces-workspaces"]);
    expect(JSON.parse(policy!.inputs.policy as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        {
          Sid: "StackBuckets",
          Effect: "Allow",
          Principal: "*",
          Action: "s3:*",
          Resource: [workspaces, `${workspaces}/*`, datasets, `${datasets}/*`],
        },
        {
          Sid: "EcrLayers",
          Effect: "Allow",
          Principal: "*",
          Action: "s3:GetObject",
          Resource: `arn:aws:s3:::prod-${want.region}-starport-layer-bucket/*`,
        },
      ],
    });
  });

  it(
    want.nat === "none"
      ? "limits the SQS endpoint to the stack's job queues, every tier and priority"
      : "has no SQS endpoint to limit (queues through NAT)",
    () => {
      const policies = plan.ofType(T.endpointPolicy).filter((p) => p.name === "network-endpoints-sqs");
      if (want.nat !== "none") {
        expect(policies).toEqual([]);
        return;
      }
      const queueArn = (tier: string, p: (typeof PRIORITIES)[number]) =>
        plan.get(T.queue, p === "normal" ? `queues-${tier}` : `queues-${tier}-${p}`).state.arn as string;
      expect(policies).toHaveLength(1);
      expect(policies[0]!.inputs.vpcEndpointId).toBe(plan.get(T.endpoint, "network-sqs").id);
      expect(JSON.parse(policies[0]!.inputs.policy as string)).toEqual({
        Version: "2012-10-17",
        Statement: [
          {
            Sid: "StackQueues",
            Effect: "Allow",
            Principal: "*",
            Action: "sqs:*",
            Resource: TIERS[stack as keyof typeof TIERS].flatMap((t) =>
              PRIORITIES.map((p) => queueArn(t, p)),
            ),
          },
        ],
      });
    },
  );

  it("writes endpoint policies only in their component, one per S3 or SQS endpoint", () => {
    const component = plan.get(T.endpointPolicies, "network-endpoints");
    const policies = plan.ofType(T.endpointPolicy);
    expect(policies.every((p) => p.parent === component.urn)).toBe(true);
    expect(policies.map((p) => p.name).sort()).toEqual(
      want.nat === "none" ? ["network-endpoints-s3", "network-endpoints-sqs"] : ["network-endpoints-s3"],
    );
  });

  it("tags every network resource as the network component's", () => {
    for (const type of [T.vpc, T.subnet, T.routeTable, T.igw, T.nat, T.eip, T.endpoint, T.sg, T.defaultSg]) {
      for (const r of plan.ofType(type)) {
        expect(r.inputs.tags).toMatchObject({ "crucible:component": "network", Name: r.name });
      }
    }
  });
});

// `nat` then states what the existing VPC provides.
describe.each([
  ["single", true],
  ["none", false],
] as const)("an existing VPC with nat %s", (nat, internet) => {
  const existing = {
    vpcId: "vpc-0abc12345def67890",
    privateSubnetIds: ["subnet-0aaa12345def67890", "subnet-0bbb12345def67890"],
  };
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(
      "staging",
      configWith("staging", {
        "crucible:network": { cidr: "10.30.0.0/16", azCount: 2, nat, existing },
      }),
    );
  });

  it("creates no VPC, subnets, routes, NAT or endpoints: only the node security group", () => {
    for (const type of [
      T.vpc,
      T.subnet,
      T.routeTable,
      T.association,
      T.igw,
      T.nat,
      T.eip,
      T.endpoint,
      T.defaultSg,
      T.endpointPolicy,
    ]) {
      expect(plan.ofType(type)).toEqual([]);
    }
    expect(plan.ofType(T.sg).map((g) => g.name)).toEqual(["network-nodes"]);
  });

  it(`uses the given ids, the VPC's own range (from AWS), and ${internet ? "opens" : "closes"} 443 to the internet`, () => {
    const nodes = plan.get(T.sg, "network-nodes");
    const network = plan.outputs.network as { vpcCidr: string };
    expect(network.vpcCidr).toMatch(/^10\.\d+\.0\.0\/16$/);
    expect(network.vpcCidr).not.toBe("10.30.0.0/16");
    expect(nodes.inputs.vpcId).toBe(existing.vpcId);
    expect(nodes.inputs.ingress).toEqual([]);
    expect((nodes.inputs.egress as Rule[]).map((r) => r.cidrBlocks ?? r.prefixListIds)).toEqual([
      [network.vpcCidr],
      [expect.stringMatching(/^pl-/)],
      ...(internet ? [["0.0.0.0/0"]] : []),
    ]);
    expect(plan.outputs.network).toMatchObject({
      vpcId: existing.vpcId,
      privateSubnetIds: existing.privateSubnetIds,
      fixedCostCounts: { natGateways: 0, interfaceEndpoints: 0, interfaceEndpointAzs: 0 },
    });
  });
});

describe("bad network config is rejected with the key and what is allowed", () => {
  it("more availability zones than the region has", async () => {
    // us-west-2 has four zones.
    await expect(
      runStack(
        "prod",
        configWith("prod", { "crucible:network": { cidr: "10.40.0.0/16", azCount: 5, nat: "onePerAz" } }),
      ),
    ).rejects.toThrow(
      /^crucible:network\.azCount must be at most the 4 availability zones the region has \(us-west-2a, us-west-2b, us-west-2c, us-west-2d\), got 5$/,
    );
  });

  it("more than six zones", () => {
    expect(
      configProblems("prod", { "crucible:network": { cidr: "10.40.0.0/16", azCount: 7, nat: "none" } }),
    ).toEqual(["crucible:network.azCount must be a whole number from 2 to 6, got 7"]);
  });

  it("an existing VPC without subnets", () => {
    expect(
      configProblems("dev", { "crucible:network": { existing: { vpcId: "vpc-0abc12345def67890" } } }),
    ).toEqual([
      "crucible:network.existing.privateSubnetIds is required (must be a list of private subnet ids (one per availability zone))",
    ]);
    expect(
      configProblems("dev", {
        "crucible:network": {
          existing: { vpcId: "vpc-0abc12345def67890", privateSubnetIds: ["subnet-0aaa12345def67890"] },
        },
      }),
    ).toEqual([
      'crucible:network.existing.privateSubnetIds must list private subnets in at least 2 availability zones, got ["subnet-0aaa12345def67890"]',
    ]);
  });

  it("an existing VPC id that is not one", () => {
    expect(
      configProblems("dev", {
        "crucible:network": {
          existing: {
            vpcId: "my-vpc",
            privateSubnetIds: ["subnet-0aaa12345def67890", "subnet-0bbb12345def67890"],
          },
        },
      }),
    ).toEqual([
      'crucible:network.existing.vpcId must be a VPC id such as vpc-0abc12345def67890, got "my-vpc"',
    ]);
  });

  it("an unknown NAT mode", () => {
    expect(
      configProblems("dev", { "crucible:network": { cidr: "10.20.0.0/16", azCount: 2, nat: "perZone" } }),
    ).toEqual(['crucible:network.nat must be one of none, single, onePerAz, got "perZone"']);
  });

  it("a VPC too small for its NAT subnets", () => {
    expect(
      configProblems("prod", { "crucible:network": { cidr: "10.40.0.0/24", azCount: 3, nat: "onePerAz" } }),
    ).toEqual([
      'crucible:network.cidr must leave room for the 3 public /28 NAT subnets of nat onePerAz over 3 zones (a /24 holds 2); use a larger range such as /22, got "10.40.0.0/24"',
    ]);
    // The same range is fine with one NAT.
    expect(
      configProblems("prod", { "crucible:network": { cidr: "10.40.0.0/24", azCount: 3, nat: "single" } }),
    ).toEqual([]);
  });
});

describe("subnet layout", () => {
  it("cuts six private blocks of an eighth each and /28 public subnets from the last eighth", () => {
    expect(subnetLayout("10.0.0.0/16", 6, 6)).toEqual({
      private: [
        "10.0.0.0/19",
        "10.0.32.0/19",
        "10.0.64.0/19",
        "10.0.96.0/19",
        "10.0.128.0/19",
        "10.0.160.0/19",
      ],
      public: [
        "10.0.224.0/28",
        "10.0.224.16/28",
        "10.0.224.32/28",
        "10.0.224.48/28",
        "10.0.224.64/28",
        "10.0.224.80/28",
      ],
    });
    expect(subnetLayout("192.168.4.0/24", 2, 2)).toEqual({
      private: ["192.168.4.0/27", "192.168.4.32/27"],
      public: ["192.168.4.224/28", "192.168.4.240/28"],
    });
  });

  it("refuses a layout that does not fit", () => {
    expect(() => subnetLayout("192.168.4.0/24", 3, 3)).toThrow(
      "a /24 VPC holds at most 6 private subnets and 2 public /28 subnets, asked for 3 and 3",
    );
  });
});
