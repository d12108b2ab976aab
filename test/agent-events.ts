import type { Agent } from "../runtime/src/agent";
import type { JobAddress } from "../runtime/src/job-store";

/** Resolves with the first `event` an agent emits for the job, or fails after `waitMs`. */
export function next<T extends unknown[]>(
  agent: Agent,
  event: "finished" | "handedBack" | "started" | "deferred",
  jobId: string,
  waitMs = 60_000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} for ${jobId} within ${waitMs} ms`)), waitMs);
    const listener = (...args: unknown[]): void => {
      if ((args[0] as JobAddress).jobId !== jobId) return;
      clearTimeout(timer);
      agent.off(event, listener);
      resolve(args as T);
    };
    agent.on(event, listener);
  });
}
