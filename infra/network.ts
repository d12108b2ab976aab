import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import type { CrucibleConfig } from "./config";
import { publicSubnetsFor, subnetLayout } from "./cidr";
import type { PolicyDocument } from "./policy-document";
import { componentTags } from "./providers";

/**
 * AWS services the nodes call, reached through interface endpoints when the VPC has no NAT: image
 * pulls (ECR api + dkr), the job queue, logs and metrics, role credentials, Session Manager, and the
 * agent's scale-in protection and lifecycle actions. S3 (workspaces, ECR layers) goes through the
 * free gateway endpoint instead.
 */
export const INTERFACE_ENDPOINT_SERVICES = [
  "ecr.api",
  "ecr.dkr",
  "sqs",
  "logs",
  "monitoring",
  "sts",
  "ssm",
  "ssmmessages",
  "ec2messages",
  "autoscaling",
] as const;

/**
 * CodeArtifact's API (a domain's token, a repository's endpoint) and its repositories (the index itself),
 * added to {@link INTERFACE_ENDPOINT_SERVICES} where nodes read the stack's package proxy. Python packages
 * come through the repositories endpoint itself, not from S3.
 */
export const CODEARTIFACT_ENDPOINT_SERVICES = ["codeartifact.api", "codeartifact.repositories"] as const;

const HTTPS = { protocol: "tcp", fromPort: 443, toPort: 443 } as const;

/** Arguments of {@link Network}. */
export interface NetworkArgs {
  /** The stack's network settings, validated by `infra/config/`. */
  readonly settings: CrucibleConfig["network"];
  /** The stack's region: endpoint service names and the S3 prefix list are regional. */
  readonly region: string;
  /**
   * Nodes read the stack's CodeArtifact package proxy (infra/environments/): without NAT, the VPC gets
   * {@link CODEARTIFACT_ENDPOINT_SERVICES} too. Defaults to false.
   */
  readonly codeArtifact?: boolean;
}

/** What the network costs every month whatever runs on it, as counts (finance applies the prices). */
export interface NetworkFixedCostCounts {
  readonly natGateways: number;
  readonly interfaceEndpoints: number;
  /** Interface endpoints × the availability zones each is placed in (each is billed per AZ). */
  readonly interfaceEndpointAzs: number;
}

/**
 * Where the nodes run: private subnets in `azCount` zones, egress through NAT (per `nat`) or through
 * VPC endpoints alone, and a node security group that admits nothing and lets out only HTTPS.
 *
 * With `existing`, the stack uses the given VPC and subnets and creates only the node security group:
 * routing, NAT and endpoints stay with whoever owns that VPC (a second interface endpoint with private
 * DNS for the same service cannot be added to a VPC that already has one). There `nat` states what
 * the VPC provides: anything but `none` lets nodes reach AWS over the internet on 443.
 */
export class Network extends pulumi.ComponentResource {
  public readonly vpcId: pulumi.Output<string>;
  public readonly vpcCidr: pulumi.Output<string>;
  public readonly privateSubnetIds: pulumi.Output<string[]>;
  public readonly nodeSecurityGroupId: pulumi.Output<string>;
  public readonly natGatewayCount: number;
  public readonly interfaceEndpointCount: number;
  public readonly fixedCostCounts: NetworkFixedCostCounts;
  /**
   * The endpoints whose policies {@link EndpointPolicies} writes once the buckets and queues exist: S3's
   * gateway, and SQS's interface endpoint where there is one (no NAT). None in an `existing` VPC.
   */
  public readonly endpointIds: { readonly s3?: pulumi.Output<string>; readonly sqs?: pulumi.Output<string> };

