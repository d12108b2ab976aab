import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { describe, expect, it } from "vitest";
import type { Envelope, JobSpecInput, Launcher } from "../../../../runtime/src/job/contract";
import { LauncherGpuProbe, PROBE_PATH } from "../../../../runtime/src/node/gpu/probe";
import { goodProbe, logger, settle } from "./fakes";

const RUNTIME = resolve(__dirname, "../../../../runtime");

describe("the probe script", () => {
  it("is probe.py beside its module, read from source, and compiles with python3", async () => {
    expect(PROBE_PATH).toBe(join(RUNTIME, "src/node/gpu/probe.py"));
    expect(existsSync(PROBE_PATH)).toBe(true);
    expect(await readFile(PROBE_PATH, "utf8")).toMatch(/^def main\(\):$/m);
    const out = await mkdtemp(join(tmpdir(), "crucible-gpu-probe-compile-"));
    try {
      // py_compile into a temporary file, so no __pycache__ lands beside the source.
      const compile =
        "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2], doraise=True)";
      execFileSync("python3", ["-c", compile, PROBE_PATH, join(out, "probe.pyc")], { stdio: "pipe" });
      expect(existsSync(join(out, "probe.pyc"))).toBe(true);
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });

  it("ships in the built package: the code build copies it into dist, the package's build runs that, and so does the agent image's compile stage", () => {
    const copy = "cp src/node/gpu/probe.py dist/node/gpu/";
    const pkg = JSON.parse(readFileSync(join(RUNTIME, "package.json"), "utf8")) as {
      scripts: Record<string, string>;
      files: string[];
    };
    expect(pkg.scripts["build:code"]).toContain(copy);
    expect(pkg.scripts.build).toContain("npm run -s build:code");
    expect(pkg.files).toContain("dist");
    const dockerfile = readFileSync(join(RUNTIME, "../images/agent/Dockerfile"), "utf8");
    expect(dockerfile).toContain("RUN npm run build:code --workspace runtime");
    expect(dockerfile).toContain("COPY --from=compile /build/runtime/dist /opt/crucible/runtime/dist");
  });
});

describe("LauncherGpuProbe", () => {
  function launcherAnswering(
    envelope: Partial<Envelope>,
  ): Launcher & { specs: JobSpecInput[]; code: string[] } {
    const launcher = {
      specs: [] as JobSpecInput[],
      code: [] as string[],
      gc: () => settle(0),
      run: async (spec: JobSpecInput): Promise<Envelope> => {
        launcher.specs.push(spec);
        launcher.code.push(await readFile(spec.code, "utf8"));
        return {
          jobId: spec.jobId ?? "",
          status: "success",
          exitCode: 0,
          executionTime: 7.5,
          timestamp: "2026-03-10T09:14:02Z",
          systemInfo: { jobId: spec.jobId ?? "", tier: "gpu-small", image: "crucible/ml-cuda", node: "n" },
          resources: {},
          logs: { stdout: "", stderr: "", truncated: false },
          ...envelope,
        };
      },
    };
    return launcher;
  }

  it("runs the probe script as a job of the tier, within its deadline, and removes its code after", async () => {
    const launcher = launcherAnswering({
      result: {
        torch: "2.6.0+cu126",
        torch_cuda: "12.6",
        cuda_available: true,
        devices: [{ name: "Tesla T4", max_relative_error: 3.1e-7 }],
      },
    });
    const facts = await new LauncherGpuProbe(launcher, "gpu-small", logger).run();
    expect(facts).toEqual(goodProbe("Tesla T4"));
    const [spec] = launcher.specs;
    expect(spec).toEqual({
      jobId: expect.stringMatching(/^gpu-probe-[a-z0-9]+$/) as string,
      tier: "gpu-small",
      code: expect.stringMatching(/crucible-gpu-probe-[^/]+\/main\.py$/) as string,
      timeoutSeconds: 120,
    });
    expect(launcher.code).toEqual([await readFile(PROBE_PATH, "utf8")]);
    expect(existsSync(dirname(spec?.code ?? ""))).toBe(false);
  });

  it("rejects with the job's reason, message and stderr tail when the job fails", async () => {
    const launcher = launcherAnswering({
      status: "error",
      reason: "exception",
      error: { type: "RuntimeError", message: "CUDA error: no kernel image is available" },
      logs: { stdout: "", stderr: `${"x".repeat(2000)}\nRuntimeError: CUDA error\n`, truncated: true },
    });
    const failure = await new LauncherGpuProbe(launcher, "gpu-small", logger).run().catch((e: Error) => e);
    expect((failure as Error).message).toBe(
      `the probe job failed (exception): CUDA error: no kernel image is available; stderr: ${"x".repeat(475)}\nRuntimeError: CUDA error`,
    );
    expect(existsSync(dirname(launcher.specs[0]?.code ?? ""))).toBe(false);
  });

  it("rejects a result that is not the probe's", async () => {
    const launcher = launcherAnswering({ result: { hello: "world" } });
    await expect(new LauncherGpuProbe(launcher, "gpu-small", logger).run()).rejects.toThrow(
      'the probe job returned {"hello":"world"}',
    );
  });
});
