import type { LedgerEntry } from "../../runtime/src/cost/ledger";

// A small cost ledger with known sums, shared by the usage and cost report tests.

/** Wednesday of ISO week 12 of 2026. */
export const NOW = new Date("2026-03-18T12:00:00.000Z");

export function entry(
  fields: Partial<LedgerEntry> & Pick<LedgerEntry, "jobId" | "endedAt" | "costUsd">,
): LedgerEntry {
  return {
    project: "vision",
    user: "ada",
    tier: "gpu-small",
    priority: "normal",
    attempt: 1,
    node: "i-0abc",
    startedAt: fields.endedAt,
    seconds: 60,
    outcome: "finished",
    status: "success",
    pricePerHourUsd: 0.526,
    priceSource: "on-demand",
    priceFactor: 1,
    ...fields,
  };
}

/** Four entries in March 2026 (two of them in week 12, one on the 18th) and two just outside it. */
export const LEDGER: LedgerEntry[] = [
  entry({
    jobId: "job-a",
    priority: "high",
    endedAt: "2026-03-18T10:00:00.000Z",
    seconds: 3600,
    costUsd: 0.526,
  }),
  entry({
    jobId: "job-a",
    attempt: 2,
    priority: "high",
    outcome: "preempted",
    endedAt: "2026-03-16T00:00:00.000Z",
    seconds: 1800,
    costUsd: 0.263,
  }),
  entry({
    jobId: "job-b",
    project: "nlp",
    user: "bob",
    tier: "cpu-large",
    endedAt: "2026-03-01T00:00:00.000Z",
    seconds: 600,
    costUsd: 0.016,
  }),
  entry({
    jobId: "job-c",
    user: "bob",
    tier: "gpu-large",
    priority: "low",
    endedAt: "2026-03-15T23:59:59.999Z",
    seconds: 7200,
    costUsd: 4.024,
  }),
  entry({
    jobId: "job-d",
    project: "nlp",
    tier: "cpu-small",
    endedAt: "2026-02-28T23:59:59.999Z",
    costUsd: 0.0011,
  }),
  entry({ jobId: "job-e", project: "nlp", user: "cy", endedAt: "2026-04-01T00:00:00.000Z", costUsd: 0.5 }),
];
