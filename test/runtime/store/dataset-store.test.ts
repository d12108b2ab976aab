import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import {
  DatasetInputError,
  DatasetManifestError,
  DatasetNotFoundError,
  DatasetStore,
} from "../../../runtime/src/store/dataset-store";

const ALICE = { project: "lab", user: "alice" } as const;
const BOB = { project: "lab", user: "bob" } as const;
const sha256 = (text: string): string => createHash("sha256").update(text).digest("hex");

let platform: LocalPlatform;
let root: string;
let alice: DatasetStore;
let bob: DatasetStore;

beforeAll(async () => {
  platform = await startLocalPlatform({ tiers: ["cpu-small"], logger: pino({ level: "silent" }) });
  root = await mkdtemp(join(tmpdir(), "crucible-dataset-store-"));
  alice = platform.as(ALICE.project, ALICE.user).datasets;
  bob = platform.as(BOB.project, BOB.user).datasets;
});

afterAll(async () => {
  await platform?.stop();
  if (root) await rm(root, { recursive: true, force: true });
});

async function dir(name: string, files: Record<string, string>): Promise<string> {
  const at = join(root, name);
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(at, path, ".."), { recursive: true });
    await writeFile(join(at, path), text);
  }
  return at;
}

async function keys(prefix: string): Promise<string[]> {
  const out = await platform.s3.send(
    new ListObjectsV2Command({ Bucket: platform.datasetsBucket, Prefix: prefix }),
  );
  return (out.Contents ?? []).map((o) => o.Key!).sort();
}

describe("DatasetStore.push", () => {
  it("stores a version once per content and only the blobs it lacks", async () => {
    const v1 = await dir("corpus-v1", { "train.txt": "to be or not", "val/a.txt": "to be" });
    const first = await alice.push(ALICE, "corpus", v1);
    expect(first.created).toBe(true);
    expect(first.manifest).toMatchObject({
      name: "corpus",
      version: 1,
      totalBytes: 17,
      files: [
        { path: "train.txt", size: 12, sha256: sha256("to be or not") },
        { path: "val/a.txt", size: 5, sha256: sha256("to be") },
      ],
    });

    const again = await alice.push(
      ALICE,
      "corpus",
      await dir("corpus-copy", { "train.txt": "to be or not", "val/a.txt": "to be" }),
    );
    expect(again).toEqual({ manifest: first.manifest, created: false });
    expect(await keys("users/lab/alice/corpus/")).toEqual(["users/lab/alice/corpus/v1.json"]);

    const progress: [number, number][] = [];
    const v2 = await dir("corpus-v2", { "train.txt": "to be or not", "val/a.txt": "that is" });
    const second = await alice.push(ALICE, "corpus", v2, {
      onProgress: (sent, total) => progress.push([sent, total]),
    });
    expect(second.created).toBe(true);
    expect(second.manifest.version).toBe(2);
    // Only the changed file went up.
    expect(progress.at(-1)).toEqual([7, 7]);
    expect(await keys("users/lab/alice/blobs/")).toEqual(
      [sha256("to be or not"), sha256("to be"), sha256("that is")]
        .map((h) => `users/lab/alice/blobs/${h}`)
        .sort(),
    );
    expect(
      (await alice.list(ALICE)).map((v) => [v.name, v.version, v.fileCount, v.totalBytes, v.source]),
    ).toEqual([
      ["corpus", 1, 2, 17, "yours"],
      ["corpus", 2, 2, 19, "yours"],
    ]);
  });

  it("refuses links, reserved names and empty directories, naming them", async () => {
    const linked = await dir("linked", { "a.txt": "x" });
    await symlink("/etc/passwd", join(linked, "passwd"));
    await expect(alice.push(ALICE, "linked", linked)).rejects.toThrow(
      `${join(linked, "passwd")} is a symbolic link: a dataset holds regular files only`,
    );
    const plain = await dir("plain", { "a.txt": "x" });
    await expect(alice.push(ALICE, "shakespeare", plain)).rejects.toThrow(
      '"shakespeare" is the name of one of the platform\'s pre-cached datasets',
    );
    await expect(alice.push(ALICE, "Bad/Name", plain)).rejects.toThrow(DatasetInputError);
    await mkdir(join(root, "empty"));
    await expect(alice.push(ALICE, "empty", join(root, "empty"))).rejects.toThrow("holds no files");
    expect(await keys("users/lab/alice/linked/")).toEqual([]);
  });
});

