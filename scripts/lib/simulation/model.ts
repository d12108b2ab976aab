import { exponential } from "../random";
import { Agenda } from "./agenda";
import type { Arrival } from "./arrivals";
import { stream } from "./random";
import { scheduleFirings } from "./schedules";
import { round, waitStats, type WaitStats } from "./stats";
import type { SimulatedTier } from "./tier";

/**
 * A deterministic discrete-event simulation of one tier's Auto Scaling group, driven by the scaling
 * settings the stack declares: what `infra/fleet` would build from the validated `crucible:fleet`.
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
 *   ExactCapacity 1 (clamped to [minimum, maximum]), exactly as `infra/fleet` declares it.
 * - Pre-warm schedules set the minimum at each firing of their cron recurrence (in their time zone,
 *   UTC when none; Unix cron, five fields) and raise the desired capacity to it; lowering the minimum
 *   leaves the desired capacity to the policy.
 * - Fast path (where the stack declares `fastScale`): `scaling.fastScaleDelaySeconds` after each arrival
 *   (the S3 event on the job's spec.json, the scaler Lambda, SetDesiredCapacity) the desired capacity is
 *   raised to ceil((waiting + running) / jobs per node), at most maxSize; it never lowers it. It counts as
 *   a scale-out for the scale-in cooldown. Target tracking stays the authoritative path and scales in.
 * - Scale-out: each missing instance starts from the warm pool when one is there, in the pool's state:
 *   Stopped `startup.warmStartSeconds` to in service, Hibernated `startup.hibernatedStartSeconds`, Running
 *   `startup.runningStartSeconds` (the agent completing its launch hook); else it launches cold
 *   (`startup.coldBootSeconds`). Warm-pool instances still initialising are not used.
 * - Scale-in (desired below the group's size) removes instances still booting first, newest first,
 *   then idle in-service ones; busy instances are never removed (the agent holds scale-in protection
 *   while it runs jobs), so the group stays above desired until they finish. With a warm pool
 *   (`reuseOnScaleIn`, as `infra/fleet` sets it) removed instances return to the pool, in its state.
 * - Warm pool size: max(warmPool.minSize, maxPreparedCapacity − desired), where a maxPreparedCapacity
 *   of 0 means maxSize. Missing pool instances launch and initialise (`coldBootSeconds`, billed as
 *   running), then enter the pool's state; surplus ones are terminated.
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
 *   that price less `budgets.spotDiscountPercent` (finance's figure); idle warm-pool instances as finance
 *   prices them (`warmPoolIdleHourlyUsd`): Stopped and Hibernated at their root volume's gp3 price only
 *   (the volume holds a hibernated instance's RAM), Running at the full on-demand price. Running instances'
 *   volumes, data transfer and CloudWatch are not counted.
 *
 * How it runs: {@link ScalingGroupModel} owns the group's state and has one handler per kind of event
 * (an arrival, a metric sample, the policy acting on it, a scheduled action, an instance ready, a job
 * finished, a spot interruption); the {@link Agenda} hands it the events in time order, and each
 * handler schedules the events that follow from it.
 */

/** Progress between two checkpoints of a job; the work since the last one is lost on interruption. */
export const DEFAULT_CHECKPOINT_SECONDS = 600;
/** A Monday, so weekday pre-warm schedules fire in a day's run. */
export const DEFAULT_START = "2026-01-05T00:00:00Z";

export interface SimulationOptions {
  readonly hours: number;
  /** Wall-clock instant of t = 0, for the schedules. Defaults to {@link DEFAULT_START}. */
  readonly start?: Date;
  readonly seed: number;
  /** Defaults to {@link DEFAULT_CHECKPOINT_SECONDS}. */
  readonly checkpointSeconds?: number;
}

export interface SimulationResult {
  readonly warmPool: boolean;
  readonly fastScale: boolean;
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
    /** Stopped or hibernated in the warm pool (billed for storage only). */
    readonly warmPoolStopped: number;
    /** Idle and running in a `Running` warm pool (billed in full). */
    readonly warmPoolRunning: number;
  };
  readonly costUsd: {
    readonly compute: number;
    readonly warmPoolStorage: number;
    /** Idle instances of a `Running` warm pool. */
    readonly warmPoolRunning: number;
    readonly total: number;
  };
}

