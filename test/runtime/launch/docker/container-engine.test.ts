import Dockerode from "dockerode";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { DockerEngine, isNoSuchContainer } from "../../../../runtime/src/launch/docker/container-engine";
import { DEBIAN_BASE } from "../../../../runtime/src/catalog/image-matrix";

const docker = new Dockerode();
const engine = new DockerEngine(docker, pino({ level: "silent" }));

describe("DockerEngine", () => {
  it("streams output, waits, and stops and removes idempotently", async () => {
    const label = { "crucible.test": `engine-${process.pid}` };
    const ctx = { jobId: "engine-test" };
    const id = await engine.create(
      {
        Image: DEBIAN_BASE,
        Cmd: ["sh", "-c", "echo out; echo err >&2; exec sleep 60"],
        Labels: label,
        HostConfig: { NetworkMode: "none", Init: true },
      },
      ctx,
    );
    try {
      const chunks: string[] = [];
      let sawBoth: () => void = () => undefined;
      const both = new Promise<void>((resolve) => (sawBoth = resolve));
      const attached = await engine.attach(id, ctx, (stream, chunk) => {
        chunks.push(`${stream}:${chunk.toString()}`);
        if (chunks.join("").includes("stdout:out") && chunks.join("").includes("stderr:err")) sawBoth();
      });
      await engine.start(id, ctx);
      await both;
      expect((await engine.listByLabel(label)).map((c) => c.Id)).toEqual([id]);

      expect(await engine.kill(id, "SIGKILL", ctx)).toBe(true);
      expect(await engine.wait(id, ctx)).toBe(137);
      await attached.ended;
      expect(await engine.kill(id, "SIGTERM", ctx)).toBe(false);
      expect((await engine.inspect(id, ctx)).State.Running).toBe(false);
    } finally {
      expect(await engine.remove(id, ctx)).toBe(true);
    }
    expect(await engine.remove(id, ctx)).toBe(false);
    expect(await engine.kill(id, "SIGKILL", ctx)).toBe(false);
    const error = await engine.inspect(id, ctx).catch((e: unknown) => e);
    expect(isNoSuchContainer(error)).toBe(true);
    expect(await engine.listByLabel(label)).toEqual([]);
  });
});
