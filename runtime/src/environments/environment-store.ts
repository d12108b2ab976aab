import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from "@aws-sdk/client-s3";
import type { S3Client } from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { stat } from "node:fs/promises";
import type { Readable } from "node:stream";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { z } from "zod";
import { ENVIRONMENTS_PREFIX } from "../catalog/bucket-layout";
import { environmentPathSchema } from "../job/contract";

/** An environment's key: the SHA-256 of what it is built from ({@link environmentKey}). */
export const environmentKeySchema = z.string().regex(/^[0-9a-f]{64}$/);

/** What is stored beside an environment's archive, written last: its presence means the rest is there. */
export const environmentManifestSchema = z.strictObject({
  key: environmentKeySchema,
  /** The archive's SHA-256 and size, checked on every download. */
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  archiveBytes: z.number().int().nonnegative(),
  /** The unpacked size, what a node's cache holds. */
  bytes: z.number().int().nonnegative(),
  pythonPath: z.array(environmentPathSchema).max(8),
  packages: z.array(z.strictObject({ name: z.string(), version: z.string() })).max(5000),
  image: z.string(),
  requirements: z.array(z.string()).max(1000),
  builtAt: z.string(),
  /** Seconds the build took. */
  buildSeconds: z.number().nonnegative(),
});
export type EnvironmentManifest = z.infer<typeof environmentManifestSchema>;

/** A stored environment whose archive is not what its manifest says. */
export class EnvironmentIntegrityError extends Error {
  override readonly name = "EnvironmentIntegrityError";
}

/**
 * Built environments in the stack's datasets bucket under `environments/<key>/` (bucket-layout.ts): the
 * archive, the build's log, and the manifest. Only agents reach them. Existence is asked with a listing,
 * which the node role may do on the prefix, rather than a HEAD that needs read rights on a missing key.
 */
export class EnvironmentStore {
  constructor(
    private readonly s3: S3Client,
    private readonly bucket: string,
  ) {}

  /** The manifest of the environment `key`, or undefined when none is stored (or it is unreadable). */
  async find(key: string): Promise<EnvironmentManifest | undefined> {
    const prefix = this.prefix(key);
    const listed = await this.s3.send(
      new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, MaxKeys: 10 }),
    );
    if (!(listed.Contents ?? []).some((o) => o.Key === `${prefix}manifest.json`)) return undefined;
    const answer = await this.s3.send(
      new GetObjectCommand({ Bucket: this.bucket, Key: `${prefix}manifest.json` }),
    );
    const text = await answer.Body!.transformToString();
    const parsed = environmentManifestSchema.safeParse(safeJson(text));
    // An unreadable manifest is as good as none: the environment is built again and it is replaced.
    return parsed.success && parsed.data.key === key ? parsed.data : undefined;
  }

  /** Downloads the archive of `manifest` to `file`, checking its size and SHA-256 as it comes. */
  async download(manifest: EnvironmentManifest, file: string): Promise<void> {
    const answer = await this.s3.send(
      new GetObjectCommand({ Bucket: this.bucket, Key: `${this.prefix(manifest.key)}env.tar` }),
    );
    const hash = createHash("sha256");
    let bytes = 0;
    const check = new Transform({
      transform(chunk: Buffer, _encoding, done) {
        bytes += chunk.length;
        if (bytes > manifest.archiveBytes)
          return done(
            new EnvironmentIntegrityError("the stored environment is larger than its manifest says"),
          );
        hash.update(chunk);
        done(null, chunk);
      },
    });
    await pipeline(answer.Body as Readable, check, createWriteStream(file));
    const sha256 = hash.digest("hex");
    if (bytes !== manifest.archiveBytes || sha256 !== manifest.sha256)
      throw new EnvironmentIntegrityError(
        `the stored environment ${manifest.key.slice(0, 12)} does not match its manifest (sha256 ${sha256.slice(0, 12)}, ${bytes} bytes)`,
      );
  }

  /** Stores a built environment: archive and log first, the manifest last. */
  async put(
    manifest: Omit<EnvironmentManifest, "sha256" | "archiveBytes">,
    archive: string,
    buildLog: string,
  ): Promise<EnvironmentManifest> {
    const prefix = this.prefix(manifest.key);
    const sha256 = await fileSha256(archive);
    const archiveBytes = (await stat(archive)).size;
    await new Upload({
      client: this.s3,
      params: {
        Bucket: this.bucket,
        Key: `${prefix}env.tar`,
        Body: createReadStream(archive),
        ContentLength: archiveBytes,
      },
    }).done();
    await this.s3.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: `${prefix}build.log`,
        Body: buildLog,
        ContentType: "text/plain; charset=utf-8",
      }),
    );
    const complete = environmentManifestSchema.parse({ ...manifest, sha256, archiveBytes });
    await this.s3.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: `${prefix}manifest.json`,
        Body: JSON.stringify(complete),
        ContentType: "application/json",
      }),
    );
    return complete;
  }

  private prefix(key: string): string {
    return `${ENVIRONMENTS_PREFIX}${environmentKeySchema.parse(key)}/`;
  }
}

async function fileSha256(file: string): Promise<string> {
  const hash = createHash("sha256");
  await pipeline(createReadStream(file), hash);
  return hash.digest("hex");
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
