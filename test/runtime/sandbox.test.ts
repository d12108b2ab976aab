import { describe, expect, it } from "vitest";
import type { TierName } from "../../runtime/src/catalog";
import { TIER_NAMES } from "../../runtime/src/catalog";
import type { SandboxInput } from "../../runtime/src/sandbox";
import { containerSpec, effectiveTier } from "../../runtime/src/sandbox";

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** What each tier's container must get, written out rather than derived from the catalog. */
const EXPECTED: Record<
  TierName,
  {
    memory: number;
    nanoCpus: number;
    pids: number;
    tmpfs: string;
    nofile: number;
    fsize: number;
    gpus: number;
  }
> = {
  "cpu-small": {
    memory: 512 * MiB,
    nanoCpus: 500_000_000,
    pids: 128,
    tmpfs: "64m",
    nofile: 1024,
    fsize: 256 * MiB,
    gpus: 0,
  },
  "cpu-large": {
    memory: 4 * GiB,
    nanoCpus: 2_000_000_000,
    pids: 512,
    tmpfs: "1024m",
    nofile: 4096,
    fsize: 4 * GiB,
    gpus: 0,
  },
  "gpu-small": {
    memory: 14 * GiB,
    nanoCpus: 4_000_000_000,
    pids: 1024,
    tmpfs: "4096m",
    nofile: 65536,
    fsize: 16 * GiB,
    gpus: 1,
  },
  "gpu-medium": {
    memory: 30 * GiB,
    nanoCpus: 8_000_000_000,
    pids: 2048,
    tmpfs: "8192m",
    nofile: 65536,
    fsize: 32 * GiB,
    gpus: 1,
  },
  "gpu-large": {
    memory: 30 * GiB,
    nanoCpus: 8_000_000_000,
    pids: 2048,
    tmpfs: "8192m",
    nofile: 65536,
    fsize: 64 * GiB,
    gpus: 1,
  },
};

function input(tier: TierName, extra: Partial<SandboxInput> = {}): SandboxInput {
  return {
    jobId: "job-1",
    tier: effectiveTier(tier).tier,
    image: "crucible/cpu:py3.13",
    env: { SEED: "7" },
    user: { uid: 1000, gid: 1000 },
    hostPaths: { codeZip: "/s/code.zip", output: "/s/output", workspace: "/w" },
    owner: { pid: 42, host: "node-a" },
    scratchDir: "/s",
    graceSeconds: 10,
    ...extra,
  };
}

describe("containerSpec", () => {
  it.each(TIER_NAMES)("builds the exact sandbox of %s", (tier) => {
    const e = EXPECTED[tier];
    const spec = containerSpec(input(tier));
    expect(spec).toEqual({
      Image: "crucible/cpu:py3.13",
      User: "1000:1000",
      Env: [
        "SEED=7",
        "CRUCIBLE_JOB_ID=job-1",
        `CRUCIBLE_TIER=${tier}`,
        "CRUCIBLE_CHECKPOINT_DIR=/workspace/checkpoints",
        "HOME=/tmp",
        ...(e.gpus ? ["CUDA_VISIBLE_DEVICES=0"] : []),
      ],
      Labels: {
        "crucible.managed": "true",
        "crucible.job-id": "job-1",
        "crucible.tier": tier,
        "crucible.owner-pid": "42",
        "crucible.owner-host": "node-a",
        "crucible.scratch": "/s",
      },
      AttachStdin: false,
      AttachStdout: true,
      AttachStderr: true,
      Tty: false,
      OpenStdin: false,
      NetworkDisabled: true,
      StopSignal: "SIGTERM",
      StopTimeout: 10,
      HostConfig: {
        NetworkMode: "none",
        ReadonlyRootfs: true,
        Tmpfs: { "/tmp": `rw,nosuid,nodev,size=${e.tmpfs},mode=1777` },
        Mounts: [
          { Type: "bind", Source: "/s/code.zip", Target: "/crucible/input/code.zip", ReadOnly: true },
          { Type: "bind", Source: "/s/output", Target: "/crucible/output", ReadOnly: false },
          { Type: "bind", Source: "/w", Target: "/workspace", ReadOnly: false },
        ],
        Memory: e.memory,
        MemorySwap: e.memory,
        NanoCpus: e.nanoCpus,
        PidsLimit: e.pids,
        CapDrop: ["ALL"],
        SecurityOpt: ["no-new-privileges:true"],
        Privileged: false,
        Ulimits: [
          { Name: "nofile", Soft: e.nofile, Hard: e.nofile },
          { Name: "fsize", Soft: e.fsize, Hard: e.fsize },
        ],
        Init: true,
        IpcMode: "private",
        LogConfig: { Type: "json-file", Config: { "max-size": "10m", "max-file": "2" } },
        AutoRemove: false,
        ...(e.gpus && { DeviceRequests: [{ Driver: "", Count: 1, Capabilities: [["gpu"]] }] }),
      },
    });
  });

  it("gives CPU tiers no GPU in any form", () => {
    for (const tier of ["cpu-small", "cpu-large"] as const) {
      const spec = containerSpec(input(tier));
      expect(spec.HostConfig).not.toHaveProperty("DeviceRequests");
      expect(spec.HostConfig?.Devices).toBeUndefined();
      expect(spec.Env?.some((v) => v.startsWith("CUDA_VISIBLE_DEVICES"))).toBe(false);
    }
  });

  it("mounts datasets read-only when given", () => {
    const spec = containerSpec(
      input("cpu-small", { hostPaths: { codeZip: "/c", output: "/o", workspace: "/w", datasets: "/d" } }),
    );
    expect(spec.HostConfig?.Mounts?.[3]).toEqual({
      Type: "bind",
      Source: "/d",
      Target: "/datasets",
      ReadOnly: true,
    });
  });
});

describe("effectiveTier", () => {
  it("applies overrides within the ceilings", () => {
    const { tier, capped } = effectiveTier("cpu-small", { maxRuntimeSeconds: 3, memoryMiB: 256 });
    expect(tier).toMatchObject({ maxRuntimeSeconds: 3, memoryMiB: 256, tmpfsMiB: 64 });
    expect(capped).toEqual([]);
  });

  it("caps overrides at the tier's ceilings, never trusting them", () => {
    const { tier, capped } = effectiveTier("cpu-small", {
      memoryMiB: 999_999,
      vcpus: 64,
      maxRuntimeSeconds: 86_400,
      pidsLimit: 100_000,
      openFiles: 1_000_000,
    });
    expect(tier).toMatchObject({
      memoryMiB: 2048,
      vcpus: 1,
      maxRuntimeSeconds: 300,
      pidsLimit: 128,
      openFiles: 1024,
    });
    expect(capped).toEqual([
      "cpu-small.memoryMiB: asked 999999, capped at 2048",
      "cpu-small.vcpus: asked 64, capped at 1",
      "cpu-small.maxRuntimeSeconds: asked 86400, capped at 300",
      "cpu-small.pidsLimit: asked 100000, capped at 128",
      "cpu-small.openFiles: asked 1000000, capped at 1024",
    ]);
  });

  it("keeps /tmp within the memory limit", () => {
    expect(effectiveTier("cpu-large", { memoryMiB: 512 }).tier.tmpfsMiB).toBe(512);
  });

  it("rejects overrides that are not positive numbers", () => {
    expect(() => effectiveTier("cpu-small", { pidsLimit: 0 })).toThrow(
      "tier override cpu-small.pidsLimit must be a positive number, got 0",
    );
  });
});
