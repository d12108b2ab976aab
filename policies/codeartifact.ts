import * as aws from "@pulumi/aws";
import type { StackValidationPolicy } from "@pulumi/policy";
import { isNodeRole } from "./iam";
import {
  UNKNOWN,
  actionsOf,
  asList,
  forStacksWith,
  known,
  ofTypes,
  statementsOf,
  type Statement,
} from "./lib";

/** CodeArtifact: nodes read the package proxy; nothing lets them, or anyone, publish to it. */

/** Actions that put or change packages in a repository. */
const PUBLISH = ["codeartifact:PublishPackageVersion", "codeartifact:PutPackageMetadata"];

/** Whether an action pattern (`*` and `?` wildcards) covers one of {@link PUBLISH}. */
const publishes = (action: string): boolean => {
  const pattern = new RegExp(
    `^${action
      .replace(/[.+^$()[\]{}|\\]/g, "\\$&")
      .replace(/\*/g, ".*")
      .replace(/\?/g, ".")}$`,
    "i",
  );
  return PUBLISH.some((a) => pattern.test(a));
};
const publishing = (s: Statement): string[] => (s.Effect === "Allow" ? actionsOf(s).filter(publishes) : []);

/** A resource policy's principal that is everyone: `*` or `{ AWS: "*" }`. */
const isEveryone = (principal: unknown): boolean =>
  principal === "*" || asList((principal as { AWS?: unknown } | undefined)?.AWS).includes("*");

export function codeartifactNodesReadOnly(): StackValidationPolicy {
  return {
    name: "codeartifact-nodes-read-only",
    description:
      "No CodeArtifact repository or domain policy lets everyone or a node role publish (PublishPackageVersion, PutPackageMetadata), and no node role's policy allows it.",
    enforcementLevel: "mandatory",
    validateStack: forStacksWith([aws.iam.Role], (args, report) => {
      const nodeRoles = ofTypes(args.resources, [aws.iam.Role]).filter(isNodeRole);
      const nodeArns = new Set(
        nodeRoles.map((r) => known(() => r.props.arn as unknown)).filter((a) => typeof a === "string"),
      );
      const nodeNames = new Set(
        nodeRoles.flatMap((r) => [known(() => r.props.name as unknown), known(() => r.props.id as unknown)]),
      );
      for (const policy of ofTypes(args.resources, [
        aws.codeartifact.RepositoryPermissionsPolicy,
        aws.codeartifact.DomainPermissions,
      ])) {
        const statements = known(() => statementsOf(policy.props.policyDocument) ?? []);
        if (statements === UNKNOWN) continue;
        for (const s of statements) {
          const actions = publishing(s);
          const principals = asList((s.Principal as { AWS?: unknown } | undefined)?.AWS).map(String);
          const who = isEveryone(s.Principal) ? "everyone (*)" : principals.find((p) => nodeArns.has(p));
          if (actions.length > 0 && who !== undefined) {
            report(
              `CodeArtifact policy ${policy.name}: statement ${s.Sid ?? "(no Sid)"} lets ${who} ${actions.join(", ")}; nodes only read the package proxy: remove the statement or name a publisher role instead.`,
              policy.urn,
            );
          }
        }
      }
      for (const rolePolicy of ofTypes(args.resources, [aws.iam.RolePolicy])) {
        if (!nodeNames.has(known(() => rolePolicy.props.role as unknown))) continue;
        const statements = known(() => statementsOf(rolePolicy.props.policy) ?? []);
        if (statements === UNKNOWN) continue;
        for (const s of statements) {
          const actions = publishing(s);
          if (actions.length > 0) {
            report(
              `node role policy ${rolePolicy.name}: statement ${s.Sid ?? "(no Sid)"} allows ${actions.join(", ")}; nodes only read the package proxy: grant codeartifact:ReadFromRepository and GetRepositoryEndpoint only.`,
              rolePolicy.urn,
            );
          }
        }
      }
    }),
  };
}