/** Runs the tier's group against `arrivals` for `options.hours`. */
export function simulate(
  tier: SimulatedTier,
  arrivals: readonly Arrival[],
  options: SimulationOptions,
): SimulationResult {
  return new ScalingGroupModel(tier, options).run(arrivals);
}

// ---------------------------------------------------------------------------------------------
// What the model holds

/**
 * `booting` (cold) and `warming` (from the warm pool) lead to `inService`; `poolInit` (launched into
 * the warm pool, initialising) leads to `poolStopped`; `gone` is terminated.
 */
type InstanceState = "booting" | "warming" | "inService" | "poolInit" | "poolStopped" | "gone";
/** The states an instance is launched in; the steady state at t = 0 has some in service or stopped. */
type LaunchState = "booting" | "poolInit" | "inService" | "poolStopped";

interface Instance {
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
  /** Bumped on every start and every hand-back: a finish scheduled for an older attempt is stale. */
  attempt: number;
  instance: Instance | undefined;
}

/** What the group's metrics read at a sample: m1 waiting, m2 running, m3 in service, m4 desired. */
interface MetricSample {
  readonly waiting: number;
  readonly running: number;
  readonly inService: number;
  readonly desired: number;
}

type Event =
  | { kind: "arrival"; job: Job }
  | { kind: "metricSample" }
  | { kind: "policyEvaluation"; sample: MetricSample }
  | { kind: "fastScale" }
  | { kind: "scheduledAction"; minSize: number }
  | { kind: "instanceReady"; instance: Instance; epoch: number }
  | { kind: "jobFinished"; job: Job; attempt: number }
  | { kind: "spotInterruption"; instance: Instance };

/** Instance-seconds by state, and what they cost. */
class UsageMeter {
  readonly seconds: Record<Exclude<InstanceState, "gone">, number> = {
    booting: 0,
    warming: 0,
    inService: 0,
    poolInit: 0,
    poolStopped: 0,
  };
  /** Of `poolStopped`, the seconds a `Running` pool's instances sat idle and running. */
  poolRunningSeconds = 0;
  computeUsd = 0;
  storageUsd = 0;
  poolRunningUsd = 0;

  constructor(
    private readonly tier: Pick<
      SimulatedTier,
      "instanceHourlyUsd" | "spotHourlyUsd" | "warmPoolIdleHourlyUsd" | "warmPool"
    >,
  ) {}

