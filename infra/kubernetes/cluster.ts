import * as k8s from "@pulumi/kubernetes";
import type * as pulumi from "@pulumi/pulumi";
import { KUBERNETES, type NodeLabel } from "@crucible/runtime/catalog";

/**
 * Values of the jobs' priority classes. Low on purpose: they order Crucible's jobs among themselves and
 * sit just above the cluster's default 0, far below the system classes (2 000 000 000 and up).
 */
export const PRIORITY_VALUES = { interactive: 1000, batch: 100 } as const;

/** Where the kubelet looks for device plugins' sockets; the plugin must write its own there. */
export const DEVICE_PLUGIN_DIR = "/var/lib/kubelet/device-plugins";
/**
 * The device plugin runs in kube-system: it needs a hostPath, which `restricted` (and even `baseline`)
 * forbids, so it cannot share the jobs' namespace; kube-system is where node agents live and where every
 * cluster admits `system-node-critical` (GKE, for one, limits the critical classes to it).
 */
export const DEVICE_PLUGIN_NAMESPACE = "kube-system";
export const DEVICE_PLUGIN_NAME = "crucible-nvidia-device-plugin";

/**
 * Interactive jobs may preempt batch ones; batch jobs never preempt anything: a batch job that waits
 * costs nothing, while preempting one loses its work since the last checkpoint. Neither is the cluster's
 * default, so other workloads keep theirs.
 */
export function priorityClasses(
  name: string,
  labels: Readonly<Record<string, string>>,
  opts: pulumi.CustomResourceOptions,
): void {
  const { interactive, batch } = KUBERNETES.priorityClasses;
  new k8s.scheduling.v1.PriorityClass(
    `${name}-interactive`,
    {
      metadata: { name: interactive, labels },
      value: PRIORITY_VALUES.interactive,
      globalDefault: false,
      preemptionPolicy: "PreemptLowerPriority",
      description:
        "Crucible high-priority (interactive) jobs: may preempt batch jobs when the cluster is full.",
    },
    opts,
  );
  new k8s.scheduling.v1.PriorityClass(
    `${name}-batch`,
    {
      metadata: { name: batch, labels },
      value: PRIORITY_VALUES.batch,
      globalDefault: false,
      preemptionPolicy: "Never",
      description: "Crucible normal and low-priority (batch) jobs: wait for room, never preempt.",
    },
    opts,
  );
}

/**
 * The NVIDIA device plugin, which advertises each GPU node's `nvidia.com/gpu`, on the nodes that carry
 * `gpuNodeLabel` (tolerating the GPU taint that keeps other pods off them).
 */
export function devicePlugin(
  name: string,
  args: {
    readonly image: string;
    readonly gpuNodeLabel: NodeLabel;
    readonly labels: Readonly<Record<string, string>>;
  },
  opts: pulumi.CustomResourceOptions,
): k8s.apps.v1.DaemonSet {
  const selector = { "app.kubernetes.io/name": DEVICE_PLUGIN_NAME };
  return new k8s.apps.v1.DaemonSet(
    name,
    {
      metadata: { name: DEVICE_PLUGIN_NAME, namespace: DEVICE_PLUGIN_NAMESPACE, labels: args.labels },
      spec: {
        selector: { matchLabels: selector },
        updateStrategy: { type: "RollingUpdate" },
        template: {
          metadata: { labels: { ...args.labels, ...selector } },
          spec: {
            priorityClassName: "system-node-critical",
            nodeSelector: { [args.gpuNodeLabel.key]: args.gpuNodeLabel.value },
            tolerations: [{ key: KUBERNETES.gpuResource, operator: "Exists", effect: "NoSchedule" }],
            automountServiceAccountToken: false,
            securityContext: { seccompProfile: { type: "RuntimeDefault" } },
            containers: [
              {
                name: "nvidia-device-plugin",
                image: args.image,
                // Root without capabilities: the kubelet's socket directory is root's. The root file
                // system stays writable: the NVIDIA container toolkit updates the container's linker
                // cache when it injects the driver's libraries.
                securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } },
                resources: { requests: { cpu: "10m", memory: "32Mi" }, limits: { memory: "128Mi" } },
                volumeMounts: [{ name: "device-plugins", mountPath: DEVICE_PLUGIN_DIR }],
              },
            ],
            volumes: [{ name: "device-plugins", hostPath: { path: DEVICE_PLUGIN_DIR, type: "Directory" } }],
          },
        },
      },
    },
    opts,
  );
}
