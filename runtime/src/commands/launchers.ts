import type { Launcher } from "../contract";
import { DockerLauncher } from "../docker-launcher";
import type { ImageFamily } from "../image-matrix";
import { connectKubernetes } from "../kubernetes-api";
import { KubernetesLauncher } from "../kubernetes-launcher";
import type { Logger } from "../logger";
import { InvalidArgumentError } from "commander";
import { UsageError } from "./shared";
import type { NodeLabel } from "../kubernetes-names";

export const LAUNCHER_KINDS = ["docker", "kubernetes"] as const;
export type LauncherKind = (typeof LAUNCHER_KINDS)[number];

export interface LauncherSettings {
  readonly logger: Logger;
  readonly images?: Partial<Record<ImageFamily, string>>;
  /** The environment to read (CRUCIBLE_K8S_*); the process's by default. */
  readonly env?: NodeJS.ProcessEnv;
}

/** A commander parser for `--launcher`: refused at parse time, before anything is set up. */
export function parseLauncherKind(value: string): LauncherKind {
  if (!(LAUNCHER_KINDS as readonly string[]).includes(value)) {
    throw new InvalidArgumentError(`must be one of ${LAUNCHER_KINDS.join(", ")}, got "${value}"`);
  }
  return value as LauncherKind;
}

/** The launcher kind from a flag, else $CRUCIBLE_LAUNCHER, else docker; anything else is a usage error. */
export function launcherKind(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): LauncherKind {
  const kind = flag ?? (env.CRUCIBLE_LAUNCHER || "docker");
  if (!(LAUNCHER_KINDS as readonly string[]).includes(kind)) {
    throw new UsageError(`--launcher must be one of ${LAUNCHER_KINDS.join(", ")}, got "${kind}"`);
  }
  return kind as LauncherKind;
}

/**
 * The launcher of a kind. The Kubernetes client (ESM, heavy) is imported by connectKubernetes only when
 * Kubernetes is chosen, so no other command pays for loading it. Kubernetes reads CRUCIBLE_K8S_NAMESPACE (required),
 * CRUCIBLE_K8S_KUBECONFIG (else in-cluster or ~/.kube/config), CRUCIBLE_K8S_PENDING_TIMEOUT_SECONDS and
 * CRUCIBLE_K8S_GPU_NODE_LABEL (`key=value`, the label GPU pods select nodes by).
 */
export async function launcherFor(kind: LauncherKind, settings: LauncherSettings): Promise<Launcher> {
  const { logger, images } = settings;
  if (kind === "docker") return new DockerLauncher({ logger, ...(images && { images }) });
  const env = settings.env ?? process.env;
  const namespace = env.CRUCIBLE_K8S_NAMESPACE;
  if (!namespace) {
    throw new UsageError(
      "CRUCIBLE_K8S_NAMESPACE must name the namespace jobs run in (the stack's, e.g. crucible-dev)",
    );
  }
  const pending = env.CRUCIBLE_K8S_PENDING_TIMEOUT_SECONDS;
  const pendingTimeoutSeconds = pending === undefined || pending === "" ? undefined : Number(pending);
  if (
    pendingTimeoutSeconds !== undefined &&
    !(Number.isSafeInteger(pendingTimeoutSeconds) && pendingTimeoutSeconds > 0)
  ) {
    throw new UsageError(
      `CRUCIBLE_K8S_PENDING_TIMEOUT_SECONDS must be a whole number of seconds > 0, got "${pending}"`,
    );
  }
  const gpuNodeLabel = parseNodeLabel(env.CRUCIBLE_K8S_GPU_NODE_LABEL);
  const api = await connectKubernetes(logger, env.CRUCIBLE_K8S_KUBECONFIG || undefined);
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

/** `key=value` from CRUCIBLE_K8S_GPU_NODE_LABEL; unset or empty leaves the launcher's default. */
function parseNodeLabel(text: string | undefined): NodeLabel | undefined {
  if (!text) return undefined;
  const at = text.indexOf("=");
  if (at <= 0 || at === text.length - 1) {
    throw new UsageError(
      `CRUCIBLE_K8S_GPU_NODE_LABEL must be a node label as key=value, such as nvidia.com/gpu.present=true, got "${text}"`,
    );
  }
  return { key: text.slice(0, at), value: text.slice(at + 1) };
}
