/**
 * `npm run bench`: what the `crucible` command and its launcher cost over plain `docker run`.
 *
 * 1. Start-up: `crucible --version` and `crucible run --help`, a fresh Node process each, the built CLI
 *    (`node runtime/dist/cli/bin/crucible.js`: what `npx crucible` and the installed package run) against
 *    the sources through tsx (`node --import tsx runtime/src/cli/bin/crucible.ts`).
 * 2. The CLI end to end: `crucible run --json` of a trivial job, built, against `docker run --rm` of the
 *    same job staged the same way, in the very container the launcher creates (flags derived from its own
 *    container spec), on the same image: the ratio of the medians (goal <= 1.2); the tsx CLI beside them
 *    for reference. Run as root, the CLI gives each job a uid of its own and a workspace volume of the
 *    tier's size (the baseline runs in a volume made once); the same comparison then runs again as an
 *    unprivileged user with access to the Docker socket (setpriv; BENCH_USER_UID, default 1000, "none"
 *    to skip), as on a researcher's laptop: the job runs as the caller, in a plain workspace directory.
 * 3. Launch overhead in process: DockerLauncher.run against the same `docker run` (goal <= 1.0).
 * 4. Throughput: jobs per minute through one launcher at concurrency 1, 2 and 4.
 *
 * Every comparison runs its contenders in rotating order after a warm-up round, and prints medians.
 * `npm run bench` builds the runtime first (prebench), so the built CLI is the current code.
 *
 * Env: BENCH_ONLY (comma-separated sections: startup, cli, launcher, throughput; default all),
 * BENCH_STARTUP_RUNS (default 10), BENCH_CLI_PAIRS (rounds, default 10), BENCH_PAIRS (default 12),
 * BENCH_JOBS per concurrency level (default 12), BENCH_USER_UID, CRUCIBLE_BENCH_IMAGE (default: the
 * matrix's cpu image).
 */
