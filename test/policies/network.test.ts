import { describe, expect, it } from "vitest";
import { vpcEndpointsHavePolicies } from "../../policies/network";
import { messages, urnOf, validateStack, type TestResource } from "./run-policy";

const ENDPOINT = "aws:ec2/vpcEndpoint:VpcEndpoint";
const POLICY = "aws:ec2/vpcEndpointPolicy:VpcEndpointPolicy";
const endpoint = (name: string, service: string, props: Record<string, unknown> = {}): TestResource => ({
  type: ENDPOINT,
  name,
  props: { id: `vpce-${name}`, serviceName: `com.amazonaws.us-east-1.${service}`, ...props },
});
const doc = (resource: unknown) =>
  JSON.stringify({
    Version: "2012-10-17",
    Statement: [{ Effect: "Allow", Principal: "*", Action: "s3:*", Resource: resource }],
  });
const policy = (name: string, endpointName: string, resource: unknown): TestResource => ({
  type: POLICY,
  name,
  props: { vpcEndpointId: `vpce-${endpointName}`, policy: doc(resource) },
});
const OWN = ["arn:aws:s3:::workspaces-abc", "arn:aws:s3:::workspaces-abc/*"];

describe("vpc-endpoints-have-policies", () => {
  it("passes S3 and SQS endpoints whose attached or inline policies name their resources, and ignores others", async () => {
    const o = await validateStack(vpcEndpointsHavePolicies(), [
      endpoint("s3", "s3"),
      policy("s3-policy", "s3", OWN),
      endpoint("sqs", "sqs", { policy: doc(["arn:aws:sqs:us-east-1:123456789012:jobs"]) }),
      endpoint("logs", "logs"),
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails an S3 endpoint with no policy, and an SQS one whose policy allows every resource", async () => {
    const o = await validateStack(vpcEndpointsHavePolicies(), [
      endpoint("s3", "s3"),
      endpoint("sqs", "sqs"),
      policy("sqs-policy", "sqs", "*"),
    ]);
    expect(messages(o)).toEqual([
      "VPC endpoint s3: without a policy it reaches every bucket or queue; add an aws.ec2.VpcEndpointPolicy naming the stack's own (infra/network.ts EndpointPolicies).",
      'VPC endpoint sqs: its policy allows every resource ("*"); name the stack\'s own buckets or queues instead.',
    ]);
    expect(o.violations.map((v) => v.urn)).toEqual([urnOf(ENDPOINT, "s3"), urnOf(ENDPOINT, "sqs")]);
  });
});
