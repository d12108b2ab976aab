import Dockerode from "dockerode";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type {
  Envelope,
  JobSpecInput,
  LaunchOptions,
  ResourceSample,
} from "../../../../runtime/src/job/contract";
import { envelopeSchema, StopRequest } from "../../../../runtime/src/job/contract";
import { DockerEngine } from "../../../../runtime/src/launch/docker/container-engine";
import { DockerLauncher, readRunnerResult } from "../../../../runtime/src/launch/docker/docker-launcher";
import { imageRef } from "../../../../runtime/src/catalog/image-matrix";
import { JOB_UID_POOL, LABELS } from "../../../../runtime/src/launch/sandbox";

/** The job image under test: the matrix's CPU image unless another is named (e.g. to try ml-cpu). */
const IMAGE = process.env.CRUCIBLE_TEST_JOB_IMAGE ?? imageRef("cpu");
const TAIL_BYTES = 4096;

const docker = new Dockerode();
const logger = pino({ level: "silent" });
const engine = new DockerEngine(docker, logger);
const launcher = new DockerLauncher({ docker, logger, graceSeconds: 1, tailBytes: TAIL_BYTES });

let root: string;
let counter = 0;
/** A job image with a setuid-root copy of the interpreter: the sandbox must make the bit worthless. */
const setuidImage = `crucible-test/setuid:${process.pid}`;

/** Runs `code` as a job's main.py on cpu-small, then checks the envelope's shape and that no container is left. */
async function runJob(
  code: string,
  extra: Partial<JobSpecInput> = {},
  options: LaunchOptions = {},
  using: DockerLauncher = launcher,
): Promise<Envelope> {
  const jobId = `t-${process.pid}-${++counter}`;
  const dir = join(root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), code);
  const envelope = await using.run({ jobId, code: dir, tier: "cpu-small", image: IMAGE, ...extra }, options);
  expect(envelopeSchema.parse(envelope)).toEqual(envelope);
  expect(await engine.listByLabel({ [LABELS.jobId]: jobId })).toEqual([]);
  return envelope;
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-launcher-test-"));
  const found = await docker
    .getImage(IMAGE)
    .inspect()
    .catch(() => undefined);
  if (!found)
    throw new Error(`${IMAGE} is not on the local engine: build the image matrix (npm run images -- build)`);
});

afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

describe("a well-behaved job", () => {
  it("succeeds as a uid of its own (never a host user's), with its result and the measured facts", async () => {
    const envelope = await runJob(
      [
        "import os",
        "def main():",
        '    print("step 1/1 loss=0.5", flush=True)',
        '    return {"uid": os.getuid(), "gid": os.getgid(), "job": os.environ["CRUCIBLE_JOB_ID"], "home": os.environ["HOME"]}',
      ].join("\n"),
    );
    const { uid, gid } = envelope.result as { uid: number; gid: number };
    expect(uid).toBeGreaterThanOrEqual(JOB_UID_POOL.first);
    expect(uid).toBeLessThan(JOB_UID_POOL.first + JOB_UID_POOL.size);
    expect(gid).toBe(uid);
    expect(envelope).toMatchObject({
      status: "success",
      exitCode: 0,
      result: { job: envelope.jobId, home: "/tmp" },
      systemInfo: { jobId: envelope.jobId, tier: "cpu-small", image: IMAGE, node: hostname() },
      logs: { truncated: false },
    });
    expect(envelope.reason).toBeUndefined();
    expect(envelope.systemInfo.imageDigest).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(envelope.executionTime).toBeGreaterThan(0);
    expect(envelope.logs.stdout).toContain("step 1/1 loss=0.5");
  });
});

