import { execFile } from "node:child_process";
import { existsSync, readFileSync, realpathSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { envelopeSchema } from "../../../runtime/src/job/contract";
import { imageRef } from "../../../runtime/src/catalog/image-matrix";

/**
 * `crucible` as a researcher gets it: `npm pack -w runtime`, the tarball installed into an empty project
 * with `--ignore-scripts` (no infra, no compiler, nothing built or downloaded at install), then the
 * installed command run as a user runs it, a real sandboxed job included.
 */

const ROOT = join(__dirname, "../../..");
const IMAGE = process.env.CRUCIBLE_TEST_JOB_IMAGE ?? imageRef("cpu");
const { version: VERSION } = JSON.parse(readFileSync(join(ROOT, "runtime/package.json"), "utf8")) as {
  version: string;
};

interface Ran {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a command to its end; a failure is a result here, not an exception. */
function exec(file: string, args: readonly string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  return new Promise((resolve) =>
    execFile(
      file,
      args,
      { cwd, env: { ...process.env, CRUCIBLE_LOG_LEVEL: "warn", ...env }, maxBuffer: 64 * 1024 * 1024 },
      (error, stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    ),
  );
}

/** What a Node process ran: its main script and every CommonJS module it loaded. */
interface Loaded {
  readonly main: string;
  readonly modules: readonly string[];
}

/**
 * Runs a command with a probe preloaded into every Node process it starts (NODE_OPTIONS), each of which
 * appends what it loaded to a file when it exits.
 */
async function probed(
  file: string,
  args: readonly string[],
  cwd: string,
): Promise<Ran & { loaded: Loaded[] }> {
  const probe = await mkdtemp(join(dir, "probe-"));
  const out = join(probe, "loaded.jsonl");
  await writeFile(
    join(probe, "probe.js"),
    `process.on("exit", () => require("node:fs").appendFileSync(${JSON.stringify(out)}, JSON.stringify({ ` +
      `main: require("node:fs").realpathSync(process.argv[1] ?? "."), modules: Object.keys(require.cache) }) + "\\n"));\n`,
  );
  const ran = await exec(file, args, cwd, { NODE_OPTIONS: `--require ${join(probe, "probe.js")}` });
  const lines = existsSync(out) ? (await readFile(out, "utf8")).split("\n").filter(Boolean) : [];
  return { ...ran, loaded: lines.map((l) => JSON.parse(l) as Loaded) };
}

async function ok(file: string, args: readonly string[], cwd: string): Promise<Ran> {
  const ran = await exec(file, args, cwd);
  if (ran.code !== 0) throw new Error(`${file} ${args.join(" ")} exited ${ran.code}:\n${ran.stderr}`);
  return ran;
}

let dir: string;
/** The researcher's project: an empty package the tarball is installed into. */
let project: string;
/** The installed command, as npm links it. */
let crucible: string;
/** The tarball's paths, without its `package/` prefix. */
let packed: string[];
let job: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crucible-packaging-"));
  // prepack builds the package first (incremental: nothing to do when runtime/dist is current).
  await ok("npm", ["pack", "-w", "runtime", "--pack-destination", dir, "--silent"], ROOT);
  const [tarball, ...others] = (await readdir(dir)).filter((f) => f.endsWith(".tgz"));
  expect(others).toEqual([]);
  expect(tarball).toBe(`crucible-runtime-${VERSION}.tgz`);
  packed = (await ok("tar", ["-tzf", join(dir, tarball!)], dir)).stdout
    .split("\n")
    .filter(Boolean)
    .map((p) => p.replace(/^package\//, ""));

  project = join(dir, "project");
  await mkdir(project);
  await writeFile(join(project, "package.json"), JSON.stringify({ name: "researcher", private: true }));
  // From the npm cache `npm ci` filled; a machine without it fetches the dependencies from the registry.
  const install = ["install", join(dir, tarball!), "--prefer-offline", "--no-audit", "--no-fund"];
  await ok("npm", [...install, "--ignore-scripts"], project);
  crucible = join(project, "node_modules", ".bin", "crucible");

  job = join(dir, "job");
  await mkdir(job);
  await writeFile(
    join(job, "main.py"),
    'def main():\n    print("hi from the installed crucible")\n    return {"answer": 42}\n',
  );
}, 600_000);

afterAll(() => rm(dir, { recursive: true, force: true }));

describe("the runtime package", () => {
  it("packs the built CLI, the job templates and the GPU probe; no TypeScript source or build state", () => {
    expect(packed).toEqual(
      expect.arrayContaining([
        "package.json",
        "dist/cli/bin/crucible.js",
        "dist/cli/commands/run.js",
        "dist/catalog/index.js",
        "dist/catalog/index.d.ts",
        "dist/node/gpu/probe.py",
        "templates/hello/main.py",
      ]),
    );
    expect(packed.filter((p) => !/^(dist|templates)\/|^(package\.json|README\.md|LICENSE)$/.test(p))).toEqual(
      [],
    );
    expect(packed.filter((p) => /\.ts$/.test(p) && !p.endsWith(".d.ts"))).toEqual([]);
    expect(packed.filter((p) => /\.tsbuildinfo$|\.build-started$/.test(p))).toEqual([]);
  });

  it("declares every entry point in what it packs", () => {
    const manifest = JSON.parse(readFileSync(join(ROOT, "runtime/package.json"), "utf8")) as {
      bin: Record<string, string>;
      exports: Record<string, string | Record<string, string>>;
    };
    const targets = [
      ...Object.values(manifest.bin),
      ...Object.values(manifest.exports).flatMap((e) =>
        // "development" is the sources, for this repository only (not packed).
        typeof e === "string" ? [e] : Object.entries(e).flatMap(([k, v]) => (k === "development" ? [] : [v])),
      ),
    ].map((p) => p.replace(/^\.\//, ""));
    expect(targets.filter((t) => !packed.includes(t))).toEqual([]);
  });

  it("installs on its own with --ignore-scripts: no infra, no compiler, and nothing that needed its install scripts", async () => {
    const modules = join(project, "node_modules");
    for (const absent of ["@pulumi", "typescript", "tsx", "ts-node", "@crucible/runtime/src"])
      expect(existsSync(join(modules, absent)), absent).toBe(false);
    // Packages with install scripts, none of them run: ssh2 and cpu-features would compile optional
    // native speed-ups with node-gyp (ssh2 falls back to JavaScript; the CLI never uses ssh2, see
    // runtime/src/cli/bin/crucible.ts), protobufjs's postinstall only checks its own version. Nothing
    // downloads a binary; a new entry here is a dependency to look at.
    const lock = JSON.parse(await readFile(join(modules, ".package-lock.json"), "utf8")) as {
      packages: Record<string, { hasInstallScript?: boolean }>;
    };
    const scripted = Object.entries(lock.packages).filter(([, p]) => p.hasInstallScript);
    expect(scripted.map(([path]) => path).sort()).toEqual([
      "node_modules/cpu-features",
      "node_modules/protobufjs",
      "node_modules/ssh2",
    ]);
    expect(realpathSync(crucible)).toBe(join(modules, "@crucible/runtime/dist/cli/bin/crucible.js"));
  });
});

describe("the installed crucible command", () => {
  it("--version: the package's version", async () => {
    expect(await exec(crucible, ["--version"], project)).toEqual({
      code: 0,
      stdout: `${VERSION}\n`,
      stderr: "",
    });
  });

  it("stops quietly when its reader has gone (`crucible tiers | true`)", async () => {
    // `true` exits without reading long before Node has started, so every write of the command fails
    // with EPIPE; pipefail makes the pipeline's status the command's.
    const piped = await exec("bash", ["-c", `set -o pipefail; "${crucible}" tiers | true`], project);
    expect(piped).toEqual({ code: 0, stdout: "", stderr: "" });
  });

  it("templates: lists the templates it was packed with", async () => {
    const { code, stdout } = await exec(crucible, ["templates"], project);
    expect(code).toBe(0);
    for (const name of ["hello", "nanogpt", "numpy", "sklearn"])
      expect(stdout).toMatch(new RegExp(`^${name}\\b`, "m"));
  });

  it("run: a local job in the sandbox, its output and result on stdout", async () => {
    const ran = await exec(crucible, ["run", job, "--tier", "cpu-small", "--image", IMAGE], project);
    const image = IMAGE.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    expect({ code: ran.code, stdout: ran.stdout }).toEqual({
      code: 0,
      stdout: 'hi from the installed crucible\n{\n  "answer": 42\n}\n',
    });
    expect(ran.stderr).toMatch(
      new RegExp(`^job run-[a-z0-9]+-[0-9a-f]{6} succeeded in \\d+\\.\\d\\d s \\(cpu-small, ${image}\\)\\n$`),
    );
  });

  it("run --json: the job's envelope", async () => {
    const { code, stdout, stderr } = await exec(
      crucible,
      ["run", job, "--tier", "cpu-small", "--image", IMAGE, "--json"],
      project,
    );
    expect({ code, stderr }).toEqual({ code: 0, stderr: "" });
    const envelope = envelopeSchema.parse(JSON.parse(stdout));
    expect(envelope).toMatchObject({
      status: "success",
      result: { answer: 42 },
      exitCode: 0,
      systemInfo: { tier: "cpu-small", image: IMAGE },
    });
    expect(envelope.logs.stdout).toBe("hi from the installed crucible\n");
  });

  it("starts a run without loading the gRPC, ssh2 and zod locale code it never uses", async () => {
    // What `crucible run` loads, module by module, as it starts.
    const ran = await probed(crucible, ["run", "--help"], project);
    expect({ code: ran.code, processes: ran.loaded.length }).toEqual({ code: 0, processes: 1 });
    const loaded = ran.loaded[0]!.modules;
    const has = (pattern: RegExp) => loaded.some((f) => pattern.test(f));
    // The launcher and what it needs are loaded (so the check below means something) ...
    expect(has(/[\\/]dockerode[\\/]lib[\\/]docker\.js$/)).toBe(true);
    expect(has(/[\\/]zod[\\/]v4[\\/]locales[\\/]en\.cjs$/)).toBe(true);
    // ... and not the modules the command defers: dockerode or zod moved them if this fails.
    expect(
      loaded.filter((f) =>
        /[\\/](@grpc|protobufjs|ssh2)[\\/]|[\\/]zod[\\/]v4[\\/]locales[\\/]index\.cjs$/.test(f),
      ),
    ).toEqual([]);
  });
});

describe("crucible in this repository", () => {
  it.each([
    ["npx crucible", "npx", ["--no", "--", "crucible", "--version"]],
    ["npm run crucible", "npm", ["run", "--silent", "crucible", "--", "--version"]],
  ])("%s runs the built CLI (runtime/dist), not its TypeScript", async (_, file, args) => {
    const ran = await probed(file, args, ROOT);
    expect({ code: ran.code, stdout: ran.stdout }).toEqual({ code: 0, stdout: `${VERSION}\n` });
    // npm's own processes, and the CLI's: node runtime/dist/cli/bin/crucible.js, no tsx, no .ts.
    const cli = ran.loaded.filter((p) => p.main === join(ROOT, "runtime/dist/cli/bin/crucible.js"));
    expect(cli).toHaveLength(1);
    expect(cli[0]!.modules.filter((m) => /\.[cm]?ts$|[\\/]tsx[\\/]/.test(m))).toEqual([]);
  });
});
