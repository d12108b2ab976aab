import { describe, expect, it } from "vitest";
import { iamRolesHavePermissionsBoundary } from "../../policies/iam-boundary";
import { UNKNOWN_VALUE, messages, validateStack, type TestResource } from "./run-policy";

const BOUNDARY_ARN = "arn:aws:iam::1:policy/crucible-dev-permissions-boundary";
const boundary: TestResource = {
  type: "aws:iam/policy:Policy",
  name: "permissions-boundary",
  props: { name: "crucible-dev-permissions-boundary", arn: BOUNDARY_ARN, policy: "{}" },
};
const role = (name: string, props: Record<string, unknown> = {}): TestResource => ({
  type: "aws:iam/role:Role",
  name,
  props: { name: `${name}-abc`, assumeRolePolicy: "{}", ...props },
});

describe("iam-roles-have-permissions-boundary", () => {
  const policy = iamRolesHavePermissionsBoundary();

  it("passes roles that carry the declared boundary, and CI's own roles without it", async () => {
    const o = await validateStack(policy, [
      boundary,
      role("fleet-cpu-small-node", { permissionsBoundary: BOUNDARY_ARN }),
      role("ci-deploy", { name: "crucible-dev-ci-deploy" }),
    ]);
    expect(o.violations).toEqual([]);
  });

  it("fails a role without a boundary, or with another one", async () => {
    const o = await validateStack(policy, [
      boundary,
      role("fleet-cpu-small-node"),
      role("budgets-enforcer", { permissionsBoundary: "arn:aws:iam::1:policy/Anything" }),
    ]);
    expect(messages(o)).toEqual([
      "fleet-cpu-small-node: has no permissions boundary; set permissionsBoundary to the stack's permissions-boundary policy.",
      "budgets-enforcer: its permissions boundary arn:aws:iam::1:policy/Anything is not the one the stack declares; set permissionsBoundary to the stack's permissions-boundary policy.",
    ]);
  });

  it("fails roles when the stack declares no boundary", async () => {
    const o = await validateStack(policy, [
      role("fleet-cpu-small-node", { permissionsBoundary: BOUNDARY_ARN }),
    ]);
    expect(messages(o)).toEqual([
      "fleet-cpu-small-node: the stack declares no permissions boundary; declare an aws.iam.Policy named crucible-<stack>-permissions-boundary and set it as the role's permissionsBoundary.",
    ]);
  });

  it("takes a boundary unknown during preview for no violation", async () => {
    const o = await validateStack(policy, [
      boundary,
      role("fleet-cpu-small-node", { permissionsBoundary: UNKNOWN_VALUE.string }),
    ]);
    expect(o.violations).toEqual([]);
  });
});