  /** Bills the instance's time in its current state, from when it entered it up to `now`. */
  record(inst: Instance, now: number): void {
    if (inst.state === "gone") return;
    const s = now - inst.since;
    this.seconds[inst.state] += s;
    if (inst.state === "poolStopped" && this.tier.warmPool?.state === "Running") {
      this.poolRunningSeconds += s;
      this.poolRunningUsd += (s / 3600) * this.tier.warmPoolIdleHourlyUsd;
    } else if (inst.state === "poolStopped") {
      this.storageUsd += (s / 3600) * this.tier.warmPoolIdleHourlyUsd;
    } else {
      this.computeUsd += (s / 3600) * (inst.spot ? this.tier.spotHourlyUsd : this.tier.instanceHourlyUsd);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The model

/** One run of one tier's group: its state, one handler per kind of event, and the result. */
class ScalingGroupModel {
  private readonly end: number;
  private readonly checkpointSeconds: number;
  /** Spot interruptions draw from a stream of their own, apart from the arrivals'. */
  private readonly spotRng: () => number;
  /** The pre-warm schedules' firings within the run, in seconds from the start. */
  private readonly scheduledActions: { readonly offsetSeconds: number; readonly minSize: number }[];
  private readonly agenda = new Agenda<Event>();
  private readonly usage: UsageMeter;

  /** The group's and the warm pool's instances, in launch order; terminated ones leave. */
  private readonly instances: Instance[] = [];
  /** Jobs waiting for a slot, oldest first (the tier's SQS queue). */
  private readonly queue: Job[] = [];
  /** Every job that arrived before the end, in arrival order. */
  private readonly jobs: Job[] = [];
  private running = 0;
  private ignoredAfterEnd = 0;
  private readonly counts = {
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

  /** The effective minimum: that of the pre-warm schedule that fired last, else the tier's. */
  private minSize: number;
  private desired: number;
  private lastScaleOut = 0;
  /** The capacities target tracking asked for within the last scale-in cooldown. */
  private readonly asked: { at: number; capacity: number }[] = [];
  private peakGroupSize = 0;
  private minGroupSize = Number.POSITIVE_INFINITY;
  private peakDesired: number;

  constructor(
    private readonly tier: SimulatedTier,
    options: SimulationOptions,
  ) {
    this.end = options.hours * 3600;
    const start = options.start ?? new Date(DEFAULT_START);
    this.checkpointSeconds = options.checkpointSeconds ?? DEFAULT_CHECKPOINT_SECONDS;
    this.spotRng = stream(options.seed, "spot");
    this.usage = new UsageMeter(tier);
    const { before, firings } = scheduleFirings(tier, start, new Date(start.getTime() + this.end * 1000));
    this.scheduledActions = firings.map((f) => ({
      offsetSeconds: (f.at - start.getTime()) / 1000,
      minSize: f.minSize,
    }));
    this.minSize = before?.minSize ?? tier.minSize;
    this.desired = this.clamp(tier.desired);
    this.peakDesired = this.desired;
  }

  /** Starts in steady state, then handles every event due before the end, in time order. */
  run(arrivals: readonly Arrival[]): SimulationResult {
    // Events due at the same instant run in the order they were scheduled: keep this order.
    for (let n = 0; n < this.desired; n += 1) this.launch("inService", 0);
    if (this.tier.warmPool) for (let n = 0; n < this.poolTarget(); n += 1) this.launch("poolStopped", 0);
    this.reconcile(0);
    for (const arrival of arrivals) this.admit(arrival);
    this.agenda.push(0, { kind: "metricSample" });
    for (const action of this.scheduledActions) {
      this.agenda.push(action.offsetSeconds, { kind: "scheduledAction", minSize: action.minSize });
    }
    for (let next = this.agenda.pop(); next && next.at < this.end; next = this.agenda.pop()) {
      this.handle(next.event, next.at);
    }
    return this.result();
  }

  private handle(event: Event, now: number): void {
    switch (event.kind) {
      case "arrival":
        return this.onArrival(event.job, now);
      case "metricSample":
        return this.onMetricSample(now);
      case "policyEvaluation":
        return this.onPolicyEvaluation(event.sample, now);
      case "fastScale":
        return this.onFastScale(now);
      case "scheduledAction":
        return this.onScheduledAction(event.minSize, now);
      case "instanceReady":
        return this.onInstanceReady(event.instance, event.epoch, now);
      case "jobFinished":
        return this.onJobFinished(event.job, event.attempt, now);
      case "spotInterruption":
        return this.onSpotInterruption(event.instance, now);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Events

  private onArrival(job: Job, now: number): void {
    this.queue.push(job);
    this.startWaitingJobs(now);
    if (this.tier.fastScale) {
      this.agenda.push(now + this.tier.timing.fastScaleDelaySeconds, { kind: "fastScale" });
    }
  }

  /** The fast path: desired up to what the queue needs now, within maxSize; never down. */
  private onFastScale(now: number): void {
    const need = Math.ceil((this.queue.length + this.running) / this.tier.fastScale!.jobsPerNode);
    const capacity = this.clamp(need);
    if (capacity > this.desired) this.setDesired(capacity, now);
  }

  private onMetricSample(now: number): void {
    const sample: MetricSample = {
      waiting: this.queue.length,
      running: this.running,
      inService: this.instancesIn("inService").length,
      desired: this.desired,
    };
    const { scaleOutDelaySeconds, metricPeriodSeconds } = this.tier.timing;
    this.agenda.push(now + scaleOutDelaySeconds, { kind: "policyEvaluation", sample });
    this.agenda.push(now + metricPeriodSeconds, { kind: "metricSample" });
  }

  private onPolicyEvaluation(sample: MetricSample, now: number): void {
    if (sample.inService === 0) this.scaleFromZero(sample, now);
    else this.trackTarget(sample, now);
  }

  private onScheduledAction(minSize: number, now: number): void {
    this.minSize = minSize;
    if (this.desired < minSize) this.setDesired(minSize, now);
  }

  private onInstanceReady(inst: Instance, epoch: number, now: number): void {
    if (inst.epoch !== epoch) return;
    if (inst.state === "poolInit") this.setState(inst, "poolStopped", now);
    else {
      this.setState(inst, "inService", now);
      this.startWaitingJobs(now);
    }
  }

  private onJobFinished(job: Job, attempt: number, now: number): void {
    if (job.attempt !== attempt || !job.instance) return;
    job.instance.jobs.delete(job);
    job.instance = undefined;
    job.saved = job.work;
    this.running -= 1;
    this.counts.completed += 1;
    this.startWaitingJobs(now);
    // The group may be above desired only because this instance was busy: it can go now.
    if (this.groupSize() > this.desired) this.reconcile(now);
  }

  private onSpotInterruption(inst: Instance, now: number): void {
    if (inst.state === "gone" || inst.state === "poolStopped" || inst.state === "poolInit") return;
    this.counts.interruptions += 1;
    const handed = [...inst.jobs];
    for (const job of handed) this.handBack(job, now);
    inst.jobs.clear();
    this.queue.unshift(...handed);
    this.setState(inst, "gone", now);
    this.reconcile(now);
    this.startWaitingJobs(now);
  }

  // -------------------------------------------------------------------------------------------
  // Scaling policies

  /**
   * Target tracking has no capacity to scale in proportion to; the from-zero alarm acts instead, and
   * only on a group whose desired capacity was zero (it never cancels instances booting).
   */
  private scaleFromZero(sample: MetricSample, now: number): void {
    if (sample.waiting > 0 && sample.desired === 0 && this.desired === 0 && this.clamp(1) > 0) {
      this.counts.fromZero += 1;
      this.setDesired(this.clamp(1), now);
    }
  }

  private trackTarget(sample: MetricSample, now: number): void {
    const cooldown = this.tier.timing.scaleInCooldownSeconds;
    const capacity = this.clamp(
      Math.ceil((sample.waiting + sample.running) / this.tier.targetJobsPerInstance),
    );
    this.asked.push({ at: now, capacity });
    while (this.asked.length > 0 && this.asked[0]!.at < now - cooldown) this.asked.shift();
    if (capacity > this.desired) this.setDesired(capacity, now);
    else if (capacity < this.desired && now - this.lastScaleOut >= cooldown) {
      const highest = Math.max(...this.asked.map((a) => a.capacity));
      if (highest < this.desired) this.setDesired(highest, now);
    }
  }

  private clamp(capacity: number): number {
    return Math.min(this.tier.maxSize, Math.max(this.minSize, capacity));
  }

  private setDesired(capacity: number, now: number): void {
    if (capacity > this.desired) this.lastScaleOut = now;
    this.desired = capacity;
    this.reconcile(now);
  }

  // -------------------------------------------------------------------------------------------
  // The group and its warm pool

  /** Brings the group to the desired capacity and the warm pool to its size, as Auto Scaling does. */
  private reconcile(now: number): void {
    this.startMissing(now);
    this.removeExcess(now);
    if (this.tier.warmPool) this.resizeWarmPool(now);
    const size = this.groupSize();
    this.peakGroupSize = Math.max(this.peakGroupSize, size);
    this.minGroupSize = Math.min(this.minGroupSize, size);
    this.peakDesired = Math.max(this.peakDesired, this.desired);
  }

  /** Each missing instance starts from the warm pool when a stopped one is there, else cold. */
  private startMissing(now: number): void {
    for (let size = this.groupSize(); size < this.desired; size += 1) {
      const warm = this.instancesIn("poolStopped")[0];
      if (warm) {
        this.setState(warm, "warming", now);
        const ready = now + this.warmStartSeconds();
        this.agenda.push(ready, { kind: "instanceReady", instance: warm, epoch: warm.epoch });
        this.counts.warmStarts += 1;
      } else {
        this.launch("booting", now);
        this.counts.coldStarts += 1;
      }
    }
  }

  /** Booting ones first, then starting, then idle in service, each newest first; busy ones stay. */
  private removeExcess(now: number): void {
    let excess = this.groupSize() - this.desired;
    if (excess <= 0) return;
    const candidates = [
      ...this.instancesIn("booting").reverse(),
      ...this.instancesIn("warming").reverse(),
      ...this.instancesIn("inService")
        .filter((i) => i.jobs.size === 0)
        .reverse(),
    ];
    for (const inst of candidates) {
      if (excess === 0) break;
      this.remove(inst, now);
      excess -= 1;
    }
  }

  private remove(inst: Instance, now: number): void {
    const pooled = this.instancesIn("poolInit", "poolStopped").length;
    // An instance still booting has not passed its launch hook: it is not warm, so it goes.
    if (this.tier.warmPool && inst.state !== "booting" && pooled < this.poolTarget()) {
      this.setState(inst, "poolStopped", now);
      this.counts.returnedToWarmPool += 1;
    } else {
      this.setState(inst, "gone", now);
    }
  }

  /** Launches the missing pool instances; terminates the surplus, newest initialising ones first. */
  private resizeWarmPool(now: number): void {
    const target = this.poolTarget();
    for (let n = this.instancesIn("poolInit", "poolStopped").length; n < target; n += 1) {
      this.launch("poolInit", now);
    }
    const surplus = [...this.instancesIn("poolInit").reverse(), ...this.instancesIn("poolStopped").reverse()];
    for (let n = this.instancesIn("poolInit", "poolStopped").length; n > target; n -= 1) {
      this.setState(surplus.shift()!, "gone", now);
    }
  }

  /** From the warm pool to in service, by the state the pool holds its instances in. */
  private warmStartSeconds(): number {
    const t = this.tier.timing;
    switch (this.tier.warmPool?.state) {
      case "Running":
        return t.runningStartSeconds;
      case "Hibernated":
        return t.hibernatedStartSeconds;
      default:
        return t.warmStartSeconds;
    }
  }

  private poolTarget(): number {
    const { warmPool, maxSize } = this.tier;
    if (!warmPool) return 0;
    const prepared = warmPool.maxPreparedCapacity > 0 ? warmPool.maxPreparedCapacity : maxSize;
    return Math.max(warmPool.minSize, prepared - this.desired);
  }

  private launch(state: LaunchState, now: number): void {
    const spot = this.launchesOnSpot(state);
    const inst: Instance = { spot, state, since: now, epoch: 0, jobs: new Set() };
    this.instances.push(inst);
    if (state === "booting" || state === "poolInit") {
      const ready = now + this.tier.timing.coldBootSeconds;
      this.agenda.push(ready, { kind: "instanceReady", instance: inst, epoch: inst.epoch });
    }
    const perHour = this.tier.spotInterruptionsPerHour;
    if (spot && perHour > 0) {
      const interrupted = now + exponential(this.spotRng, perHour / 3600);
      this.agenda.push(interrupted, { kind: "spotInterruption", instance: inst });
    }
  }

  /** On-demand while the group holds fewer than its on-demand share of the size it will have. */
  private launchesOnSpot(state: LaunchState): boolean {
    const { spot } = this.tier;
    if (!spot || (state !== "booting" && state !== "inService")) return false;
    const group = this.instancesIn("booting", "warming", "inService");
    const size = group.length + 1;
    const onDemandShare =
      Math.min(size, spot.onDemandBase) +
      Math.ceil((Math.max(0, size - spot.onDemandBase) * spot.onDemandPercentage) / 100);
    return group.filter((i) => !i.spot).length >= onDemandShare;
  }

  private setState(inst: Instance, state: InstanceState, now: number): void {
    this.usage.record(inst, now);
    inst.state = state;
    inst.since = now;
    inst.epoch += 1;
    if (state === "gone") this.instances.splice(this.instances.indexOf(inst), 1);
  }

  private instancesIn(...states: InstanceState[]): Instance[] {
    return this.instances.filter((i) => states.includes(i.state));
  }

  /** Booting, starting and in service: the warm pool is not part of the group. */
  private groupSize(): number {
    return this.instancesIn("booting", "warming", "inService").length;
  }

  // -------------------------------------------------------------------------------------------
  // Jobs

  /** Schedules the arrival of a job, its work cut to the tier's maximum runtime. */
  private admit(arrival: Arrival): void {
    if (arrival.offsetSeconds >= this.end) {
      this.ignoredAfterEnd += 1;
      return;
    }
    let work = arrival.durationSeconds;
    if (work > this.tier.maxRuntimeSeconds) {
      work = this.tier.maxRuntimeSeconds;
      this.counts.cappedDurations += 1;
    }
    const job: Job = {
      work,
      saved: 0,
      queuedAt: arrival.offsetSeconds,
      waited: 0,
      startedAt: 0,
      attempt: 0,
      instance: undefined,
    };
    this.jobs.push(job);
    this.agenda.push(arrival.offsetSeconds, { kind: "arrival", job });
  }

  /** Free slots take the oldest waiting jobs, the oldest in-service instance's first. */
  private startWaitingJobs(now: number): void {
    if (this.queue.length === 0) return;
    for (const inst of this.instancesIn("inService")) {
      while (inst.jobs.size < this.tier.slots && this.queue.length > 0) {
        const job = this.queue.shift()!;
        job.waited += now - job.queuedAt;
        job.instance = inst;
        job.startedAt = now;
        job.attempt += 1;
        inst.jobs.add(job);
        this.running += 1;
        this.agenda.push(now + job.work - job.saved, { kind: "jobFinished", job, attempt: job.attempt });
      }
      if (this.queue.length === 0) return;
    }
  }

  /** An interrupted job keeps the work of its last checkpoint and waits again; the rest is lost. */
  private handBack(job: Job, now: number): void {
    const done = job.saved + (now - job.startedAt);
    const every = this.checkpointSeconds;
    const saved = every > 0 ? Math.floor(done / every) * every : 0;
    this.counts.lostWork += done - saved;
    job.saved = saved;
    job.attempt += 1;
    job.instance = undefined;
    job.queuedAt = now;
    this.running -= 1;
    this.counts.handedBack += 1;
  }

  // -------------------------------------------------------------------------------------------
  // The result

  private result(): SimulationResult {
    for (const inst of this.instances) this.usage.record(inst, this.end);
    const waits = this.jobs.map((j) =>
      round(j.waited + (this.queue.includes(j) ? this.end - j.queuedAt : 0), 3),
    );
    const { counts, usage } = this;
    const hours = (s: number) => round(s / 3600, 3);
    return {
      warmPool: this.tier.warmPool !== null,
      fastScale: this.tier.fastScale !== null,
      jobs: {
        arrived: this.jobs.length,
        completed: counts.completed,
        runningAtEnd: this.running,
        waitingAtEnd: this.queue.length,
        ignoredAfterEnd: this.ignoredAfterEnd,
        cappedDurations: counts.cappedDurations,
        handedBack: counts.handedBack,
        lostWorkSeconds: round(counts.lostWork, 1),
      },
      waitSeconds: waitStats(waits),
      waits,
      scaling: {
        peakGroupSize: this.peakGroupSize,
        peakDesired: this.peakDesired,
        minGroupSize: Number.isFinite(this.minGroupSize) ? this.minGroupSize : 0,
        coldStarts: counts.coldStarts,
        warmStarts: counts.warmStarts,
        returnedToWarmPool: counts.returnedToWarmPool,
        fromZeroScaleOuts: counts.fromZero,
        spotInterruptions: counts.interruptions,
      },
      instanceHours: {
        inService: hours(usage.seconds.inService),
        starting: hours(usage.seconds.booting + usage.seconds.warming),
        warmPoolInitialising: hours(usage.seconds.poolInit),
        warmPoolStopped: hours(usage.seconds.poolStopped - usage.poolRunningSeconds),
        warmPoolRunning: hours(usage.poolRunningSeconds),
      },
      costUsd: {
        compute: round(usage.computeUsd, 2),
        warmPoolStorage: round(usage.storageUsd, 2),
        warmPoolRunning: round(usage.poolRunningUsd, 2),
        total: round(usage.computeUsd + usage.storageUsd + usage.poolRunningUsd, 2),
      },
    };
  }
}
