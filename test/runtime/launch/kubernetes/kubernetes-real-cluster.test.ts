import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { JobSpecInput } from "../../../../runtime/src/job/contract";
import { connectKubernetes } from "../../../../runtime/src/launch/kubernetes/kubernetes-api";
import { KubernetesLauncher } from "../../../../runtime/src/launch/kubernetes/kubernetes-launcher";

/**
 * The Kubernetes launcher on a real cluster, the flow the loopback tests show (kubernetes-files.test.ts,
 * kubernetes-agent.test.ts) with a real kubelet, the job image's runner and its keeper: a job resumes
 * from its checkpoint, its outputs come back byte for byte, a dataset is readable and read-only, a pod
 * deleted mid-run ends as `interrupted` with what the job checkpointed in its grace. Skipped unless
 * CRUCIBLE_K8S_TEST_KUBECONFIG names a cluster (README, "Kubernetes target", "Testing on a cluster").
 */

const REAL = process.env.CRUCIBLE_K8S_TEST_KUBECONFIG;
const NAMESPACE = process.env.CRUCIBLE_K8S_TEST_NAMESPACE ?? "crucible-dev";
const IMAGE = process.env.CRUCIBLE_K8S_TEST_IMAGE;
const logger = pino({ level: process.env.AGENT_TEST_LOG ?? "silent" });
/** A real cluster pulls images and schedules pods: minutes, not seconds. */
const REAL_MS = 300_000;
/** What the job writes as its output: 1 MiB of every byte value. */
const MODEL = Buffer.alloc(1024 * 1024, Buffer.from(Array.from({ length: 256 }, (_, i) => i)));

const TRAINER = [
  "import os, signal, time",
  "from crucible import checkpoint_dir, output_dir, progress",
  "def main():",
  '    path = checkpoint_dir() / "step"',
  "    start = int(path.read_text()) if path.exists() else 0",
  "    stop = []",
  "    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))",
  '    total, pause = int(os.environ["TOTAL"]), float(os.environ["PAUSE"])',
  "    step = start",
  "    while step < total:",
  "        if stop:",
  '            return {"stopped": step}',
  "        step += 1",
  "        path.write_text(str(step))",
  "        progress(step=step, total=total)",
  "        time.sleep(pause)",
  '    (output_dir() / "model.bin").write_bytes(bytes(range(256)) * 4096)',
  '    return {"resumed_from": start, "steps": step}',
].join("\n");

const READER = [
  "import errno",
  "def main():",
  "    try:",
  '        open("/datasets/corpus/planted.txt", "w").write("x")',
  '        write = "written"',
  "    except OSError as e:",
  "        write = errno.errorcode[e.errno]",
  '    return {"train": open("/datasets/corpus/train.txt").read(), "write": write}',
].join("\n");

describe.skipIf(!REAL)("on a real cluster (CRUCIBLE_K8S_TEST_KUBECONFIG)", () => {
  let root: string;
  let launcher: KubernetesLauncher;
  let counter = 0;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), "crucible-k8s-real-"));
    launcher = new KubernetesLauncher({
      api: await connectKubernetes(logger, REAL),
      namespace: NAMESPACE,
      logger,
      node: "crucible-test-runner",
      graceSeconds: 10,
      ...(IMAGE && { images: { cpu: IMAGE } }),
    });
  });

  afterAll(async () => {
    if (root) await rm(root, { recursive: true, force: true });
  });

  /** A job of `main.py` with `files` in its workspace. */
  async function job(
    main: string,
    files: Record<string, string> = {},
    extra: Partial<JobSpecInput> = {},
  ): Promise<JobSpecInput & { workspaceDir: string }> {
    const jobId = `k8s-real-${process.pid}-${++counter}`;
    const code = join(root, jobId, "code");
    const workspaceDir = join(root, jobId, "workspace");
    await mkdir(code, { recursive: true });
    await writeFile(join(code, "main.py"), main);
    for (const [path, data] of Object.entries(files)) {
      await mkdir(join(workspaceDir, path, ".."), { recursive: true });
      await writeFile(join(workspaceDir, path), data);
    }
    await mkdir(workspaceDir, { recursive: true });
    return { jobId, code, tier: "cpu-small", imageFamily: "cpu", workspaceDir, ...extra };
  }

  it(
    "resumes from the checkpoint in its workspace, and its checkpoints and outputs come back byte for byte",
    async () => {
      const spec = await job(TRAINER, { "checkpoints/step": "3" }, { env: { TOTAL: "6", PAUSE: "0" } });
      const envelope = await launcher.run(spec);
      expect(envelope).toMatchObject({
        status: "success",
        result: { resumed_from: 3, steps: 6 },
        exitCode: 0,
      });
      expect(await readFile(join(spec.workspaceDir, "checkpoints", "step"), "utf8")).toBe("6");
      expect((await readFile(join(spec.workspaceDir, "outputs", "model.bin"))).equals(MODEL)).toBe(true);
    },
    REAL_MS,
  );

  it(
    "mounts a dataset readable and read-only",
    async () => {
      const corpus = join(root, "corpus");
      await mkdir(corpus, { recursive: true });
      await writeFile(join(corpus, "train.txt"), "to be or not to be\n");
      const envelope = await launcher.run(await job(READER, {}, { datasetDirs: { corpus } }));
      expect(envelope).toMatchObject({
        status: "success",
        result: { train: "to be or not to be\n", write: "EROFS" },
      });
    },
    REAL_MS,
  );

  it(
    "ends as interrupted when its pod is deleted mid-run, with what the job checkpointed in its grace",
    async () => {
      const k8s = await import("@kubernetes/client-node");
      const config = new k8s.KubeConfig();
      config.loadFromFile(REAL!);
      const core = config.makeApiClient(k8s.CoreV1Api);
      const spec = await job(TRAINER, {}, { env: { TOTAL: "1000", PAUSE: "0.5" } });
      let deleting: Promise<unknown> | undefined;
      const envelope = await launcher.run(spec, {
        onProgress: (event) => {
          if ((event.step ?? 0) < 3 || deleting) return;
          // What a drain or a node's loss does to the pod: the cluster deletes it.
          deleting = core
            .listNamespacedPod({ namespace: NAMESPACE, labelSelector: `crucible.dev/job-id=${spec.jobId}` })
            .then((pods) =>
              Promise.all(
                pods.items.map((p) =>
                  core.deleteNamespacedPod({ namespace: NAMESPACE, name: p.metadata!.name! }),
                ),
              ),
            );
        },
      });
      await deleting;
      expect(envelope).toMatchObject({
        status: "error",
        reason: "interrupted",
        error: { type: "PodDisrupted" },
      });
      const step = Number(await readFile(join(spec.workspaceDir, "checkpoints", "step"), "utf8"));
      expect(step).toBeGreaterThanOrEqual(3);
    },
    REAL_MS,
  );
});
