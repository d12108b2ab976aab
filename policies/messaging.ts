import * as aws from "@pulumi/aws";
import {
  validateResourceOfType,
  type PolicyResource,
  type ResourceValidationPolicy,
  type StackValidationPolicy,
} from "@pulumi/policy";
import { UNKNOWN, forStacksWith, join, keys, known, ofTypes, parseJson, type Maybe } from "./lib";

/** Queues and topics: encrypted at rest; every job queue hands poison messages to a dead-letter queue. */

export function sqsQueuesEncrypted(): ResourceValidationPolicy {
  return {
    name: "sqs-queues-encrypted",
    description: "SQS queues are encrypted at rest (SSE-SQS or a KMS key).",
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.sqs.Queue, (q, args, report) => {
      if (q.sqsManagedSseEnabled !== true && !q.kmsMasterKeyId) {
        report(`${args.name}: set sqsManagedSseEnabled to true or kmsMasterKeyId to a KMS key.`);
      }
    }),
  };
}

export function snsTopicsEncrypted(): ResourceValidationPolicy {
  return {
    name: "sns-topics-encrypted",
    description: "SNS topics are encrypted at rest with a KMS key.",
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.sns.Topic, (t, args, report) => {
      if (!t.kmsMasterKeyId)
        report(
          `${args.name}: set kmsMasterKeyId to a KMS key (a customer key lets budgets and alarms publish).`,
        );
    }),
  };
}

/** The dead-letter target of a redrive policy: its ARN, undefined when absent or malformed. */
function deadLetterTarget(redrivePolicy: () => unknown): Maybe<string | undefined> {
  return known(() => {
    const doc = parseJson(redrivePolicy()) as { deadLetterTargetArn?: unknown } | undefined;
    return typeof doc?.deadLetterTargetArn === "string" ? doc.deadLetterTargetArn : undefined;
  });
}

/**
 * A queue is a dead-letter queue when another queue's redrive policy targets it, by ARN or (during
 * preview, where ARNs are unknown) by the engine's property dependency. Every other queue is a job
 * queue and needs a redrive policy, inline or as an `aws.sqs.RedrivePolicy`, to a queue.
 */
export function jobQueuesHaveDlq(): StackValidationPolicy {
  return {
    name: "job-queues-have-dlq",
    description: "Every SQS job queue has a redrive policy to a dead-letter queue.",
    enforcementLevel: "mandatory",
    validateStack: forStacksWith([aws.sqs.Queue], (args, report) => {
      const queues = ofTypes(args.resources, [aws.sqs.Queue]);
      const redrives = ofTypes(args.resources, [aws.sqs.RedrivePolicy]);
      const sources: PolicyResource[] = [
        ...queues.filter((q) => known(() => q.props.redrivePolicy as unknown) !== undefined),
        ...redrives,
      ];

      const dlqs = new Set<PolicyResource>();
      let targetsUnknown = false;
      for (const s of sources) {
        (s.propertyDependencies?.redrivePolicy ?? [])
          .filter((d) => d !== s && queues.includes(d))
          .forEach((d) => dlqs.add(d));
        const arn = deadLetterTarget(() => s.props.redrivePolicy as unknown);
        if (arn === UNKNOWN) targetsUnknown = true;
        else queues.filter((q) => q !== s && keys(q, "arn").includes(arn)).forEach((q) => dlqs.add(q));
      }
      const standalone = join(queues, redrives, "queueUrl", (q) => keys(q, "url", "id"));

      for (const queue of queues.filter((q) => !dlqs.has(q))) {
        const inline = deadLetterTarget(() => queue.props.redrivePolicy as unknown);
        const attached = standalone
          .of(queue)
          .map((r) => deadLetterTarget(() => r.props.redrivePolicy as unknown));
        const targets = [inline, ...attached];
        if (targets.includes(UNKNOWN)) continue;
        const arns = targets.filter((t): t is string => typeof t === "string");
        if (arns.length === 0) {
          if (targetsUnknown || standalone.undecided) continue;
          report(
            `SQS queue ${queue.name} is a job queue without a dead-letter queue: set redrivePolicy to ` +
              `JSON.stringify({ deadLetterTargetArn: <dlq arn>, maxReceiveCount: <n> }) or add an aws.sqs.RedrivePolicy.`,
            queue.urn,
          );
        } else if (arns.some((a) => !a.startsWith("arn:aws") || !a.includes(":sqs:"))) {
          report(
            `SQS queue ${queue.name}: its redrive policy's deadLetterTargetArn must be an SQS queue ARN, got ${arns.join(", ")}.`,
            queue.urn,
          );
        } else if (arns.some((a) => keys(queue, "arn").includes(a))) {
          report(
            `SQS queue ${queue.name}: its redrive policy targets the queue itself; point it at a separate dead-letter queue.`,
            queue.urn,
          );
        }
      }
    }),
  };
}
