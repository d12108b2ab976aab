import { TIER_NAMES, TIERS } from "../runtime/src/catalog";
import { loadConfig } from "./config";
import { awsProvider } from "./providers";

// Wiring only: every concern is a component in its own module; outputs are what CI and finance read.
const config = loadConfig();
const aws = awsProvider(config);
void aws;

const enabledTiers = TIER_NAMES.filter((t) => config.fleet.tiers[t]?.enabled);

export const environment = config.environment;
export const region = config.region;
export const tiers = Object.fromEntries(
  enabledTiers.map((t) => [t, { ...TIERS[t], ...config.fleet.tiers[t]?.limits }]),
);
