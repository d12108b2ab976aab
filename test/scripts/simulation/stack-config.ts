import { readStackConfig } from "../../../scripts/lib/mock-engine";

/** Prod's file with `crucible:fleet` keys added over what it states. */
export function prodWithFleet(extra: Record<string, unknown>): Record<string, string> {
  const config = readStackConfig("prod");
  config["crucible:fleet"] = JSON.stringify({ ...JSON.parse(config["crucible:fleet"]!), ...extra });
  return config;
}
