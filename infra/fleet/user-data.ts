import { dirname } from "node:path";
import { type ImageFamily, type Tier, JOB_UID_LEASES, jobImageFamily } from "@crucible/runtime/catalog";

/**
 * A node's boot script (the launch template's user data), generated as text: the GPU check, the agent's
 * directories and loop devices, registry logins, image pulls and the agent's `docker run`. Its output is
 * part of every launch template, so any change to the text replaces them all.
 */

/**
 * The job images a tier's agent can choose (runtime/src/catalog/image-matrix.ts `jobImageFamily`), of those the
 * stack has. The launcher runs only images already on the engine, so the node pulls them at boot.
 */
export function tierJobImages(tier: Pick<Tier, "gpu">, images: Readonly<Record<string, string>>): string[] {
  const families = new Set<ImageFamily>([
    jobImageFamily(tier, { torch: false }),
    jobImageFamily(tier, { torch: true }),
  ]);
  return [...families].flatMap((f) => (images[f] === undefined ? [] : [images[f]]));
}

/** The node's directory for the agent's scratch (its TMPDIR is `tmp` under it): bind-mounted at the same path. */
export const AGENT_SCRATCH_DIR = "/var/lib/crucible";
/** The directory of the runtime's per-job uid leases (runtime/src/launch/sandbox.ts `JOB_UID_LEASES`), on the host's tmpfs. */
export const JOB_UID_LEASE_DIR = dirname(JOB_UID_LEASES);
/**
 * Loop device nodes made on the host before the agent starts: one per job workspace volume at once, with
 * room to spare (more than any tier runs jobs on one node).
 */
export const LOOP_DEVICES = 64;

/** `<account>.dkr.ecr.<region>.amazonaws.com/...` → the registry's host and region. */
function ecrRegistry(image: string, fallbackRegion: string): { host: string; region: string } {
  const host = image.split("/")[0]!;
  const region = /^\d{12}\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$/.exec(host)?.[1];
  return { host, region: region ?? fallbackRegion };
}

/**
 * The node's boot script: the GPU check, the agent's directories and loop devices, an ECR login per
 * registry, the tier's job images and the agent (root, privileged), all by digest, the agent logging to its
 * CloudWatch group.
 */
export function userData(input: {
  readonly tier: string;
  readonly gpu: boolean;
  readonly agentImage: string;
  /** Job images to pull before the agent starts, by digest. */
  readonly jobImages: readonly string[];
  /**
   * The environment builder's image, by digest: pulled with the job images, never run (the agent copies
   * pip out of it into a build container of the job's own image). Absent where the stack has none.
   */
  readonly builderImage?: string;
  readonly regionName: string;
  /** The CloudWatch log group the agent's output goes to. */
  readonly logGroup: string;
  readonly groupName: string;
  readonly env: Readonly<Record<string, string>>;
}): string {
  const images = [
    input.agentImage,
    ...input.jobImages,
    ...(input.builderImage === undefined ? [] : [input.builderImage]),
  ];
  // An ECR token is valid only in the registry's own region: a promoted stack pulls from its upstream's.
  const registries = new Map(images.map((i) => ecrRegistry(i, input.regionName)).map((r) => [r.host, r]));
  const envFlags = Object.entries(input.env)
    .map(([k, v]) => `  -e ${k}=${shellQuote(v)} \\`)
    .join("\n");
  return [
    "#!/bin/bash",
    "# Crucible node: starts the agent for this tier; jobs run in sandboxes it creates on this Docker engine.",
    "set -euo pipefail",
    `exec > >(logger -t crucible-node) 2>&1`,
    ...(input.gpu
      ? [
          "# A GPU node that cannot see its GPU must not take GPU jobs: the launch hook then abandons it.",
          'if ! nvidia-smi >/dev/null 2>&1; then echo "nvidia-smi failed: no usable GPU; not starting the agent"; exit 1; fi',
        ]
      : []),
    // Root's alone: job uids never reach their files but through the bind mounts of their own container.
    `install -d -m 0700 ${AGENT_SCRATCH_DIR} ${AGENT_SCRATCH_DIR}/tmp ${JOB_UID_LEASE_DIR}`,
    "# A privileged container sees the host's device nodes as they are when it starts, and a loop device",
    "# the kernel adds later has no node in it: make the nodes each job's workspace volume may take first.",
    `modprobe loop && for i in $(seq 0 ${LOOP_DEVICES - 1}); do [ -b /dev/loop$i ] || mknod -m 0660 /dev/loop$i b 7 $i; done`,
    ...[...registries.values()].map(
      (r) =>
        `aws ecr get-login-password --region ${r.region} | docker login --username AWS --password-stdin ${r.host}`,
    ),
    "# The launcher never pulls: a job's image must be on the engine before the agent takes a job.",
    ...[...new Set(images)].map((i) => `docker pull ${i}`),
    // The path in this user-data comment is quota-volume's old place (it is now runtime/src/launch/); it stays
    // as written because the text is part of every launch template, and changing it would replace them all.
    "# The agent runs as root, privileged: it gives each job a uid of its own (leases in /run/crucible) and",
    "# loop-mounts each job's workspace volume (runtime/src/quota-volume.ts). It already holds the Docker",
    "# socket, which is root on this host, so neither widens its reach; --privileged over SYS_ADMIN and a",
    "# device list because loop devices come and go. Its scratch root (TMPDIR: the agent's, the launcher's",
    "# and job-spec's tmpdir()) is the same path here and inside, since job containers bind-mount paths",
    "# under it; rshared carries the agent's workspace mounts out to the host, where Docker makes jobs' mounts.",
    `docker run -d --name crucible-agent --restart=always --network host --user 0:0 --privileged \\`,
    `  --log-driver awslogs --log-opt awslogs-group=${input.logGroup} --log-opt awslogs-region=${input.regionName} --log-opt awslogs-create-group=false \\`,
    "  -v /var/run/docker.sock:/var/run/docker.sock \\",
    `  -v ${AGENT_SCRATCH_DIR}:${AGENT_SCRATCH_DIR}:rshared -v ${JOB_UID_LEASE_DIR}:${JOB_UID_LEASE_DIR} \\`,
    `  -e TMPDIR=${AGENT_SCRATCH_DIR}/tmp \\`,
    // nvidia-smi for the agent's health check: the utility capability only, the GPUs stay the jobs'.
    ...(input.gpu ? ["  --gpus all -e NVIDIA_DRIVER_CAPABILITIES=utility \\"] : []),
    envFlags,
    `  ${input.agentImage} agent --tier ${input.tier}`,
    "",
  ].join("\n");
}

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'"'"'`)}'`;
}
