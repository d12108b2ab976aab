import { Command, Option } from "commander";
import {
  DEFAULT_CHECKPOINT_SECONDS,
  DEFAULT_START,
  defaultDurations,
  loadSimulatedTier,
  readArrivals,
  renderComparison,
  simulateComparison,
} from "./lib/simulation";
import { numberFlag } from "./lib/flags";

/**
 * `npm run simulate -- --stack prod --arrivals FILE|poisson:RATE [--tier T] [--hours H] [--seed N]
 * [--spot-interruptions-per-hour X] [--json]`: one tier's Auto Scaling group under a job load, from the
 * stack's declared scaling settings: as declared, without the fast path, and without the warm pool and fast path. See scripts/lib/simulation/model.ts.
 */

function main(): void {
  const opts = new Command("simulate")
    .description(
      "Simulate one tier's scaling group under a job load: as declared, without the fast path, without the warm pool either",
    )
    .requiredOption("--stack <name>", "stack whose Pulumi.<stack>.yaml to read (dev, staging, prod)")
    .requiredOption(
      "--arrivals <FILE|poisson:RATE>",
      "a CSV of offsetSeconds,durationSeconds, or poisson:RATE jobs per hour",
    )
    .option("--tier <tier>", "tier to simulate", "gpu-small")
    .option(
      "--hours <hours>",
      "hours to simulate",
      numberFlag("--hours", "a number of hours above 0, at most 744", (n) => n > 0 && n <= 744),
      24,
    )
    .option(
      "--seed <n>",
      "seed of the random draws",
      numberFlag(
        "--seed",
        "a whole number from 0 to 4294967295",
        (n) => Number.isInteger(n) && n >= 0 && n < 2 ** 32,
      ),
      1,
    )
    .option(
      "--spot-interruptions-per-hour <x>",
      "spot interruptions per spot instance-hour (default: crucible:fleet.spotInterruptionsPerHour)",
      numberFlag("--spot-interruptions-per-hour", "a number from 0 to 10", (n) => n >= 0 && n <= 10),
    )
    .option(
      "--duration-median <seconds>",
      "median job duration for poisson arrivals (default: a sixth of the tier's maximum runtime)",
      numberFlag("--duration-median", "a number of seconds above 0", (n) => n > 0),
    )
    .option(
      "--duration-sigma <x>",
      "log-normal spread of job durations (default: 0.75)",
      numberFlag("--duration-sigma", "a number from 0 to 5", (n) => n >= 0 && n <= 5),
    )
    .option(
      "--checkpoint-seconds <seconds>",
      "job progress between checkpoints; work since the last is lost on interruption (0: none)",
      numberFlag("--checkpoint-seconds", "a number of seconds, 0 or more", (n) => n >= 0),
      DEFAULT_CHECKPOINT_SECONDS,
    )
    .addOption(
      new Option("--start <instant>", "ISO 8601 instant of t = 0, for pre-warm schedules").default(
        DEFAULT_START,
      ),
    )
    .option("--json", "print JSON instead of a table", false)
    .parse()
    .opts<{
      stack: string;
      arrivals: string;
      tier: string;
      hours: number;
      seed: number;
      spotInterruptionsPerHour?: number;
      durationMedian?: number;
      durationSigma?: number;
      checkpointSeconds: number;
      start: string;
      json: boolean;
    }>();
  const start = new Date(opts.start);
  if (Number.isNaN(start.getTime())) {
    throw new Error(`--start must be an ISO 8601 instant such as ${DEFAULT_START}, got "${opts.start}"`);
  }
  const declared = loadSimulatedTier(opts.stack, opts.tier);
  const tier =
    opts.spotInterruptionsPerHour === undefined
      ? declared
      : { ...declared, spotInterruptionsPerHour: opts.spotInterruptionsPerHour };
  const defaults = defaultDurations(tier);
  const durations = {
    medianSeconds: opts.durationMedian ?? defaults.medianSeconds,
    sigma: opts.durationSigma ?? defaults.sigma,
  };
  const { arrivals, source } = readArrivals(opts.arrivals, { hours: opts.hours, seed: opts.seed, durations });
  const comparison = simulateComparison(tier, arrivals, {
    hours: opts.hours,
    seed: opts.seed,
    start,
    checkpointSeconds: opts.checkpointSeconds,
    arrivalsSource: source,
  });
  process.stdout.write(renderComparison(comparison, opts.json ? "json" : "text"));
}

try {
  main();
} catch (err) {
  process.stderr.write(`simulate: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
}
