import Dockerode from "dockerode";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Envelope, JobSpecInput, LaunchOptions } from "../../../runtime/src/job/contract";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import { imageRef } from "../../../runtime/src/catalog/image-matrix";
import { DISK_QUOTA_ERROR } from "../../../runtime/src/launch/outcome";
import { createQuotaDir, isQuotaDir, QUOTA_IMAGE_SUFFIX } from "../../../runtime/src/launch/quota-volume";
import { JOB_UID_POOL } from "../../../runtime/src/launch/sandbox";

/**
 * Per-job isolation on a node (issue 16, item 3), against the real engine through the launcher, as a root
 * runtime runs it: two users' jobs at once, each with its own uid, one attacking the other, its
 * supervisor and its own envelope, and filling its disk quota, while the other's result and files stay
 * intact. Run as root (as the agent on a node); the suite is skipped otherwise.
 */

const IMAGE = process.env.CRUCIBLE_TEST_JOB_IMAGE ?? imageRef("cpu");
const QUOTA_MiB = 16;
const root = process.getuid?.() === 0;
const docker = new Dockerode();
const launcher = new DockerLauncher({
  docker,
  logger: pino({ level: "silent" }),
  graceSeconds: 1,
  tierOverrides: { "cpu-small": { workspaceMiB: QUOTA_MiB } },
});

let dir: string;
let counter = 0;

async function run(
  code: string,
  extra: Partial<JobSpecInput> = {},
  options: LaunchOptions = {},
): Promise<Envelope> {
  const jobId = `iso-${process.pid}-${++counter}`;
  const codeDir = join(dir, jobId);
  await mkdir(codeDir);
  await writeFile(join(codeDir, "main.py"), code);
  return launcher.run({ jobId, code: codeDir, tier: "cpu-small", image: IMAGE, ...extra }, options);
}

/** Resolves with the first output line holding `marker`; rejects after `ms`. */
function lineWith(marker: string, ms: number): { onLog: LaunchOptions["onLog"]; seen: Promise<string> } {
  let found: (line: string) => void = () => undefined;
  let buffer = "";
  const seen = new Promise<string>((resolve, reject) => {
    found = resolve;
    setTimeout(() => reject(new Error(`no "${marker}" line within ${ms} ms`)), ms).unref();
  });
  return {
    seen,
    onLog: (_stream, text) => {
      buffer += text;
      const line = buffer.split("\n").find((l) => l.includes(marker));
      if (line) found(line);
    },
  };
}

/** Job A: keeps a secret in its workspace, waits (bounded) until told to go on, then reads it back. */
const VICTIM = `
import os, time
def main():
    with open("/workspace/secret.txt", "w") as f:
        f.write("A's secret")
    print("A ready", flush=True)
    deadline = time.monotonic() + 25
    while not os.path.exists("/workspace/go") and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"uid": os.getuid(), "secret": open("/workspace/secret.txt").read(), "go": os.path.exists("/workspace/go")}
`;

