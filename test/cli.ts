import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { join } from "node:path";

const TSX = join(__dirname, "../node_modules/.bin/tsx");
const BIN = join(__dirname, "../runtime/src/bin/crucible.ts");

export interface Done {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs the `crucible` CLI from source as a user would; `onStdout` sees the output so far as it grows
 * (e.g. to press Ctrl-C once a job reports something).
 */
export function crucible(
  args: string[],
  onStdout?: (text: string, child: ChildProcess) => void,
  env: NodeJS.ProcessEnv = {},
): Promise<Done> {
  const child = spawn(TSX, [BIN, ...args], {
    env: { ...process.env, CRUCIBLE_LOG_LEVEL: "error", ...env },
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
    onStdout?.(stdout, child);
  });
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => child.on("close", (code) => resolve({ code, stdout, stderr })));
}