import Dockerode from "dockerode";
import { execFile } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { chmod, chown, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import type { JobSpecInput } from "../runtime/src/job/contract";
import { DockerLauncher } from "../runtime/src/launch/docker/docker-launcher";
import { imageRef } from "../runtime/src/catalog/image-matrix";
import { disposeJob, prepareJob } from "../runtime/src/job/job-spec";
import type { ProcessOwner, SandboxUser } from "../runtime/src/launch/sandbox";
import {
  callerUser,
  containerSpec,
  leaseJobUser,
  perJobUsers,
  processStart,
} from "../runtime/src/launch/sandbox";
import { interleave, median, summary, timed } from "./lib/bench-timing";

const run = promisify(execFile);
const ROOT = join(__dirname, "..");
const IMAGE = process.env.CRUCIBLE_BENCH_IMAGE ?? imageRef("cpu");
const STARTUP_RUNS = Number(process.env.BENCH_STARTUP_RUNS ?? 10);
const CLI_PAIRS = Number(process.env.BENCH_CLI_PAIRS ?? 10);
const PAIRS = Number(process.env.BENCH_PAIRS ?? 12);
const JOBS = Number(process.env.BENCH_JOBS ?? 12);
const USER_UID = process.env.BENCH_USER_UID ?? "1000";
const SECTIONS = ["startup", "cli", "launcher", "throughput"] as const;
const ONLY = (process.env.BENCH_ONLY ?? SECTIONS.join(","))
  .split(",")
  .map((s) => s.trim())
  .filter(Boolean);
const TIER = "cpu-small";
/** The command a user runs, built and from the sources: node's arguments before the CLI's own. */
const BUILT = [join(ROOT, "runtime/dist/cli/bin/crucible.js")];
const TSX = ["--import", "tsx", join(ROOT, "runtime/src/cli/bin/crucible.ts")];
/** What `crucible run` may take over `docker run` of the same sandbox (issue #17). */
const CLI_GOAL = 1.2;

/** `docker run` flags for a container spec: the baseline gets exactly the launcher's sandbox. */
function dockerRunArgs(spec: Dockerode.ContainerCreateOptions): string[] {
  const h = spec.HostConfig ?? {};
  const args = ["run", "--rm", "--user", spec.User ?? "", "--network", h.NetworkMode ?? "none"];
  if (h.ReadonlyRootfs) args.push("--read-only");
  for (const [path, options] of Object.entries(h.Tmpfs ?? {})) args.push("--tmpfs", `${path}:${options}`);
  args.push("--memory", String(h.Memory), "--memory-swap", String(h.MemorySwap));
  args.push("--cpus", String((h.NanoCpus ?? 0) / 1e9), "--pids-limit", String(h.PidsLimit));
  for (const cap of (h.CapDrop as string[] | undefined) ?? []) args.push("--cap-drop", cap);
  for (const cap of (h.CapAdd as string[] | undefined) ?? []) args.push("--cap-add", cap);
  for (const opt of (h.SecurityOpt as string[] | undefined) ?? []) args.push("--security-opt", opt);
  for (const u of h.Ulimits ?? []) args.push("--ulimit", `${u.Name}=${u.Soft}:${u.Hard}`);
  if (h.Init) args.push("--init");
  if (h.IpcMode) args.push("--ipc", h.IpcMode);
  if (h.LogConfig) {
    args.push("--log-driver", h.LogConfig.Type);
    for (const [k, v] of Object.entries(h.LogConfig.Config as Record<string, string>))
      args.push("--log-opt", `${k}=${v}`);
  }
  if (spec.StopTimeout !== undefined) args.push("--stop-timeout", String(spec.StopTimeout));
  for (const m of h.Mounts ?? []) {
    args.push("--mount", `type=${m.Type},src=${m.Source},dst=${m.Target}${m.ReadOnly ? ",readonly" : ""}`);
  }
  for (const e of spec.Env ?? []) args.push("--env", e);
  for (const [k, v] of Object.entries(spec.Labels ?? {})) args.push("--label", `${k}=${v}`);
  args.push(spec.Image ?? IMAGE, ...(spec.Cmd ?? []));
  return args;
}

/** Who runs the CLI, and so which sandbox its launcher builds: the baseline builds the same one. */
interface Caller {
  readonly label: string;
  /** A root runtime: a leased uid per job, a workspace volume, the supervisor apart from the job. */
  readonly root: boolean;
  /** The job's user where the runtime is not root: the caller itself. */
  readonly user: SandboxUser;
  /** The command line before `node`: empty for the bench's own user. */
  readonly wrap: readonly string[];
}

const self: Caller = {
  label: perJobUsers()
    ? "as root: a uid per job, a workspace volume of the tier's size"
    : `as uid ${callerUser().uid}, the bench's own user`,
  root: perJobUsers(),
  user: callerUser(),
  wrap: [],
};

/** On a root runtime, an unprivileged user with the Docker socket's group: a researcher's laptop. */
function unprivileged(): Caller | undefined {
  if (!perJobUsers() || USER_UID === "none") return undefined;
  const uid = Number(USER_UID);
  const host = process.env.DOCKER_HOST ?? "unix:///var/run/docker.sock";
  if (!Number.isInteger(uid) || uid <= 0)
    throw new Error(`BENCH_USER_UID must be a uid > 0 or "none", got "${USER_UID}"`);
  const setpriv = (process.env.PATH ?? "").split(":").some((d) => d && existsSync(join(d, "setpriv")));
  if (!host.startsWith("unix://") || !setpriv) {
    console.log(`  (no unprivileged run: it needs setpriv and the engine on a unix socket)`);
    return undefined;
  }
  const socketGroup = statSync(host.slice("unix://".length)).gid;
  return {
    label: `as uid ${uid} with the Docker socket's group: the job runs as the caller, in a plain workspace`,
    root: false,
    user: { uid, gid: uid },
    wrap: ["setpriv", `--reuid=${uid}`, `--regid=${uid}`, `--groups=${socketGroup}`, "--"],
  };
}

function cli(caller: Caller, entry: readonly string[], args: readonly string[]) {
  const [file, ...before] = [...caller.wrap, process.execPath];
  return () =>
    run(file, [...before, ...entry, ...args], {
      cwd: ROOT,
      env: { ...process.env, CRUCIBLE_LOG_LEVEL: "warn" },
    });
}

/**
 * `docker run` of one job staged as the caller's launcher stages it (zip, output directory, workspace;
 * on a root runtime a volume of the tier's size, for a uid leased for the whole bench) in the container
 * that launcher would create for it.
 */
async function baseline(caller: Caller, spec: JobSpecInput, owner: ProcessOwner) {
  const lease = caller.root ? await leaseJobUser(owner) : undefined;
  const user = lease?.user ?? caller.user;
  const staged = await prepareJob(spec, { user, workspaceQuota: caller.root });
  // Staged by root, the output directory is root's (a root runtime's supervisor writes it); an
  // unprivileged caller's launcher makes it its own.
  if (!caller.root && perJobUsers()) await chown(staged.outputDir, user.uid, user.gid);
  const args = dockerRunArgs(
    containerSpec({
      jobId: staged.spec.jobId,
      tier: staged.tier,
      image: IMAGE,
      env: {},
      user,
      separateSupervisor: caller.root,
      hostPaths: { codeZip: staged.codeZip, output: staged.outputDir, workspace: staged.workspaceDir },
      owner,
      scratchDir: staged.scratchDir,
      graceSeconds: 1,
    }),
  );
  return {
    dockerRun: () => run("docker", args),
    dispose: async () => {
      await disposeJob(staged);
      await lease?.release();
    },
  };
}

const ratio = (a: readonly number[], b: readonly number[]): string => (median(a) / median(b)).toFixed(3);

async function startup(): Promise<void> {
  for (const args of [["--version"], ["run", "--help"]]) {
    const [built, tsx] = await interleave(STARTUP_RUNS, [cli(self, BUILT, args), cli(self, TSX, args)]);
    console.log(`start-up, crucible ${args.join(" ")}, median of ${STARTUP_RUNS} alternating runs:`);
    console.log(`  built (node runtime/dist)   ${summary(built!)}`);
    console.log(`  tsx (runtime/src)           ${summary(tsx!)}`);
    console.log(`  ratio tsx/built = ${ratio(tsx!, built!)}`);
  }
}

async function endToEnd(code: string, spec: () => JobSpecInput, owner: ProcessOwner): Promise<void> {
  const args = ["run", code, "--tier", TIER, "--image", IMAGE, "--json"];
  console.log(`CLI end to end (a new process per run), median of ${CLI_PAIRS} rotating rounds:`);
  for (const caller of [self, unprivileged()]) {
    if (!caller) continue;
    const { dockerRun, dispose } = await baseline(caller, spec(), owner);
    try {
      const [built, tsx, plain] = await interleave(CLI_PAIRS, [
        cli(caller, BUILT, args),
        cli(caller, TSX, args),
        dockerRun,
      ]);
      console.log(`  ${caller.label}:`);
      console.log(`    crucible run --json, built  ${summary(built!)}`);
      console.log(`    crucible run --json, tsx    ${summary(tsx!)}`);
      console.log(`    docker run --rm             ${summary(plain!)}`);
      console.log(
        `    ratio crucible run (built)/docker run = ${ratio(built!, plain!)} (goal <= ${CLI_GOAL})`,
      );
      console.log(`    ratio crucible run (tsx)/docker run   = ${ratio(tsx!, plain!)}`);
    } finally {
      await dispose();
    }
  }
}

async function main(): Promise<void> {
  for (const section of ONLY)
    if (!(SECTIONS as readonly string[]).includes(section))
      throw new Error(`BENCH_ONLY names "${section}"; sections: ${SECTIONS.join(", ")}`);
  if (!existsSync(BUILT[0]!)) throw new Error(`${BUILT[0]} is missing: build it first (npm run build)`);
  if (ONLY.includes("startup")) await startup();
  if (!ONLY.some((s) => s !== "startup")) return;

  const docker = new Dockerode();
  if (
    !(await docker
      .getImage(IMAGE)
      .inspect()
      .catch(() => undefined))
  ) {
    throw new Error(`${IMAGE} is not on the local engine: build it first (npm run images -- build)`);
  }
  // Readable by the unprivileged caller too.
  const root = await mkdtemp(join(tmpdir(), "crucible-bench-"));
  await chmod(root, 0o755);
  const code = join(root, "job");
  await mkdir(code, { mode: 0o755 });
  await writeFile(join(code, "main.py"), "def main():\n    return 1\n", { mode: 0o644 });
  const launcher = new DockerLauncher({ docker, logger: pino({ level: "silent" }), graceSeconds: 1 });
  let n = 0;
  const spec = (): JobSpecInput => ({ jobId: `bench-${process.pid}-${++n}`, code, tier: TIER, image: IMAGE });
  const launch = async (): Promise<void> => {
    const envelope = await launcher.run(spec());
    if (envelope.status !== "success") throw new Error(`bench job failed: ${JSON.stringify(envelope.error)}`);
  };
  const start = processStart(process.pid);
  const owner: ProcessOwner = { pid: process.pid, host: hostname(), ...(start !== undefined && { start }) };
  try {
    console.log(`image ${IMAGE}, tier ${TIER}, trivial job (main returns 1)`);
    if (ONLY.includes("cli")) await endToEnd(code, spec, owner);

    if (ONLY.includes("launcher")) {
      const { dockerRun, dispose } = await baseline(self, spec(), owner);
      try {
        const [launcherMs, dockerMs] = await interleave(PAIRS, [launch, dockerRun]);
        console.log(`launch in process (${self.label}), median of ${PAIRS} alternating pairs:`);
        console.log(`  DockerLauncher.run  ${summary(launcherMs!)}`);
        console.log(`  docker run --rm     ${summary(dockerMs!)}`);
        console.log(`  ratio launcher/docker run = ${ratio(launcherMs!, dockerMs!)} (goal <= 1.0)`);
      } finally {
        await dispose();
      }
    }

    if (ONLY.includes("throughput")) {
      console.log(`throughput, ${JOBS} trivial jobs per level:`);
      for (const concurrency of [1, 2, 4]) {
        let next = 0;
        const elapsed = await timed(() =>
          Promise.all(
            Array.from({ length: concurrency }, async () => {
              while (next++ < JOBS) await launch();
            }),
          ),
        );
        console.log(`  concurrency ${concurrency}: ${((JOBS / elapsed) * 60_000).toFixed(1)} jobs/min`);
      }
    }
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(`bench: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