  constructor(name: string, args: NetworkArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:network:Network", name, {}, opts);
    const { settings, region } = args;
    const tags = componentTags("network");
    const hasNat = settings.nat !== "none";
    const s3PrefixListId = aws.ec2.getPrefixListOutput(
      { name: `com.amazonaws.${region}.s3` },
      { parent: this },
    ).id;

    let vpc: { id: pulumi.Output<string>; cidr: pulumi.Output<string>; subnetIds: pulumi.Output<string[]> };
    let natGateways = 0;
    let interfaceEndpoints = 0;
    let endpointIds: Network["endpointIds"] = {};
    if (settings.existing) {
      const found = aws.ec2.getVpcOutput({ id: settings.existing.vpcId }, { parent: this });
      vpc = {
        id: found.id,
        cidr: found.cidrBlock,
        subnetIds: pulumi.output([...settings.existing.privateSubnetIds]),
      };
    } else {
      const built = buildVpc(name, settings, region, args.codeArtifact ?? false, tags, this);
      vpc = built;
      natGateways = built.natGateways;
      interfaceEndpoints = built.interfaceEndpoints;
      endpointIds = built.endpointIds;
    }

    const nodes = new aws.ec2.SecurityGroup(
      `${name}-nodes`,
      {
        vpcId: vpc.id,
        description: "Crucible nodes: no inbound; outbound HTTPS to AWS only",
        ingress: [],
        egress: [
          { ...HTTPS, cidrBlocks: [vpc.cidr], description: "VPC interface endpoints" },
          { ...HTTPS, prefixListIds: [s3PrefixListId], description: "S3 through the gateway endpoint" },
          ...(hasNat ? [{ ...HTTPS, cidrBlocks: ["0.0.0.0/0"], description: "AWS APIs through NAT" }] : []),
        ],
        tags: { ...tags, Name: `${name}-nodes` },
      },
      { parent: this },
    );

    this.vpcId = vpc.id;
    this.vpcCidr = vpc.cidr;
    this.privateSubnetIds = vpc.subnetIds;
    this.nodeSecurityGroupId = nodes.id;
    this.natGatewayCount = natGateways;
    this.interfaceEndpointCount = interfaceEndpoints;
    this.endpointIds = endpointIds;
    this.fixedCostCounts = {
      natGateways,
      interfaceEndpoints,
      interfaceEndpointAzs: settings.existing ? 0 : interfaceEndpoints * settings.azCount,
    };
    this.registerOutputs({
      vpcId: this.vpcId,
      vpcCidr: this.vpcCidr,
      privateSubnetIds: this.privateSubnetIds,
      nodeSecurityGroupId: this.nodeSecurityGroupId,
      fixedCostCounts: this.fixedCostCounts,
    });
  }
}

