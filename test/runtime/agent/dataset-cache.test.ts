import { PutObjectCommand } from "@aws-sdk/client-s3";
import Dockerode from "dockerode";
import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import {
  DatasetCache,
  DatasetCacheBusyError,
  DatasetIntegrityError,
  DatasetTooLargeError,
} from "../../../runtime/src/agent/dataset-cache";
import { precachedSeeds } from "../../../runtime/src/agent/image-files";
import { buildManifest } from "../../../runtime/src/catalog/datasets";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import type { ResolvedDataset } from "../../../runtime/src/store/dataset-store";
import { DatasetStore } from "../../../runtime/src/store/dataset-store";

const OWNER = { project: "lab", user: "ada" } as const;
const logger = pino({ level: "silent" });

let platform: LocalPlatform;
let root: string;
let store: DatasetStore;
let cases = 0;

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: ["cpu-small"], logger });
  root = await mkdtemp(join(tmpdir(), "crucible-dataset-cache-"));
  // The agent's view: it resolves with the job's owner, through its own credentials.
  store = new DatasetStore({ s3: platform.s3, bucket: platform.datasetsBucket, logger });
});

afterAll(async () => {
  await platform?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

/** Pushes `files` as the owner's `name` and resolves the version as an agent would. */
async function dataset(name: string, files: Record<string, string>): Promise<ResolvedDataset> {
  const dir = join(root, "src", `${name}-${++cases}`);
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(dir, path, ".."), { recursive: true });
    await writeFile(join(dir, path), text);
  }
  const { manifest } = await platform.as(OWNER.project, OWNER.user).datasets.push(OWNER, name, dir);
  return store.resolve(OWNER, manifest);
}

const newCache = (capacityBytes: number, dir = join(root, `cache-${++cases}`)) =>
  new DatasetCache({ root: dir, capacityBytes, store, logger, node: "a cpu-large node" });

