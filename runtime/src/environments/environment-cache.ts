import { createReadStream } from "node:fs";
import { chmod, mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import type { Logger } from "../logger";
import type { EnvironmentManifest } from "./environment-store";
import { environmentManifestSchema } from "./environment-store";
import { unpackEnvironment } from "./environment-files";

/** An environment in use by a job: its directory and Python path, until released. */
export interface EnvironmentLease {
  readonly key: string;
  readonly dir: string;
  readonly pythonPath: readonly string[];
  readonly manifest: EnvironmentManifest;
  release(): void;
}

/** Every entry is in use, and the new one does not fit beside them: the job waits its turn. */
export class EnvironmentCacheBusyError extends Error {
  override readonly name = "EnvironmentCacheBusyError";
}

const entrySchema = z.strictObject({ manifest: environmentManifestSchema, lastUsed: z.number() });

interface Entry {
  readonly manifest: EnvironmentManifest;
  lastUsed: number;
  holders: number;
}

/**
 * A node's environments, unpacked read-only under `root/<key>/env`, at most `capacityBytes` of them:
 * least recently used first out, never one a job holds. Entries survive an agent restart (each has an
 * `entry.json` written once its files are complete; a directory without one is a torn unpack and goes).
 */
export class EnvironmentCache {
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly root: string,
    private readonly capacityBytes: number,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    for (const name of await readdir(this.root)) {
      if (!/^[0-9a-f]{64}$/.test(name)) continue;
      const text = await readFile(join(this.root, name, "entry.json"), "utf8").catch(() => undefined);
      const parsed = text === undefined ? undefined : entrySchema.safeParse(safeJson(text));
      if (parsed?.success && parsed.data.manifest.key === name)
        this.entries.set(name, {
          manifest: parsed.data.manifest,
          lastUsed: parsed.data.lastUsed,
          holders: 0,
        });
      else await removeTree(join(this.root, name));
    }
    for (const name of await readdir(this.root))
      if (name.endsWith(".partial")) await removeTree(join(this.root, name));
  }

  get usedBytes(): number {
    let total = 0;
    for (const entry of this.entries.values()) total += entry.manifest.bytes;
    return total;
  }

  /** The cached environment `key`, held until released; undefined when this node has none. */
  lookup(key: string): EnvironmentLease | undefined {
    const entry = this.entries.get(key);
    return entry && this.lease(key, entry);
  }

  /** Unpacks `archive` (checked against `manifest` already) as environment `manifest.key`, and holds it. */
  async install(manifest: EnvironmentManifest, archive: string): Promise<EnvironmentLease> {
    const existing = this.lookup(manifest.key);
    if (existing) return existing;
    await this.makeRoom(manifest.bytes);
    const partial = join(this.root, `${manifest.key}.partial`);
    const dir = join(this.root, manifest.key);
    await removeTree(partial);
    try {
      await unpackEnvironment(createReadStream(archive), join(partial, "env"));
      const entry: Entry = { manifest, lastUsed: Date.now(), holders: 0 };
      await writeFile(join(partial, "entry.json"), JSON.stringify({ manifest, lastUsed: entry.lastUsed }));
      await rename(partial, dir);
      this.entries.set(manifest.key, entry);
      this.logger.info(
        { key: manifest.key.slice(0, 12), bytes: manifest.bytes, usedBytes: this.usedBytes },
        "environment cached",
      );
      return this.lease(manifest.key, entry);
    } catch (error) {
      await removeTree(partial);
      throw error;
    }
  }

  private lease(key: string, entry: Entry): EnvironmentLease {
    entry.holders += 1;
    entry.lastUsed = Date.now();
    let released = false;
    return {
      key,
      dir: join(this.root, key, "env"),
      pythonPath: entry.manifest.pythonPath,
      manifest: entry.manifest,
      release: () => {
        if (released) return;
        released = true;
        entry.holders -= 1;
      },
    };
  }

  private async makeRoom(bytes: number): Promise<void> {
    if (bytes > this.capacityBytes)
      throw new EnvironmentCacheBusyError(
        `the environment is ${bytes} bytes, more than this node's environment cache of ${this.capacityBytes}`,
      );
    const idle = [...this.entries.entries()]
      .filter(([, e]) => e.holders === 0)
      .sort(([, a], [, b]) => a.lastUsed - b.lastUsed);
    while (this.usedBytes + bytes > this.capacityBytes) {
      const oldest = idle.shift();
      if (!oldest)
        throw new EnvironmentCacheBusyError(
          "this node's environment cache is full of environments that running jobs use",
        );
      const [key, entry] = oldest;
      this.entries.delete(key);
      await removeTree(join(this.root, key));
      this.logger.info({ key: key.slice(0, 12), bytes: entry.manifest.bytes }, "environment evicted");
    }
  }
}

/** Removes a tree whose directories were made read-only (0555), which a non-root agent could not empty. */
async function removeTree(path: string): Promise<void> {
  const open = async (dir: string): Promise<void> => {
    await chmod(dir, 0o755).catch(() => undefined);
    for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => []))
      if (entry.isDirectory()) await open(join(dir, entry.name));
  };
  await open(path);
  await rm(path, { recursive: true, force: true });
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