/** The VPC, its subnets, routing, NAT and endpoints; returns what the rest of the stack needs. */
function buildVpc(
  name: string,
  settings: CrucibleConfig["network"],
  region: string,
  codeArtifact: boolean,
  tags: Record<string, string>,
  parent: pulumi.Resource,
) {
  const { azCount, nat, cidr } = settings;
  const zones = availabilityZones(azCount, parent);
  const vpc = new aws.ec2.Vpc(
    `${name}-vpc`,
    {
      cidrBlock: cidr,
      // Interface endpoints' private DNS names need both.
      enableDnsSupport: true,
      enableDnsHostnames: true,
      tags: { ...tags, Name: `${name}-vpc` },
    },
    { parent },
  );
  // Adopted with no rules: anything launched into the VPC without a group of its own gets no traffic.
  new aws.ec2.DefaultSecurityGroup(
    `${name}-default`,
    { vpcId: vpc.id, ingress: [], egress: [], tags: { ...tags, Name: `${name}-default` } },
    { parent },
  );
  const layout = subnetLayout(cidr, azCount, publicSubnetsFor(nat, azCount));
  const subnet = (kind: "private" | "public", i: number, cidrBlock: string) =>
    new aws.ec2.Subnet(
      `${name}-${kind}-${i}`,
      {
        vpcId: vpc.id,
        cidrBlock,
        availabilityZone: zones.apply((z) => z[i]!),
        mapPublicIpOnLaunch: false,
        tags: { ...tags, Name: `${name}-${kind}-${i}` },
      },
      { parent },
    );
  const privateSubnets = layout.private.map((block, i) => subnet("private", i, block));
  const natIds = natGateways(
    name,
    vpc,
    layout.public.map((block, i) => subnet("public", i, block)),
    tags,
    parent,
  );

  const routeTables = privateSubnets.map((s, i) => {
    const table = new aws.ec2.RouteTable(
      `${name}-private-${i}`,
      {
        vpcId: vpc.id,
        // A single NAT serves every zone; one per zone keeps a zone's egress up when another's fails.
        routes: natIds.length ? [{ cidrBlock: "0.0.0.0/0", natGatewayId: natIds[i % natIds.length]! }] : [],
        tags: { ...tags, Name: `${name}-private-${i}` },
      },
      { parent },
    );
    new aws.ec2.RouteTableAssociation(
      `${name}-private-${i}`,
      { subnetId: s.id, routeTableId: table.id },
      { parent },
    );
    return table;
  });

  const s3 = new aws.ec2.VpcEndpoint(
    `${name}-s3`,
    {
      vpcId: vpc.id,
      serviceName: `com.amazonaws.${region}.s3`,
      vpcEndpointType: "Gateway",
      routeTableIds: routeTables.map((t) => t.id),
      tags: { ...tags, Name: `${name}-s3` },
    },
    { parent },
  );
  const services =
    nat === "none"
      ? [...INTERFACE_ENDPOINT_SERVICES, ...(codeArtifact ? CODEARTIFACT_ENDPOINT_SERVICES : [])]
      : [];
  let sqs: pulumi.Output<string> | undefined;
  if (services.length) {
    const endpointGroup = new aws.ec2.SecurityGroup(
      `${name}-endpoints`,
      {
        vpcId: vpc.id,
        description: "Crucible VPC interface endpoints: HTTPS from the VPC only",
        ingress: [{ ...HTTPS, cidrBlocks: [vpc.cidrBlock], description: "HTTPS from the VPC" }],
        egress: [],
        tags: { ...tags, Name: `${name}-endpoints` },
      },
      { parent },
    );
    for (const service of services) {
      const id = `${name}-${service.replace(/\./g, "-")}`;
      const endpoint = new aws.ec2.VpcEndpoint(
        id,
        {
          vpcId: vpc.id,
          serviceName: `com.amazonaws.${region}.${service}`,
          vpcEndpointType: "Interface",
          privateDnsEnabled: true,
          subnetIds: privateSubnets.map((s) => s.id),
          securityGroupIds: [endpointGroup.id],
          tags: { ...tags, Name: id },
        },
        { parent },
      );
      if (service === "sqs") sqs = endpoint.id;
    }
  }

  return {
    id: vpc.id,
    cidr: vpc.cidrBlock,
    subnetIds: pulumi.all(privateSubnets.map((s) => s.id)),
    natGateways: natIds.length,
    interfaceEndpoints: services.length,
    endpointIds: { s3: s3.id, ...(sqs && { sqs }) },
  };
}

/** An internet gateway and a NAT gateway in each public subnet; none without public subnets. */
function natGateways(
  name: string,
  vpc: aws.ec2.Vpc,
  publicSubnets: aws.ec2.Subnet[],
  tags: Record<string, string>,
  parent: pulumi.Resource,
): pulumi.Output<string>[] {
  if (!publicSubnets.length) return [];
  const igw = new aws.ec2.InternetGateway(
    `${name}-igw`,
    { vpcId: vpc.id, tags: { ...tags, Name: `${name}-igw` } },
    { parent },
  );
  const publicTable = new aws.ec2.RouteTable(
    `${name}-public`,
    {
      vpcId: vpc.id,
      routes: [{ cidrBlock: "0.0.0.0/0", gatewayId: igw.id }],
      tags: { ...tags, Name: `${name}-public` },
    },
    { parent },
  );
  return publicSubnets.map((s, i) => {
    new aws.ec2.RouteTableAssociation(
      `${name}-public-${i}`,
      { subnetId: s.id, routeTableId: publicTable.id },
      { parent },
    );
    const ip = new aws.ec2.Eip(
      `${name}-nat-${i}`,
      { domain: "vpc", tags: { ...tags, Name: `${name}-nat-${i}` } },
      { parent },
    );
    return new aws.ec2.NatGateway(
      `${name}-nat-${i}`,
      { allocationId: ip.id, subnetId: s.id, tags: { ...tags, Name: `${name}-nat-${i}` } },
      { parent, dependsOn: [igw] },
    ).id;
  });
}

