import { z } from "zod";
import { jobAddressSchema } from "../job/contract";

/**
 * Who may put a message on a tier's queues, as the agent checks it against each message's SQS `SenderId`
 * system attribute. The stack computes the value from the roles it declares and hands it to every agent
 * as `CRUCIBLE_SENDERS` (JSON); this module is its only schema.
 *
 * - `agents`: unique ids (`AROA...`) of the node roles. Agents re-send messages (fair-share deferral,
 *   preemption, hand-back); such a message keeps the job's address as first submitted.
 * - `submitters`: unique id of a project's submitter role → that project. A researcher assumes the role
 *   with the role session name set to their user name (the role's trust policy allows nothing else), so
 *   SQS reports `SenderId` as `<role unique id>:<user>`, and the job's address must be
 *   `<project>/<user>/...` with exactly those two names.
 */

/** The environment variable every agent reads its accepted senders from. */
export const SENDERS_ENV = "CRUCIBLE_SENDERS";

/** An IAM unique id: `AROA...` for a role, `AIDA...` for a user; letters and digits, no ARN. */
export const uniqueIdSchema = z.string().regex(/^[A-Z0-9]{16,128}$/, {
  error: "must be an IAM unique id such as AROA1234567890EXAMPLE (uppercase letters and digits)",
});

export const sendersSchema = z.strictObject({
  agents: z.array(uniqueIdSchema, { error: "must be a list of IAM unique ids" }),
  submitters: z.record(uniqueIdSchema, jobAddressSchema.shape.project, {
    error: "must map IAM unique ids to project names",
  }),
});

export type Senders = z.infer<typeof sendersSchema>;

/** The value of {@link SENDERS_ENV} for `senders` (validated: a stack cannot hand agents a bad one). */
export function formatSenders(senders: Senders): string {
  return JSON.stringify(parseValue(senders, SENDERS_ENV));
}

/** Parses the value of {@link SENDERS_ENV}; errors name the variable and the key at fault. */
export function parseSenders(text: string | undefined, source = SENDERS_ENV): Senders {
  if (text === undefined || text.trim() === "")
    throw new Error(
      `${source} is not set: the agent accepts messages only from the senders it names (stack output of the program, see the README)`,
    );
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error(
      `${source} must be JSON such as {"agents": ["AROA..."], "submitters": {"AROA...": "ci"}}`,
    );
  }
  return parseValue(value, source);
}

function parseValue(value: unknown, source: string): Senders {
  const parsed = sendersSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const at = issue.path.length === 0 ? "" : `.${issue.path.map(String).join(".")}`;
    throw new Error(`${source}${at} ${issue.message}`);
  }
  return parsed.data;
}

/**
 * Splits an SQS `SenderId`: an assumed role's caller is `<role unique id>:<role session name>`, an IAM
 * user or a role's own credentials are the bare unique id (then `session` is undefined).
 */
export function splitSenderId(senderId: string): { readonly principal: string; readonly session?: string } {
  const colon = senderId.indexOf(":");
  return colon < 0
    ? { principal: senderId }
    : { principal: senderId.slice(0, colon), session: senderId.slice(colon + 1) };
}

/**
 * Why a message's sender may not queue the job at `address`, or undefined when it may: an agent (node
 * role) re-sending a job, or a project's submitter role whose session is the address's user, for that
 * project. Anything else — no sender, an unknown principal, a session without a user, another user or
 * project than the address names — is refused.
 */
export function senderProblem(
  senders: Senders,
  senderId: string | undefined,
  address: { readonly project: string; readonly user: string },
): string | undefined {
  if (!senderId) return "the message carries no SenderId";
  const { principal, session } = splitSenderId(senderId);
  if (senders.agents.includes(principal)) return undefined;
  const project = senders.submitters[principal];
  if (project === undefined) return `sender ${senderId} is neither an agent nor a project's submitter`;
  if (session === undefined) return `sender ${senderId} has no session naming its user`;
  if (project !== address.project || session !== address.user)
    return `sender ${senderId} may queue jobs only as ${project}/${session}, but the message names ${address.project}/${address.user}`;
  return undefined;
}
