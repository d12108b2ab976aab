import * as aws from "@pulumi/aws";
import { validateResourceOfType, type ResourceValidationPolicy } from "@pulumi/policy";
import { actionsOf, asList, isReadOnlyAction, statementsOf } from "./lib";

/**
 * `...IfExists` operators also match a request without the key: a tag condition written that way admits
 * every untagged resource. A statement that grants IAM or write actions must test `aws:RequestTag`,
 * `aws:ResourceTag` or `aws:TagKeys` with the plain operators (or `Null`) instead.
 */
function ifExistsGrants(document: unknown, where: string, report: (m: string) => void): void {
  for (const s of (statementsOf(document) ?? []).filter((x) => x.Effect === "Allow")) {
    const operators = Object.keys(s.Condition ?? {}).filter((op) => op.endsWith("IfExists"));
    if (operators.length === 0) continue;
    const risky = actionsOf(s).filter((a) => a.startsWith("iam:") || a === "*" || !isReadOnlyAction(a));
    if (risky.length > 0)
      report(
        `${where}: statement ${s.Sid ?? "(no Sid)"} grants ${risky.slice(0, 3).join(", ")}${risky.length > 3 ? ", ..." : ""} under ${operators.join(", ")}, which also matches requests and resources without the key; use the operator without IfExists (with aws:RequestTag for creates, aws:ResourceTag otherwise).`,
      );
  }
}

export function iamNoIfExistsConditions(): ResourceValidationPolicy {
  return {
    name: "iam-no-if-exists-conditions",
    description: "No IAM policy grants IAM or write actions under an ...IfExists condition operator.",
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.iam.Policy, (p, args, report) =>
        ifExistsGrants(p.policy, args.name, report),
      ),
      validateResourceOfType(aws.iam.RolePolicy, (p, args, report) =>
        ifExistsGrants(p.policy, args.name, report),
      ),
      validateResourceOfType(aws.iam.UserPolicy, (p, args, report) =>
        ifExistsGrants(p.policy, args.name, report),
      ),
      validateResourceOfType(aws.iam.GroupPolicy, (p, args, report) =>
        ifExistsGrants(p.policy, args.name, report),
      ),
      validateResourceOfType(aws.iam.Role, (role, args, report) =>
        asList(role.inlinePolicies).forEach((p, i) =>
          ifExistsGrants(p.policy, `${args.name} (inlinePolicies[${i}])`, report),
        ),
      ),
    ],
  };
}