describe.concurrent("the sandbox holds against a job that tries to break it", () => {
  it("has no network: no route out, no DNS, no interface but loopback", async () => {
    const envelope = await runJob(
      [
        "import os, socket",
        "def attempt(fn):",
        "    try:",
        "        fn()",
        '        return "reached"',
        "    except OSError as e:",
        "        return type(e).__name__",
        "def main():",
        "    return {",
        '        "tcp": attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=2)),',
        '        "gateway": attempt(lambda: socket.create_connection(("172.17.0.1", 2375), timeout=2)),',
        '        "dns": attempt(lambda: socket.getaddrinfo("deb.debian.org", 80)),',
        '        "interfaces": sorted(os.listdir("/sys/class/net")),',
        "    }",
      ].join("\n"),
    );
    expect(envelope.status).toBe("success");
    const result = envelope.result as Record<string, unknown>;
    expect(result.interfaces).toEqual(["lo"]);
    for (const key of ["tcp", "gateway", "dns"]) expect(result[key], key).not.toBe("reached");
  });

  it("writes only to /tmp and /workspace (and the runner's output), and the workspace persists", async () => {
    const workspace = join(root, "workspace-write");
    const envelope = await runJob(
      [
        "import errno",
        "def attempt(path):",
        "    try:",
        '        with open(path, "w") as f:',
        '            f.write("x")',
        '        return "ok"',
        "    except OSError as e:",
        "        return errno.errorcode[e.errno]",
        "def main():",
        '    paths = ["/x", "/etc/x", "/usr/lib/x", "/home/x", "/root/x", "/var/tmp/x", "/crucible/input/x",',
        '             "/opt/x", "/tmp/x", "/workspace/x"]',
        "    return {p: attempt(p) for p in paths}",
      ].join("\n"),
      { workspaceDir: workspace },
    );
    const result = envelope.result as Record<string, string>;
    expect(result["/tmp/x"]).toBe("ok");
    expect(result["/workspace/x"]).toBe("ok");
    for (const [path, outcome] of Object.entries(result)) {
      if (path !== "/tmp/x" && path !== "/workspace/x") expect(["EROFS", "EACCES"], path).toContain(outcome);
    }
    expect(await readFile(join(workspace, "x"), "utf8")).toBe("x");
  });

  it("stops a job filling /tmp at its cap, with the error in the envelope", async () => {
    const envelope = await runJob(
      [
        "def main():",
        '    with open("/tmp/fill", "wb") as f:',
        "        while True:",
        '            f.write(b"x" * (1 << 20))',
        "            f.flush()",
      ].join("\n"),
    );
    expect(envelope).toMatchObject({ status: "error", reason: "exception" });
    expect(envelope.error?.message).toMatch(/No space left on device/);
  });

  it("caps processes: a fork loop gets at most the tier's pids limit", async () => {
    const envelope = await runJob(
      [
        "import os, time",
        "def main():",
        "    children = 0",
        "    try:",
        "        while True:",
        "            if os.fork() == 0:",
        "                time.sleep(60)",
        "                os._exit(0)",
        "            children += 1",
        "    except OSError as e:",
        '        return {"children": children, "error": e.errno}',
      ].join("\n"),
    );
    expect(envelope.status).toBe("success");
    const result = envelope.result as { children: number; error: number };
    expect(result.children).toBeGreaterThan(10);
    expect(result.children).toBeLessThan(128);
    expect(result.error).toBe(11); // EAGAIN
  });

  it("ends a real fork bomb at its deadline, and the host can still fork", async () => {
    const envelope = await runJob(
      [
        "import os",
        "def main():",
        "    while True:",
        "        try:",
        "            os.fork()",
        "        except OSError:",
        "            pass",
      ].join("\n"),
      { timeoutSeconds: 3 },
    );
    expect(envelope).toMatchObject({ status: "error", reason: "timeout" });
    expect(spawnSync("true").status).toBe(0);
  });

  it("kills a job allocating past its memory limit and reports oom", async () => {
    const envelope = await runJob(
      ["def main():", "    hoard = []", "    while True:", '        hoard.append(b"x" * (32 << 20))'].join(
        "\n",
      ),
    );
    expect(envelope).toMatchObject({ status: "error", reason: "oom", exitCode: 137 });
    expect(envelope.error?.message).toBe(
      "the job used more than its 512 MiB memory limit (tier cpu-small) and was killed",
    );
  });

  it("SIGKILLs a job ignoring SIGTERM once the grace period is over", async () => {
    // Stopped only once it says it ignores SIGTERM: a stop that came earlier would find Python's default.
    const stop = new AbortController();
    const envelope = await runJob(
      [
        "import signal, time",
        "def main():",
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)",
        '    print("ignoring SIGTERM", flush=True)',
        "    while True:",
        "        time.sleep(0.05)",
      ].join("\n"),
      {},
      {
        signal: stop.signal,
        onLog: (_stream, text) => {
          if (text.includes("ignoring SIGTERM")) stop.abort(new StopRequest("interrupted", 2));
        },
      },
    );
    expect(envelope).toMatchObject({ status: "error", reason: "interrupted", exitCode: 137 });
    // The whole grace period passed: the job's handler did not save it, SIGKILL did end it.
    expect(envelope.executionTime).toBeGreaterThanOrEqual(2);
    expect(envelope.executionTime).toBeLessThan(15);
  });

  it("keeps a bounded tail of a job printing 1 GB, without the runtime growing", async () => {
    const before = process.memoryUsage().rss;
    const envelope = await runJob(
      [
        "import sys",
        "def main():",
        '    line = b"0123456789" * 100 + b"\\n"',
        "    block = line * 1024",
        "    for _ in range(1000):",
        "        sys.stdout.buffer.write(block)",
        "    sys.stdout.buffer.write(b'done\\n')",
        "    sys.stdout.flush()",
        '    return "printed"',
      ].join("\n"),
      // A gigabyte through the engine's attach stream outlasts cpu-small's 30 s on a loaded machine.
      { tier: "cpu-large" },
    );
    const grown = process.memoryUsage().rss - before;
    expect(envelope).toMatchObject({ status: "success", result: "printed", logs: { truncated: true } });
    expect(Buffer.byteLength(envelope.logs.stdout)).toBeLessThanOrEqual(TAIL_BYTES);
    expect(envelope.logs.stdout.endsWith("0123456789\ndone\n")).toBe(true);
    expect(grown).toBeLessThan(200 * 1024 * 1024);
  }, 120_000);

  it("cannot gain root: no capabilities, no setuid, no privileged calls", async () => {
    const envelope = await runJob(
      [
        "import os, socket, subprocess",
        "def attempt(fn):",
        "    try:",
        "        fn()",
        '        return "allowed"',
        "    except OSError as e:",
        "        return type(e).__name__",
        "def status(field):",
        "    for line in open('/proc/self/status'):",
        "        if line.startswith(field + ':'):",
        "            return line.split()[1]",
        "def main():",
        "    setuid = []",
        '    for d in ["/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"]:',
        "        for name in (os.listdir(d) if os.path.isdir(d) else []):",
        "            path = os.path.join(d, name)",
        "            if os.path.isfile(path) and os.stat(path).st_mode & 0o4000:",
        "                setuid.append(path)",
        "    euids = {}",
        "    for path in setuid:",
        "        # The setuid-root copy of the interpreter would report euid 0 if the bit were honoured.",
        "        if path.endswith('/rootpy'):",
        '            euids[path] = subprocess.run([path, "-c", "import os; print(os.geteuid())"], capture_output=True, text=True).stdout.strip()',
        "    return {",
        '        "euid": os.geteuid(),',
        '        "setuid0": attempt(lambda: os.setuid(0)),',
        '        "chown": attempt(lambda: os.chown("/tmp", 0, 0)),',
        '        "raw_socket": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),',
        '        "mknod": attempt(lambda: os.mknod("/tmp/dev", 0o600 | 0o020000, os.makedev(1, 3))),',
        '        "CapEff": status("CapEff"), "CapPrm": status("CapPrm"), "CapBnd": status("CapBnd"),',
        '        "NoNewPrivs": status("NoNewPrivs"), "Seccomp": status("Seccomp"),',
        '        "setuid_files": setuid, "setuid_euids": euids,',
        "    }",
      ].join("\n"),
      { image: setuidImage },
    );
    expect(envelope.status).toBe("success");
    const result = envelope.result as Record<string, unknown>;
    const euid = result.euid as number;
    expect(euid).toBeGreaterThanOrEqual(JOB_UID_POOL.first);
    expect(result).toMatchObject({
      setuid0: "PermissionError",
      chown: "PermissionError",
      raw_socket: "PermissionError",
      mknod: "PermissionError",
      CapEff: "0000000000000000",
      CapPrm: "0000000000000000",
      // The supervisor's KILL, SETGID and SETUID stay in the bounding set, never in the job's own sets:
      // regaining them would need a setuid or file-capability binary, which no-new-privileges voids.
      CapBnd: "00000000000000e0",
      NoNewPrivs: "1",
      Seccomp: "2",
    });
    expect(result.setuid_files).toContain("/usr/local/bin/rootpy");
    expect(result.setuid_euids).toEqual({ "/usr/local/bin/rootpy": String(euid) });
  });

  it("cannot reach the Docker engine: no socket inside, no TCP to the host", async () => {
    const envelope = await runJob(
      [
        "import os, socket",
        "def main():",
        "    found = []",
        '    for top in ["/run", "/var/run", "/tmp", "/crucible", "/workspace", "/"]:',
        "        for dirpath, dirnames, filenames in os.walk(top):",
        '            dirnames[:] = [d for d in dirnames if dirpath != "/" or d in ("run", "var", "srv", "mnt")]',
        "            found += [os.path.join(dirpath, f) for f in filenames if f.endswith('.sock')]",
        "    s = socket.socket(socket.AF_UNIX)",
        "    try:",
        '        s.connect("/var/run/docker.sock")',
        '        unix = "connected"',
        "    except OSError as e:",
        "        unix = type(e).__name__",
        "    try:",
        '        socket.create_connection(("172.17.0.1", 2375), timeout=2)',
        '        tcp = "connected"',
        "    except OSError as e:",
        "        tcp = type(e).__name__",
        '    return {"sockets": found, "unix": unix, "tcp": tcp}',
      ].join("\n"),
    );
    expect(envelope.result).toMatchObject({ sockets: [], unix: "FileNotFoundError" });
    expect((envelope.result as { tcp: string }).tcp).not.toBe("connected");
  });
});

