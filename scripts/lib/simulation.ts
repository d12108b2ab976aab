import { readFileSync } from "node:fs";
import { CronExpressionParser } from "cron-parser";
import type { CrucibleConfig, TierConfig } from "../../infra/config";
import type { TierCapacity } from "../../infra/fleet";
import {
  HOURS_PER_MONTH,
  TIER_NAMES,
  TIERS,
  getInstanceType,
  isTierName,
  type TierName,
} from "../../runtime/src/catalog";
import { STACKS, readStackConfig } from "./mock-engine";
import { stackConfig } from "./policy-config";
import { exponential, mulberry32 } from "./random";

/**
 * A deterministic discrete-event simulation of one tier's Auto Scaling group, driven by the scaling
 * settings the stack declares: what `infra/fleet.ts` would build from the validated `crucible:fleet`.
 *
 * Time is seconds from the start (`start`, a wall-clock instant, only matters to the pre-warm
 * schedules). Every random draw comes from a seeded PRNG (mulberry32), with separate streams for the
 * arrivals and for spot interruptions, so the same seed gives the same run and a run with a warm pool
 * sees exactly the arrivals of the run without one.
 *
 * The model:
 * - Start in steady state: `desired` (raised to the effective minimum) instances in service and idle;
 *   the warm pool full and stopped. The effective minimum is the `minSize` of the pre-warm schedule
 *   that fired last before the start (the schedules are assumed to have run before), else `minSize`.
 * - Jobs join one FIFO queue (the tier's SQS queue). An in-service instance runs up to `slots` jobs at
 *   once: the tier's GPU count, or for CPU tiers as many of the tier's vCPUs as the preferred instance
 *   type holds (how `runtime/src/agent/agent.ts` sizes its concurrency). A free slot takes the oldest
 *   waiting job at once (the agent long-polls); the oldest instance with a free slot goes first.
 * - Metrics: every `scaling.metricPeriodSeconds` (from t = 0) the group samples waiting jobs (m1,
 *   messages visible), running jobs (m2, messages not visible) and in-service instances (m3). Each
 *   sample is acted on `scaling.scaleOutDelaySeconds` later (publication plus alarm datapoints).
 * - Target tracking: with m3 > 0 the desired capacity is ceil((m1 + m2) / targetJobsPerInstance),
 *   clamped to [effective minimum, maxSize]. Above the current desired it scales out at once. Below,
 *   it scales in only once `scaling.scaleInCooldownSeconds` have passed since the last scale-out, and
 *   only down to the highest capacity any sample of that window asked for (15 datapoints below target).
 *   With m3 = 0 the per-instance metric times no capacity is nothing: target tracking does not act.
 * - Scale from zero: a sample with m3 = 0, m4 (desired) = 0 and m1 > 0 runs the from-zero step policy,
 *   ExactCapacity 1 (clamped to [minimum, maximum]), exactly as `infra/fleet.ts` declares it.
 * - Pre-warm schedules set the minimum at each firing of their cron recurrence (in their time zone,
 *   UTC when none; Unix cron, five fields) and raise the desired capacity to it; lowering the minimum
 *   leaves the desired capacity to the policy.
 * - Scale-out: each missing instance starts from the warm pool when a stopped one is there
 *   (`startup.warmStartSeconds` to in service), else launches cold (`startup.coldBootSeconds`). Warm-pool
 *   instances still initialising are not used.
 * - Scale-in (desired below the group's size) removes instances still booting first, newest first,
 *   then idle in-service ones; busy instances are never removed (the agent holds scale-in protection
 *   while it runs jobs), so the group stays above desired until they finish. With a warm pool
 *   (`reuseOnScaleIn`, as `infra/fleet.ts` sets it) removed instances return to the pool, stopped.
 * - Warm pool size: max(warmPool.minSize, maxPreparedCapacity − desired), where a maxPreparedCapacity
 *   of 0 means maxSize. Missing pool instances launch and initialise (`coldBootSeconds`, billed as
 *   running), then stop; surplus ones are terminated.
 * - Spot: on launch an instance is on-demand while the group holds fewer than onDemandBase plus
 *   ceil(onDemandPercentage % of the capacity above the base) on-demand instances, else spot. Each spot
 *   instance is interrupted after an exponential time at `spotInterruptionsPerHour`; its running jobs
 *   go back to the front of the queue and resume from their last checkpoint (jobs checkpoint every
 *   `checkpointSeconds` of progress; the work since then is lost and counted; 0 means no checkpoints).
 *   The group replaces the instance at once, cold.
 * - Queue wait of a job: all its time in the queue, over every attempt; a job still waiting at the end
 *   counts the time it has waited so far. Percentiles are nearest-rank.
 * - Cost: running instances (booting, starting, in service, a warm-pool instance initialising) at the
 *   preferred instance type's on-demand price (for GPU tiers the catalog's tier price), spot ones at
 *   that price less `budgets.spotDiscountPercent` (finance's figure); stopped warm-pool instances at
 *   their root volume's gp3 price only ({@link GP3_USD_PER_GIB_MONTH}). Running instances' volumes,
 *   data transfer and CloudWatch are not counted.
 */

