export * from "./catalog";
export * from "./job/contract";
// The launcher side (Docker, the CLI's building blocks): imported by the agent and the CLI, not by infra.
export * from "./logger";
export * from "./launch/output";
export * from "./job/code-source";
export * from "./job/detect";
export * from "./launch/sandbox";
export * from "./job/job-spec";
export * from "./launch/docker/container-engine";
export * from "./launch/docker/docker-launcher";
export { buildCli, main } from "./cli";