describe("DatasetCache", () => {
  it("refuses a dataset larger than the whole cache, naming both sizes", async () => {
    const manifest = buildManifest({ name: "big", version: 3 }, [
      { path: "x.bin", size: 12 * 1024 ** 3, sha256: "a".repeat(64) },
    ]);
    const cache = newCache(8 * 1024 ** 3);
    const refused = cache.acquire({ manifest, prefix: "users/lab/ada/" });
    await expect(refused).rejects.toBeInstanceOf(DatasetTooLargeError);
    await expect(refused).rejects.toThrow(
      "big@3 is 12.0 GiB, more than the 8 GiB dataset cache of a cpu-large node",
    );
  });

  it("holds exactly the manifest's files, read-only, downloaded once for concurrent acquires", async () => {
    const resolved = await dataset("text", {
      "a.txt": "alpha",
      "sub/b.txt": "beta",
      "sub/copy.txt": "alpha",
    });
    const cache = newCache(1024);
    const gets = vi.spyOn(store, "getBlob");
    const [one, two] = await Promise.all([cache.acquire(resolved), cache.acquire(resolved)]);
    // Two distinct contents, once each: the copy is made locally.
    expect(gets).toHaveBeenCalledTimes(2);
    gets.mockRestore();
    expect(one.dir).toBe(two.dir);
    expect(one.dir.endsWith(resolved.manifest.digest.slice(7))).toBe(true);
    expect((await readdir(one.dir)).sort()).toEqual(["a.txt", "sub"]);
    expect(await readFile(join(one.dir, "sub/copy.txt"), "utf8")).toBe("alpha");
    expect((await stat(join(one.dir, "a.txt"))).mode & 0o777).toBe(0o444);
    expect((await stat(join(one.dir, "sub"))).mode & 0o777).toBe(0o555);
    expect((await stat(one.dir)).mode & 0o777).toBe(0o555);
    await one.release();
    await one.release();
    await two.release();
    expect(cache.usedBytes).toBe(14);
  });

  it("refuses a blob its owner rewrote, naming the file, and keeps nothing of it", async () => {
    const resolved = await dataset("rewritten", { "data.csv": "1,2,3" });
    const sha = resolved.manifest.files[0]!.sha256;
    await platform.as(OWNER.project, OWNER.user).s3.send(
      new PutObjectCommand({
        Bucket: platform.datasetsBucket,
        Key: `users/lab/ada/blobs/${sha}`,
        Body: "6,6,6",
      }),
    );
    const dir = join(root, `cache-${++cases}`);
    const cache = newCache(1024, dir);
    const refused = cache.acquire(resolved);
    await expect(refused).rejects.toBeInstanceOf(DatasetIntegrityError);
    await expect(refused).rejects.toThrow(
      `rewritten@1: "data.csv" does not match its manifest (expected 5 bytes, sha256 ${sha}; got 5 bytes, sha256 ${createHash("sha256").update("6,6,6").digest("hex")})`,
    );
    expect(await readdir(join(dir, "entries"))).toEqual([]);
    expect(await readdir(join(dir, "partial"))).toEqual([]);
    expect(cache.usedBytes).toBe(0);
  });

  it("evicts the least recently used entries nobody holds, never pinned ones, and says when all are held", async () => {
    const [a, b, c, d, e] = await Promise.all(
      ["a", "b", "c", "d", "e"].map((n) => dataset(`lru-${n}`, { "f.txt": `${n}`.repeat(10) })),
    );
    const seedDir = join(root, "seed-shakespeare");
    await mkdir(seedDir, { recursive: true });
    await writeFile(join(seedDir, "tiny.txt"), "0123456789");
    const cache = newCache(40);
    const [pinned] = await cache.seedPrecached([
      { dataset: { name: "shakespeare", version: 1 }, dir: seedDir },
    ]);
    for (const x of [a, b, c]) await (await cache.acquire(x!)).release();
    await (await cache.acquire(a!)).release(); // a is now the most recent: b, c, a
    await (await cache.acquire(d!)).release(); // full (40): b goes
    expect(cache.digests).toEqual([pinned!, c!.manifest, a!.manifest, d!.manifest].map((m) => m.digest));
    const heldC = await cache.acquire(c!); // c is in use: a goes next, though c is older
    await (await cache.acquire(e!)).release();
    expect(cache.digests).toEqual([pinned!, d!.manifest, c!.manifest, e!.manifest].map((m) => m.digest));
    const heldD = await cache.acquire(d!);
    const heldE = await cache.acquire(e!);
    const busy = cache.acquire(b!);
    await expect(busy).rejects.toBeInstanceOf(DatasetCacheBusyError);
    await expect(busy).rejects.toThrow(
      "lru-b@1 (10 B) does not fit in the 40 B dataset cache of a cpu-large node while the datasets in use there are held",
    );
    for (const held of [heldC, heldD, heldE]) await held.release();
  });

  it("after a restart keeps verified entries in their order of use and drops what was cut short", async () => {
    const dir = join(root, `cache-${++cases}`);
    const [x, y, z] = await Promise.all(
      ["x", "y", "z"].map((n) => dataset(`restart-${n}`, { "f.txt": n.repeat(10) })),
    );
    const before = newCache(20, dir);
    for (const r of [x, y]) await (await before.acquire(r!)).release();
    // x was used after y, as its marker's time says.
    const marker = (r: ResolvedDataset) => join(dir, "entries", `${r.manifest.digest.slice(7)}.json`);
    await utimes(marker(y!), new Date("2026-01-01T00:00:00Z"), new Date("2026-01-01T00:00:00Z"));
    await utimes(marker(x!), new Date("2026-01-02T00:00:00Z"), new Date("2026-01-02T00:00:00Z"));
    // What a crash leaves: a download in progress, and an entry renamed but not yet marked.
    await mkdir(join(dir, "partial", "cut.abc", "sub"), { recursive: true });
    await mkdir(join(dir, "entries", "f".repeat(64)), { recursive: true });

    const after = newCache(20, dir);
    await after.start();
    expect(after.digests).toEqual([y!.manifest.digest, x!.manifest.digest]);
    expect(await readdir(join(dir, "partial"))).toEqual([]);
    expect(existsSync(join(dir, "entries", "f".repeat(64)))).toBe(false);
    const gets = vi.spyOn(store, "getBlob");
    const lease = await after.acquire(x!);
    expect(gets).not.toHaveBeenCalled();
    gets.mockRestore();
    await lease.release();
    await (await after.acquire(z!)).release();
    // Room for z took y, the least recently used.
    expect(after.digests).toEqual([x!.manifest.digest, z!.manifest.digest]);
  });

  it("seeds the pre-cached sets from the runtime package and the cpu image, and publishes them", async () => {
    const docker = new Dockerode();
    const workDir = join(root, "seed-work");
    const seeds = await precachedSeeds({ docker, logger, workDir });
    expect(seeds.map((s) => s.dataset)).toEqual([
      { name: "shakespeare", version: 1 },
      { name: "sklearn", version: 1 },
    ]);
    expect((await readdir(join(workDir, "sklearn"))).sort()).toEqual([
      "boston_house_prices.csv",
      "breast_cancer.csv",
      "diabetes_data_raw.csv.gz",
      "diabetes_target.csv.gz",
      "digits.csv.gz",
      "iris.csv",
      "linnerud_exercise.csv",
      "linnerud_physiological.csv",
      "wine_data.csv",
    ]);
    const cache = newCache(10 * 1024 ** 2);
    const published = await cache.seedPrecached(seeds);
    expect(published.map((m) => [m.name, m.version])).toEqual([
      ["shakespeare", 1],
      ["sklearn", 1],
    ]);
    const sklearn = await store.resolve(
      { project: "other", user: "someone" },
      { name: "sklearn", version: 1 },
    );
    expect(sklearn.prefix).toBe("precached/");
    const gets = vi.spyOn(store, "getBlob");
    const lease = await cache.acquire(sklearn);
    expect(gets).not.toHaveBeenCalled();
    gets.mockRestore();
    expect((await readFile(join(lease.dir, "iris.csv"), "utf8")).split("\n")[0]).toMatch(/^150,4,/);
    await lease.release();
    expect(
      await docker.listContainers({
        all: true,
        // This process's only: other test files copy out of images at the same time.
        filters: JSON.stringify({
          label: ["crucible.purpose=copy-out", `crucible.owner-pid=${process.pid}`],
        }),
      }),
    ).toEqual([]);
  });
});
