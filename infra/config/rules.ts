import type { z } from "zod";
import {
  GPU_FAMILIES,
  TIER_NAMES,
  TIERS,
  INSTANCE_TYPES,
  isGpuInstanceType,
  unfitReason,
  type TierName,
  KUBERNETES_LABEL_VALUE,
  KUBERNETES_LABEL_VALUE_RULE,
} from "@crucible/runtime/catalog";
import { PUBLIC_SUBNET_PREFIX, publicSubnetRoom, publicSubnetsFor } from "../cidr";
import { nodeDiskGiB, type NodeDisk } from "./derived";
import { ENVIRONMENTS, oidcIssuer, sectionsSchema, type CrucibleSettings, type TierConfig } from "./schema";

/**
 * The rules that span settings (a tier's sizes against each other and the environment's cap, budgets
 * and access against the enabled tiers, the Kubernetes target against the rest), each reported at the
 * key to change. Each section's own checks are in schema.ts.
 */

/** The schema a stack's `crucible:*` settings are parsed with: every section, then the rules between them. */
export const crucibleConfigSchema = sectionsSchema.superRefine(checkCrossFieldRules);

type Ctx = z.RefinementCtx;

function checkCrossFieldRules(c: CrucibleSettings, ctx: Ctx): void {
  for (const name of TIER_NAMES) {
    const tier = c.fleet.tiers[name];
    if (tier) checkTier(name, tier, c.fleet.maxInstancesPerTier, ctx);
  }
  if (c.fleet.queue.visibilityTimeoutSeconds <= 2 * c.fleet.heartbeatSeconds) {
    ctx.addIssue({
      code: "custom",
      path: ["fleet", "queue", "visibilityTimeoutSeconds"],
      message: `must be more than twice fleet.heartbeatSeconds (${c.fleet.heartbeatSeconds}) so one missed heartbeat does not release a running job`,
      input: c.fleet.queue.visibilityTimeoutSeconds,
    });
  }
  const { runningStartSeconds, hibernatedStartSeconds, warmStartSeconds } = c.fleet.startup;
  if (hibernatedStartSeconds > warmStartSeconds) {
    ctx.addIssue({
      code: "custom",
      path: ["fleet", "startup", "hibernatedStartSeconds"],
      message: `must be at most fleet.startup.warmStartSeconds (${warmStartSeconds}): a hibernated instance resumes where a stopped one boots`,
      input: hibernatedStartSeconds,
    });
  }
  if (runningStartSeconds > hibernatedStartSeconds) {
    ctx.addIssue({
      code: "custom",
      path: ["fleet", "startup", "runningStartSeconds"],
      message: `must be at most fleet.startup.hibernatedStartSeconds (${hibernatedStartSeconds}): a running instance is already up`,
      input: runningStartSeconds,
    });
  }
  if (c.fleet.startup.warmStartSeconds > c.fleet.startup.coldBootSeconds) {
    ctx.addIssue({
      code: "custom",
      path: ["fleet", "startup", "warmStartSeconds"],
      message: `must be at most fleet.startup.coldBootSeconds (${c.fleet.startup.coldBootSeconds}): a warm instance has already booted`,
      input: c.fleet.startup.warmStartSeconds,
    });
  }
  for (const [name, limit] of Object.entries(c.budgets.tiers)) {
    if (limit !== undefined && !c.fleet.tiers[name as TierName]?.enabled) {
      ctx.addIssue({
        code: "custom",
        path: ["budgets", "tiers", name],
        message: `is a budget for tier ${name}, which is not enabled in crucible:fleet.tiers`,
        input: limit,
      });
    }
  }
  const { checkpointRetentionDays, retentionDays } = c.workspaces;
  if (checkpointRetentionDays !== undefined && checkpointRetentionDays > retentionDays) {
    ctx.addIssue({
      code: "custom",
      path: ["workspaces", "checkpointRetentionDays"],
      message: `must be at most workspaces.retentionDays (${retentionDays})`,
      input: checkpointRetentionDays,
    });
  }
  c.ci?.github.environments?.forEach((name, i) => {
    if ((ENVIRONMENTS as readonly string[]).includes(name) && name !== c.environment) {
      ctx.addIssue({
        code: "custom",
        path: ["ci", "github", "environments", i],
        message: `must not be another stack's environment (this stack is ${c.environment}): its jobs would deploy here`,
        input: name,
      });
    }
  });
  checkNetwork(c.network, ctx);
  checkAccess(c, ctx);
  checkEnvironments(c, ctx);
  if (c.kubernetes.enabled) checkKubernetes(c, ctx);
  const anyEnabled = TIER_NAMES.some((t) => c.fleet.tiers[t]?.enabled);
  if (anyEnabled && !c.registry.families.includes("agent") && !c.registry.promoteFrom) {
    ctx.addIssue({
      code: "custom",
      path: ["registry", "families"],
      message: 'must include "agent": every node runs the agent image',
      input: c.registry.families,
    });
  }
}

/**
 * A package is allowed or denied, never both; and nodes build environments with the builder image, so a
 * stack with a package index runs it.
 */
