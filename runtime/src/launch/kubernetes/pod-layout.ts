/**
 * A job pod's layout, shared by the pod spec (kubernetes-job.ts) and the agent's way to the pod's files
 * (pod-files.ts): its two containers, and the control volume through which the agent tells the pod
 * what it has done.
 */

/** The keeper's container name. */
export const KEEPER_CONTAINER = "keeper";
/** The job's container name. */
export const JOB_CONTAINER = "job";
/** Markers the agent leaves for the pod, in a volume the keeper writes and the job only reads. */
export const CONTROL_DIR = "/crucible/control";
export const MARKERS = {
  /** Everything the job starts with is in place: its runner may start it (kubernetes-job.ts, RUNNER_WRAPPER). */
  ready: `${CONTROL_DIR}/ready`,
  /** The agent has taken the job's files for the last time: the keeper may exit. */
  collected: `${CONTROL_DIR}/collected`,
} as const;

/**
 * The keeper's own command. It ignores SIGTERM, so that when the cluster deletes the pod (a drain, an
 * eviction, a preemption) the files stay reachable while the job checkpoints, up to the pod's grace
 * period; it exits as soon as the agent has collected them.
 */
export const KEEPER_SCRIPT = `trap '' TERM INT\nuntil [ -e ${MARKERS.collected} ]; do sleep 1; done\n`;
