import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import { componentTags } from "./providers";
import { type PolicyDocument, accountRoot } from "./policy-document";

/** Arguments of {@link Notifications}. */
export interface NotificationsArgs {
  /** Email addresses subscribed to the topic (already validated by `infra/config/`). Defaults to none. */
  readonly emails?: readonly string[];
}

/** AWS services that publish to the topic: budget notifications and CloudWatch alarm actions. */
export const PUBLISHING_SERVICES = ["budgets.amazonaws.com", "cloudwatch.amazonaws.com"] as const;

/**
 * The one place operations and finance subscribe to: an SNS topic encrypted with its own KMS key,
 * which AWS Budgets and CloudWatch alarms (of this account only) may publish to.
 */
export class Notifications extends pulumi.ComponentResource {
  public readonly topicArn: pulumi.Output<string>;
  public readonly topicName: pulumi.Output<string>;
  public readonly kmsKeyArn: pulumi.Output<string>;

  constructor(name: string, args: NotificationsArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:notifications:Notifications", name, {}, opts);
    const { emails } = { emails: [] as readonly string[], ...args };
    const tags = componentTags("notifications");
    const { accountId } = aws.getCallerIdentityOutput({}, { parent: this });
    const { partition } = aws.getPartitionOutput({}, { parent: this });

    const key = new aws.kms.Key(
      `${name}-key`,
      {
        description: "Encrypts the Crucible notifications topic (budgets and alarms)",
        enableKeyRotation: true,
        deletionWindowInDays: 30,
        policy: pulumi.jsonStringify(keyPolicy(partition, accountId)),
        tags,
      },
      { parent: this },
    );
    new aws.kms.Alias(
      `${name}-key-alias`,
      { namePrefix: `alias/crucible-${name}-`, targetKeyId: key.keyId },
      { parent: this },
    );

    const topic = new aws.sns.Topic(`${name}-topic`, { kmsMasterKeyId: key.arn, tags }, { parent: this });
    new aws.sns.TopicPolicy(
      `${name}-topic-policy`,
      { arn: topic.arn, policy: pulumi.jsonStringify(topicPolicy(topic.arn, accountId)) },
      { parent: this },
    );
    emails.forEach(
      (endpoint, i) =>
        new aws.sns.TopicSubscription(
          `${name}-email-${i}`,
          { topic: topic.arn, protocol: "email", endpoint },
          { parent: this },
        ),
    );

    this.topicArn = topic.arn;
    this.topicName = topic.name;
    this.kmsKeyArn = key.arn;
    this.registerOutputs({ topicArn: this.topicArn, topicName: this.topicName, kmsKeyArn: this.kmsKeyArn });
  }
}

/** The account keeps full control; the publishing services may only use the key to publish through SNS. */
function keyPolicy(partition: pulumi.Input<string>, accountId: pulumi.Input<string>): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      {
        Sid: "AccountAdministers",
        Effect: "Allow",
        Principal: { AWS: accountRoot(partition, accountId) },
        Action: "kms:*",
        Resource: "*",
      },
      {
        Sid: "ServicesPublishEncrypted",
        Effect: "Allow",
        Principal: { Service: [...PUBLISHING_SERVICES] },
        Action: ["kms:GenerateDataKey*", "kms:Decrypt"],
        Resource: "*",
        Condition: { StringEquals: { "aws:SourceAccount": accountId } },
      },
    ],
  };
}

function topicPolicy(topicArn: pulumi.Input<string>, accountId: pulumi.Input<string>): PolicyDocument {
  return {
    Version: "2012-10-17",
    Statement: [
      ...PUBLISHING_SERVICES.map((service) => ({
        Sid: service.startsWith("budgets") ? "BudgetsPublish" : "CloudWatchAlarmsPublish",
        Effect: "Allow" as const,
        Principal: { Service: service },
        Action: "sns:Publish",
        Resource: topicArn,
        // Confused-deputy guard: only this account's budgets and alarms.
        Condition: { StringEquals: { "aws:SourceAccount": accountId } },
      })),
      {
        Sid: "DenyInsecureTransport",
        Effect: "Deny",
        Principal: "*",
        Action: "sns:Publish",
        Resource: topicArn,
        Condition: { Bool: { "aws:SecureTransport": "false" } },
      },
    ],
  };
}
