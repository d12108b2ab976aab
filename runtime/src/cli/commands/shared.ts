import { InvalidArgumentError } from "commander";
import { ENV_NAME } from "../../job/contract";
import type { Logger } from "../../logger";
import { createLogger } from "../../logger";

/** Bad input on the command line: printed as `crucible: <message>`, exit code 2. */
export class UsageError extends Error {
  override readonly name = "UsageError";
}

/**
 * `work`, with the errors of `kinds` (what the caller named wrongly: a job, a name, a directory) turned
 * into a {@link UsageError} with the same message; anything else is a failure and passes as it is.
 */
export async function asUsage<T>(
  work: Promise<T>,
  kinds: readonly (abstract new (...args: never[]) => Error)[],
): Promise<T> {
  try {
    return await work;
  } catch (error) {
    if (kinds.some((kind) => error instanceof kind)) throw new UsageError((error as Error).message);
    throw error;
  }
}

/** Exit codes of every command: 0 success, 1 the job or the operation failed, 2 bad usage. */
export const EXIT = { ok: 0, failed: 1, usage: 2, interrupted: 130 } as const;

/** The CLI logs only warnings by default, so job output and results are not drowned; CRUCIBLE_LOG_LEVEL overrides. */
export function cliLogger(): Logger {
  return createLogger({ defaultLevel: "warn" });
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** A commander argument parser for a whole number of seconds greater than zero. */
export function positiveSeconds(value: string): number {
  const seconds = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(seconds) || seconds <= 0) {
    throw new InvalidArgumentError(`must be a whole number of seconds greater than 0, got "${value}"`);
  }
  return seconds;
}

/** A commander collector for repeatable `--env NAME=VALUE` flags. */
export function collectEnv(value: string, previous: Record<string, string>): Record<string, string> {
  const eq = value.indexOf("=");
  const name = eq < 0 ? value : value.slice(0, eq);
  if (eq < 0 || !ENV_NAME.test(name)) {
    throw new InvalidArgumentError(`must be NAME=VALUE with NAME like MY_VAR, got "${value}"`);
  }
  return { ...previous, [name]: value.slice(eq + 1) };
}

const DURATION = /^(\d+)(s|m|h|d|w)$/;
const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 } as const;

/**
 * A commander argument parser for a point in time: a duration back from now (`30m`, `24h`, `7d`, `2w`)
 * or an ISO 8601 date or date-time (`2026-12-01`, `2026-12-01T09:30:00Z`). Milliseconds since the epoch.
 */
export function pastTime(value: string, now = Date.now()): number {
  const duration = DURATION.exec(value.trim());
  if (duration) return now - Number(duration[1]) * UNIT_MS[duration[2] as keyof typeof UNIT_MS];
  const iso = /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/;
  const at = iso.test(value.trim()) ? Date.parse(value.trim()) : Number.NaN;
  if (Number.isNaN(at))
    throw new InvalidArgumentError(
      `must be a duration back from now (30m, 24h, 7d, 2w) or an ISO date or date-time (2026-12-01, 2026-12-01T09:30:00Z), got "${value}"`,
    );
  return at;
}

/** A commander argument parser for a whole number greater than zero. */
export function positiveCount(value: string): number {
  const count = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(count) || count <= 0)
    throw new InvalidArgumentError(`must be a whole number greater than 0, got "${value}"`);
  return count;
}
