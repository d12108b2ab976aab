import * as aws from "@pulumi/aws";
import {
  validateResourceOfType,
  type PolicyResource,
  type ResourceValidation,
  type ResourceValidationPolicy,
  type StackValidationPolicy,
} from "@pulumi/policy";
import { SESSION_MANAGER_ACTIONS } from "@crucible/runtime/catalog";
import {
  UNKNOWN,
  actionsOf,
  asList,
  forStacksWith,
  isReadOnlyAction,
  join,
  keys,
  known,
  ofTypes,
  resourcesOf,
  statementsOf,
  type Statement,
} from "./lib";

/** IAM: no wildcard actions, no admin inline policies, and node roles write only to named resources. */

const allows = (s: Statement) => s.Effect === "Allow";
const isWildcardAction = (a: string) => a === "*" || a === "*:*";

type DocumentCheck = (document: unknown, where: string, report: (m: string) => void) => void;

/** Validations that call `validate` with each inline policy document a resource carries, and where it sits. */
function inlineDocuments(validate: DocumentCheck): ResourceValidation[] {
  return [
    validateResourceOfType(aws.iam.RolePolicy, (p, args, report) => validate(p.policy, args.name, report)),
    validateResourceOfType(aws.iam.UserPolicy, (p, args, report) => validate(p.policy, args.name, report)),
    validateResourceOfType(aws.iam.GroupPolicy, (p, args, report) => validate(p.policy, args.name, report)),
    validateResourceOfType(aws.iam.Role, (role, args, report) =>
      asList(role.inlinePolicies).forEach((p, i) =>
        validate(p.policy, `${args.name} (inlinePolicies[${i}]${p.name ? ` "${p.name}"` : ""})`, report),
      ),
    ),
  ];
}

const noWildcard: DocumentCheck = (document, where, report) => {
  for (const s of (statementsOf(document) ?? []).filter(allows)) {
    if (actionsOf(s).some(isWildcardAction)) {
      report(`${where}: statement ${s.Sid ?? "(no Sid)"} allows Action "*"; list the actions it needs.`);
    }
  }
};

export function iamNoWildcardActions(): ResourceValidationPolicy {
  return {
    name: "iam-no-wildcard-actions",
    description: 'IAM policies never allow Action "*".',
    enforcementLevel: "mandatory",
    validateResource: [
      validateResourceOfType(aws.iam.Policy, (p, args, report) => noWildcard(p.policy, args.name, report)),
      ...inlineDocuments(noWildcard),
    ],
  };
}

/** AWS managed policies that amount to administrator access. */
const ADMIN_MANAGED_POLICIES = ["AdministratorAccess", "IAMFullAccess"];
const isAdminPolicyArn = (arn: unknown) =>
  typeof arn === "string" && ADMIN_MANAGED_POLICIES.some((p) => arn.endsWith(`:policy/${p}`));

export function iamNoInlineAdminPolicies(): ResourceValidationPolicy {
  const adminInline: DocumentCheck = (document, where, report) => {
    for (const s of (statementsOf(document) ?? []).filter(allows)) {
      const admin = actionsOf(s).some((a) => isWildcardAction(a) || a === "iam:*");
      if (admin && resourcesOf(s).includes("*")) {
        report(
          `${where}: statement ${s.Sid ?? "(no Sid)"} grants administrator access (${actionsOf(s).join(", ")} on "*"); grant named actions on named resources.`,
        );
      }
    }
  };
  const adminAttached = (arn: unknown, where: string, report: (m: string) => void) => {
    if (isAdminPolicyArn(arn))
      report(`${where}: attaches ${String(arn)}; attach a policy with the actions it needs.`);
  };
  return {
    name: "iam-no-inline-admin-policies",
    description:
      "No inline IAM policy grants administrator access, and no role, user or group gets AdministratorAccess.",
    enforcementLevel: "mandatory",
    validateResource: [
      ...inlineDocuments(adminInline),
      validateResourceOfType(aws.iam.Role, (r, args, report) =>
        asList(r.managedPolicyArns).forEach((arn) => adminAttached(arn, args.name, report)),
      ),
      validateResourceOfType(aws.iam.RolePolicyAttachment, (a, args, report) =>
        adminAttached(a.policyArn, args.name, report),
      ),
      validateResourceOfType(aws.iam.UserPolicyAttachment, (a, args, report) =>
        adminAttached(a.policyArn, args.name, report),
      ),
      validateResourceOfType(aws.iam.GroupPolicyAttachment, (a, args, report) =>
        adminAttached(a.policyArn, args.name, report),
      ),
    ],
  };
}

