import type { ChildProcess } from "node:child_process";
import { spawn } from "node:child_process";
import { join } from "node:path";

const ROOT = join(__dirname, "../..");
const BIN = join(ROOT, "runtime/src/cli/bin/crucible.ts");

export interface Done {
  readonly code: number | null;
  /** The signal that ended the process, when one did. */
  readonly signal: NodeJS.Signals | null;
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
): Promise<Done> & { readonly child: ChildProcess } {
  // tsx as a loader in the same process: its wrapper process would SIGKILL a child that takes more
  // than 30 ms to acknowledge Ctrl-C, which is the very moment the CLI is stopping its container.
  const child = spawn(process.execPath, ["--import", "tsx", BIN, ...args], {
    cwd: ROOT,
    env: { ...process.env, CRUCIBLE_LOG_LEVEL: "error", ...env },
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => {
    stdout += chunk.toString();
    onStdout?.(stdout, child);
  });
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const done = new Promise<Done>((resolve) =>
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr })),
  );
  return Object.assign(done, { child });
}
