import Dockerode from "dockerode";
import { createHash } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { createServer } from "node:http";
import type { Server } from "node:http";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ZipFile } from "yazl";
import { NodeEnvironments, stackPackageIndex } from "../../../runtime/src/agent/job-environment";
import type { Agent } from "../../../runtime/src/agent/agent";
import type { Envelope } from "../../../runtime/src/job/contract";
import { SubmitError, submitJob } from "../../../runtime/src/job/submit";
import { packageCode } from "../../../runtime/src/job/code-source";
import { DockerEngine } from "../../../runtime/src/launch/docker/container-engine";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import type { JobAddress } from "../../../runtime/src/store/job-store";
import { logText, readLogRecords } from "../../../runtime/src/store/job-log";
import { localAgent, next, useLocalPlatform } from "../../support/local-agents";

/**
 * Job environments end to end on the local platform: a package index this test serves on loopback from
 * wheels it builds itself, an agent that builds a job's requirements.txt into an environment outside the
 * sandbox, and jobs that import from it — while still having no network, no pip and a read-only root.
 */
const logger = pino({ level: process.env.AGENT_TEST_LOG ?? "silent" });
const TIER = "cpu-large" as const;
const WAIT_MS = 240_000;
const local = useLocalPlatform(TIER, logger, { visibilityTimeoutSeconds: 30 });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
let counter = 0;

