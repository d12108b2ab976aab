/**
 * `npm run bench`: what the launcher costs over plain `docker run`.
 *
 * 1. Launch overhead: a trivial job through DockerLauncher against `docker run --rm` with the very same
 *    sandbox (flags derived from the launcher's own container spec) on the same image, alternating which
 *    goes first, median of the pairs, printed as a ratio (goal: <= 1.0). The CLI end to end (`crucible run
 *    --json`, a fresh Node process each time) is measured the same way, for reference.
 * 2. Throughput: jobs per minute through one launcher at concurrency 1, 2 and 4.
 *
 * Env: BENCH_PAIRS (default 12), BENCH_CLI_PAIRS (default 5), BENCH_JOBS per concurrency level (default 12),
 * CRUCIBLE_BENCH_IMAGE (default: the matrix's cpu image).
 */
import Dockerode from "dockerode";
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import type { JobSpecInput } from "../runtime/src/job/contract";
import { DockerLauncher } from "../runtime/src/launch/docker/docker-launcher";
import { imageRef } from "../runtime/src/catalog/image-matrix";
import { disposeJob, prepareJob } from "../runtime/src/job/job-spec";
import { containerSpec, sandboxUser } from "../runtime/src/launch/sandbox";

const run = promisify(execFile);
const IMAGE = process.env.CRUCIBLE_BENCH_IMAGE ?? imageRef("cpu");
const PAIRS = Number(process.env.BENCH_PAIRS ?? 12);
const CLI_PAIRS = Number(process.env.BENCH_CLI_PAIRS ?? 5);
const JOBS = Number(process.env.BENCH_JOBS ?? 12);
const TIER = "cpu-small";

/** `docker run` flags for a container spec: the baseline gets exactly the launcher's sandbox. */
function dockerRunArgs(spec: Dockerode.ContainerCreateOptions): string[] {
  const h = spec.HostConfig ?? {};
  const args = ["run", "--rm", "--user", spec.User ?? "", "--network", h.NetworkMode ?? "none"];
  if (h.ReadonlyRootfs) args.push("--read-only");
  for (const [path, options] of Object.entries(h.Tmpfs ?? {})) args.push("--tmpfs", `${path}:${options}`);
  args.push("--memory", String(h.Memory), "--memory-swap", String(h.MemorySwap));
  args.push("--cpus", String((h.NanoCpus ?? 0) / 1e9), "--pids-limit", String(h.PidsLimit));
  for (const cap of (h.CapDrop as string[] | undefined) ?? []) args.push("--cap-drop", cap);
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
  args.push(spec.Image ?? IMAGE);
  return args;
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

/** Runs `a` and `b` in alternating order `pairs` times; returns both medians in ms. */
async function alternate(
  pairs: number,
  a: () => Promise<unknown>,
  b: () => Promise<unknown>,
): Promise<[number, number]> {
  const as: number[] = [];
  const bs: number[] = [];
  await a(); // warm both paths (image layers, page cache) before measuring
  await b();
  for (let i = 0; i < pairs; i++) {
    if (i % 2 === 0) {
      as.push(await timed(a));
      bs.push(await timed(b));
    } else {
      bs.push(await timed(b));
      as.push(await timed(a));
    }
  }
  return [median(as), median(bs)];
}

async function main(): Promise<void> {
  const docker = new Dockerode();
  if (
    !(await docker
      .getImage(IMAGE)
      .inspect()
      .catch(() => undefined))
  ) {
    throw new Error(`${IMAGE} is not on the local engine: build it first (npm run images -- build)`);
  }
  const root = await mkdtemp(join(tmpdir(), "crucible-bench-"));
  const code = join(root, "job");
  await mkdir(code);
  await writeFile(join(code, "main.py"), "def main():\n    return 1\n");
  const launcher = new DockerLauncher({ docker, logger: pino({ level: "silent" }), graceSeconds: 1 });
  let n = 0;
  const spec = (): JobSpecInput => ({ jobId: `bench-${process.pid}-${++n}`, code, tier: TIER, image: IMAGE });
  const launch = async (): Promise<void> => {
    const envelope = await launcher.run(spec());
    if (envelope.status !== "success") throw new Error(`bench job failed: ${JSON.stringify(envelope.error)}`);
  };

  // The baseline runs the same staged job (zip, output dir) with the same container spec.
  const staged = await prepareJob(spec(), { user: sandboxUser() });
  const baselineSpec = containerSpec({
    jobId: staged.spec.jobId,
    tier: staged.tier,
    image: IMAGE,
    env: {},
    user: sandboxUser(),
    hostPaths: { codeZip: staged.codeZip, output: staged.outputDir, workspace: staged.workspaceDir },
    owner: { pid: process.pid, host: hostname() },
    scratchDir: staged.scratchDir,
    graceSeconds: 1,
  });
  const dockerRun = () => run("docker", dockerRunArgs(baselineSpec));
  try {
    console.log(`image ${IMAGE}, tier ${TIER}, trivial job (main returns 1)`);
    const [launcherMs, dockerMs] = await alternate(PAIRS, launch, dockerRun);
    console.log(`launch, median of ${PAIRS} alternating pairs:`);
    console.log(`  DockerLauncher.run  ${launcherMs.toFixed(0)} ms`);
    console.log(`  docker run --rm     ${dockerMs.toFixed(0)} ms`);
    console.log(`  ratio launcher/docker run = ${(launcherMs / dockerMs).toFixed(3)} (goal <= 1.0)`);

    const cli = () =>
      run(process.execPath, [
        "--import",
        "tsx",
        join(__dirname, "../runtime/src/cli/bin/crucible.ts"),
        "run",
        code,
        "--tier",
        TIER,
        "--image",
        IMAGE,
        "--json",
      ]);
    const [cliMs, dockerMs2] = await alternate(CLI_PAIRS, cli, dockerRun);
    console.log(`CLI end to end (new tsx process per run), median of ${CLI_PAIRS} pairs:`);
    console.log(`  crucible run --json ${cliMs.toFixed(0)} ms vs docker run ${dockerMs2.toFixed(0)} ms`);
    console.log(`  ratio crucible run/docker run = ${(cliMs / dockerMs2).toFixed(3)}`);

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
  } finally {
    await disposeJob(staged);
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(`bench: ${error instanceof Error ? error.message : String(error)}`);
  process.exitCode = 1;
});
