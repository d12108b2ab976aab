// The runtime's one surface for infra/ and policies/ (`@crucible/runtime/catalog`): the data and contracts
// the program declares and the policy pack checks. No Docker, Kubernetes client or AWS SDK behind it;
// eslint.config.mjs keeps infra and policies from importing any other runtime module but the job contract.
export * from "./instance-types";
export * from "./tiers";
export * from "./image-matrix";
export * from "./bucket-layout";
export * from "./billing";
export * from "./iam-actions";
export * from "./scheduling";
export * from "./senders";
export * from "./kubernetes-names";
export * from "./agent-env";
// From the job contract, what the program names too: metric names, the checkpoint tag, the job address.
export {
  CHECKPOINT_OBJECT_TAG,
  JOB_METRICS,
  SPEND_METRICS,
  jobAddressSchema,
  type JobAddress,
} from "../job/contract";
// The sandbox facts the program publishes for each target (and the policy pack checks), and the uid
// leases' directory.
export { JOB_UID_LEASES, sandboxFacts, type SandboxFacts } from "../launch/sandbox";
export { kubernetesSandboxFacts } from "../launch/kubernetes/kubernetes-job";