describe("resources", () => {
  it("samples the job's memory and CPU while it runs, and stops sampling when it ends", async () => {
    const sampling = new DockerLauncher({ docker, logger, graceSeconds: 1, resourceSampleSeconds: 0.5 });
    const samples: ResourceSample[] = [];
    const envelope = await runJob(
      [
        "import time",
        "def main():",
        "    held = bytearray(96 * 1024 * 1024)",
        "    for i in range(0, len(held), 4096):",
        "        held[i] = 1",
        "    end = time.monotonic() + 3",
        "    while time.monotonic() < end:",
        "        pass",
        "    return len(held)",
      ].join("\n"),
      { tier: "cpu-large" },
      { onResources: (sample) => samples.push(sample) },
      sampling,
    );
    expect(envelope.status).toBe("success");
    const after = samples.length;
    expect(after).toBeGreaterThanOrEqual(3);
    // The job touched every page of 96 MiB and spun a core: both show while it ran.
    expect(Math.max(...samples.map((s) => s.memoryMiB))).toBeGreaterThanOrEqual(96);
    expect(samples[0]!.cpuCores).toBeUndefined();
    expect(Math.max(...samples.slice(1).map((s) => s.cpuCores ?? 0))).toBeGreaterThan(0.5);
    expect(samples.every((s) => s.gpuUtilPercent === undefined)).toBe(true);
    expect(samples.length).toBe(after);
  });
});

