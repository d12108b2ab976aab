/**
 * The scaling simulation behind `npm run simulate`: one tier's Auto Scaling group under a job load,
 * from the stack's declared settings. The model is written out in `model.ts`.
 */
export {
  DURATION_DEFAULTS,
  defaultDurations,
  parseArrivalsCsv,
  poissonArrivals,
  readArrivals,
} from "./arrivals";
export type { Arrival, DurationDistribution } from "./arrivals";
export { simulateComparison, type Comparison } from "./comparison";
export { DEFAULT_CHECKPOINT_SECONDS, DEFAULT_START, simulate } from "./model";
export type { SimulationOptions, SimulationResult } from "./model";
export { renderComparison } from "./report";
export { scheduleFirings } from "./schedules";
export type { WaitStats } from "./stats";
export { GP3_USD_PER_GIB_MONTH, loadSimulatedTier, simulatedTier } from "./tier";
export type { SimulatedTier, SimulationTiming } from "./tier";
