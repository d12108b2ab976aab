/** A GPU node's health: the checks, the gate the agent takes work through, and what they run. */
export * from "./run-process";
export * from "./driver";
export * from "./nvidia-smi";
export * from "./probe";
export * from "./health-check";
export * from "./health-gate";
