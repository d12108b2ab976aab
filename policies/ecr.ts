import * as aws from "@pulumi/aws";
import {
  validateResourceOfType,
  type ResourceValidationPolicy,
  type StackValidationPolicy,
} from "@pulumi/policy";
import { UNKNOWN, asList, forStacksWith, join, keys, known, ofTypes, parseJson } from "./lib";

/** ECR: images are run by digest, so tags never move, every push is scanned and old images expire. */

export function ecrImmutableTags(): ResourceValidationPolicy {
  return {
    name: "ecr-immutable-tags",
    description: "ECR repositories make image tags immutable.",
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.ecr.Repository, (repo, args, report) => {
      if (repo.imageTagMutability !== "IMMUTABLE") {
        report(
          `${args.name}: set imageTagMutability to "IMMUTABLE" (got ${JSON.stringify(repo.imageTagMutability) ?? 'nothing, which means "MUTABLE"'}).`,
        );
      }
    }),
  };
}

export function ecrScanOnPush(): ResourceValidationPolicy {
  return {
    name: "ecr-scan-on-push",
    description: "ECR repositories scan every image on push.",
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.ecr.Repository, (repo, args, report) => {
      if (repo.imageScanningConfiguration?.scanOnPush !== true) {
        report(`${args.name}: set imageScanningConfiguration.scanOnPush to true.`);
      }
    }),
  };
}

export function ecrLifecyclePolicies(): StackValidationPolicy {
  return {
    name: "ecr-lifecycle-policies",
    description: "Every ECR repository has a lifecycle policy with at least one rule.",
    enforcementLevel: "mandatory",
    validateStack: forStacksWith([aws.ecr.Repository], (args, report) => {
      const repos = ofTypes(args.resources, [aws.ecr.Repository]);
      const policies = ofTypes(args.resources, [aws.ecr.LifecyclePolicy]);
      const joined = join(repos, policies, "repository", (r) => keys(r, "name", "id"));
      for (const repo of repos) {
        const attached = joined.of(repo);
        if (attached.length === 0) {
          if (!joined.undecided) {
            report(
              `ECR repository ${repo.name} has no lifecycle policy: add an aws.ecr.LifecyclePolicy that expires untagged and old images.`,
              repo.urn,
            );
          }
          continue;
        }
        for (const policy of attached) {
          const rules = known(() => {
            const doc = parseJson(policy.props.policy) as { rules?: unknown } | undefined;
            return asList(doc?.rules as unknown[] | undefined).length;
          });
          if (rules !== UNKNOWN && rules === 0) {
            report(
              `ECR lifecycle policy ${policy.name} (of ${repo.name}) has no rules: add at least one rule.`,
              policy.urn,
            );
          }
        }
      }
    }),
  };
}
