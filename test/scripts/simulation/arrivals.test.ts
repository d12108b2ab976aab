import { describe, expect, it } from "vitest";
import { parseArrivalsCsv, readArrivals } from "../../../scripts/lib/simulation";

describe("arrivals", () => {
  it("reads a CSV of offsetSeconds,durationSeconds, sorted, skipping the header and comments", () => {
    expect(parseArrivalsCsv("offsetSeconds,durationSeconds\n# burst\n30,60\n0, 12.5\n\n")).toEqual([
      { offsetSeconds: 0, durationSeconds: 12.5 },
      { offsetSeconds: 30, durationSeconds: 60 },
    ]);
  });

  it.each([
    ["0,60\n12,-5\n", 'jobs.csv:2: durationSeconds must be a number of seconds above 0, got "-5"'],
    ["0,60\n\n7;60\n", 'jobs.csv:3: expected two numbers "offsetSeconds,durationSeconds", got "7;60"'],
    ["soon,60\n", 'jobs.csv:1: offsetSeconds must be a number of seconds, 0 or more, got "soon"'],
  ])("names the bad line of %j", (text, message) => {
    expect(() => parseArrivalsCsv(text, "jobs.csv")).toThrow(message);
  });

  it("rejects a poisson rate that is not jobs per hour", () => {
    const durations = { medianSeconds: 60, sigma: 0 };
    expect(() => readArrivals("poisson:fast", { hours: 1, seed: 1, durations })).toThrow(
      '--arrivals: the rate of poisson:RATE must be jobs per hour, 0 or more, got "fast"',
    );
  });
});
