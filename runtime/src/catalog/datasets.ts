import { createHash } from "node:crypto";
import { z } from "zod";
import type { JobImageFamily } from "./image-matrix";

/**
 * Datasets as the platform names and describes them: `NAME@VERSION` references, the manifest of one
 * immutable version (what the store keeps at `<prefix><name>/v<version>.json`, bucket-layout.ts), and the
 * platform's pre-cached sets. Pure: the store (store/dataset-store.ts) and the node cache
 * (agent/dataset-cache.ts) do the I/O. A manifest under a user's prefix was written with that user's
 * credentials and may be rewritten by them at any time, so every reader parses it with
 * {@link datasetManifestSchema} and trusts nothing it did not check.
 */

/**
 * A dataset's name: lowercase letters, digits, `-`, `_` and `.`, starting with a letter or digit, at most
 * 64 characters, no `..`. It is one segment of a key and the directory a job finds at `/datasets/NAME`.
 */
export const DATASET_NAME_PATTERN = /^(?!.*\.\.)[a-z0-9][a-z0-9._-]{0,63}$/;

const NAME_RULE =
  "must be 1-64 lowercase letters, digits, '-', '_' and '.', starting with a letter or digit, without '..'";

/** `blobs` is where a prefix keeps the files by content: a dataset of that name would list them as versions. */
export const RESERVED_DATASET_NAMES: readonly string[] = ["blobs"];

export const datasetNameSchema = z
  .string({ error: `a dataset name ${NAME_RULE}` })
  .regex(DATASET_NAME_PATTERN, { error: (issue) => `${NAME_RULE}, got ${JSON.stringify(issue.input)}` })
  .refine((name) => !RESERVED_DATASET_NAMES.includes(name), {
    error: (issue) => `${JSON.stringify(issue.input)} is reserved (the store keeps files under it)`,
  });

/** One version of one dataset. */
export interface DatasetRef {
  readonly name: string;
  readonly version: number;
}

const REF_FORM = "NAME@VERSION such as shakespeare@1 (VERSION a whole number from 1)";

/** `"NAME@VERSION"` parsed into a {@link DatasetRef}; errors name the value and the form expected. */
export const datasetRefSchema = z
  .string({ error: `must be ${REF_FORM}` })
  .transform((value, ctx): DatasetRef => {
    const match = /^([^@]*)@(\d+)$/.exec(value);
    const version = match ? Number(match[2]) : 0;
    if (!match || !Number.isSafeInteger(version) || version < 1 || /^0/.test(match[2]!)) {
      ctx.addIssue({
        code: "custom",
        message: `must be ${REF_FORM}, got ${JSON.stringify(value)}`,
        input: value,
      });
      return z.NEVER;
    }
    const name = datasetNameSchema.safeParse(match[1]);
    if (!name.success) {
      ctx.addIssue({
        code: "custom",
        message: `must be ${REF_FORM}: the name in ${JSON.stringify(value)} ${NAME_RULE}`,
        input: value,
      });
      return z.NEVER;
    }
    return { name: name.data, version };
  });

export const formatDatasetRef = (ref: DatasetRef): string => `${ref.name}@${ref.version}`;

/** Files one version may hold: bounds what a push walks and what a node downloads and verifies. */
export const MAX_DATASET_FILES = 100_000;
/** Longest file path in a dataset, in bytes (a segment is at most 255, as on Linux). */
export const MAX_DATASET_PATH_BYTES = 1024;

const SEGMENT_BYTES = 255;

/**
 * Why `path` cannot be a dataset file's path, or undefined when it can: relative POSIX, no empty, `.` or
 * `..` segments, no backslash, NUL or control characters, bounded lengths. Checked on the manifests a node
 * reads (a hostile path would write outside the cache entry) and on the files a push or seed walks.
 */
export function datasetPathProblem(path: string): string | undefined {
  if (path === "") return "is empty";
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused.
  if (/[\u0000-\u001f\u007f\\]/.test(path)) return "has a control character or a backslash";
  if (path.startsWith("/")) return "is absolute; it must be relative to the dataset's directory";
  if (Buffer.byteLength(path) > MAX_DATASET_PATH_BYTES)
    return `is longer than ${MAX_DATASET_PATH_BYTES} bytes`;
  for (const segment of path.split("/")) {
    if (segment === "" || segment === "." || segment === "..")
      return "has an empty, '.' or '..' segment; it must be a plain relative path such as train/part-0.csv";
    if (Buffer.byteLength(segment) > SEGMENT_BYTES) return `has a name longer than ${SEGMENT_BYTES} bytes`;
  }
  return undefined;
}

const SHA256_HEX = /^[0-9a-f]{64}$/;

export const datasetFileSchema = z.strictObject({
  path: z.string().superRefine((path, ctx) => {
    const problem = datasetPathProblem(path);
    if (problem) ctx.addIssue({ code: "custom", message: `${JSON.stringify(path)} ${problem}` });
  }),
  size: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  sha256: z.string().regex(SHA256_HEX, { error: "must be a SHA-256 as 64 lowercase hex digits" }),
});
export type DatasetFile = z.infer<typeof datasetFileSchema>;