/** gp3 storage, USD per GiB-month (us-east-1 list price, https://aws.amazon.com/ebs/pricing/, 2026-11-24). */
export const GP3_USD_PER_GIB_MONTH = 0.08;
/** Hours in the month AWS bills storage by (8760 / 12). */

/** Defaults of the job duration distribution when arrivals do not carry durations. */
export const DURATION_DEFAULTS = {
  /** Log-normal spread. */
  sigma: 0.75,
  /** The median is this share of the tier's maximum runtime (gpu-small: 20 minutes of 2 hours). */
  medianShareOfMaxRuntime: 1 / 6,
} as const;
/** Progress between two checkpoints of a job; the work since the last one is lost on interruption. */
export const DEFAULT_CHECKPOINT_SECONDS = 600;
/** A Monday, so weekday pre-warm schedules fire in a day's run. */
export const DEFAULT_START = "2026-01-05T00:00:00Z";

// ---------------------------------------------------------------------------------------------
// Settings

export interface SimulationTiming {
  readonly coldBootSeconds: number;
  readonly warmStartSeconds: number;
  readonly metricPeriodSeconds: number;
  readonly scaleOutDelaySeconds: number;
  readonly scaleInCooldownSeconds: number;
}

/** A tier's capacity as the group declares it, plus what the simulation needs to run it. */
export interface SimulatedTier extends TierCapacity {
  readonly stack: string;
  readonly tier: TierName;
  readonly desired: number;
  readonly targetJobsPerInstance: number;
  readonly prewarmSchedule: TierConfig["prewarmSchedule"];
  /** Jobs one instance runs at once. */
  readonly slots: number;
  /** On-demand and spot price of one instance of the preferred type, USD per hour. */
  readonly instanceHourlyUsd: number;
  readonly spotHourlyUsd: number;
  /** What a stopped warm-pool instance costs: its root volume, USD per hour. */
  readonly stoppedHourlyUsd: number;
  readonly maxRuntimeSeconds: number;
  readonly timing: SimulationTiming;
  readonly spotInterruptionsPerHour: number;
}

/** The simulated tier from a stack's validated config. */
export function simulatedTier(config: CrucibleConfig, tier: string): SimulatedTier {
  const enabled = TIER_NAMES.filter((t) => config.fleet.tiers[t]?.enabled);
  if (!isTierName(tier))
    throw new Error(`--tier: unknown tier "${tier}"; tiers are ${TIER_NAMES.join(", ")}`);
  const settings = config.fleet.tiers[tier];
  if (!settings?.enabled) {
    throw new Error(
      `--tier: tier ${tier} is not enabled in stack ${config.stack}; enabled: ${enabled.join(", ") || "none"}`,
    );
  }
  const catalog = TIERS[tier];
  const instanceType = getInstanceType(settings.instanceTypes[0]!);
  const instanceHourlyUsd = instanceType.onDemandHourlyUsd;
  const slots = catalog.gpu
    ? catalog.gpu.count
    : Math.max(1, Math.floor(instanceType.vcpus / (settings.limits?.vcpus ?? catalog.vcpus)));
  return {
    stack: config.stack,
    tier,
    minSize: settings.minSize,
    maxSize: settings.maxSize,
    desired: settings.desired,
    warmPool: settings.warmPool ?? null,
    spot: settings.spot.enabled
      ? { onDemandBase: settings.spot.onDemandBase, onDemandPercentage: settings.spot.onDemandPercentage }
      : null,
    instanceTypes: settings.instanceTypes,
    onDemandHourlyUsd: catalog.onDemandHourlyUsd,
    targetJobsPerInstance: settings.targetJobsPerInstance,
    prewarmSchedule: settings.prewarmSchedule,
    slots,
    instanceHourlyUsd,
    spotHourlyUsd: instanceHourlyUsd * (1 - config.budgets.spotDiscountPercent / 100),
    stoppedHourlyUsd: (settings.rootVolumeGiB * GP3_USD_PER_GIB_MONTH) / HOURS_PER_MONTH,
    maxRuntimeSeconds: settings.limits?.maxRuntimeSeconds ?? catalog.maxRuntimeSeconds,
    timing: { ...config.fleet.startup, ...config.fleet.scaling },
    spotInterruptionsPerHour: config.fleet.spotInterruptionsPerHour,
  };
}

/**
 * A stack's tier from `Pulumi.<stack>.yaml` (or `config`, the file's flat key map), validated the
 * way the program validates it: a bad value fails with the same messages as `pulumi preview`.
 */
export function loadSimulatedTier(
  stack: string,
  tier: string,
  config?: Record<string, string>,
): SimulatedTier {
  if (!(STACKS as readonly string[]).includes(stack)) {
    throw new Error(`--stack: unknown stack "${stack}"; stacks are ${STACKS.join(", ")}`);
  }
  return simulatedTier(stackConfig(stack, config ?? readStackConfig(stack)), tier);
}

// ---------------------------------------------------------------------------------------------
// Randomness

