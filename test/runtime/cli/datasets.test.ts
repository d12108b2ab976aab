import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import { crucible } from "../../support/cli";

let platform: LocalPlatform;
let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-datasets-cli-"));
  platform = await startLocalPlatform({
    tiers: ["cpu-small"],
    logger: pino({ level: "silent" }),
    dataDir: join(root, "data"),
  });
});

afterAll(async () => {
  await platform?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

/** The CLI as lab/ada, reaching the platform as a stack's submitter would. */
const cli = (args: string[]) =>
  crucible(args, undefined, {
    ...platform.as("lab", "ada").env(),
    CRUCIBLE_PROJECT: "lab",
    CRUCIBLE_USER: "ada",
    CRUCIBLE_LOCAL: "",
  });

describe("crucible datasets", () => {
  it("pushes a version, says when the content is already there, and lists it", async () => {
    const dir = join(root, "corpus");
    await mkdir(join(dir, "val"), { recursive: true });
    await writeFile(join(dir, "train.txt"), "x".repeat(2048));
    await writeFile(join(dir, "val", "a.txt"), "y");
    const pushed = await cli(["datasets", "push", "corpus", dir]);
    expect(pushed.code).toBe(0);
    expect(pushed.stdout).toMatch(/^pushed corpus@1 \(2 files, 2\.0 KiB, sha256:[0-9a-f]{64}\)\n$/);
    const again = await cli(["datasets", "push", "corpus", dir, "--json"]);
    expect(JSON.parse(again.stdout)).toMatchObject({
      name: "corpus",
      version: 1,
      fileCount: 2,
      created: false,
    });
    expect((await cli(["datasets", "push", "corpus", dir])).stdout).toBe(
      "corpus@1 already holds this content\n",
    );

    const listed = await cli(["datasets", "ls"]);
    expect(listed.code).toBe(0);
    const lines = listed.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^DATASET\s+FILES\s+SIZE\s+CREATED\s+SOURCE$/);
    expect(lines[1]).toMatch(/^corpus@1\s+2\s+2\.0 KiB\s+\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\s+yours$/);
    const json = JSON.parse((await cli(["datasets", "ls", "--json"])).stdout) as unknown[];
    expect(json).toEqual([
      expect.objectContaining({ name: "corpus", version: 1, totalBytes: 2049, source: "yours" }),
    ]);
  });

  it("refuses a bad name or a reserved one as usage, exit code 2", async () => {
    const dir = join(root, "one");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "f"), "z");
    const bad = await cli(["datasets", "push", "Shakespeare!", dir]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain("dataset name must be 1-64 lowercase letters");
    const reserved = await cli(["datasets", "push", "sklearn", dir]);
    expect(reserved.code).toBe(2);
    expect(reserved.stderr).toContain(`"sklearn" is the name of one of the platform's pre-cached datasets`);
  });

  it("keeps pushed datasets across a restart of the local platform", async () => {
    await platform.stop();
    platform = await startLocalPlatform({
      tiers: ["cpu-small"],
      logger: pino({ level: "silent" }),
      dataDir: join(root, "data"),
    });
    const resolved = await platform.datasets.resolve(
      { project: "lab", user: "ada" },
      { name: "corpus", version: 1 },
    );
    expect(resolved.manifest.files.map((f) => f.path)).toEqual(["train.txt", "val/a.txt"]);
  });
});
