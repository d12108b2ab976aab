import Dockerode from "dockerode";
import { chown, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import yazl from "yazl";
import { DockerEngine } from "../../runtime/src/launch/docker/container-engine";
import { readRunnerResult } from "../../runtime/src/launch/docker/docker-launcher";
import type { JobUserLease } from "../../runtime/src/launch/sandbox";
import {
  callerUser,
  containerSpec,
  effectiveTier,
  leaseJobUser,
  perJobUsers,
} from "../../runtime/src/launch/sandbox";

const engine = new DockerEngine(new Dockerode(), pino({ level: "silent" }));

export interface RunnerRun {
  readonly exitCode: number;
  readonly runner: Awaited<ReturnType<typeof readRunnerResult>>;
  readonly output: string;
}

/**
 * Runs an image's job runner on a code.zip given as bytes, in the same sandbox the launcher builds, but
 * without the launcher's own checks of the archive: this is how the runner's defences are tested alone.
 */
export async function runRunner(image: string, zip: Buffer, jobId: string): Promise<RunnerRun> {
  const scratch = await mkdtemp(join(tmpdir(), "crucible-runner-test-"));
  // As the launcher: a uid of its own on a root runtime (output stays the supervisor's), else the caller.
  const lease: JobUserLease | undefined = perJobUsers()
    ? await leaseJobUser({ pid: process.pid, host: hostname() })
    : undefined;
  const user = lease?.user ?? callerUser();
  let id: string | undefined;
  try {
    const codeZip = join(scratch, "code.zip");
    await writeFile(codeZip, zip, { mode: 0o644 });
    for (const dir of ["output", "workspace"]) await mkdir(join(scratch, dir), { mode: 0o700 });
    if (lease) await chown(join(scratch, "workspace"), user.uid, user.gid);
    id = await engine.create(
      containerSpec({
        jobId,
        tier: effectiveTier("cpu-small").tier,
        image,
        env: {},
        user,
        separateSupervisor: lease !== undefined,
        hostPaths: { codeZip, output: join(scratch, "output"), workspace: join(scratch, "workspace") },
        owner: { pid: process.pid, host: hostname() },
        scratchDir: scratch,
        graceSeconds: 1,
      }),
      { jobId },
    );
    let output = "";
    const attached = await engine.attach(id, { jobId }, (_stream, chunk) => (output += chunk.toString()));
    await engine.start(id, { jobId });
    const exitCode = await engine.wait(id, { jobId });
    await attached.ended;
    return { exitCode, runner: await readRunnerResult(join(scratch, "output")), output };
  } finally {
    if (id) await engine.remove(id, { jobId });
    await rm(scratch, { recursive: true, force: true });
    await lease?.release();
  }
}

export interface ZipEntry {
  readonly name: string;
  readonly data: Buffer | string;
  /** Unix mode with the file type bits, e.g. 0o120777 for a symbolic link (data is then its target). */
  readonly mode?: number;
  readonly compress?: boolean;
}

/**
 * A zip archive. Names that well-behaved zip writers refuse (`../x`, `/x`) are written by giving a
 * same-length stand-in to the writer and then replacing it in the archive's bytes: the format does not
 * checksum names, so the result is exactly what a hostile archive holds.
 */
export async function makeZip(entries: readonly ZipEntry[]): Promise<Buffer> {
  const zip = new yazl.ZipFile();
  const replacements: [Buffer, Buffer][] = [];
  entries.forEach((entry, index) => {
    const hostile = entry.name.startsWith("/") || entry.name.split("/").includes("..");
    const name = hostile ? standIn(entry.name, index) : entry.name;
    if (hostile) replacements.push([Buffer.from(name), Buffer.from(entry.name)]);
    const data = typeof entry.data === "string" ? Buffer.from(entry.data) : entry.data;
    zip.addBuffer(data, name, { mode: entry.mode ?? 0o100644, compress: entry.compress ?? true });
  });
  zip.end();
  const chunks: Buffer[] = [];
  for await (const chunk of zip.outputStream) chunks.push(chunk as Buffer);
  let bytes: Buffer = Buffer.concat(chunks);
  for (const [from, to] of replacements) bytes = replaceAll(bytes, from, to);
  return bytes;
}

function standIn(name: string, index: number): string {
  const prefix = `z${index}`;
  return (prefix + "x".repeat(name.length)).slice(0, name.length);
}

function replaceAll(bytes: Buffer, from: Buffer, to: Buffer): Buffer {
  const out = Buffer.from(bytes);
  for (let at = out.indexOf(from); at !== -1; at = out.indexOf(from, at + to.length)) to.copy(out, at);
  return out;
}
