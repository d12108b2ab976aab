import type { MiddlewareStack } from "@smithy/types";

/**
 * Records every AWS API call made through the SDK clients it is added to: the client, the command and its
 * input, as the SDK has them before signing. {@link iamRequests} turns each into what IAM authorises.
 */

/** One API call as a client sent it. */
export interface RecordedCall {
  /** The client's service: `s3`, `sqs`, `cloudwatch`, `autoscaling`. */
  readonly service: string;
  /** The operation without its `Command` suffix (`ListObjectsV2`). */
  readonly operation: string;
  readonly input: Readonly<Record<string, unknown>>;
}

/** A client whose middleware stack can be added to: every @aws-sdk v3 client. */
interface AnyClient {
  readonly middlewareStack: Pick<MiddlewareStack<object, object>, "add">;
}

const MIDDLEWARE_NAME = "crucibleRecordCalls";

export class CallRecorder {
  readonly calls: RecordedCall[] = [];

  /**
   * Records the calls of `client` (of `service`). With `offline`, the call then ends there with an empty
   * answer, for services the local platform does not run (CloudWatch, Auto Scaling): the runtime's own code
   * makes the call, and nothing leaves the process.
   */
  attach(client: AnyClient, service: string, { offline = false }: { offline?: boolean } = {}): void {
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const { commandName } = context as { commandName?: string };
        this.calls.push({
          service,
          operation: (commandName ?? "unknown").replace(/Command$/, ""),
          input: { ...(args.input as Record<string, unknown>) },
        });
        if (offline) return { output: { $metadata: { httpStatusCode: 200 } }, response: {} };
        return next(args);
      },
      { step: "initialize", name: MIDDLEWARE_NAME, priority: "high" },
    );
  }

  /** Distinct `service:operation` pairs seen, sorted. */
  operations(): string[] {
    return [...new Set(this.calls.map((c) => `${c.service}:${c.operation}`))].sort();
  }
}

/** What one call asks IAM: an action on a resource, with the condition keys the request carries. */
export interface IamRequest {
  readonly action: string;
  readonly resource: string;
  /** Condition keys present in the request, with their values. */
  readonly context: Readonly<Record<string, string>>;
  /**
   * Every condition key this model of the request knows about, present or not: a policy condition on any
   * other key cannot be judged, and fails the evaluation instead of passing or failing by accident.
   */
  readonly knownKeys: ReadonlySet<string>;
  /** The call it came from, for messages (`s3:PutObject workspaces/lab/ada/jobs/…`). */
  readonly call: string;
}

/** Where a stack's resources are, for one tier: what the local names map to. */
export interface StackNaming {
  readonly stack: string;
  readonly region: string;
  readonly accountId: string;
  /** The stack's tier that the local tier stands for. */
  readonly tier: string;
  /** Local bucket name → the stack's bucket ARN. */
  bucketArn(localBucket: string): string;
  /** The stack's bucket encryption key, when objects are SSE-KMS. */
  readonly kmsKeyArn: string | undefined;
  /** Local queue name (`crucible-<tier>[-high|-low][-dlq]`) → the stack's queue ARN. */
  queueArn(localQueueName: string): string;
  /** Local Auto Scaling group name → the stack's group ARN. */
  groupArn(localGroupName: string): string;
  /** Rewrites a bucket key or prefix that names the local tier (pause markers, fair-share markers). */
  key(localKey: string): string;
}

const S3_KEYS = ["s3:prefix", "s3:max-keys", "s3:delimiter", "aws:ResourceAccount", "aws:SecureTransport"];
const SQS_KEYS = ["aws:ResourceAccount", "aws:SecureTransport"];
const KMS_KEYS = ["kms:ViaService", "aws:ResourceAccount", "aws:SecureTransport"];
/** SQS operations and their IAM actions (a batch call is authorised as its single form). */
const SQS_ACTIONS: Readonly<Record<string, string>> = {
  ReceiveMessage: "sqs:ReceiveMessage",
  SendMessage: "sqs:SendMessage",
  SendMessageBatch: "sqs:SendMessage",
  DeleteMessage: "sqs:DeleteMessage",
  DeleteMessageBatch: "sqs:DeleteMessage",
  ChangeMessageVisibility: "sqs:ChangeMessageVisibility",
  ChangeMessageVisibilityBatch: "sqs:ChangeMessageVisibility",
  GetQueueAttributes: "sqs:GetQueueAttributes",
};
/** S3 inputs this model does not turn into IAM actions: a call carrying one fails the mapping. */
const UNMODELLED_S3_INPUTS = [
  "ACL",
  "GrantFullControl",
  "GrantRead",
  "GrantReadACP",
  "GrantWriteACP",
  "VersionId",
  "ObjectLockMode",
  "ObjectLockLegalHoldStatus",
  "ExpectedBucketOwner",
  "SSEKMSKeyId",
];