/** A wheel (a zip with its dist-info), built here: `files` maps paths inside it to their text. */
async function wheel(name: string, version: string, files: Record<string, string>): Promise<Buffer> {
  const module = name.replace(/-/g, "_");
  const info = `${module}-${version}.dist-info`;
  const all: Record<string, string> = {
    ...files,
    [`${info}/METADATA`]: `Metadata-Version: 2.1\nName: ${name}\nVersion: ${version}\n`,
    [`${info}/WHEEL`]:
      "Wheel-Version: 1.0\nGenerator: crucible-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
  };
  const record = Object.entries(all).map(([path, text]) => {
    const digest = createHash("sha256").update(text).digest("base64url");
    return `${path},sha256=${digest},${Buffer.byteLength(text)}`;
  });
  all[`${info}/RECORD`] = `${record.join("\n")}\n${info}/RECORD,,\n`;
  const zip = new ZipFile();
  for (const [path, text] of Object.entries(all)) zip.addBuffer(Buffer.from(text), path);
  zip.end();
  const chunks: Buffer[] = [];
  for await (const chunk of zip.outputStream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

interface Served {
  readonly server: Server;
  readonly url: string;
  readonly hits: string[];
}

async function serve(
  handler: (path: string) => { type: string; body: Buffer | string } | undefined,
): Promise<Served> {
  const hits: string[] = [];
  const server = createServer((req, res) => {
    hits.push(req.url ?? "");
    const answer = handler(req.url ?? "");
    if (!answer) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": answer.type }).end(answer.body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits };
}

let index: Served;
let elsewhere: Served;
let environments: NodeEnvironments;
let agent: Agent;
let running: Promise<void>;

beforeAll(async () => {
  // A second service on this machine, which no build may reach.
  elsewhere = await serve((path) =>
    path.endsWith(".whl")
      ? { type: "application/octet-stream", body: Buffer.from("not a wheel") }
      : undefined,
  );
  const wheels = new Map<string, Buffer>([
    [
      "crucible_tinypkg-1.0.0-py3-none-any.whl",
      await wheel("crucible-tinypkg", "1.0.0", { "crucible_tinypkg/__init__.py": 'VALUE = "tiny"\n' }),
    ],
    [
      "crucible_datapkg-0.2.0-py3-none-any.whl",
      await wheel("crucible-datapkg", "0.2.0", {
        "crucible_datapkg/__init__.py":
          'from importlib.resources import files\n\ndef words():\n    return files(__name__).joinpath("data/words.txt").read_text().split()\n',
        "crucible_datapkg/data/words.txt": "alpha beta gamma\n",
      }),
    ],
  ]);
  const projects: Record<string, string[]> = {
    "crucible-tinypkg": ["crucible_tinypkg-1.0.0-py3-none-any.whl"],
    "crucible-datapkg": ["crucible_datapkg-0.2.0-py3-none-any.whl"],
  };
  index = await serve((path) => {
    const project = /^\/simple\/([^/]+)\/$/.exec(path)?.[1];
    if (project === "crucible-escape")
      // Its file lives on the other service: pip follows the link through the proxy, which refuses it.
      return {
        type: "text/html",
        body: `<a href="${elsewhere.url}/files/crucible_escape-1.0-py3-none-any.whl">crucible_escape-1.0-py3-none-any.whl</a>`,
      };
    if (project && projects[project]) {
      const links = projects[project].map((file) => {
        const digest = createHash("sha256").update(wheels.get(file)!).digest("hex");
        return `<a href="/files/${file}#sha256=${digest}">${file}</a>`;
      });
      return { type: "text/html", body: `<!DOCTYPE html><html><body>${links.join("\n")}</body></html>` };
    }
    const file = /^\/files\/([^/]+)$/.exec(path)?.[1];
    const body = file && wheels.get(file);
    return body ? { type: "application/octet-stream", body } : undefined;
  });
  const docker = new Dockerode();
  environments = await NodeEnvironments.open({
    s3: local.platform.s3,
    bucket: local.platform.datasetsBucket,
    tier: TIER,
    docker,
    engine: new DockerEngine(docker, logger),
    root: join(local.root, "environment-cache"),
    logger,
    index: stackPackageIndex(`${index.url}/simple/`, "us-east-1"),
    deny: ["crucible-forbidden"],
  });
  agent = localAgent(local.platform, TIER, launcher, logger, { environments });
  running = agent.run();
}, 600_000);

afterAll(async () => {
  agent?.stop("interrupted", 0);
  await running;
  index?.server.close();
  elsewhere?.server.close();
});

/**
 * Submits as ada; `bypassingChecks` writes the job's objects and message as a hostile submitter could,
 * without the submission's own checks, so what the agent refuses by itself shows.
 */
async function submit(main: string, requirements: string, bypassingChecks = false): Promise<JobAddress> {
  const jobId = `env-${process.pid}-${++counter}`;
  const dir = join(local.root, jobId);
  await mkdir(dir);
  await writeFile(join(dir, "main.py"), main);
  await writeFile(join(dir, "requirements.txt"), requirements);
  const submitter = local.platform.as("lab", "ada");
  const address = { project: "lab", user: "ada", jobId };
  const spec = { jobId, tier: TIER, imageFamily: "cpu" as const, env: {} };
  if (!bypassingChecks)
    return submitJob(submitter.store, submitter.queue(TIER), { path: dir, address, spec, quotaGiB: 1 });
  const zip = join(local.root, `${jobId}.zip`);
  await packageCode(dir, "directory", zip);
  await submitter.store.putCode(address, zip);
  await submitter.store.putSpec(address, { ...spec, priority: "normal" });
  await submitter.queue(TIER).send(address);
  return address;
}

async function run(
  main: string,
  requirements: string,
  bypassingChecks = false,
): Promise<{ envelope: Envelope; log: string; ms: number }> {
  const started = performance.now();
  const address = await submit(main, requirements, bypassingChecks);
  const [, envelope] = await next<[JobAddress, Envelope]>(agent, "finished", address.jobId, WAIT_MS);
  const ms = performance.now() - started;
  const logs = local.platform.store.logSeries(address);
  return { envelope, log: logText(await readLogRecords(logs, await logs.list())), ms };
}

const USES_PACKAGES = `
import os, shutil, socket, sys
import crucible_tinypkg, crucible_datapkg

def main():
    checks = {}
    try:
        socket.create_connection(("127.0.0.1", int(os.environ["INDEX_PORT"])), timeout=2).close()
        checks["network"] = "reached the index"
    except OSError as error:
        checks["network"] = type(error).__name__
    try:
        import pip  # noqa: F401
        checks["pip"] = "importable"
    except ImportError:
        checks["pip"] = "absent"
    checks["pip_command"] = shutil.which("pip") or shutil.which("pip3") or "absent"
    for name, path in (("root", "/usr/crucible-probe"), ("environment", crucible_tinypkg.__file__ + ".probe")):
        try:
            open(path, "w").close()
            checks[name] = "writable"
        except OSError as error:
            checks[name] = error.strerror
    return {"value": crucible_tinypkg.VALUE, "words": crucible_datapkg.words(), "checks": checks,
            "from": os.path.dirname(crucible_tinypkg.__file__)}
`;

describe("job environments on the local platform", () => {
  it(
    "builds a job's requirements.txt into an environment the job imports, offline and read-only, and a second job reuses it without a build",
    async () => {
      const requirements = "crucible-tinypkg==1.0.0\ncrucible_datapkg  # data file inside\n";
      const main = USES_PACKAGES.replace('os.environ["INDEX_PORT"]', String(new URL(index.url).port));
      const first = await run(main, requirements);
      expect(first.envelope).toMatchObject({
        status: "success",
        result: {
          value: "tiny",
          words: ["alpha", "beta", "gamma"],
          checks: {
            network: "ConnectionRefusedError",
            pip: "absent",
            pip_command: "absent",
            root: "Read-only file system",
            environment: "Read-only file system",
          },
        },
      });
      expect((first.envelope.result as { from: string }).from).toMatch(/^\/opt\/crucible\/env\//);
      expect(first.log).toMatch(/building environment [0-9a-f]{12} for requirements.txt \(2 requirements\)/);
      expect(first.log).toMatch(/installed: crucible-datapkg==0\.2\.0, crucible-tinypkg==1\.0\.0/);

      // The same requirements written differently: one environment.
      const second = await run(main, "crucible_datapkg\n\ncrucible-tinypkg == 1.0.0\n");
      expect(second.envelope).toMatchObject({ status: "success", result: { value: "tiny" } });
      expect(second.log).toMatch(/environment [0-9a-f]{12} is cached on this node; no build/);
      expect(second.log).not.toMatch(/building environment/);
      process.stdout.write(
        `job environments: first job (with the build) ${Math.round(first.ms)} ms, second (cached) ${Math.round(second.ms)} ms\n`,
      );
    },
    WAIT_MS * 2,
  );

  it(
    "needs nothing from the index for requirements the image already satisfies",
    async () => {
      const { envelope, log } = await run(
        "import numpy\n\ndef main():\n    return numpy.__name__\n",
        "numpy\nscipy>=1\n",
      );
      expect(envelope).toMatchObject({ status: "success", result: "numpy" });
      expect(log).toMatch(/installed: nothing \(the image has it all\)/);
      expect(index.hits.filter((path) => /numpy|scipy/.test(path))).toEqual([]);
    },
    WAIT_MS,
  );

  it(
    "fails a pin the index cannot satisfy before the job runs, naming the requirement and the versions there are",
    async () => {
      const { envelope, log } = await run("def main():\n    return 1\n", "crucible-tinypkg==9.9\n");
      expect(envelope).toMatchObject({ status: "error", reason: "invalid_job" });
      expect(envelope.error?.message).toBe(
        "requirements: requirement crucible-tinypkg==9.9 cannot be satisfied from the stack's package index: the versions it has are 1.0.0",
      );
      expect(log).toMatch(/No matching distribution found for crucible-tinypkg==9\.9/);
    },
    WAIT_MS,
  );

  it(
    "fails a package the index does not have, naming it",
    async () => {
      const { envelope } = await run("def main():\n    return 1\n", "crucible-missingpkg\n");
      expect(envelope).toMatchObject({ status: "error", reason: "invalid_job" });
      expect(envelope.error?.message).toBe(
        "requirements: requirement crucible-missingpkg cannot be satisfied from the stack's package index: it has no such package",
      );
    },
    WAIT_MS,
  );

  it(
    "refuses a build that reaches for another service on this machine: only the index is let through",
    async () => {
      const { envelope } = await run("def main():\n    return 1\n", "crucible-escape\n");
      const other = new URL(elsewhere.url);
      expect(envelope).toMatchObject({ status: "error", reason: "invalid_job" });
      expect(envelope.error?.message).toContain(
        `the environment build tried to reach ${other.hostname}:${other.port}, which is not the stack's package index`,
      );
      expect(elsewhere.hits).toEqual([]);
    },
    WAIT_MS,
  );

  it("refuses at submission what an agent would refuse, storing and queueing nothing", async () => {
    const submitter = local.platform.as("lab", "ada");
    const attempt = async (requirements: string, packages?: { deny: string[] }) => {
      const jobId = `env-${process.pid}-${++counter}`;
      const dir = join(local.root, jobId);
      await mkdir(dir);
      await writeFile(join(dir, "main.py"), "def main():\n    return 1\n");
      await writeFile(join(dir, "requirements.txt"), requirements);
      const address = { project: "lab", user: "ada", jobId };
      const refused = submitJob(submitter.store, submitter.queue(TIER), {
        path: dir,
        address,
        spec: { jobId, tier: TIER, imageFamily: "cpu", env: {} },
        quotaGiB: 1,
        ...(packages && { packages }),
      });
      await expect(refused).rejects.toBeInstanceOf(SubmitError);
      expect(await submitter.store.getState(address)).toBeUndefined();
      return refused.catch((error: Error) => error.message);
    };
    expect(await attempt("-r other.txt\n")).toContain(
      "requirements.txt line 1 (-r other.txt): options such as -r are not allowed",
    );
    expect(await attempt("Crucible_Forbidden\n", { deny: ["crucible-forbidden"] })).toBe(
      "requirements.txt: crucible-forbidden is on this stack's deny list (crucible:environments.deny)",
    );
    expect(await local.platform.queue(TIER, "normal").waiting()).toBe(0);
  });

  it(
    "refuses options and direct references that got past submission, and packages on the stack's deny list, before any build",
    async () => {
      const options = await run(
        "def main():\n    return 1\n",
        "--extra-index-url http://example.invalid/simple\n",
        true,
      );
      expect(options.envelope.error?.message).toContain("requirements.txt line 1 (--extra-index-url");
      const url = await run(
        "def main():\n    return 1\n",
        `crucible-tinypkg @ ${elsewhere.url}/x.whl\n`,
        true,
      );
      expect(url.envelope.error?.message).toContain("direct references (URLs and paths) are not allowed");
      const denied = await run("def main():\n    return 1\n", "Crucible_Forbidden==1\n");
      expect(denied.envelope.error?.message).toBe(
        "requirements: crucible-forbidden is on this stack's deny list (crucible:environments.deny)",
      );
      expect(elsewhere.hits).toEqual([]);
    },
    WAIT_MS,
  );
});
