import * as aws from "@pulumi/aws";
import type { StackValidationPolicy } from "@pulumi/policy";
import { UNKNOWN, forStacksWith, join, keys, known, ofTypes, parseJson } from "./lib";

/** VPC endpoints to S3 and SQS carry a policy naming what they reach: without one they reach any bucket or queue. */

/** Endpoint services whose traffic can carry data out of the VPC to another account's bucket or queue. */
const DATA_SERVICES = /\.(s3|sqs)$/;

/** Whether a policy document allows any statement on every resource (`"*"`, or none named). */
function allowsEverything(doc: unknown): boolean {
  const statements = (doc as { Statement?: unknown } | undefined)?.Statement;
  const list = Array.isArray(statements) ? statements : [statements];
  return list.some((s) => {
    const st = s as { Effect?: unknown; Resource?: unknown } | undefined;
    if (st?.Effect !== "Allow") return false;
    const resources = Array.isArray(st.Resource) ? st.Resource : [st.Resource];
    return resources.some((r) => r === "*" || r === undefined);
  });
}

export function vpcEndpointsHavePolicies(): StackValidationPolicy {
  return {
    name: "vpc-endpoints-have-policies",
    description:
      "S3 and SQS VPC endpoints carry a policy (inline or an aws.ec2.VpcEndpointPolicy) that names the resources they reach, never all.",
    enforcementLevel: "mandatory",
    validateStack: forStacksWith([aws.ec2.VpcEndpoint], (args, report) => {
      const endpoints = ofTypes(args.resources, [aws.ec2.VpcEndpoint]).filter((e) => {
        const service = known(() => e.props.serviceName as unknown);
        return service === UNKNOWN || (typeof service === "string" && DATA_SERVICES.test(service));
      });
      const attached = join(
        endpoints,
        ofTypes(args.resources, [aws.ec2.VpcEndpointPolicy]),
        "vpcEndpointId",
        (e) => keys(e, "id"),
      );
      for (const endpoint of endpoints) {
        const policies = [
          known(() => endpoint.props.policy as unknown),
          ...attached.of(endpoint).map((p) => known(() => p.props.policy as unknown)),
        ];
        if (policies.includes(UNKNOWN)) continue;
        const docs = policies.filter((p) => p !== undefined).map(parseJson);
        if (docs.length === 0) {
          if (attached.undecided) continue;
          report(
            `VPC endpoint ${endpoint.name}: without a policy it reaches every bucket or queue; add an aws.ec2.VpcEndpointPolicy naming the stack's own (infra/network.ts EndpointPolicies).`,
            endpoint.urn,
          );
        } else if (docs.some(allowsEverything)) {
          report(
            `VPC endpoint ${endpoint.name}: its policy allows every resource ("*"); name the stack's own buckets or queues instead.`,
            endpoint.urn,
          );
        }
      }
    }),
  };
}