/** Job B: A's workspace is mounted into it by mistake (at /datasets); it attacks everything, then fills its disk. */
const ATTACKER = `
import ctypes, errno, json, os, signal

def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

libc = ctypes.CDLL(None, use_errno=True)
def ptrace_attach(pid):
    if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        raise OSError(0, "attached")
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))

def write(path):
    with open(path, "w") as f:
        f.write("x")

def processes():
    seen = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("Uid:"):
                    seen[pid] = int(line.split()[1])
        except OSError:
            pass
    return seen

def main():
    supervisor = os.getppid()
    code = os.getcwd()
    results = {
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "supervisor_pid": supervisor, "code_dir": code,
        "read_other_secret": attempt(lambda: open("/datasets/secret.txt").read()),
        "list_other_workspace": attempt(lambda: os.listdir("/datasets")),
        "init_environ": attempt(lambda: open("/proc/1/environ").read()),
        "supervisor_environ": attempt(lambda: open(f"/proc/{supervisor}/environ").read()),
        "supervisor_mem": attempt(lambda: open(f"/proc/{supervisor}/mem", "rb").read(1)),
        "kill_init": attempt(lambda: os.kill(1, signal.SIGKILL)),
        "term_supervisor": attempt(lambda: os.kill(supervisor, signal.SIGTERM)),
        "ptrace_init": attempt(lambda: ptrace_attach(1)),
        "ptrace_supervisor": attempt(lambda: ptrace_attach(supervisor)),
        "write_code_dir": attempt(lambda: write(os.path.join(code, "planted.py"))),
        "change_main": attempt(lambda: write(os.path.join(code, "main.py"))),
        "chmod_code_dir": attempt(lambda: os.chmod(code, 0o777)),
        "move_code_dir": attempt(lambda: os.rename(os.path.dirname(code), "/tmp/moved")),
        "forge_runner_json": attempt(lambda: write("/crucible/output/runner.json")),
        "list_output_dir": attempt(lambda: os.listdir("/crucible/output")),
        "workspace_mode": oct(os.stat("/workspace").st_mode & 0o777),
        "workspace_owner": os.stat("/workspace").st_uid,
        "process_uids": sorted(set(processes().values())),
    }
    print("ATTACKS " + json.dumps(results), flush=True)
    with open("/workspace/fill", "wb") as f:
        while True:
            f.write(b"x" * (1 << 20))
            f.flush()
`;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crucible-isolation-"));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.runIf(root)("two users' jobs on one node", () => {
  it("cannot reach each other, their supervisors or their envelopes; a full disk stays the filler's", async () => {
    // A's workspace is made as the agent makes a job's workspace: a quota directory of its own.
    const workspaceA = await createQuotaDir(join(dir, "workspace-a"), QUOTA_MiB, undefined);
    try {
      const ready = lineWith("A ready", 60_000);
      const victim = run(VICTIM, { workspaceDir: workspaceA.path }, { onLog: ready.onLog });
      await ready.seen;
      const hostA = await stat(workspaceA.path);

      const attacks = lineWith("ATTACKS ", 60_000);
      const attacker = await run(ATTACKER, { datasetsDir: workspaceA.path }, { onLog: attacks.onLog });
      const b = JSON.parse(
        (await attacks.seen).slice((await attacks.seen).indexOf("ATTACKS ") + 8),
      ) as Record<string, unknown>;
      await writeFile(join(workspaceA.path, "go"), "");
      const a = await victim;

      // Each its own uid from the pool, never a host user's; A's workspace is A's alone.
      const uidA = (a.result as { uid: number }).uid;
      for (const uid of [uidA, b.uid as number]) {
        expect(uid).toBeGreaterThanOrEqual(JOB_UID_POOL.first);
        expect(uid).toBeLessThan(JOB_UID_POOL.first + JOB_UID_POOL.size);
      }
      expect(b.uid).not.toBe(uidA);
      expect(b).toMatchObject({ gid: b.uid, groups: [] });
      expect({ uid: hostA.uid, gid: hostA.gid, mode: hostA.mode & 0o777 }).toEqual({
        uid: uidA,
        gid: uidA,
        mode: 0o700,
      });
      expect(b).toMatchObject({ workspace_mode: "0o700", workspace_owner: b.uid });

      // Every attack fails with the kernel's refusal.
      expect(b).toMatchObject({
        read_other_secret: "EACCES",
        list_other_workspace: "EACCES",
        init_environ: "EACCES",
        supervisor_environ: "EACCES",
        supervisor_mem: "EACCES",
        kill_init: "EPERM",
        term_supervisor: "EPERM",
        ptrace_init: "EPERM",
        ptrace_supervisor: "EPERM",
        write_code_dir: "EACCES",
        change_main: "EACCES",
        chmod_code_dir: "EPERM",
        move_code_dir: "EPERM", // /tmp is sticky and /tmp/crucible is root's
        forge_runner_json: "EACCES",
        list_output_dir: "EACCES",
        code_dir: "/tmp/crucible/code",
      });
      // B sees only its own container: root (init, supervisor) and itself, nothing of A's uid.
      expect(b.process_uids).toEqual([0, b.uid]);

      // B ran into its quota: ENOSPC, and the envelope names the quota.
      expect(attacker).toMatchObject({ status: "error", reason: "exception", exitCode: 1 });
      expect(attacker.error?.type).toBe(DISK_QUOTA_ERROR);
      expect(attacker.error?.message).toContain(
        `the job filled its ${QUOTA_MiB} MiB disk quota (/workspace, tier cpu-small workspaceMiB): writes past it fail with ENOSPC`,
      );
      expect(attacker.error?.message).toContain("No space left on device");
      // Measured by the supervisor (wait4), not reported by the job.
      expect(attacker.resources.peakMemoryBytes).toBeGreaterThan(0);

      // A is unaffected: its result and its files intact.
      expect(a).toMatchObject({
        status: "success",
        exitCode: 0,
        result: { secret: "A's secret", go: true },
      });
      expect(await readFile(join(workspaceA.path, "secret.txt"), "utf8")).toBe("A's secret");

      // B's volume is gone with its run: no mount, no loop device, no image.
      const loops = spawnSync("losetup", ["-a"], { encoding: "utf8" }).stdout;
      expect(loops.split("\n").filter((l) => l.includes(attacker.jobId))).toEqual([]);
      expect(await isQuotaDir(workspaceA.path)).toBe(true);
    } finally {
      await workspaceA.release();
    }
    expect(await isQuotaDir(workspaceA.path)).toBe(false);
    await expect(stat(`${workspaceA.path}${QUOTA_IMAGE_SUFFIX}`)).rejects.toThrow(/ENOENT/);
  }, 120_000);

  it("reports sys.exit(n) in main() as exit code n, and sys.exit(0) as a success", async () => {
    const [three, zero] = await Promise.all([
      run("import sys\ndef main():\n    print('exiting', flush=True)\n    sys.exit(3)\n"),
      run("import sys\ndef main():\n    sys.exit(0)\n"),
    ]);
    expect(three).toMatchObject({
      status: "error",
      reason: "exit_code",
      exitCode: 3,
      error: { type: "ExitCode", message: "the job exited with code 3" },
    });
    expect(three.resources.cpuSeconds).toBeGreaterThan(0);
    expect(zero).toMatchObject({ status: "success", exitCode: 0 });
    expect(zero.result ?? null).toBeNull();
  }, 60_000);
});
