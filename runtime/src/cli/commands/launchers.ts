import type { AgentEnv, LauncherKind } from "../../catalog/agent-env";
import { LAUNCHER_KINDS } from "../../catalog/agent-env";
import type { Launcher } from "../../job/contract";
import { DockerLauncher } from "../../launch/docker/docker-launcher";
import type { ImageFamily } from "../../catalog/image-matrix";
import { connectKubernetes } from "../../launch/kubernetes/kubernetes-api";
import { KubernetesLauncher } from "../../launch/kubernetes/kubernetes-launcher";
import type { Logger } from "../../logger";
import type { GpuUsage } from "../../node/gpu/gpu-usage";
import { InvalidArgumentError } from "commander";
import { UsageError } from "./shared";

export { LAUNCHER_KINDS, type LauncherKind };

export interface LauncherSettings {
  readonly logger: Logger;
  readonly images?: Partial<Record<ImageFamily, string>>;
  /** The agent's environment (agent-env.ts), read by the caller: the launcher's settings (CRUCIBLE_K8S_*). */
  readonly env: AgentEnv;
  /** Reads the node's GPUs, sampled while a job runs (Docker on a GPU node). */
  readonly gpuUsage?: () => Promise<GpuUsage | undefined>;
}

/** A commander parser for `--launcher`: refused at parse time, before anything is set up. */
export function parseLauncherKind(value: string): LauncherKind {
  if (!(LAUNCHER_KINDS as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`must be one of ${LAUNCHER_KINDS.join(", ")}, got "${value}"`);
  }
  return value as LauncherKind;
}

/** The launcher kind from a flag (checked by {@link parseLauncherKind}), else $CRUCIBLE_LAUNCHER (checked by readAgentEnv), else docker. */
export function launcherKind(flag: LauncherKind | undefined, env: AgentEnv): LauncherKind {
  return flag ?? env.launcher ?? "docker";
}

/**
 * The launcher of a kind. The Kubernetes client (ESM, heavy) is imported by connectKubernetes only when
 * Kubernetes is chosen, so no other command pays for loading it. Kubernetes reads CRUCIBLE_K8S_NAMESPACE (required),
 * CRUCIBLE_K8S_KUBECONFIG (else in-cluster or ~/.kube/config), CRUCIBLE_K8S_PENDING_TIMEOUT_SECONDS and
 * CRUCIBLE_K8S_GPU_NODE_LABEL (`key=value`, the label GPU pods select nodes by).
 */
export async function launcherFor(kind: LauncherKind, settings: LauncherSettings): Promise<Launcher> {
  const { logger, images, gpuUsage } = settings;
  if (kind === "docker")
    return new DockerLauncher({ logger, ...(images && { images }), ...(gpuUsage && { gpuUsage }) });
  const {
    k8sNamespace: namespace,
    k8sPendingTimeoutSeconds: pendingTimeoutSeconds,
    k8sGpuNodeLabel: gpuNodeLabel,
  } = settings.env;
  if (!namespace) {
    throw new UsageError(
      "CRUCIBLE_K8S_NAMESPACE must name the namespace jobs run in (the stack's, e.g. crucible-dev)",
    );
  }
  const api = await connectKubernetes(logger, settings.env.k8sKubeconfig);
  logger.info({ server: api.server, namespace }, "launching jobs on Kubernetes");
  return new KubernetesLauncher({
    api,
    namespace,
    logger,
    ...(images && { images }),
    ...(pendingTimeoutSeconds && { pendingTimeoutSeconds }),
    ...(gpuNodeLabel && { gpuNodeLabel }),
  });
}