/** Path order of a manifest: by UTF-16 code unit, the same everywhere (not the locale's). */
export const comparePaths = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/**
 * The digest of a version's content: SHA-256 over its files in path order, one line each of
 * `path NUL size NUL sha256 LF` (paths hold no NUL or LF). Names, versions and dates are not part of it, so
 * the same files pushed twice, or pre-cached by two nodes, have the same digest.
 */
export function datasetDigest(files: readonly DatasetFile[]): string {
  const hash = createHash("sha256");
  for (const file of [...files].sort((a, b) => comparePaths(a.path, b.path)))
    hash.update(`${file.path}\0${file.size}\0${file.sha256}\n`);
  return `sha256:${hash.digest("hex")}`;
}

/** One immutable version of a dataset, as stored at `<prefix><name>/v<version>.json`. */
export const datasetManifestSchema = z
  .strictObject({
    name: datasetNameSchema,
    version: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER),
    digest: z
      .string()
      .regex(/^sha256:[0-9a-f]{64}$/, { error: "must be sha256: and 64 lowercase hex digits" }),
    files: z
      .array(datasetFileSchema)
      .min(1, { error: "must list at least one file" })
      .max(MAX_DATASET_FILES, { error: `may list at most ${MAX_DATASET_FILES} files` }),
    totalBytes: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    createdAt: z.iso.datetime({ error: "must be an ISO 8601 time in UTC such as 2026-01-31T12:00:00Z" }),
  })
  .superRefine((manifest, ctx) => {
    const { files } = manifest;
    for (let i = 1; i < files.length; i++) {
      const order = comparePaths(files[i - 1]!.path, files[i]!.path);
      if (order >= 0)
        ctx.addIssue({
          code: "custom",
          path: ["files", i, "path"],
          message: `${JSON.stringify(files[i]!.path)} ${order === 0 ? "is listed twice" : "is out of order: files must be sorted by path"}`,
        });
    }
    const total = files.reduce((sum, f) => sum + f.size, 0);
    if (total !== manifest.totalBytes)
      ctx.addIssue({
        code: "custom",
        path: ["totalBytes"],
        message: `must be the sum of the files' sizes, ${total}, got ${manifest.totalBytes}`,
      });
    const digest = datasetDigest(files);
    if (digest !== manifest.digest)
      ctx.addIssue({
        code: "custom",
        path: ["digest"],
        message: `does not match the files listed (${digest}), got ${manifest.digest}`,
      });
  });
export type DatasetManifest = z.infer<typeof datasetManifestSchema>;

/** A manifest of `files` (in any order) for `ref`, made now. */
export function buildManifest(
  ref: DatasetRef,
  files: readonly DatasetFile[],
  createdAt = new Date(),
): DatasetManifest {
  // Only the manifest's fields: callers pass files with more (where each was read from).
  const sorted = files
    .map(({ path, size, sha256 }) => ({ path, size, sha256 }))
    .sort((a, b) => comparePaths(a.path, b.path));
  return {
    name: ref.name,
    version: ref.version,
    digest: datasetDigest(sorted),
    files: sorted,
    totalBytes: sorted.reduce((sum, f) => sum + f.size, 0),
    createdAt: createdAt.toISOString(),
  };
}

/** Where a pre-cached set's files come from on a node. */
export type PrecachedSource =
  /** A directory of the runtime package (the agent image copies `runtime/templates` to /opt/crucible/runtime). */
  | { readonly kind: "package"; readonly path: string }
  /** A directory inside a job image family's image; `exclude` names top-level entries that are not data. */
  | {
      readonly kind: "image";
      readonly family: JobImageFamily;
      readonly path: string;
      readonly exclude: readonly string[];
    };

export interface PrecachedDataset extends DatasetRef {
  readonly description: string;
  readonly source: PrecachedSource;
}

/**
 * The platform's datasets, made from what nodes already hold: every node seeds its cache with them and
 * publishes them under `precached/`. Their names are reserved: nobody pushes a dataset of that name.
 */
export const PRECACHED_DATASETS: readonly PrecachedDataset[] = [
  {
    name: "shakespeare",
    version: 1,
    description: "Tiny Shakespeare (about 1 MB of text, gzipped), the nanogpt template's corpus",
    source: { kind: "package", path: "templates/nanogpt/data" },
  },
  {
    name: "sklearn",
    version: 1,
    description: "scikit-learn's bundled datasets (iris, digits, wine, breast cancer, diabetes...) as CSV",
    // Debian's python3-sklearn, as the cpu image installs it; the package's own Python files are not data.
    source: {
      kind: "image",
      family: "cpu",
      path: "/usr/lib/python3/dist-packages/sklearn/datasets/data",
      exclude: ["__init__.py", "__pycache__"],
    },
  },
];

export const isPrecachedName = (name: string): boolean => PRECACHED_DATASETS.some((d) => d.name === name);

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"] as const;

/**
 * A size for a person, in binary units: one decimal unless `whole` and the value is a whole number of its
 * unit ("12.0 GiB", "8 GiB"), so two sizes compared in one message never read as equal when they are not.
 */
export function formatDatasetBytes(bytes: number, options: { readonly whole?: boolean } = {}): string {
  let unit = 0;
  let value = bytes;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${bytes} B`;
  const text = options.whole && Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text} ${UNITS[unit]}`;
}
