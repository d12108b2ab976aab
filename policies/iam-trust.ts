import * as aws from "@pulumi/aws";
import { validateResourceOfType, type ResourceValidationPolicy } from "@pulumi/policy";
import { asList, statementsOf, type Statement } from "./lib";

/** Condition keys of a statement, whatever the operator (`StringEquals`, `StringLike`, `ForAnyValue:...`). */
const conditionEntries = (s: Statement) =>
  Object.values(s.Condition ?? {}).flatMap((clause) => Object.entries(clause));

/** What is wrong with one trust statement's principal, or undefined. */
function wildcardTrust(s: Statement): string | undefined {
  const principal = s.Principal;
  if (principal === "*") return 'trusts Principal "*" (anyone)';
  if (typeof principal !== "object" || principal === null) return undefined;
  const { AWS: aws, Federated: federated } = principal as { AWS?: unknown; Federated?: unknown };
  if (asList(aws as string | string[]).some((p) => p === "*"))
    return 'trusts the AWS principal "*" (any account)';
  if (asList(federated as string | string[]).some((p) => p === "*"))
    return 'trusts the Federated principal "*"';
  if (federated !== undefined) {
    // A web identity trust without a `sub` condition admits every identity the provider issues tokens
    // for (every repository on GitHub, every service account of a cluster).
    const subs = conditionEntries(s).filter(([key]) => key.endsWith(":sub"));
    if (subs.length === 0)
      return `trusts ${asList(federated as string[]).join(", ")} with no condition on the token's sub`;
    if (subs.some(([, v]) => asList(v as string | string[]).some((x) => x === "*")))
      return `trusts ${asList(federated as string[]).join(", ")} for any sub ("*")`;
  }
  return undefined;
}

export function iamNoWildcardTrust(): ResourceValidationPolicy {
  return {
    name: "iam-no-wildcard-trust",
    description:
      'No role trusts Principal "*", the AWS principal "*", or a federated (OIDC) provider without a condition on the token\'s sub.',
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.iam.Role, (role, args, report) => {
      for (const s of (statementsOf(role.assumeRolePolicy) ?? []).filter((x) => x.Effect === "Allow")) {
        const wrong = wildcardTrust(s);
        if (wrong)
          report(
            `${args.name}: trust statement ${s.Sid ?? "(no Sid)"} ${wrong}; name the principals, and for OIDC the exact sub.`,
          );
      }
    }),
  };
}
