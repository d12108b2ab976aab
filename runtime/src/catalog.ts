// The data every other package imports (infra, policies, docs): no Docker or AWS dependencies here.
export * from "./instance-types";
export * from "./tiers";
export * from "./image-matrix";
export * from "./bucket-layout";