/** An independent stream for one purpose of one seed. */
function stream(seed: number, purpose: string): () => number {
  let h = seed >>> 0;
  for (const c of purpose) h = Math.imul(h ^ c.charCodeAt(0), 0x9e3779b1) >>> 0;
  return mulberry32(h);
}

function standardNormal(rng: () => number): number {
  const u = 1 - rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}

// ---------------------------------------------------------------------------------------------
// Arrivals

export interface Arrival {
  /** Seconds from the start of the simulation. */
  readonly offsetSeconds: number;
  /** Seconds of work the job needs. */
  readonly durationSeconds: number;
}

export interface DurationDistribution {
  readonly medianSeconds: number;
  readonly sigma: number;
}

/** The default job durations of a tier: log-normal, median a sixth of the maximum runtime. */
export function defaultDurations(tier: Pick<SimulatedTier, "maxRuntimeSeconds">): DurationDistribution {
  return {
    medianSeconds: tier.maxRuntimeSeconds * DURATION_DEFAULTS.medianShareOfMaxRuntime,
    sigma: DURATION_DEFAULTS.sigma,
  };
}

/** Poisson arrivals at `ratePerHour` over `hours`, with log-normal durations. */
export function poissonArrivals(
  ratePerHour: number,
  hours: number,
  durations: DurationDistribution,
  seed: number,
): Arrival[] {
  const rng = stream(seed, "arrivals");
  const out: Arrival[] = [];
  if (ratePerHour <= 0) return out;
  for (
    let t = exponential(rng, ratePerHour / 3600);
    t < hours * 3600;
    t += exponential(rng, ratePerHour / 3600)
  ) {
    const duration = durations.medianSeconds * Math.exp(durations.sigma * standardNormal(rng));
    out.push({ offsetSeconds: t, durationSeconds: Math.max(1, duration) });
  }
  return out;
}

const ARRIVALS_HEADER = "offsetSeconds,durationSeconds";

/**
 * Reads an arrivals CSV: one job a line, `offsetSeconds,durationSeconds` (seconds from the start, and
 * of work), numbers with an optional fraction. A first line equal to the header, blank lines and lines
 * starting with `#` are skipped. Offsets need not be sorted. Errors name the file and the line.
 */
export function parseArrivalsCsv(text: string, fileName = "arrivals"): Arrival[] {
  const out: Arrival[] = [];
  const lines = text.split(/\r?\n/);
  const number = /^\d+(\.\d+)?$/;
  lines.forEach((raw, i) => {
    const line = raw.trim();
    const at = `${fileName}:${i + 1}`;
    if (line === "" || line.startsWith("#")) return;
    if (out.length === 0 && line.replace(/\s+/g, "").toLowerCase() === ARRIVALS_HEADER.toLowerCase()) return;
    const fields = line.split(",").map((f) => f.trim());
    if (fields.length !== 2) {
      throw new Error(`${at}: expected two numbers "${ARRIVALS_HEADER}", got "${line}"`);
    }
    const [offset, duration] = fields as [string, string];
    if (!number.test(offset)) {
      throw new Error(`${at}: offsetSeconds must be a number of seconds, 0 or more, got "${offset}"`);
    }
    if (!number.test(duration) || Number(duration) <= 0) {
      throw new Error(`${at}: durationSeconds must be a number of seconds above 0, got "${duration}"`);
    }
    out.push({ offsetSeconds: Number(offset), durationSeconds: Number(duration) });
  });
  return out.sort((a, b) => a.offsetSeconds - b.offsetSeconds);
}

/** `--arrivals`: `poisson:RATE` (jobs per hour) or the path of an arrivals CSV. */
export function readArrivals(
  spec: string,
  options: { readonly hours: number; readonly seed: number; readonly durations: DurationDistribution },
): { readonly arrivals: Arrival[]; readonly source: string } {
  const poisson = /^poisson:(.*)$/.exec(spec);
  if (poisson) {
    const rate = poisson[1]!;
    if (!/^\d+(\.\d+)?$/.test(rate)) {
      throw new Error(`--arrivals: the rate of poisson:RATE must be jobs per hour, 0 or more, got "${rate}"`);
    }
    const { medianSeconds, sigma } = options.durations;
    return {
      arrivals: poissonArrivals(Number(rate), options.hours, options.durations, options.seed),
      source: `poisson ${Number(rate)} jobs/h, durations log-normal (median ${Math.round(medianSeconds)} s, sigma ${sigma})`,
    };
  }
  let text: string;
  try {
    text = readFileSync(spec, "utf8");
  } catch {
    throw new Error(
      `--arrivals: cannot read "${spec}"; give a CSV file (${ARRIVALS_HEADER}) or poisson:RATE`,
    );
  }
  return { arrivals: parseArrivalsCsv(text, spec), source: `file ${spec}` };
}

// ---------------------------------------------------------------------------------------------
// Schedules

const CRON_FIELD = /^(\*|[0-9]+|[A-Za-z]{3})(-([0-9]+|[A-Za-z]{3}))?(\/[0-9]+)?$/;