/**
 * Write actions IAM only authorises on `Resource: "*"` (the service has no resource-level
 * permissions for them), so a node role may hold them that way.
 */
export const RESOURCE_STAR_ONLY_ACTIONS: readonly string[] = [
  "cloudwatch:PutMetricData",
  ...SESSION_MANAGER_ACTIONS,
  "xray:PutTraceSegments",
  "xray:PutTelemetryRecords",
];

/**
 * A statement on `Resource: "*"` that a condition confines to resources carrying a tag (attribute-based
 * access, e.g. `autoscaling:ResourceTag/crucible:tier`) names its resources as surely as an ARN would.
 */
function scopedByTag(s: Statement): boolean {
  return Object.values(s.Condition ?? {}).some((clause) =>
    Object.keys(clause).some((k) => /ResourceTag\//.test(k)),
  );
}

/** A role EC2 instances assume: its trust policy names the EC2 service. */
export function isNodeRole(role: PolicyResource): boolean {
  const trusted = known(() =>
    (statementsOf(role.props.assumeRolePolicy) ?? []).some((s) =>
      asList((s.Principal as { Service?: string | string[] } | undefined)?.Service).includes(
        "ec2.amazonaws.com",
      ),
    ),
  );
  return trusted === true;
}

export function iamNodeRolesScoped(): StackValidationPolicy {
  return {
    name: "iam-node-roles-scoped",
    description: 'Node roles never allow write actions on Resource "*".',
    enforcementLevel: "mandatory",
    validateStack: forStacksWith([aws.iam.Role], (args, report) => {
      const roles = ofTypes(args.resources, [aws.iam.Role]).filter(isNodeRole);
      const roleKeys = (r: PolicyResource) => keys(r, "name", "id", "arn");
      const rolePolicies = join(roles, ofTypes(args.resources, [aws.iam.RolePolicy]), "role", roleKeys);
      const attachments = join(
        roles,
        ofTypes(args.resources, [aws.iam.RolePolicyAttachment]),
        "role",
        roleKeys,
      );
      const managed = ofTypes(args.resources, [aws.iam.Policy]);

      for (const role of roles) {
        const inline = known(() =>
          asList(role.props.inlinePolicies as { policy?: unknown }[]).map((p) => p.policy),
        );
        const documents: { where: string; urn: string; read: () => unknown }[] = [
          ...rolePolicies
            .of(role)
            .map((p) => ({ where: p.name, urn: p.urn, read: () => p.props.policy as unknown })),
          ...(inline === UNKNOWN ? [] : inline).map((doc, i) => ({
            where: `${role.name} inlinePolicies[${i}]`,
            urn: role.urn,
            read: () => doc,
          })),
        ];
        for (const attachment of attachments.of(role)) {
          const policies = join(managed, [attachment], "policyArn", (p) => keys(p, "arn", "id"));
          for (const p of managed.filter((m) => policies.of(m).length > 0)) {
            documents.push({ where: p.name, urn: p.urn, read: () => p.props.policy as unknown });
          }
        }
        for (const doc of documents) {
          const statements = known(() => statementsOf(doc.read()) ?? []);
          if (statements === UNKNOWN) continue;
          for (const s of statements.filter(allows)) {
            if (!resourcesOf(s).includes("*") || scopedByTag(s)) continue;
            const writes = actionsOf(s).filter(
              (a) => !isReadOnlyAction(a) && !RESOURCE_STAR_ONLY_ACTIONS.includes(a),
            );
            if (writes.length > 0) {
              report(
                `node role ${role.name}: policy ${doc.where} allows ${writes.join(", ")} on Resource "*"; name the queues, buckets or groups it writes to.`,
                doc.urn,
              );
            }
          }
        }
      }
    }),
  };
}
