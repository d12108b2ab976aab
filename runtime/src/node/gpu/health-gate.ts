import type { Logger } from "../../logger";
import type { AgentSignals } from "../node-lifecycle";
import type { GpuHealth, HealthReport } from "./health-check";

/** One line naming every problem, for logs and the Auto Scaling activity's cause. */
export function summarize(report: HealthReport): string {
  return report.problems.map((p) => `${p.check}: ${p.message}`).join("; ");
}

export interface HealthGateOptions {
  readonly health: Pick<GpuHealth, "check">;
  /** Has the group replace this instance (`NodeLifecycle.markUnhealthy`); absent off a fleet node. */
  readonly markUnhealthy?: (reason: string) => Promise<void>;
  readonly logger: Logger;
  /** Least time between two checks, since the probe costs seconds. Defaults to 60. */
  readonly minIntervalSeconds?: number;
  /** The clock, in milliseconds. Defaults to `Date.now`. */
  readonly now?: () => number;
}

/**
 * When the agent may take work: checked before its first receive, then again once a job has ended and
 * at least `minIntervalSeconds` have passed since the last check (an idle node is not probed over and over).
 * The first failure is final, with no re-check: uncorrectable errors, pending retirements and a lost GPU
 * do not heal without a reset, and a GPU that passes on a second try is the flaky one that fails hours
 * into a job. On that failure the node is marked unhealthy, so the group replaces it, unless no new
 * instance could pass either (see {@link HealthProblem.replaceable}).
 */
export class HealthGate {
  private lastCheck = Number.NEGATIVE_INFINITY;
  private jobEnded = true;
  private checking: Promise<boolean> | undefined;
  private failure: HealthReport | undefined;
  private readonly minIntervalMs: number;
  private readonly now: () => number;

  constructor(private readonly options: HealthGateOptions) {
    this.minIntervalMs = (options.minIntervalSeconds ?? 60) * 1000;
    this.now = options.now ?? Date.now;
  }

  /** The failed report, once a check has failed. */
  get failed(): HealthReport | undefined {
    return this.failure;
  }

  /** Counts a job as ended whenever the agent's load drops. Returns a function that stops watching. */
  watch(agent: AgentSignals): () => void {
    let previous = 0;
    const onLoad = (running: number): void => {
      if (running < previous) this.jobEnded = true;
      previous = running;
    };
    agent.on("load", onLoad);
    return () => agent.off("load", onLoad);
  }

  /** Whether the node may take work now; checks first when a check is due. Never rejects. */
  ready(): Promise<boolean> {
    if (this.failure) return Promise.resolve(false);
    if (this.checking) return this.checking;
    if (!this.jobEnded || this.now() - this.lastCheck < this.minIntervalMs) return Promise.resolve(true);
    this.checking = this.check().finally(() => (this.checking = undefined));
    return this.checking;
  }

  private async check(): Promise<boolean> {
    const { logger, markUnhealthy } = this.options;
    this.jobEnded = false;
    this.lastCheck = this.now();
    const report = await this.options.health.check();
    if (report.warnings.length > 0) logger.warn({ warnings: report.warnings }, "GPU health warnings");
    if (report.healthy) {
      logger.info({ gpus: report.gpus.length, driver: report.driverVersion }, "GPU health check passed");
      return true;
    }
    this.failure = report;
    const reason = summarize(report);
    logger.error({ report }, `GPU node unhealthy, taking no more jobs: ${reason}`);
    if (!report.problems.some((p) => p.replaceable)) {
      logger.error("a new instance would fail the same way: fix the launch template's AMI or the image");
    } else if (markUnhealthy) {
      try {
        await markUnhealthy(reason);
      } catch (error) {
        logger.error({ err: error }, "marking the instance unhealthy failed; it stays, taking no jobs");
      }
    }
    return false;
  }
}
