import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { listDatasets } from "../../../runtime/src/job/datasets";
import { crucible } from "../../support/cli";

let root: string;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), "crucible-datasets-"));
  await mkdir(join(root, "shakespeare", "splits"), { recursive: true });
  await writeFile(join(root, "shakespeare", "input.txt"), "x".repeat(1000));
  await writeFile(join(root, "shakespeare", "splits", "val.txt"), "y".repeat(24));
  await writeFile(join(root, "digits.npz"), Buffer.alloc(2048));
});

afterAll(() => rm(root, { recursive: true, force: true }));

describe("datasets", () => {
  it("lists each top-level dataset with its files and bytes", async () => {
    expect(await listDatasets(root)).toEqual([
      { name: "digits.npz", files: 1, bytes: 2048 },
      { name: "shakespeare", files: 2, bytes: 1024 },
    ]);
  });

  it("names the missing directory and how to choose another", async () => {
    const { code, stderr } = await crucible(["datasets", "local", "--dir", join(root, "nope")]);
    expect(code).toBe(2);
    expect(stderr).toContain(`the datasets directory ${join(root, "nope")} does not exist`);
    expect(stderr).toContain("--dir or CRUCIBLE_DATASETS_DIR");
  });

  it("prints the listing from the CLI, with the directory from the environment", async () => {
    const { code, stdout } = await crucible(["datasets", "local", "--json"], undefined, {
      CRUCIBLE_DATASETS_DIR: root,
    });
    expect(code).toBe(0);
    expect((JSON.parse(stdout) as { name: string }[]).map((d) => d.name)).toEqual([
      "digits.npz",
      "shakespeare",
    ]);
  });
});