describe("DatasetStore.resolve", () => {
  it("names the versions there are, or how to push the first", async () => {
    await alice.push(ALICE, "iris", await dir("iris", { "iris.csv": "1,2,3" }));
    await expect(alice.resolve(ALICE, { name: "iris", version: 4 })).rejects.toThrow(
      new DatasetNotFoundError({ name: "iris", version: 4 }, [1], "no dataset iris@4: iris has version 1"),
    );
    await expect(alice.resolve(ALICE, { name: "nope", version: 1 })).rejects.toThrow(
      "no dataset nope@1: lab/alice has no dataset named nope; push one with `crucible datasets push nope DIR`",
    );
    const { manifest, prefix } = await alice.resolve(ALICE, { name: "iris", version: 1 });
    expect(prefix).toBe("users/lab/alice/");
    expect(manifest.files).toEqual([{ path: "iris.csv", size: 5, sha256: sha256("1,2,3") }]);
  });

  it("keeps Bob from Alice's datasets: resolving reads his own prefix, and her keys are refused to him", async () => {
    await alice.push(ALICE, "secret", await dir("secret", { "s.txt": "alice only" }));
    await expect(bob.resolve(BOB, { name: "secret", version: 1 })).rejects.toThrow(
      "no dataset secret@1: lab/bob has no dataset named secret",
    );
    // Through his own credentials, naming her as the owner is refused by the bucket's rules.
    await expect(bob.resolve(ALICE, { name: "secret", version: 1 })).rejects.toMatchObject({
      name: "AccessDenied",
    });
    await expect(bob.getBlob("users/lab/alice/", sha256("alice only"))).rejects.toMatchObject({
      name: "AccessDenied",
    });
  });

  it("refuses a manifest its owner rewrote after the push", async () => {
    await alice.push(ALICE, "tampered", await dir("tampered", { "t.txt": "honest" }));
    const key = "users/lab/alice/tampered/v1.json";
    const stored = JSON.parse(
      await (
        await platform
          .as(ALICE.project, ALICE.user)
          .s3.send(new GetObjectCommand({ Bucket: platform.datasetsBucket, Key: key }))
      ).Body!.transformToString(),
    ) as { files: { path: string }[] };
    stored.files[0]!.path = "../../../etc/cron.d/evil";
    await platform
      .as(ALICE.project, ALICE.user)
      .s3.send(
        new PutObjectCommand({ Bucket: platform.datasetsBucket, Key: key, Body: JSON.stringify(stored) }),
      );
    const refused = alice.resolve(ALICE, { name: "tampered", version: 1 });
    await expect(refused).rejects.toBeInstanceOf(DatasetManifestError);
    await expect(refused).rejects.toThrow(
      `the manifest of tampered@1 (${key}) is invalid: files.0.path "../../../etc/cron.d/evil" has an empty, '.' or '..' segment`,
    );
    // Left out of the list rather than failing it.
    expect((await alice.list(ALICE)).some((v) => v.name === "tampered")).toBe(false);
  });

  it("resolves pre-cached names under precached/ once published, for every user", async () => {
    const data = await dir("shakespeare", { "tiny.txt": "First Citizen" });
    const agent = new DatasetStore({
      s3: platform.s3,
      bucket: platform.datasetsBucket,
      logger: pino({ level: "silent" }),
    });
    await expect(bob.resolve(BOB, { name: "shakespeare", version: 1 })).rejects.toThrow(
      "the pre-cached set shakespeare is not published yet",
    );
    expect((await agent.publishPrecached({ name: "shakespeare", version: 1 }, data)).created).toBe(true);
    expect((await agent.publishPrecached({ name: "shakespeare", version: 1 }, data)).created).toBe(false);
    const resolved = await bob.resolve(BOB, { name: "shakespeare", version: 1 });
    expect(resolved.prefix).toBe("precached/");
    const blob = await bob.getBlob("precached/", sha256("First Citizen"));
    let text = "";
    for await (const chunk of blob as AsyncIterable<Buffer>) text += chunk.toString();
    expect(text).toBe("First Citizen");
    expect((await bob.list(BOB)).map((v) => [v.name, v.version, v.source])).toEqual([
      ["shakespeare", 1, "precached"],
    ]);
  });
});
