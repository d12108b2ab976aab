/** A GPU node: its health (the checks, the gate the agent takes work through, what they run) and its usage. */
export * from "./run-process";
export * from "./driver";
export * from "./nvidia-smi";
export * from "./probe";
export * from "./health-check";
export * from "./health-gate";
export * from "./gpu-usage";