describe("every outcome is a truthful envelope", () => {
  it("reports an exception from main() with its type and traceback", async () => {
    const envelope = await runJob('def main():\n    raise ValueError("bad input 42")\n');
    expect(envelope).toMatchObject({
      status: "error",
      reason: "exception",
      error: { type: "ValueError", message: "bad input 42" },
    });
    expect(envelope.error?.traceback).toContain("ValueError");
  });

  it("reports a non-zero exit as exit_code, whatever the job wrote to the runner's file", async () => {
    const envelope = await runJob(
      [
        "import json, os",
        "def main():",
        "    try:",
        '        with open("/crucible/output/runner.json", "w") as f:',
        '            json.dump({"status": "success", "result": "forged"}, f)',
        "    except OSError:",
        "        pass  # the supervisor's directory: only a runtime that is not root lets the job try",
        "    os._exit(3)",
      ].join("\n"),
    );
    expect(envelope).toMatchObject({ status: "error", reason: "exit_code", exitCode: 3 });
    expect(envelope.result).toBeUndefined();
  });

  it("never follows a link the job planted as runner.json, and reports the missing result", async () => {
    const envelope = await runJob(
      [
        "import os",
        "def main():",
        "    try:",
        '        os.symlink("/etc/hostname", "/crucible/output/runner.json")',
        "    except OSError:",
        "        pass",
        "    os._exit(0)",
      ].join("\n"),
    );
    // The runner removes the planted link and reports, from outside the job, that main() never returned.
    expect(envelope).toMatchObject({
      status: "error",
      reason: "exception",
      exitCode: 0,
      error: { type: "NoResult" },
    });
    expect(envelope.result).toBeUndefined();
  });

  it("reads no runner.json through a link, even one planted on the host", async () => {
    const dir = join(root, "planted");
    await mkdir(dir);
    await symlink("/etc/hostname", join(dir, "runner.json"));
    expect(await readRunnerResult(dir)).toEqual({ problem: "runner.json cannot be opened (ELOOP)" });
  });

  it("turns a bad spec into invalid_job without creating a container", async () => {
    const envelope = await launcher.run({
      jobId: "t-invalid",
      code: join(root, "missing"),
      tier: "cpu-small",
    });
    expect(envelope).toMatchObject({
      jobId: "t-invalid",
      status: "error",
      reason: "invalid_job",
      exitCode: null,
      error: { type: "InvalidJobError", message: `code: ${join(root, "missing")} does not exist` },
    });
  });

  it("names a given image that the engine does not have", async () => {
    const envelope = await runJob("def main(): pass\n", { image: "crucible-test/none:missing" });
    expect(envelope).toMatchObject({
      reason: "invalid_job",
      error: { message: "image crucible-test/none:missing is not on this Docker engine" },
    });
  });

  it("stops a job on abort with the request's reason, after its grace, and lets it checkpoint", async () => {
    const workspace = join(root, "workspace-preempt");
    const controller = new AbortController();
    const envelope = await runJob(
      [
        "import os, signal, sys, time",
        "def on_term(signum, frame):",
        '    os.makedirs("/workspace/checkpoints", exist_ok=True)',
        '    with open("/workspace/checkpoints/step", "w") as f:',
        '        f.write("7")',
        "    sys.exit(0)",
        "def main():",
        "    signal.signal(signal.SIGTERM, on_term)",
        '    print("ready", flush=True)',
        "    time.sleep(60)",
      ].join("\n"),
      { workspaceDir: workspace },
      {
        signal: controller.signal,
        onLog: (_stream, text) => {
          if (text.includes("ready")) controller.abort(new StopRequest("preempted", 5));
        },
      },
    );
    expect(envelope).toMatchObject({ status: "error", reason: "preempted" });
    expect(envelope.executionTime).toBeLessThan(5);
    expect(await readFile(join(workspace, "checkpoints/step"), "utf8")).toBe("7");
  });

  it("cancels on a plain abort, and never starts a job aborted before it began", async () => {
    const controller = new AbortController();
    const running = await runJob(
      'import time\ndef main():\n    print("ready", flush=True)\n    time.sleep(60)\n',
      {},
      {
        signal: controller.signal,
        onLog: (_s, text) => {
          if (text.includes("ready")) controller.abort();
        },
      },
    );
    expect(running).toMatchObject({ status: "error", reason: "cancelled" });
    const aborted = AbortSignal.abort(new StopRequest("budget", 0));
    const never = await runJob("def main(): pass\n", {}, { signal: aborted });
    expect(never).toMatchObject({ status: "error", reason: "budget", exitCode: null, executionTime: 0 });
  });
});

