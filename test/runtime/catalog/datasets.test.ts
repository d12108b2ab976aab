import { describe, expect, it } from "vitest";
import {
  buildManifest,
  datasetManifestSchema,
  datasetNameSchema,
  datasetPathProblem,
  datasetRefSchema,
  formatDatasetBytes,
  formatDatasetRef,
  PRECACHED_DATASETS,
} from "../../../runtime/src/catalog/datasets";
import { CONTAINER_PATHS } from "../../../runtime/src/job/contract";

const SHA = "a".repeat(64);
const message = (result: { success: boolean; error?: { issues: { message: string }[] } }) =>
  result.error?.issues[0]?.message;

describe("dataset names and refs", () => {
  it("accepts lowercase names with digits, dashes, underscores and dots", () => {
    for (const name of ["shakespeare", "mnist-2", "c4_en.v2", "0day"])
      expect(datasetNameSchema.safeParse(name).success).toBe(true);
  });

  it("refuses names a key or a mount point could be confused by", () => {
    for (const name of ["", "Big", "-x", ".hidden", "a/b", "a..b", "x".repeat(65), "a b", "blobs"])
      expect(datasetNameSchema.safeParse(name).success, name).toBe(false);
    expect(message(datasetNameSchema.safeParse("Big"))).toBe(
      `must be 1-64 lowercase letters, digits, '-', '_' and '.', starting with a letter or digit, without '..', got "Big"`,
    );
  });

  it("parses NAME@VERSION", () => {
    expect(datasetRefSchema.parse("shakespeare@1")).toEqual({ name: "shakespeare", version: 1 });
    expect(datasetRefSchema.parse("c4.en@12")).toEqual({ name: "c4.en", version: 12 });
    expect(formatDatasetRef({ name: "c4.en", version: 12 })).toBe("c4.en@12");
  });

  it("names the value and the form expected when a ref is malformed", () => {
    for (const ref of ["shakespeare", "shakespeare@0", "shakespeare@01", "shakespeare@1.5", "@1", "a@b@1"])
      expect(datasetRefSchema.safeParse(ref).success, ref).toBe(false);
    expect(message(datasetRefSchema.safeParse("shakespeare"))).toBe(
      'must be NAME@VERSION such as shakespeare@1 (VERSION a whole number from 1), got "shakespeare"',
    );
    expect(message(datasetRefSchema.safeParse("Big@1"))).toContain('the name in "Big@1" must be 1-64');
  });
});

describe("dataset file paths", () => {
  it("accepts plain relative POSIX paths", () => {
    expect(datasetPathProblem("train/part-0.csv")).toBeUndefined();
  });

  it("refuses paths that could leave the dataset's directory or confuse a reader", () => {
    for (const path of ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a/", "a\\b", "a\nb", "a\0b"])
      expect(datasetPathProblem(path), JSON.stringify(path)).toBeDefined();
  });
});

describe("dataset manifests", () => {
  const files = [
    { path: "b.csv", size: 3, sha256: SHA },
    { path: "a/x.csv", size: 5, sha256: "b".repeat(64) },
  ];
  const manifest = buildManifest({ name: "d", version: 2 }, files, new Date("2026-01-31T12:00:00Z"));

  it("builds a sorted manifest whose digest covers the content, not the name or date", () => {
    expect(manifest.files.map((f) => f.path)).toEqual(["a/x.csv", "b.csv"]);
    expect(manifest.totalBytes).toBe(8);
    expect(datasetManifestSchema.parse(manifest)).toEqual(manifest);
    expect(buildManifest({ name: "e", version: 9 }, [...files].reverse()).digest).toBe(manifest.digest);
  });

  it("refuses a manifest rewritten after the push", () => {
    const cases: [unknown, string][] = [
      [{ ...manifest, totalBytes: 1 }, "must be the sum of the files' sizes, 8, got 1"],
      [{ ...manifest, files: [...manifest.files].reverse() }, "is out of order"],
      [{ ...manifest, files: [manifest.files[0], manifest.files[0]] }, "is listed twice"],
      [{ ...manifest, files: [{ ...manifest.files[0]!, path: "../../etc/cron.d/x" }] }, "'..' segment"],
      [
        { ...manifest, files: [{ ...manifest.files[0]!, size: 6 }, manifest.files[1]], totalBytes: 9 },
        "does not match the files listed",
      ],
      [{ ...manifest, extra: true }, "Unrecognized key"],
    ];
    for (const [value, expected] of cases) {
      const parsed = datasetManifestSchema.safeParse(value);
      expect(parsed.success).toBe(false);
      expect(parsed.error!.issues.map((i) => i.message).join("; ")).toContain(expected);
    }
  });
});

describe("pre-cached datasets", () => {
  it("are shakespeare@1 from the runtime package and sklearn@1 from the cpu image", () => {
    expect(PRECACHED_DATASETS.map(formatDatasetRef)).toEqual(["shakespeare@1", "sklearn@1"]);
    expect(PRECACHED_DATASETS[0]!.source).toEqual({ kind: "package", path: "templates/nanogpt/data" });
    expect(PRECACHED_DATASETS[1]!.source).toMatchObject({
      kind: "image",
      family: "cpu",
      path: "/usr/lib/python3/dist-packages/sklearn/datasets/data",
    });
    expect(CONTAINER_PATHS.datasets).toBe("/datasets");
  });
});

describe("formatDatasetBytes", () => {
  it("shows one decimal, or a whole number when asked and exact", () => {
    expect(formatDatasetBytes(12 * 1024 ** 3)).toBe("12.0 GiB");
    expect(formatDatasetBytes(8 * 1024 ** 3, { whole: true })).toBe("8 GiB");
    expect(formatDatasetBytes(1536, { whole: true })).toBe("1.5 KiB");
    expect(formatDatasetBytes(512)).toBe("512 B");
  });
});