/** The instants (ms) at which each pre-warm schedule fires in [from, to], and the last one before from. */
export function scheduleFirings(
  tier: Pick<SimulatedTier, "tier" | "prewarmSchedule">,
  from: Date,
  to: Date,
): {
  readonly before: { at: number; minSize: number } | undefined;
  readonly firings: { at: number; minSize: number }[];
} {
  let before: { at: number; minSize: number } | undefined;
  const firings: { at: number; minSize: number }[] = [];
  tier.prewarmSchedule.forEach((s, i) => {
    const key = `crucible:fleet.tiers.${tier.tier}.prewarmSchedule[${i}]`;
    const fields = s.recurrence.trim().split(/\s+/);
    if (fields.length !== 5 || !fields.every((f) => f.split(",").every((part) => CRON_FIELD.test(part)))) {
      throw new Error(
        `${key}.recurrence "${s.recurrence}" is a cron form the simulation does not support; Auto Scaling takes Unix cron: five fields of numbers, names, *, ranges, lists and steps`,
      );
    }
    const timeZone = s.timeZone ?? "UTC";
    try {
      new Intl.DateTimeFormat("en-US", { timeZone });
    } catch {
      throw new Error(`${key}.timeZone "${timeZone}" is not an IANA time zone such as Europe/Berlin`);
    }
    const parse = (currentDate: Date) => {
      try {
        return CronExpressionParser.parse(s.recurrence, { tz: timeZone, currentDate });
      } catch (err) {
        throw new Error(
          `${key}.recurrence "${s.recurrence}" cannot be read: ${err instanceof Error ? err.message : String(err)}`,
        );
      }
    };
    const back = parse(from);
    if (back.hasPrev()) {
      const at = back.prev().getTime();
      if (!before || at > before.at) before = { at, minSize: s.minSize };
    }
    const ahead = parse(new Date(from.getTime() - 1));
    for (let at = ahead.next().getTime(); at <= to.getTime(); at = ahead.next().getTime()) {
      firings.push({ at, minSize: s.minSize });
    }
  });
  return { before, firings: firings.sort((a, b) => a.at - b.at) };
}

// ---------------------------------------------------------------------------------------------
// The simulation

export interface SimulationOptions {
  readonly hours: number;
  /** Wall-clock instant of t = 0, for the schedules. Defaults to {@link DEFAULT_START}. */
  readonly start?: Date;
  readonly seed: number;
  /** Defaults to {@link DEFAULT_CHECKPOINT_SECONDS}. */
  readonly checkpointSeconds?: number;
}

export interface WaitStats {
  readonly p50: number;
  readonly p95: number;
  readonly max: number;
  readonly mean: number;
}

export interface SimulationResult {
  readonly warmPool: boolean;
  readonly jobs: {
    readonly arrived: number;
    readonly completed: number;
    readonly runningAtEnd: number;
    readonly waitingAtEnd: number;
    /** Arrivals after the end of the run, left out. */
    readonly ignoredAfterEnd: number;
    /** Durations above the tier's maximum runtime, cut to it (the runtime stops them there). */
    readonly cappedDurations: number;
    readonly handedBack: number;
    readonly lostWorkSeconds: number;
  };
  /** Seconds in the queue per job, over all attempts. */
  readonly waitSeconds: WaitStats;
  /** Each arrived job's wait, in arrival order. */
  readonly waits: readonly number[];
  readonly scaling: {
    readonly peakGroupSize: number;
    readonly peakDesired: number;
    readonly minGroupSize: number;
    readonly coldStarts: number;
    readonly warmStarts: number;
    readonly returnedToWarmPool: number;
    readonly fromZeroScaleOuts: number;
    readonly spotInterruptions: number;
  };
  readonly instanceHours: {
    /** Taking jobs. */
    readonly inService: number;
    /** Booting cold or starting from the warm pool, towards service. */
    readonly starting: number;
    /** Warm-pool instances initialising before they stop (billed as running). */
    readonly warmPoolInitialising: number;
    /** Stopped in the warm pool (billed for storage only). */
    readonly warmPoolStopped: number;
  };
  readonly costUsd: {
    readonly compute: number;
    readonly warmPoolStorage: number;
    readonly total: number;
  };
}

type InstanceState = "booting" | "warming" | "inService" | "poolInit" | "poolStopped" | "gone";

interface Instance {
  readonly id: number;
  readonly spot: boolean;
  state: InstanceState;
  since: number;
  /** Bumped on every state change: events scheduled for an older state are stale. */
  epoch: number;
  readonly jobs: Set<Job>;
}

interface Job {
  /** Seconds of work the job needs in all. */
  readonly work: number;
  /** Work done and saved in a checkpoint: where the next attempt resumes. */
  saved: number;
  queuedAt: number;
  waited: number;
  startedAt: number;
  attempt: number;
  instance: Instance | undefined;
}

type Event =
  | { kind: "arrival"; job: Job }
  | { kind: "tick" }
  | { kind: "act"; waiting: number; running: number; inService: number; desired: number }
  | { kind: "ready"; instance: Instance; epoch: number }
  | { kind: "finish"; job: Job; attempt: number }
  | { kind: "interrupt"; instance: Instance }
  | { kind: "schedule"; minSize: number };

