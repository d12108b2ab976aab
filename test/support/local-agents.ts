import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Logger } from "pino";
import { afterAll, beforeAll } from "vitest";
import type { AgentOptions } from "../../runtime/src/agent/agent";
import { Agent } from "../../runtime/src/agent/agent";
import type { Launcher } from "../../runtime/src/job/contract";
import type { JobAddress } from "../../runtime/src/store/job-store";
import type { LocalPlatform, LocalPlatformOptions } from "../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../runtime/src/local/local-platform";
import type { TierName } from "../../runtime/src/catalog/tiers";

/** Agent timings for tests: every interval a second or so, so each step shows within seconds. */
export const FAST_AGENT = {
  waitSeconds: 1,
  heartbeatSeconds: 1,
  visibilitySeconds: 5,
  checkpointSeconds: 1,
  cancelPollSeconds: 1,
  graceSeconds: 5,
  /** Small volumes: a test machine runs several agents at once, and this is what a job may fill. */
  workspaceMiB: 64,
} as const;

/**
 * The embedded platform (SQS/S3 on loopback) and a scratch directory for one test file: started before
 * its tests, stopped and removed after them. Read them inside tests, once started.
 */
export function useLocalPlatform(
  tier: TierName,
  logger: Logger,
  options: Omit<LocalPlatformOptions, "tiers" | "logger"> = {},
): { readonly platform: LocalPlatform; readonly root: string } {
  const started: { platform?: LocalPlatform; root?: string } = {};
  beforeAll(async () => {
    started.root = await mkdtemp(join(tmpdir(), "crucible-agents-test-"));
    started.platform = await startLocalPlatform({ tiers: [tier], logger, ...options });
  });
  afterAll(async () => {
    await started.platform?.stop();
    if (started.root) await rm(started.root, { recursive: true, force: true });
  });
  return {
    get platform() {
      return started.platform!;
    },
    get root() {
      return started.root!;
    },
  };
}

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

/**
 * An agent of `tier` on the test's local platform, with the test timings ({@link FAST_AGENT}) and a
 * scheduling poll of a second; `options` override any of it.
 */
export function localAgent(
  platform: LocalPlatform,
  tier: TierName,
  launcher: Launcher,
  logger: Logger,
  options: Partial<AgentOptions> = {},
): Agent {
  return new Agent({
    tier,
    queues: platform.queues(tier),
    store: platform.store,
    senders: platform.senders,
    launcher,
    logger,
    concurrency: 1,
    ...FAST_AGENT,
    schedulingPollSeconds: 1,
    ...options,
  });
}