/** The last path segment of a queue URL (not parsed as a URL: fauxqs' host, sqs.<region>.127.0.0.1, is not one). */
const queueName = (url: string): string => url.split("?")[0]!.split("/").pop()!;

/**
 * The IAM requests one recorded call makes on a stack, after `naming` maps the local names: the API
 * operation's action and resource, plus what S3 asks KMS for on the caller's behalf when the bucket's
 * objects are SSE-KMS. An operation this model does not know throws.
 */
export function iamRequests(call: RecordedCall, naming: StackNaming): IamRequest[] {
  const str = (name: string): string => {
    const value = call.input[name];
    if (typeof value !== "string") throw new Error(`${call.service}:${call.operation} has no ${name}`);
    return value;
  };
  const base = { aws: { "aws:ResourceAccount": naming.accountId, "aws:SecureTransport": "true" } };
  switch (call.service) {
    case "s3": {
      for (const name of UNMODELLED_S3_INPUTS)
        if (call.input[name] !== undefined)
          throw new Error(`s3:${call.operation} sets ${name}, which this model does not map to IAM actions`);
      const bucket = naming.bucketArn(str("Bucket"));
      const s3 = (action: string, resource: string, context: Record<string, string> = {}): IamRequest => ({
        action,
        resource,
        context: { ...base.aws, ...context },
        knownKeys: new Set(S3_KEYS),
        call: `s3:${call.operation} ${resource}`,
      });
      const kms = (action: string, object: string): IamRequest[] =>
        naming.kmsKeyArn === undefined
          ? []
          : [
              {
                action,
                resource: naming.kmsKeyArn,
                context: { ...base.aws, "kms:ViaService": `s3.${naming.region}.amazonaws.com` },
                knownKeys: new Set(KMS_KEYS),
                call: `${action} by S3 for s3:${call.operation} ${object}`,
              },
            ];
      const object = (): string => `${bucket}/${naming.key(str("Key"))}`;
      const tagging = (o: string): IamRequest[] =>
        call.input.Tagging === undefined ? [] : [s3("s3:PutObjectTagging", o)];
      switch (call.operation) {
        case "GetObject":
          return [s3("s3:GetObject", object()), ...kms("kms:Decrypt", object())];
        case "HeadObject":
          return [s3("s3:GetObject", object())];
        case "PutObject":
          return [
            s3("s3:PutObject", object()),
            ...tagging(object()),
            ...kms("kms:GenerateDataKey", object()),
          ];
        case "CreateMultipartUpload":
          return [
            s3("s3:PutObject", object()),
            ...tagging(object()),
            ...kms("kms:GenerateDataKey", object()),
          ];
        case "UploadPart":
        case "CompleteMultipartUpload":
          // S3 decrypts the upload's data key to add and assemble parts.
          return [s3("s3:PutObject", object()), ...kms("kms:Decrypt", object())];
        case "AbortMultipartUpload":
          return [s3("s3:AbortMultipartUpload", object())];
        case "DeleteObject":
          return [s3("s3:DeleteObject", object())];
        case "ListObjectsV2": {
          const context: Record<string, string> = {};
          if (typeof call.input.Prefix === "string") context["s3:prefix"] = naming.key(call.input.Prefix);
          if (typeof call.input.MaxKeys === "number") context["s3:max-keys"] = String(call.input.MaxKeys);
          if (typeof call.input.Delimiter === "string") context["s3:delimiter"] = call.input.Delimiter;
          return [s3("s3:ListBucket", bucket, context)];
        }
      }
      break;
    }
    case "sqs": {
      const action = SQS_ACTIONS[call.operation];
      if (!action) break;
      const resource = naming.queueArn(queueName(str("QueueUrl")));
      return [
        {
          action,
          resource,
          context: base.aws,
          knownKeys: new Set(SQS_KEYS),
          call: `${action} ${resource}`,
        },
      ];
    }
    case "cloudwatch":
      if (call.operation !== "PutMetricData") break;
      return [
        {
          action: "cloudwatch:PutMetricData",
          resource: "*",
          context: { "cloudwatch:namespace": str("Namespace") },
          knownKeys: new Set(["cloudwatch:namespace"]),
          call: `cloudwatch:PutMetricData namespace ${str("Namespace")}`,
        },
      ];
    case "autoscaling": {
      if (!["SetInstanceProtection", "CompleteLifecycleAction", "SetInstanceHealth"].includes(call.operation))
        break;
      // SetInstanceHealth names only the instance: IAM authorises it on the instance's group, this node's.
      const group = naming.groupArn(
        typeof call.input.AutoScalingGroupName === "string" ? call.input.AutoScalingGroupName : "",
      );
      return [
        {
          action: `autoscaling:${call.operation}`,
          resource: group,
          context: {},
          knownKeys: new Set(),
          call: `autoscaling:${call.operation} ${group}`,
        },
      ];
    }
  }
  throw new Error(
    `${call.service}:${call.operation} is not in the IAM model of test/support/record-calls.ts: add its action, resource and condition keys`,
  );
}
