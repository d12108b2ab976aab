import { readdir, readFile, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { Readable } from "node:stream";
import pino from "pino";
import { afterEach, describe, expect, it } from "vitest";
import { MAX_UPLOADS, UPLOAD_TTL_MS, UploadError, UploadStore } from "../../../runtime/src/console/uploads";

/**
 * The console's upload store on its own, on a clock the test moves: what expires, what is evicted, who
 * may submit an upload and how often, and that nothing is left once it closes.
 */
const logger = pino({ level: "silent" });
let clock = 0;
let store: UploadStore<string>;
const paths = new Map<string, string>();

afterEach(() => store?.close());

function newStore(): UploadStore<string> {
  clock = 1_000_000;
  store = new UploadStore<string>(logger, () => clock);
  return store;
}

/** Uploads `text` as `session`; its check answers the text read back from the kept file. */
async function put(session: string, text: string, maxBytes = 1024): Promise<string> {
  const { id, size, info } = await store.receive(
    session,
    "main.py",
    Readable.from([Buffer.from(text)]),
    maxBytes,
    (bytes) => `over by ${bytes - maxBytes}`,
    async (path) => {
      paths.set(text, path);
      return readFile(path, "utf8");
    },
  );
  expect([size, info]).toEqual([Buffer.byteLength(text), text]);
  return id;
}

const take = (session: string, id: string): Promise<string> =>
  store.consume(session, id, (_path, info) => Promise.resolve(info));

const gone = async (path: string): Promise<boolean> =>
  (await stat(path).catch(() => undefined)) === undefined;

describe("the console's upload store", () => {
  it("gives each upload an unguessable id that only its session may submit, once", async () => {
    newStore();
    const id = await put("s1", "one");
    expect(id).toMatch(/^[\w-]{43}$/);
    await expect(take("s2", id)).rejects.toMatchObject({ status: 400 });
    expect(await take("s1", id)).toBe("one");
    expect(await gone(paths.get("one")!)).toBe(true);
    await expect(take("s1", id)).rejects.toThrow(
      new UploadError(
        400,
        `upload: no upload ${JSON.stringify(id)} of this session: an upload lasts 60 minutes and is submitted once; upload the code again`,
      ),
    );
  });

  it("keeps an upload whose submission failed for another try, and refuses a second one meanwhile", async () => {
    newStore();
    const id = await put("s1", "retry");
    await expect(store.consume("s1", id, () => Promise.reject(new Error("tier refused")))).rejects.toThrow(
      "tier refused",
    );
    let release!: () => void;
    const first = store.consume(
      "s1",
      id,
      (_path, info) => new Promise<string>((done) => (release = () => done(info))),
    );
    await expect(take("s1", id)).rejects.toMatchObject({ status: 409 });
    release();
    expect(await first).toBe("retry");
  });

  it(`expires an upload ${UPLOAD_TTL_MS / 60_000} minutes after it was made, removing its file`, async () => {
    newStore();
    const early = await put("s1", "early");
    const late = await put("s1", "late");
    clock += UPLOAD_TTL_MS - 1;
    expect(await take("s1", early)).toBe("early");
    clock += 1;
    await expect(take("s1", late)).rejects.toMatchObject({ status: 400 });
    expect(await gone(paths.get("late")!)).toBe(true);
    expect(store.size).toBe(0);
  });

  it(`keeps at most ${MAX_UPLOADS}, removing the oldest idle one, and refuses one more when all are busy`, async () => {
    newStore();
    const ids: string[] = [];
    for (let i = 0; i <= MAX_UPLOADS; i++) ids.push(await put("s1", `upload ${i}`));
    expect(store.size).toBe(MAX_UPLOADS);
    await expect(take("s1", ids[0]!)).rejects.toMatchObject({ status: 400 });
    expect(await gone(paths.get("upload 0")!)).toBe(true);
    expect(await take("s1", ids[1]!)).toBe("upload 1");

    // Every one kept being submitted at once: none may be evicted, so a new upload waits its turn.
    const kept = [...ids.slice(2), await put("s1", "refill")];
    expect(store.size).toBe(MAX_UPLOADS);
    const releases: (() => void)[] = [];
    const busy = kept.map((id) =>
      store.consume(
        "s1",
        id,
        (_path, info) => new Promise<string>((done) => releases.push(() => done(info))),
      ),
    );
    await expect.poll(() => releases.length).toBe(MAX_UPLOADS);
    await expect(put("s1", "one too many")).rejects.toMatchObject({ status: 429 });
    for (const release of releases) release();
    expect(await Promise.all(busy)).toHaveLength(MAX_UPLOADS);
    expect(store.size).toBe(0);
  });

  it("refuses a body over its limit with 413 and removes what was written of it, and what its check refused", async () => {
    newStore();
    await expect(put("s1", "x".repeat(20), 10)).rejects.toThrow(new UploadError(413, "over by 10"));
    await expect(
      store.receive(
        "s1",
        "main.py",
        Readable.from([Buffer.from("bad")]),
        10,
        () => "",
        () => Promise.reject(new Error("not code")),
      ),
    ).rejects.toThrow("not code");
    expect(store.size).toBe(0);
  });

  it("removes everything when it closes, its private directory too, and takes no upload after", async () => {
    newStore();
    await put("s1", "left behind");
    const root = dirname(dirname(paths.get("left behind")!));
    expect((await stat(root)).mode & 0o777).toBe(0o700);
    expect(await readdir(root)).toHaveLength(1);
    await store.close();
    expect(await gone(root)).toBe(true);
    await expect(put("s1", "too late")).rejects.toMatchObject({ status: 503 });
  });
});
