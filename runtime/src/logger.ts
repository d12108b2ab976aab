import pino from "pino";

export type Logger = pino.Logger;

/** The variable that sets the runtime's log level (trace, debug, info, warn, error, fatal, silent). */
export const LOG_LEVEL_ENV = "CRUCIBLE_LOG_LEVEL";

/**
 * The runtime's structured logger: JSON lines on stderr, so stdout stays free for results (`--json`).
 * Writes are synchronous so the last lines before a crash or `process.exit` are not lost.
 */
export function createLogger(options: { readonly defaultLevel?: string } = {}): Logger {
  const level = process.env[LOG_LEVEL_ENV] ?? options.defaultLevel ?? "info";
  const known = Object.keys(pino.levels.values).concat("silent");
  if (!known.includes(level)) {
    throw new Error(`${LOG_LEVEL_ENV} must be one of ${known.join(", ")}, got "${level}"`);
  }
  return pino(
    { name: "crucible", level, base: { pid: process.pid } },
    pino.destination({ dest: 2, sync: true }),
  );
}
