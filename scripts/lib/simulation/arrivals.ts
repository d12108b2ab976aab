import { readFileSync } from "node:fs";
import { exponential } from "../random";
import { standardNormal, stream } from "./random";
import type { SimulatedTier } from "./tier";

/** Defaults of the job duration distribution when arrivals do not carry durations. */
export const DURATION_DEFAULTS = {
  /** Log-normal spread. */
  sigma: 0.75,
  /** The median is this share of the tier's maximum runtime (gpu-small: 20 minutes of 2 hours). */
  medianShareOfMaxRuntime: 1 / 6,
} as const;

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
