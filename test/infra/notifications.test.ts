import { beforeAll, describe, expect, it } from "vitest";
import { MOCK_ACCOUNT_ID } from "../../scripts/lib/mock-engine";
import { STACKS, configProblems, readStackConfig, runStack, type Plan } from "../support/harness";

const EMAILS: Record<(typeof STACKS)[number], string[]> = {
  dev: ["ml-platform-alerts@example.com"],
  staging: ["ml-platform-alerts@example.com", "finance-cloud@example.com"],
  prod: ["ml-platform-alerts@example.com", "finance-cloud@example.com"],
};

describe.each(STACKS)("%s stack notifications", (stack) => {
  let plan: Plan;
  const region = readStackConfig(stack)["aws:region"];
  beforeAll(async () => {
    plan = await runStack(stack);
  });

  const topic = () => plan.get("aws:sns/topic:Topic", "notifications-topic");
  const key = () => plan.get("aws:kms/key:Key", "notifications-key");

  it("is one component holding the key, the topic, its policy and the subscriptions", () => {
    const component = plan.get("crucible:notifications:Notifications", "notifications");
    const children = plan.childrenOf(component.urn).map((r) => `${r.type} ${r.name}`);
    expect(children.sort()).toEqual(
      [
        "aws:kms/alias:Alias notifications-key-alias",
        "aws:kms/key:Key notifications-key",
        "aws:sns/topic:Topic notifications-topic",
        "aws:sns/topicPolicy:TopicPolicy notifications-topic-policy",
        ...EMAILS[stack].map(
          (_, i) => `aws:sns/topicSubscription:TopicSubscription notifications-email-${i}`,
        ),
      ].sort(),
    );
  });

  it("encrypts the topic with its own rotating key", () => {
    expect(key().inputs).toMatchObject({ enableKeyRotation: true, deletionWindowInDays: 30 });
    expect(topic().inputs.kmsMasterKeyId).toBe(key().state.arn);
    expect(plan.get("aws:kms/alias:Alias", "notifications-key-alias").inputs.namePrefix).toBe(
      "alias/crucible-notifications-",
    );
  });

  it("lets Budgets and CloudWatch of this account use the key, and the account administer it", () => {
    expect(JSON.parse(key().inputs.policy as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        {
          Sid: "AccountAdministers",
          Effect: "Allow",
          Principal: { AWS: `arn:aws:iam::${MOCK_ACCOUNT_ID}:root` },
          Action: "kms:*",
          Resource: "*",
        },
        {
          Sid: "ServicesPublishEncrypted",
          Effect: "Allow",
          Principal: { Service: ["budgets.amazonaws.com", "cloudwatch.amazonaws.com"] },
          Action: ["kms:GenerateDataKey*", "kms:Decrypt"],
          Resource: "*",
          Condition: { StringEquals: { "aws:SourceAccount": MOCK_ACCOUNT_ID } },
        },
      ],
    });
  });

  it("lets only this account's budgets and alarms publish, and only over TLS", () => {
    const arn = `arn:aws:sns:${region}:${MOCK_ACCOUNT_ID}:${topic().state.name as string}`;
    const policy = plan.get("aws:sns/topicPolicy:TopicPolicy", "notifications-topic-policy").inputs;
    expect(policy.arn).toBe(arn);
    const publisher = (Sid: string, service: string) => ({
      Sid,
      Effect: "Allow",
      Principal: { Service: service },
      Action: "sns:Publish",
      Resource: arn,
      Condition: { StringEquals: { "aws:SourceAccount": MOCK_ACCOUNT_ID } },
    });
    expect(JSON.parse(policy.policy as string)).toEqual({
      Version: "2012-10-17",
      Statement: [
        publisher("BudgetsPublish", "budgets.amazonaws.com"),
        publisher("CloudWatchAlarmsPublish", "cloudwatch.amazonaws.com"),
        {
          Sid: "DenyInsecureTransport",
          Effect: "Deny",
          Principal: "*",
          Action: "sns:Publish",
          Resource: arn,
          Condition: { Bool: { "aws:SecureTransport": "false" } },
        },
      ],
    });
  });

  it("subscribes exactly the configured emails", () => {
    const subscriptions = plan
      .ofType("aws:sns/topicSubscription:TopicSubscription")
      .filter((s) => s.inputs.protocol === "email")
      .map((s) => ({ topic: s.inputs.topic, endpoint: s.inputs.endpoint }));
    expect(subscriptions).toEqual(EMAILS[stack].map((endpoint) => ({ topic: topic().state.arn, endpoint })));
  });

  it("exports the topic ARN for alarms and finance", () => {
    expect(plan.outputs.notificationTopicArn).toBe(topic().state.arn);
  });
});

describe("notification subscribers are validated", () => {
  it("names the key and the value of an invalid address", () => {
    expect(
      configProblems("staging", { "crucible:budgets": { emails: ["finance@", "ok@example.com"] } }),
    ).toEqual([
      'crucible:budgets.emails[0] must be an email address such as finance@example.com, got "finance@"',
    ]);
  });

  it("refuses more addresses than AWS Budgets takes per notification", () => {
    const emails = Array.from({ length: 11 }, (_, i) => `person${i}@example.com`);
    expect(configProblems("dev", { "crucible:budgets": { emails } })).toEqual([
      expect.stringMatching(
        /^crucible:budgets\.emails must list at most 10 email addresses \(AWS Budgets' limit per notification\), got \["person0@example.com"/,
      ),
    ]);
  });

  it("refuses a repeated address", () => {
    expect(
      configProblems("dev", { "crucible:budgets": { emails: ["a@example.com", "a@example.com"] } }),
    ).toEqual([
      'crucible:budgets.emails must not repeat email addresses, got ["a@example.com","a@example.com"]',
    ]);
  });
});
