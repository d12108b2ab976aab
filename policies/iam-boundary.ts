import * as aws from "@pulumi/aws";
import type { PolicyResource, StackValidationPolicy } from "@pulumi/policy";
import { PERMISSIONS_BOUNDARY_SUFFIX, isCiRoleName } from "@crucible/runtime/catalog";
import { UNKNOWN, forStacksWith, join, keys, known, ofTypes } from "./lib";

/** The boundary the stack declares: an `aws.iam.Policy` named `crucible-<stack>-permissions-boundary`. */
const isBoundary = (p: PolicyResource) => {
  const name = known(() => p.props.name as unknown);
  return typeof name === "string" && name.endsWith(PERMISSIONS_BOUNDARY_SUFFIX);
};

/**
 * Every role the stack creates carries the permissions boundary the stack declares, so no role a deploy
 * writes holds more than it (CI's deploy role may create roles only with it). CI's own roles are the
 * exception: an engineer applies them, and CI may not change them.
 */
export function iamRolesHavePermissionsBoundary(): StackValidationPolicy {
  return {
    name: "iam-roles-have-permissions-boundary",
    description:
      "Every IAM role except CI's own carries the permissions boundary the stack declares (crucible-<stack>-permissions-boundary).",
    enforcementLevel: "mandatory",
    validateStack: forStacksWith([aws.iam.Role], (args, report) => {
      const boundaries = ofTypes(args.resources, [aws.iam.Policy]).filter(isBoundary);
      const roles = ofTypes(args.resources, [aws.iam.Role]).filter((r) => {
        const name = known(() => r.props.name as unknown);
        return name === UNKNOWN || !isCiRoleName(name);
      });
      const carried = join(boundaries, roles, "permissionsBoundary", (b) => keys(b, "arn", "id"));
      for (const role of roles) {
        if (boundaries.some((b) => carried.of(b).includes(role))) continue;
        const value = known(() => role.props.permissionsBoundary as unknown);
        if (value === UNKNOWN) continue;
        if (boundaries.length === 0) {
          report(
            `${role.name}: the stack declares no permissions boundary; declare an aws.iam.Policy named crucible-<stack>${PERMISSIONS_BOUNDARY_SUFFIX} and set it as the role's permissionsBoundary.`,
            role.urn,
          );
        } else if (value === undefined || value === "") {
          report(
            `${role.name}: has no permissions boundary; set permissionsBoundary to the stack's ${boundaries[0]!.name} policy.`,
            role.urn,
          );
        } else {
          report(
            `${role.name}: its permissions boundary ${typeof value === "string" ? value : JSON.stringify(value)} is not the one the stack declares; set permissionsBoundary to the stack's ${boundaries[0]!.name} policy.`,
            role.urn,
          );
        }
      }
    }),
  };
}