/**
 * The region's first `count` available zones. The region's zone count is only known from AWS, so a
 * config asking for more fails here rather than in `infra/config/`.
 */
function availabilityZones(count: number, parent: pulumi.Resource): pulumi.Output<string[]> {
  return aws.getAvailabilityZonesOutput({ state: "available" }, { parent }).names.apply((names) => {
    if (names.length < count) {
      throw new Error(
        `crucible:network.azCount must be at most the ${names.length} availability zones the region has (${names.join(", ")}), got ${count}`,
      );
    }
    return names.slice(0, count);
  });
}

/** The bucket ECR keeps image layers in, in the stack's region: image pulls read it through the S3 endpoint. */
export const ecrLayerBucketArn = (region: string) => `arn:aws:s3:::prod-${region}-starport-layer-bucket/*`;

/** Arguments of {@link EndpointPolicies}. */
export interface EndpointPoliciesArgs {
  /** `Network.endpointIds`: the endpoints to write policies on (none in an `existing` VPC). */
  readonly endpointIds: Network["endpointIds"];
  readonly region: string;
  /** Every bucket the stack declares that anything in the VPC uses (workspaces, datasets). */
  readonly bucketArns: readonly pulumi.Input<string>[];
  /** Every queue the stack declares that anything in the VPC uses (each tier's job queues). */
  readonly queueArns: readonly pulumi.Input<string>[];
}

/**
 * The VPC endpoints' policies: through the S3 gateway, only the stack's own buckets and ECR's layer
 * bucket (image pulls); through the SQS endpoint, only the stack's own queues. Whatever a node's
 * credentials allow (or a job could borrow), nothing leaves the VPC for another bucket or queue this
 * way. Declared apart from {@link Network}, which exists before the buckets and queues do.
 */
export class EndpointPolicies extends pulumi.ComponentResource {
  constructor(name: string, args: EndpointPoliciesArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:network:EndpointPolicies", name, {}, opts);
    const { endpointIds, region } = args;
    if (endpointIds.s3) {
      new aws.ec2.VpcEndpointPolicy(
        `${name}-s3`,
        {
          vpcEndpointId: endpointIds.s3,
          policy: pulumi.jsonStringify(s3EndpointPolicy(args.bucketArns, region)),
        },
        { parent: this },
      );
    }
    if (endpointIds.sqs) {
      new aws.ec2.VpcEndpointPolicy(
        `${name}-sqs`,
        { vpcEndpointId: endpointIds.sqs, policy: pulumi.jsonStringify(sqsEndpointPolicy(args.queueArns)) },
        { parent: this },
      );
    }
    this.registerOutputs({});
  }
}

/** The S3 gateway's policy: the stack's buckets and their objects, and reads of ECR's layers. */
export function s3EndpointPolicy(
  bucketArns: readonly pulumi.Input<string>[],
  region: string,
): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "StackBuckets",
        Effect: "Allow",
        Principal: "*",
        Action: "s3:*",
        Resource: bucketArns.flatMap((arn) => [arn, pulumi.interpolate`${arn}/*`]),
      },
      {
        Sid: "EcrLayers",
        Effect: "Allow",
        Principal: "*",
        Action: "s3:GetObject",
        Resource: ecrLayerBucketArn(region),
      },
    ],
  };
}

/** The SQS endpoint's policy: the stack's queues only. */
export function sqsEndpointPolicy(queueArns: readonly pulumi.Input<string>[]): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      { Sid: "StackQueues", Effect: "Allow", Principal: "*", Action: "sqs:*", Resource: [...queueArns] },
    ],
  };
}
