// IAM actions the program grants and the policy pack judges: no dependencies, so both import it (through the catalog).

/**
 * What the SSM agent needs for Session Manager shells: register the instance and open its message
 * channels. IAM authorises these only on `Resource: "*"`; the policy pack allows them there on node roles.
 */
export const SESSION_MANAGER_ACTIONS: readonly string[] = [
  "ssm:UpdateInstanceInformation",
  "ssmmessages:CreateControlChannel",
  "ssmmessages:CreateDataChannel",
  "ssmmessages:OpenControlChannel",
  "ssmmessages:OpenDataChannel",
  "ec2messages:AcknowledgeMessage",
  "ec2messages:DeleteMessage",
  "ec2messages:FailMessage",
  "ec2messages:GetEndpoint",
  "ec2messages:GetMessages",
  "ec2messages:SendReply",
];

/** The name suffix of the permissions boundary the program declares (`crucible-<stack>-permissions-boundary`). */
export const PERMISSIONS_BOUNDARY_SUFFIX = "-permissions-boundary";

/**
 * CI's own roles (`crucible-<stack>-ci-<purpose>`, infra/ci.ts): the only roles without the boundary. They
 * create roles themselves, and CI may never change them (an engineer applies them).
 */
export const isCiRoleName = (name: unknown): boolean =>
  typeof name === "string" && /^crucible-[a-z0-9-]+-ci-[a-z]+$/.test(name);