/** A binary min-heap of events by time, then by insertion order. */
class Agenda {
  private readonly heap: { at: number; seq: number; event: Event }[] = [];
  private seq = 0;

  push(at: number, event: Event): void {
    const h = this.heap;
    h.push({ at, seq: this.seq++, event });
    for (let i = h.length - 1; i > 0;) {
      const p = (i - 1) >> 1;
      if (!this.less(i, p)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  pop(): { at: number; event: Event } | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (top && last && h.length > 0) {
      h[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(l, m)) m = l;
        if (r < h.length && this.less(r, m)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }

  private less(a: number, b: number): boolean {
    const x = this.heap[a]!;
    const y = this.heap[b]!;
    return x.at < y.at || (x.at === y.at && x.seq < y.seq);
  }
}

function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;

/** Runs the tier's group against `arrivals` for `options.hours`. */
export function simulate(
  tier: SimulatedTier,
  arrivals: readonly Arrival[],
  options: SimulationOptions,
): SimulationResult {
  const end = options.hours * 3600;
  const start = options.start ?? new Date(DEFAULT_START);
  const checkpointSeconds = options.checkpointSeconds ?? DEFAULT_CHECKPOINT_SECONDS;
  const { timing, warmPool, spot } = tier;
  const spotRng = stream(options.seed, "spot");
  const agenda = new Agenda();

  const instances: Instance[] = [];
  const queue: Job[] = [];
  const jobs: Job[] = [];
  let nextId = 0;
  let running = 0;
  const counts = {
    completed: 0,
    handedBack: 0,
    lostWork: 0,
    cappedDurations: 0,
    coldStarts: 0,
    warmStarts: 0,
    returnedToWarmPool: 0,
    fromZero: 0,
    interruptions: 0,
  };
  const seconds: Record<Exclude<InstanceState, "gone">, number> = {
    booting: 0,
    warming: 0,
    inService: 0,
    poolInit: 0,
    poolStopped: 0,
  };
  let computeUsd = 0;
  let storageUsd = 0;

  const { before, firings } = scheduleFirings(tier, start, new Date(start.getTime() + end * 1000));
  let minSize = before?.minSize ?? tier.minSize;
  const clamp = (n: number) => Math.min(tier.maxSize, Math.max(minSize, n));
  let desired = clamp(tier.desired);
  let lastScaleOut = 0;
  const asked: { at: number; capacity: number }[] = [];

  const alive = (...states: InstanceState[]) => instances.filter((i) => states.includes(i.state));
  const groupSize = () => alive("booting", "warming", "inService").length;
  let peakGroupSize = 0;
  let minGroupSize = Number.POSITIVE_INFINITY;
  let peakDesired = desired;

  const account = (inst: Instance, now: number) => {
    if (inst.state === "gone") return;
    const s = now - inst.since;
    seconds[inst.state] += s;
    if (inst.state === "poolStopped") storageUsd += (s / 3600) * tier.stoppedHourlyUsd;
    else computeUsd += (s / 3600) * (inst.spot ? tier.spotHourlyUsd : tier.instanceHourlyUsd);
  };
  const setState = (inst: Instance, state: InstanceState, now: number) => {
    account(inst, now);
    inst.state = state;
    inst.since = now;
    inst.epoch += 1;
    if (state === "gone") instances.splice(instances.indexOf(inst), 1);
  };

  const launch = (state: "booting" | "poolInit" | "inService" | "poolStopped", now: number): Instance => {
    let onSpot = false;
    if (spot && (state === "booting" || state === "inService")) {
      const group = alive("booting", "warming", "inService");
      const size = group.length + 1;
      const wanted =
        Math.min(size, spot.onDemandBase) +
        Math.ceil((Math.max(0, size - spot.onDemandBase) * spot.onDemandPercentage) / 100);
      onSpot = group.filter((i) => !i.spot).length >= wanted;
    }
    const inst: Instance = { id: nextId++, spot: onSpot, state, since: now, epoch: 0, jobs: new Set() };
    instances.push(inst);
    if (state === "booting" || state === "poolInit") {
      agenda.push(now + timing.coldBootSeconds, { kind: "ready", instance: inst, epoch: inst.epoch });
    }
    if (onSpot && tier.spotInterruptionsPerHour > 0) {
      agenda.push(now + exponential(spotRng, tier.spotInterruptionsPerHour / 3600), {
        kind: "interrupt",
        instance: inst,
      });
    }
    return inst;
  };

  const poolTarget = () => {
    if (!warmPool) return 0;
    const prepared = warmPool.maxPreparedCapacity > 0 ? warmPool.maxPreparedCapacity : tier.maxSize;
    return Math.max(warmPool.minSize, prepared - desired);
  };

  const remove = (inst: Instance, now: number) => {
    const pooled = alive("poolInit", "poolStopped").length;
    // An instance still booting has not passed its launch hook: it is not warm, so it goes.
    if (warmPool && inst.state !== "booting" && pooled < poolTarget()) {
      setState(inst, "poolStopped", now);
      counts.returnedToWarmPool += 1;
    } else {
      setState(inst, "gone", now);
    }
  };

  const reconcile = (now: number) => {
    for (let size = groupSize(); size < desired; size += 1) {
      const warm = alive("poolStopped")[0];
      if (warm) {
        setState(warm, "warming", now);
        agenda.push(now + timing.warmStartSeconds, { kind: "ready", instance: warm, epoch: warm.epoch });
        counts.warmStarts += 1;
      } else {
        launch("booting", now);
        counts.coldStarts += 1;
      }
    }
    let excess = groupSize() - desired;
    if (excess > 0) {
      const candidates = [
        ...alive("booting").reverse(),
        ...alive("warming").reverse(),
        ...alive("inService")
          .filter((i) => i.jobs.size === 0)
          .reverse(),
      ];
      for (const inst of candidates) {
        if (excess === 0) break;
        remove(inst, now);
        excess -= 1;
      }
    }
    if (warmPool) {
      const target = poolTarget();
      for (let n = alive("poolInit", "poolStopped").length; n < target; n += 1) launch("poolInit", now);
      const surplus = [...alive("poolInit").reverse(), ...alive("poolStopped").reverse()];
      for (let n = alive("poolInit", "poolStopped").length; n > target; n -= 1)
        setState(surplus.shift()!, "gone", now);
    }
    const size = groupSize();
    peakGroupSize = Math.max(peakGroupSize, size);
    minGroupSize = Math.min(minGroupSize, size);
    peakDesired = Math.max(peakDesired, desired);
  };

  const dispatch = (now: number) => {
    if (queue.length === 0) return;
    for (const inst of alive("inService")) {
      while (inst.jobs.size < tier.slots && queue.length > 0) {
        const job = queue.shift()!;
        job.waited += now - job.queuedAt;
        job.instance = inst;
        job.startedAt = now;
        job.attempt += 1;
        inst.jobs.add(job);
        running += 1;
        agenda.push(now + job.work - job.saved, { kind: "finish", job, attempt: job.attempt });
      }
      if (queue.length === 0) return;
    }
  };

  const setDesired = (capacity: number, now: number) => {
    if (capacity > desired) lastScaleOut = now;
    desired = capacity;
    reconcile(now);
  };

  // Steady state at t = 0.
  for (let n = 0; n < desired; n += 1) launch("inService", 0);
  if (warmPool) for (let n = 0; n < poolTarget(); n += 1) launch("poolStopped", 0);
  reconcile(0);

  let ignoredAfterEnd = 0;
  for (const a of arrivals) {
    if (a.offsetSeconds >= end) {
      ignoredAfterEnd += 1;
      continue;
    }
    let work = a.durationSeconds;
    if (work > tier.maxRuntimeSeconds) {
      work = tier.maxRuntimeSeconds;
      counts.cappedDurations += 1;
    }
    const job: Job = {
      work,
      saved: 0,
      queuedAt: a.offsetSeconds,
      waited: 0,
      startedAt: 0,
      attempt: 0,
      instance: undefined,
    };
    jobs.push(job);
    agenda.push(a.offsetSeconds, { kind: "arrival", job });
  }
  agenda.push(0, { kind: "tick" });
  for (const f of firings)
    agenda.push((f.at - start.getTime()) / 1000, { kind: "schedule", minSize: f.minSize });

  for (let next = agenda.pop(); next && next.at < end; next = agenda.pop()) {
    const { at: now, event } = next;
    switch (event.kind) {
      case "arrival":
        queue.push(event.job);
        dispatch(now);
        break;
      case "tick": {
        const sample = { waiting: queue.length, running, inService: alive("inService").length, desired };
        agenda.push(now + timing.scaleOutDelaySeconds, { kind: "act", ...sample });
        agenda.push(now + timing.metricPeriodSeconds, { kind: "tick" });
        break;
      }
      case "act": {
        if (event.inService === 0) {
          // Target tracking has no capacity to scale in proportion to; the from-zero alarm acts instead,
          // and only on a group whose desired capacity was zero (it never cancels instances booting).
          if (event.waiting > 0 && event.desired === 0 && desired === 0 && clamp(1) > 0) {
            counts.fromZero += 1;
            setDesired(clamp(1), now);
          }
          break;
        }
        const capacity = clamp(Math.ceil((event.waiting + event.running) / tier.targetJobsPerInstance));
        asked.push({ at: now, capacity });
        while (asked.length > 0 && asked[0]!.at < now - timing.scaleInCooldownSeconds) asked.shift();
        if (capacity > desired) setDesired(capacity, now);
        else if (capacity < desired && now - lastScaleOut >= timing.scaleInCooldownSeconds) {
          const highest = Math.max(...asked.map((a) => a.capacity));
          if (highest < desired) setDesired(highest, now);
        }
        break;
      }
      case "schedule":
        minSize = event.minSize;
        if (desired < minSize) setDesired(minSize, now);
        break;
      case "ready": {
        const inst = event.instance;
        if (inst.epoch !== event.epoch) break;
        if (inst.state === "poolInit") setState(inst, "poolStopped", now);
        else {
          setState(inst, "inService", now);
          dispatch(now);
        }
        break;
      }
      case "finish": {
        const { job } = event;
        if (job.attempt !== event.attempt || !job.instance) break;
        job.instance.jobs.delete(job);
        job.instance = undefined;
        job.saved = job.work;
        running -= 1;
        counts.completed += 1;
        dispatch(now);
        if (groupSize() > desired) reconcile(now);
        break;
      }
      case "interrupt": {
        const inst = event.instance;
        if (inst.state === "gone" || inst.state === "poolStopped" || inst.state === "poolInit") break;
        counts.interruptions += 1;
        const handed = [...inst.jobs];
        for (const job of handed) {
          const done = job.saved + (now - job.startedAt);
          const saved = checkpointSeconds > 0 ? Math.floor(done / checkpointSeconds) * checkpointSeconds : 0;
          counts.lostWork += done - saved;
          job.saved = saved;
          job.attempt += 1;
          job.instance = undefined;
          job.queuedAt = now;
          running -= 1;
          counts.handedBack += 1;
        }
        inst.jobs.clear();
        queue.unshift(...handed);
        setState(inst, "gone", now);
        reconcile(now);
        dispatch(now);
        break;
      }
    }
  }

  for (const inst of instances) account(inst, end);
  const waits = jobs.map((j) => round(j.waited + (queue.includes(j) ? end - j.queuedAt : 0), 3));
  const sorted = [...waits].sort((a, b) => a - b);
  const hours = (s: number) => round(s / 3600, 3);
  return {
    warmPool: warmPool !== null,
    jobs: {
      arrived: jobs.length,
      completed: counts.completed,
      runningAtEnd: running,
      waitingAtEnd: queue.length,
      ignoredAfterEnd,
      cappedDurations: counts.cappedDurations,
      handedBack: counts.handedBack,
      lostWorkSeconds: round(counts.lostWork, 1),
    },
    waitSeconds: {
      p50: percentile(sorted, 50),
      p95: percentile(sorted, 95),
      max: sorted.at(-1) ?? 0,
      mean: sorted.length ? round(sorted.reduce((s, w) => s + w, 0) / sorted.length, 1) : 0,
    },
    waits,
    scaling: {
      peakGroupSize,
      peakDesired,
      minGroupSize: Number.isFinite(minGroupSize) ? minGroupSize : 0,
      coldStarts: counts.coldStarts,
      warmStarts: counts.warmStarts,
      returnedToWarmPool: counts.returnedToWarmPool,
      fromZeroScaleOuts: counts.fromZero,
      spotInterruptions: counts.interruptions,
    },
    instanceHours: {
      inService: hours(seconds.inService),
      starting: hours(seconds.booting + seconds.warming),
      warmPoolInitialising: hours(seconds.poolInit),
      warmPoolStopped: hours(seconds.poolStopped),
    },
    costUsd: {
      compute: round(computeUsd, 2),
      warmPoolStorage: round(storageUsd, 2),
      total: round(computeUsd + storageUsd, 2),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Side by side: as declared, and without the warm pool

export interface Comparison {
  readonly stack: string;
  readonly tier: TierName;
  readonly hours: number;
  readonly seed: number;
  readonly start: string;
  readonly checkpointSeconds: number;
  readonly arrivals: { readonly source: string; readonly count: number };
  readonly settings: Omit<SimulatedTier, "stack" | "tier">;
  /** The group as the stack declares it. */
  readonly declared: Omit<SimulationResult, "waits">;
  /** The same group and arrivals with no warm pool; null when the tier declares none. */
  readonly withoutWarmPool: Omit<SimulationResult, "waits"> | null;
}

/**
 * The tier as declared and, when it declares a warm pool, the same tier without one on the same
 * arrivals and seed, so the pool's effect on waits and cost shows. A tier with no warm pool (spot
 * groups cannot have one) is compared with nothing: a hypothetical pool would not be its design.
 */
export function simulateComparison(
  tier: SimulatedTier,
  arrivals: readonly Arrival[],
  options: SimulationOptions & { readonly arrivalsSource: string },
): Comparison {
  const start = options.start ?? new Date(DEFAULT_START);
  const run = (t: SimulatedTier) => {
    const { waits: _waits, ...rest } = simulate(t, arrivals, { ...options, start });
    return rest;
  };
  const { stack, tier: name, ...settings } = tier;
  return {
    stack,
    tier: name,
    hours: options.hours,
    seed: options.seed,
    start: start.toISOString(),
    checkpointSeconds: options.checkpointSeconds ?? DEFAULT_CHECKPOINT_SECONDS,
    arrivals: { source: options.arrivalsSource, count: arrivals.length },
    settings,
    declared: run(tier),
    withoutWarmPool: tier.warmPool ? run({ ...tier, warmPool: null }) : null,
  };
}

const duration = (s: number) =>
  s < 60 ? `${Math.round(s)} s` : s < 3600 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(2)} h`;
const usdText = (x: number) =>
  `$${x.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
const hourly = (x: number) => `$${x.toFixed(4)}/h`;

function text(c: Comparison): string {
  const s = c.settings;
  const t = s.timing;
  const type = s.instanceTypes[0]!;
  const lines = [
    `Scaling simulation: stack ${c.stack}, tier ${c.tier}, ${c.hours} h from ${c.start}, seed ${c.seed}`,
    "",
    `Arrivals   ${c.arrivals.source}: ${c.arrivals.count} jobs`,
    `Group      min ${s.minSize}, desired ${s.desired}, max ${s.maxSize}; target ${s.targetJobsPerInstance} jobs per in-service instance; ${s.slots} job(s) at once per instance`,
    `Nodes      ${type}: on-demand ${hourly(s.instanceHourlyUsd)}${s.spot ? `, spot ${hourly(s.spotHourlyUsd)}` : ""}`,
    `Spot       ${
      s.spot
        ? `on-demand base ${s.spot.onDemandBase}, ${s.spot.onDemandPercentage} % on-demand above it; ${s.spotInterruptionsPerHour} interruptions per spot instance-hour; checkpoints every ${c.checkpointSeconds} s of progress`
        : "none (on-demand group)"
    }`,
    `Warm pool  ${
      s.warmPool
        ? `min ${s.warmPool.minSize}, max prepared ${s.warmPool.maxPreparedCapacity || s.maxSize}; stopped instances ${hourly(s.stoppedHourlyUsd)} each (root volume)`
        : "none declared: nothing to compare"
    }`,
    `Schedules  ${s.prewarmSchedule.map((p) => `${p.name} "${p.recurrence}" ${p.timeZone ?? "UTC"} → min ${p.minSize}`).join("; ") || "none"}`,
    `Timing     cold boot ${t.coldBootSeconds} s, warm start ${t.warmStartSeconds} s; metrics every ${t.metricPeriodSeconds} s, acted on ${t.scaleOutDelaySeconds} s later; scale-in after ${t.scaleInCooldownSeconds} s`,
    "",
  ];
  const columns = [c.declared, ...(c.withoutWarmPool ? [c.withoutWarmPool] : [])];
  const head = [
    "",
    c.withoutWarmPool ? "with warm pool" : "as declared",
    ...(c.withoutWarmPool ? ["without warm pool"] : []),
  ];
  const rows: [string, (r: Omit<SimulationResult, "waits">) => string][] = [
    ["queue wait p50", (r) => duration(r.waitSeconds.p50)],
    ["queue wait p95", (r) => duration(r.waitSeconds.p95)],
    ["queue wait max", (r) => duration(r.waitSeconds.max)],
    ["jobs completed", (r) => `${r.jobs.completed} of ${r.jobs.arrived}`],
    ["jobs running / waiting at end", (r) => `${r.jobs.runningAtEnd} / ${r.jobs.waitingAtEnd}`],
    ["instance-hours in service", (r) => r.instanceHours.inService.toFixed(2)],
    ["instance-hours starting", (r) => r.instanceHours.starting.toFixed(2)],
    [
      "warm pool hours (initialising / stopped)",
      (r) =>
        `${r.instanceHours.warmPoolInitialising.toFixed(2)} / ${r.instanceHours.warmPoolStopped.toFixed(2)}`,
    ],
    ["starts (cold / warm)", (r) => `${r.scaling.coldStarts} / ${r.scaling.warmStarts}`],
    ["group size (min / peak)", (r) => `${r.scaling.minGroupSize} / ${r.scaling.peakGroupSize}`],
    ["scale-outs from zero", (r) => String(r.scaling.fromZeroScaleOuts)],
    [
      "spot interruptions (jobs handed back)",
      (r) =>
        `${r.scaling.spotInterruptions} (${r.jobs.handedBack}, ${duration(r.jobs.lostWorkSeconds)} lost)`,
    ],
    ["cost: compute", (r) => usdText(r.costUsd.compute)],
    ["cost: warm pool storage", (r) => usdText(r.costUsd.warmPoolStorage)],
    ["cost: total", (r) => usdText(r.costUsd.total)],
  ];
  const table = [head, ...rows.map(([label, cell]) => [label, ...columns.map(cell)])];
  const widths = head.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  for (const row of table) {
    lines.push(
      row
        .map((cell, i) => (i === 0 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!)))
        .join("   ")
        .trimEnd(),
    );
  }
  const capped = c.declared.jobs.cappedDurations;
  const late = c.declared.jobs.ignoredAfterEnd;
  if (capped) lines.push("", `${capped} job duration(s) above the tier's maximum runtime were cut to it.`);
  if (late) lines.push("", `${late} arrival(s) after the end of the run were left out.`);
  lines.push(
    "",
    "Waits count every attempt's time in the queue; jobs still waiting at the end count what they waited so far.",
    "",
  );
  return lines.join("\n");
}

export function renderComparison(comparison: Comparison, format: "text" | "json"): string {
  return format === "json" ? `${JSON.stringify(comparison, null, 2)}\n` : text(comparison);
}