describe("gc", () => {
  it("removes containers whose owner process is gone, and only those", async () => {
    const dead = spawnSync("true").pid;
    const ownStart = readFileSync("/proc/self/stat", "utf8").split(") ")[1]!.split(" ")[19]!;
    const make = (pid: number, jobId: string, start?: string) =>
      engine.create(
        {
          Image: IMAGE,
          Labels: {
            [LABELS.managed]: "true",
            [LABELS.jobId]: jobId,
            [LABELS.tier]: "cpu-small",
            [LABELS.ownerPid]: String(pid),
            [LABELS.ownerHost]: hostname(),
            ...(start !== undefined && { [LABELS.ownerStart]: start }),
          },
        },
        { jobId },
      );
    const orphan = await make(dead, `t-gc-orphan-${process.pid}`);
    // A restarted agent container gets its predecessor's pid: the start time tells them apart.
    const reused = await make(process.pid, `t-gc-reused-${process.pid}`, "1");
    const owned = await make(process.pid, `t-gc-owned-${process.pid}`, ownStart);
    try {
      expect(await launcher.gc()).toBeGreaterThanOrEqual(2);
      const left = (await engine.listByLabel({ [LABELS.managed]: "true" })).map((c) => c.Id);
      expect(left).not.toContain(orphan);
      expect(left).not.toContain(reused);
      expect(left).toContain(owned);
    } finally {
      for (const id of [orphan, reused, owned]) await engine.remove(id, {});
    }
  });
});

beforeAll(async () => {
  const context = await mkdtemp(join(tmpdir(), "crucible-setuid-"));
  try {
    await writeFile(
      join(context, "Dockerfile"),
      [
        `FROM ${IMAGE}`,
        "USER root",
        'RUN cp "$(readlink -f "$(command -v python3)")" /usr/local/bin/rootpy && chmod 4755 /usr/local/bin/rootpy',
      ].join("\n"),
    );
    const stream = await docker.buildImage({ context, src: ["Dockerfile"] }, { t: setuidImage });
    await new Promise<void>((resolve, reject) =>
      docker.modem.followProgress(stream, (error: Error | null, events: { error?: string }[]) => {
        const failed = error ?? events.find((e) => e.error)?.error;
        if (failed) reject(new Error(`building ${setuidImage} failed: ${String(failed)}`));
        else resolve();
      }),
    );
  } finally {
    await rm(context, { recursive: true, force: true });
  }
});

afterAll(async () => {
  await docker
    .getImage(setuidImage)
    .remove({ force: true })
    .catch(() => undefined);
});
