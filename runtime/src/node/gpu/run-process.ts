import { spawn } from "node:child_process";
import type { Logger } from "../../logger";

/** What a program printed and how it ended. */
export interface CommandResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a program (no shell). Rejects when it cannot start or runs past `timeoutMs`; a non-zero exit is a result. */
export interface CommandRunner {
  run(
    file: string,
    args: readonly string[],
    limits: { readonly timeoutMs: number; readonly maxBytes: number },
  ): Promise<CommandResult>;
}

/** Runs programs on this machine, keeping the first `maxBytes` of each stream and killing them at the deadline. */
export function processRunner(logger: Logger): CommandRunner {
  return {
    run: (file, args, { timeoutMs, maxBytes }) =>
      new Promise((resolve, reject) => {
        const started = performance.now();
        const fields = { command: [file, ...args].join(" ") };
        logger.debug(fields, "running command");
        const child = spawn(file, args, { stdio: ["ignore", "pipe", "pipe"] });
        const capture = (stream: NodeJS.ReadableStream): (() => string) => {
          const chunks: Buffer[] = [];
          let kept = 0;
          stream.on("data", (chunk: Buffer) => {
            if (kept >= maxBytes) return;
            chunks.push(chunk.subarray(0, maxBytes - kept));
            kept += Math.min(chunk.length, maxBytes - kept);
          });
          return () => Buffer.concat(chunks).toString("utf8");
        };
        const stdout = capture(child.stdout);
        const stderr = capture(child.stderr);
        let timedOut = false;
        const timer = setTimeout(() => {
          timedOut = true;
          child.kill("SIGKILL");
        }, timeoutMs);
        const ms = (): number => Math.round(performance.now() - started);
        child.once("error", (error) => {
          clearTimeout(timer);
          logger.warn({ ...fields, ms: ms(), err: error }, "command could not run");
          reject(error);
        });
        child.once("close", (code) => {
          clearTimeout(timer);
          if (timedOut) {
            logger.warn({ ...fields, ms: ms() }, "command timed out");
            reject(new Error(`${file} ran past its ${timeoutMs} ms limit and was killed`));
            return;
          }
          const exitCode = code ?? -1;
          logger.debug({ ...fields, ms: ms(), exitCode }, "command finished");
          resolve({ exitCode, stdout: stdout(), stderr: stderr() });
        });
      }),
  };
}