function checkEnvironments(c: CrucibleSettings, ctx: Ctx): void {
  const { allow, deny, index } = c.environments;
  deny.forEach((name, i) => {
    if (allow?.includes(name)) {
      ctx.addIssue({
        code: "custom",
        path: ["environments", "deny", i],
        message: `must not name a package crucible:environments.allow also names (${name} is at allow[${allow.indexOf(name)}]); remove it from one of the two`,
        input: name,
      });
    }
  });
  if (index !== "none" && !c.registry.families.includes("builder")) {
    ctx.addIssue({
      code: "custom",
      path: ["registry", "families"],
      message: `must include "builder" while crucible:environments.index is not "none": nodes build job environments with it (or set crucible:environments.index to "none")`,
      input: c.registry.families,
    });
  }
}

/** A project's tiers must have queues: only enabled tiers do. */
function checkAccess(c: CrucibleSettings, ctx: Ctx): void {
  const enabled = TIER_NAMES.filter((t) => c.fleet.tiers[t]?.enabled);
  for (const [project, entry] of Object.entries(c.access)) {
    entry.tiers?.forEach((tier, i) => {
      if (!enabled.includes(tier)) {
        ctx.addIssue({
          code: "custom",
          path: ["access", project, "tiers", i],
          message: `must be a tier enabled in crucible:fleet.tiers (${enabled.join(", ")})`,
          input: tier,
        });
      }
    });
  }
}

function checkNetwork(network: CrucibleSettings["network"], ctx: Ctx): void {
  if (network.existing) return;
  const prefix = Number(network.cidr.split("/")[1]);
  const needed = publicSubnetsFor(network.nat, network.azCount);
  if (needed > publicSubnetRoom(prefix)) {
    ctx.addIssue({
      code: "custom",
      path: ["network", "cidr"],
      message: `must leave room for the ${needed} public /${PUBLIC_SUBNET_PREFIX} NAT subnets of nat ${network.nat} over ${network.azCount} zones (a /${prefix} holds ${publicSubnetRoom(prefix)}); use a larger range such as /22`,
      input: network.cidr,
    });
  }
}

function checkKubernetes(c: CrucibleSettings, ctx: Ctx): void {
  const k = c.kubernetes;
  if (k.kubeconfig === undefined) {
    ctx.addIssue({
      code: "custom",
      path: ["kubernetes", "kubeconfig"],
      message:
        'is required when crucible:kubernetes.enabled is true; set it as a secret: pulumi config set --secret --path crucible:kubernetes.kubeconfig "$(cat kubeconfig)"',
      input: undefined,
    });
  }
  if (!TIER_NAMES.some((t) => c.fleet.tiers[t]?.enabled)) {
    ctx.addIssue({
      code: "custom",
      path: ["kubernetes", "enabled"],
      message: "needs at least one enabled tier in crucible:fleet.tiers: agents and the quota are per tier",
      input: k.enabled,
    });
  }
  // Both label every object the target declares; the API server rejects a bad label value at apply time.
  for (const key of ["owner", "costCenter"] as const) {
    if (!KUBERNETES_LABEL_VALUE.test(c[key])) {
      ctx.addIssue({
        code: "custom",
        path: [key],
        message: `must be ${KUBERNETES_LABEL_VALUE_RULE} while crucible:kubernetes.enabled is true: it labels every Kubernetes object`,
        input: c[key],
      });
    }
  }
  const issuer = k.oidc && oidcIssuer.exec(k.oidc.issuerUrl)?.[1];
  if (k.oidc && issuer && !k.oidc.providerArn.endsWith(`:oidc-provider/${issuer}`)) {
    ctx.addIssue({
      code: "custom",
      path: ["kubernetes", "oidc", "providerArn"],
      message: `must be the provider of kubernetes.oidc.issuerUrl (its ARN ends in :oidc-provider/${issuer})`,
      input: k.oidc.providerArn,
    });
  }
}

