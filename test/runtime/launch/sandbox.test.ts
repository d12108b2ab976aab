import Dockerode from "dockerode";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { TierName } from "../../../runtime/src/catalog";
import { TIER_NAMES } from "../../../runtime/src/catalog";
import { imageRef } from "../../../runtime/src/catalog/image-matrix";
import type { SandboxFacts, SandboxInput } from "../../../runtime/src/launch/sandbox";
import {
  containerSpec,
  effectiveTier,
  JOB_UID_POOL,
  leaseJobUser,
  processStart,
  sandboxFacts,
} from "../../../runtime/src/launch/sandbox";

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
    user: { uid: 600_123, gid: 600_123 },
    separateSupervisor: true,
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
      User: "0:0",
      Cmd: ["--job-user", "600123:600123"],
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
        "crucible.job-uid": "600123",
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
        CapAdd: ["KILL", "SETGID", "SETUID"],
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

  it("runs the whole container as the caller when the supervisor shares the job's uid", () => {
    const spec = containerSpec(
      input("cpu-small", { user: { uid: 1234, gid: 99 }, separateSupervisor: false }),
    );
    expect(spec.User).toBe("1234:99");
    expect(spec).not.toHaveProperty("Cmd");
    expect(spec.HostConfig).not.toHaveProperty("CapAdd");
    expect(spec.HostConfig?.CapDrop).toEqual(["ALL"]);
    expect(spec.Labels?.["crucible.job-uid"]).toBe("1234");
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

  it("mounts each named dataset read-only at /datasets/<name>", () => {
    const spec = containerSpec(
      input("cpu-small", {
        hostPaths: {
          codeZip: "/c",
          output: "/o",
          workspace: "/w",
          namedDatasets: { shakespeare: "/cache/sha256-aa", "iris.v2": "/cache/sha256-bb" },
        },
      }),
    );
    expect(spec.HostConfig?.Mounts?.slice(3)).toEqual([
      { Type: "bind", Source: "/cache/sha256-aa", Target: "/datasets/shakespeare", ReadOnly: true },
      { Type: "bind", Source: "/cache/sha256-bb", Target: "/datasets/iris.v2", ReadOnly: true },
    ]);
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

  it("declares a workspace quota per tier, and an override can only lower it", () => {
    expect(TIER_NAMES.map((t) => effectiveTier(t).tier.workspaceMiB)).toEqual([
      1024,
      10 * 1024,
      50 * 1024,
      80 * 1024,
      100 * 1024,
    ]);
    expect(effectiveTier("cpu-small", { workspaceMiB: 64 }).tier.workspaceMiB).toBe(64);
    const { tier, capped } = effectiveTier("cpu-small", { workspaceMiB: 1_000_000 });
    expect(tier.workspaceMiB).toBe(1024);
    expect(capped).toEqual(["cpu-small.workspaceMiB: asked 1000000, capped at 1024"]);
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

describe("leaseJobUser", () => {
  const self = { pid: process.pid, host: "here", start: processStart(process.pid)! };

  it("gives each running job its own uid and gid from the pool, never a host user's", async () => {
    const dir = await mkdtemp(join(tmpdir(), "crucible-uids-"));
    try {
      const leases = await Promise.all(Array.from({ length: 20 }, () => leaseJobUser(self, { dir })));
      const uids = leases.map((l) => l.user.uid);
      expect(new Set(uids).size).toBe(20);
      for (const { user } of leases) {
        expect(user.gid).toBe(user.uid);
        expect(user.uid).toBeGreaterThanOrEqual(JOB_UID_POOL.first);
        expect(user.uid).toBeLessThan(JOB_UID_POOL.first + JOB_UID_POOL.size);
      }
      expect(JOB_UID_POOL.first).toBeGreaterThan(165_535);
      await leases[0]!.release();
      await leases[0]!.release();
      expect((await readdir(dir)).length).toBe(19);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("takes over the leases of a holder that is gone, and only those", async () => {
    const dir = await mkdtemp(join(tmpdir(), "crucible-uids-"));
    try {
      const dead = spawnSync("true").pid;
      const pool = { first: JOB_UID_POOL.first, size: 16 };
      const everyUid = Array.from({ length: pool.size }, (_, i) => pool.first + i);
      // Every uid held: all by a live holder (this process) but one, held by a process that has exited.
      await Promise.all(
        everyUid.map((uid, i) =>
          writeFile(join(dir, String(uid)), i === 7 ? `${dead} 1\n` : `${self.pid} ${self.start}\n`),
        ),
      );
      const lease = await leaseJobUser(self, { dir, pool });
      expect(lease.user.uid).toBe(pool.first + 7);
      await expect(leaseJobUser(self, { dir, pool })).rejects.toThrow(/all 16 job uids are leased/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe("sandboxFacts", () => {
  /** What every tier's sandbox forbids, whatever its size. */
  const LOCKED_DOWN = {
    networkMode: "none",
    readonlyRootfs: true,
    privileged: false,
    capDrop: ["ALL"],
    capAdd: ["KILL", "SETGID", "SETUID"],
    perJobUser: true,
    noNewPrivileges: true,
    dockerSocketMounted: false,
  } as const;
  /** What the fleet publishes for each tier, written out: the policy pack checks these values. */
  const FACTS: Record<"cpu-small" | "gpu-small", SandboxFacts> = {
    "cpu-small": {
      ...LOCKED_DOWN,
      gpuCount: 0,
      memoryMiB: 512,
      pidsLimit: 128,
    },
    "gpu-small": {
      ...LOCKED_DOWN,
      gpuCount: 1,
      memoryMiB: 14 * 1024,
      pidsLimit: 1024,
    },
  };

  it.each(Object.keys(FACTS) as (keyof typeof FACTS)[])("states the sandbox of %s", (tier) => {
    expect(sandboxFacts(tier)).toEqual(FACTS[tier]);
  });

  it.each(TIER_NAMES)("agrees with the container spec the launcher builds for %s", (tier) => {
    const host = containerSpec(
      input(tier, { hostPaths: { codeZip: "/c", output: "/o", workspace: "/w", datasets: "/d" } }),
    ).HostConfig!;
    expect(sandboxFacts(tier)).toEqual({
      networkMode: host.NetworkMode,
      readonlyRootfs: host.ReadonlyRootfs,
      privileged: host.Privileged,
      // dockerode types these two as any; containerSpec sets both as string lists.
      capDrop: host.CapDrop as string[],
      capAdd: host.CapAdd as string[],
      perJobUser: true,
      noNewPrivileges: (host.SecurityOpt as string[]).includes("no-new-privileges:true"),
      dockerSocketMounted: (host.Mounts ?? []).some((m) => m.Source?.includes("docker.sock")),
      gpuCount: (host.DeviceRequests ?? []).reduce((n, r) => n + (r.Count ?? 0), 0),
      memoryMiB: host.Memory! / MiB,
      pidsLimit: host.PidsLimit,
    });
  });

  // The engine itself is the judge: create (never start) each tier's container and read back what it holds.
  it.each(["cpu-small", "gpu-small"] as const)(
    "matches what the Docker engine creates for %s",
    async (tier) => {
      const docker = new Dockerode();
      const dir = await mkdtemp(join(tmpdir(), "crucible-facts-"));
      const hostPaths = {
        codeZip: join(dir, "code.zip"),
        output: join(dir, "output"),
        workspace: join(dir, "workspace"),
        datasets: join(dir, "datasets"),
      };
      await writeFile(hostPaths.codeZip, "");
      for (const d of [hostPaths.output, hostPaths.workspace, hostPaths.datasets]) await mkdir(d);
      // The CPU quota is no sandbox fact, and the test engine may have fewer CPUs than the tier asks for.
      const limits = effectiveTier(tier).tier;
      const container = await docker.createContainer(
        containerSpec(
          input(tier, {
            jobId: `facts-${process.pid}-${tier}`,
            tier: { ...limits, vcpus: 1 },
            image: imageRef("cpu"),
            hostPaths,
            scratchDir: dir,
          }),
        ),
      );
      try {
        const { HostConfig: host, Config: config } = await container.inspect();
        const mounts = [...(host.Mounts ?? []).map((m) => m.Source ?? ""), ...(host.Binds ?? [])];
        expect({
          networkMode: host.NetworkMode,
          readonlyRootfs: host.ReadonlyRootfs,
          privileged: host.Privileged,
          capDrop: host.CapDrop as string[],
          capAdd: host.CapAdd as string[],
          perJobUser: config.User === "0:0" && (config.Cmd ?? []).includes("--job-user"),
          noNewPrivileges: ((host.SecurityOpt ?? []) as string[]).includes("no-new-privileges:true"),
          dockerSocketMounted: mounts.some((m) => m.includes("docker.sock")),
          gpuCount: (host.DeviceRequests ?? []).reduce((n, r) => n + (r.Count ?? 0), 0),
          memoryMiB: (host.Memory ?? 0) / MiB,
          pidsLimit: host.PidsLimit,
        }).toEqual(sandboxFacts(tier));
      } finally {
        await container.remove({ force: true });
        await rm(dir, { recursive: true, force: true });
      }
    },
  );
});
