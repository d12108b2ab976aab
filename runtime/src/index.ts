export * from "./catalog";
export * from "./contract";
// The launcher side (Docker, the CLI's building blocks): imported by the agent and the CLI, not by infra.
export * from "./logger";
export * from "./output";
export * from "./code-source";
export * from "./detect";
export * from "./sandbox";
export * from "./job-spec";
export * from "./container-engine";
export * from "./docker-launcher";
export { buildCli, main } from "./cli";