function checkTier(name: TierName, tier: TierConfig, cap: number, ctx: Ctx): void {
  const at = (...rest: (string | number)[]) => ["fleet", "tiers", name, ...rest];
  const catalog = TIERS[name];
  tier.instanceTypes.forEach((type, i) => {
    if (catalog.gpu && !isGpuInstanceType(type)) {
      ctx.addIssue({
        code: "custom",
        path: at("instanceTypes", i),
        message: `must be a GPU instance type (${GPU_FAMILIES.join(", ")})`,
        input: type,
      });
    } else if (!catalog.allowedInstanceTypes.includes(type)) {
      ctx.addIssue({
        code: "custom",
        path: at("instanceTypes", i),
        message: `must be one of the tier's allowed instance types (${catalog.allowedInstanceTypes.join(", ")})`,
        input: type,
      });
    } else {
      const why = unfitReason({ ...catalog, ...tier.limits }, type);
      if (why)
        ctx.addIssue({
          code: "custom",
          path: at("instanceTypes", i),
          message: `cannot run the tier: ${why}`,
          input: type,
        });
    }
  });
  if (tier.minSize > tier.maxSize) {
    ctx.addIssue({
      code: "custom",
      path: at("minSize"),
      message: `must be at most maxSize (${tier.maxSize})`,
      input: tier.minSize,
    });
  }
  if (tier.desired < tier.minSize || tier.desired > tier.maxSize) {
    ctx.addIssue({
      code: "custom",
      path: at("desired"),
      message: `must lie between minSize (${tier.minSize}) and maxSize (${tier.maxSize})`,
      input: tier.desired,
    });
  }
  if (tier.maxSize > cap) {
    ctx.addIssue({
      code: "custom",
      path: at("maxSize"),
      message: `must be at most the environment cap fleet.maxInstancesPerTier (${cap})`,
      input: tier.maxSize,
    });
  }
  if (tier.warmPool && tier.spot.enabled) {
    ctx.addIssue({
      code: "custom",
      path: at("warmPool"),
      message:
        "cannot be used on a spot group (warm pools only hold on-demand instances); set spot.enabled to false or use prewarmSchedule",
      input: tier.warmPool,
    });
  }
  if (
    tier.warmPool &&
    tier.warmPool.maxPreparedCapacity > 0 &&
    tier.warmPool.maxPreparedCapacity < tier.warmPool.minSize
  ) {
    ctx.addIssue({
      code: "custom",
      path: at("warmPool", "maxPreparedCapacity"),
      message: `must be at least warmPool.minSize (${tier.warmPool.minSize})`,
      input: tier.warmPool.maxPreparedCapacity,
    });
  }
  checkRootVolume(name, tier, at, ctx);
  tier.prewarmSchedule.forEach((s, i) => {
    if (s.minSize > tier.maxSize) {
      ctx.addIssue({
        code: "custom",
        path: at("prewarmSchedule", i, "minSize"),
        message: `must be at most maxSize (${tier.maxSize})`,
        input: s.minSize,
      });
    }
  });
  const limits = tier.limits ?? {};
  for (const key of ["memoryMiB", "vcpus", "maxRuntimeSeconds"] as const) {
    const value = limits[key];
    if (value !== undefined && value > catalog.ceilings[key]) {
      ctx.addIssue({
        code: "custom",
        path: at("limits", key),
        message: `must be at most the ${name} ceiling of ${catalog.ceilings[key]}`,
        input: value,
      });
    }
  }
}

/** The parts of a node's root volume, as a message lists them. */
const diskParts = (d: NodeDisk) =>
  `${d.system} GiB for the OS and images, ${d.workspaces} GiB of job workspaces, a ${d.datasets} GiB dataset cache and a ${d.environments} GiB environment cache`;

/**
 * A node's root volume holds the OS and images, a workspace volume per job it runs at once, the dataset
 * cache and the environment cache ({@link nodeDiskGiB}); a hibernated one also the instance's RAM.
 */
function checkRootVolume(
  name: TierName,
  tier: TierConfig,
  at: (...rest: (string | number)[]) => (string | number)[],
  ctx: Ctx,
) {
  const disk = nodeDiskGiB(name, tier);
  if (tier.warmPool?.state === "Hibernated") return checkHibernation(tier, disk, at, ctx);
  if (tier.rootVolumeGiB < disk.total) {
    ctx.addIssue({
      code: "custom",
      path: at("rootVolumeGiB"),
      message: `must be at least ${disk.total} for ${name} on ${tier.instanceTypes.join(", ")}: ${diskParts(disk)}`,
      input: tier.rootVolumeGiB,
    });
  }
}

/**
 * A `Hibernated` warm pool needs instance types EC2 hibernates, and a root volume that holds their RAM
 * besides everything else a node keeps there. The volume must also be encrypted: every node's root volume is (infra/fleet).
 */
function checkHibernation(
  tier: TierConfig,
  disk: NodeDisk,
  at: (...rest: (string | number)[]) => (string | number)[],
  ctx: Ctx,
) {
  tier.instanceTypes.forEach((type, i) => {
    if (!INSTANCE_TYPES.get(type)?.hibernation) {
      const hibernating = [...INSTANCE_TYPES.values()].filter((t) => t.hibernation).map((t) => t.name);
      ctx.addIssue({
        code: "custom",
        path: at("instanceTypes", i),
        message: `cannot be hibernated, which warmPool.state Hibernated needs; use an instance type that hibernates (${hibernating.join(", ")}) or warmPool.state Stopped or Running`,
        input: type,
      });
    }
  });
  const ram = Math.max(...tier.instanceTypes.map((t) => INSTANCE_TYPES.get(t)?.memoryGiB ?? 0));
  const least = ram + disk.total;
  if (tier.rootVolumeGiB < least) {
    ctx.addIssue({
      code: "custom",
      path: at("rootVolumeGiB"),
      message: `must be at least ${least} with warmPool.state Hibernated: the instance's ${ram} GiB of RAM is saved to the root volume, beside ${diskParts(disk)}`,
      input: tier.rootVolumeGiB,
    });
  }
}
