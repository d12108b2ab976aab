import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Logger } from "../logger";

/** How long an upload waits to be submitted before it is removed. */
export const UPLOAD_TTL_MS = 3600 * 1000;
/** Uploads kept at most, those being received included: the oldest idle one goes to make room. */
export const MAX_UPLOADS = 8;
/** How often expired uploads are looked for. */
const SWEEP_MS = 60 * 1000;

/** An upload's id: 32 random bytes, base64url, as the API takes it. */
export const UPLOAD_ID = /^[\w-]{43}$/;

/** A refusal of an upload, with the HTTP status it answers with. */
export class UploadError extends Error {
  override readonly name = "UploadError";
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** One stored upload: whose it is, where its file is, and what was found in it. */
interface Stored<T> {
  readonly id: string;
  /** The session that uploaded it: no other may submit it. */
  readonly session: string;
  readonly dir: string;
  readonly path: string;
  readonly createdAt: number;
  /** While received, or while a submission reads it: neither expired nor evicted then. */
  busy: boolean;
  info?: T;
}

/**
 * Code uploaded through the console, kept until it is submitted: each in its own directory under one
 * private temporary directory (0700, made at the first upload), under an unguessable id that only the
 * session that uploaded it may use. An upload lasts {@link UPLOAD_TTL_MS}; at most {@link MAX_UPLOADS}
 * are kept, the oldest idle one removed to make room; {@link close} removes them all.
 */
export class UploadStore<T> {
  private root: Promise<string> | undefined;
  private readonly uploads = new Map<string, Stored<T>>();
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.sweeper = setInterval(() => void this.sweep(), SWEEP_MS).unref();
  }

  /**
   * Receives `body` into a new upload's file named `fileName`, at most `maxBytes` (a 413 past them,
   * the file removed), then has `check` look at it: what it answers is kept with the upload, what it
   * throws removes the upload and is thrown. A 429 when {@link MAX_UPLOADS} are all busy.
   */
  async receive(
    session: string,
    fileName: string,
    body: Readable,
    maxBytes: number,
    tooLarge: (bytes: number) => string,
    check: (path: string) => Promise<T>,
  ): Promise<{ readonly id: string; readonly size: number; readonly expiresAt: number; readonly info: T }> {
    if (this.closed) throw new UploadError(503, "the console is closing; it takes no more uploads");
    const root = await this.rootDir();
    await this.sweep();
    await this.makeRoom();
    // Counted from here on, with no wait between the room made and the place taken.
    const id = randomBytes(32).toString("base64url");
    const dir = join(root, id);
    const upload: Stored<T> = {
      id,
      session,
      dir,
      path: join(dir, fileName),
      createdAt: this.now(),
      busy: true,
    };
    this.uploads.set(id, upload);
    try {
      await mkdir(dir, { mode: 0o700 });
      const size = await receiveInto(body, upload.path, maxBytes, tooLarge);
      upload.info = await check(upload.path);
      upload.busy = false;
      this.logger.info({ upload: id.slice(0, 8), fileName, size }, "console upload received");
      return { id, size, expiresAt: upload.createdAt + UPLOAD_TTL_MS, info: upload.info };
    } catch (error) {
      await this.remove(upload);
      throw error;
    }
  }

  /**
   * Runs `use` on the upload `id` of `session` (its file's path and what its check found) and removes it
   * once `use` succeeds; a failure leaves it for another try. Unknown, expired, another session's or
   * in use already: a 400 that says so, naming the `upload` field.
   */
  async consume<R>(session: string, id: string, use: (path: string, info: T) => Promise<R>): Promise<R> {
    await this.sweep();
    const upload = this.uploads.get(id);
    if (!upload || upload.session !== session || upload.info === undefined)
      throw new UploadError(
        400,
        `upload: no upload ${JSON.stringify(id)} of this session: an upload lasts ${UPLOAD_TTL_MS / 60_000} minutes and is submitted once; upload the code again`,
      );
    if (upload.busy) throw new UploadError(409, `upload: ${JSON.stringify(id)} is being submitted already`);
    upload.busy = true;
    let result: R;
    try {
      result = await use(upload.path, upload.info);
    } catch (error) {
      upload.busy = false;
      throw error;
    }
    await this.remove(upload);
    return result;
  }

  /** Removes every upload and the directory that held them; later uploads are refused. */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.sweeper);
    this.uploads.clear();
    const root = await this.root?.catch(() => undefined);
    if (root) await rm(root, { recursive: true, force: true });
  }

  /** How many uploads are kept now, those being received included. */
  get size(): number {
    return this.uploads.size;
  }

  private rootDir(): Promise<string> {
    // mkdtemp makes it 0700: only the console's user can list or read what is uploaded.
    this.root ??= mkdtemp(join(tmpdir(), "crucible-console-uploads-"));
    return this.root;
  }

  private async sweep(): Promise<void> {
    const oldest = this.now() - UPLOAD_TTL_MS;
    for (const upload of [...this.uploads.values()])
      if (!upload.busy && upload.createdAt <= oldest) await this.remove(upload);
  }

  private async makeRoom(): Promise<void> {
    while (this.uploads.size >= MAX_UPLOADS) {
      // Map order is insertion order: the first idle one is the oldest.
      const idle = [...this.uploads.values()].find((u) => !u.busy);
      if (!idle)
        throw new UploadError(
          429,
          `${MAX_UPLOADS} uploads are being received or submitted now; try again once one is done`,
        );
      await this.remove(idle);
    }
  }

  private async remove(upload: Stored<T>): Promise<void> {
    this.uploads.delete(upload.id);
    await rm(upload.dir, { recursive: true, force: true }).catch((error: unknown) =>
      this.logger.warn({ err: error, upload: upload.id.slice(0, 8) }, "could not remove a console upload"),
    );
  }
}

/**
 * Writes `body` to a new file at `path`, at most `maxBytes`, and answers how many it wrote. Past them the body is left unread, not
 * destroyed, so that the refusal can still be answered on its connection; a body cut off before its
 * end fails with a 400.
 */
async function receiveInto(
  body: Readable,
  path: string,
  maxBytes: number,
  tooLarge: (bytes: number) => string,
): Promise<number> {
  const limit = bounded(maxBytes, tooLarge);
  const cut = (): void => {
    if (!body.readableEnded) limit.destroy(new UploadError(400, "the upload was cut off before its end"));
  };
  body.once("close", cut);
  body.once("error", cut);
  try {
    const written = pipeline(limit, createWriteStream(path, { flags: "wx", mode: 0o600 }));
    body.pipe(limit);
    await written;
    return limit.seen;
  } finally {
    body.off("close", cut);
    body.off("error", cut);
    body.unpipe(limit);
  }
}

/** Passes at most `maxBytes` through; one byte more fails the stream with a 413 saying `tooLarge`. */
function bounded(maxBytes: number, tooLarge: (bytes: number) => string): Transform & { seen: number } {
  const limit = Object.assign(
    new Transform({
      transform(chunk: Buffer, _encoding, done) {
        limit.seen += chunk.length;
        if (limit.seen > maxBytes) done(new UploadError(413, tooLarge(limit.seen)));
        else done(null, chunk);
      },
    }),
    { seen: 0 },
  );
  return limit;
}
