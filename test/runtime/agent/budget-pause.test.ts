import { describe, expect, it } from "vitest";
import { PAUSE_READ_ATTEMPTS, pauseCheck, pausedTier } from "../../../runtime/src/agent/budget-pause";

/** An S3 client that answers ListObjectsV2 and GetObject from `objects`, or fails as told. */
function fakeS3(
  objects: Record<string, string>,
  fail?: (command: string, call: number) => Error | undefined,
) {
  const calls: string[] = [];
  const client = {
    send: (command: { constructor: { name: string }; input: { Key?: string; Prefix?: string } }) => {
      const name = command.constructor.name;
      calls.push(name);
      const error = fail?.(name, calls.length);
      if (error) return Promise.reject(error);
      if (name === "ListObjectsV2Command") {
        const prefix = command.input.Prefix ?? "";
        return Promise.resolve({
          Contents: Object.keys(objects)
            .filter((k) => k.startsWith(prefix))
            .map((Key) => ({ Key })),
        });
      }
      const text = objects[command.input.Key!];
      if (text === undefined) return Promise.reject(Object.assign(new Error("gone"), { name: "NoSuchKey" }));
      return Promise.resolve({ Body: { transformToString: () => Promise.resolve(text) } });
    },
  };
  return { client: client as never, calls };
}

const MARKER = {
  reason: "crucible-dev-gpu-small: ACTUAL spend reached 100 % of $250.00",
  budget: "crucible-dev-gpu-small",
  at: "2026-11-24T08:00:00.000Z",
};
const noWait = { backoffMs: () => 0 };

describe("a tier's budget pause", () => {
  it("is the marker when there is one, and nothing for a tier without", async () => {
    const { client } = fakeS3({ "_control/paused/gpu-small": JSON.stringify(MARKER) });
    expect(await pausedTier(client, "b", "gpu-small")).toEqual(MARKER);
    expect(await pausedTier(client, "b", "cpu-small")).toBeUndefined();
    expect(await pauseCheck(client, "b", "gpu-small")()).toBe(MARKER.reason);
    expect(await pauseCheck(client, "b", "cpu-small")()).toBeUndefined();
  });

  it("lists the key before reading it, so a missing marker never needs a 404 from GetObject", async () => {
    const { client, calls } = fakeS3({});
    expect(await pausedTier(client, "b", "gpu-small")).toBeUndefined();
    expect(calls).toEqual(["ListObjectsV2Command"]);
  });

  it("retries an unreadable marker, then fails closed: the tier counts as paused", async () => {
    const denied = Object.assign(new Error("Access Denied"), {
      name: "AccessDenied",
      $metadata: { httpStatusCode: 403 },
    });
    const { client, calls } = fakeS3({}, () => denied);
    const marker = await pausedTier(client, "b", "gpu-small", noWait);
    expect(calls).toHaveLength(PAUSE_READ_ATTEMPTS);
    expect(marker?.reason).toMatch(
      /could not be read after 3 attempts \(AccessDenied: Access Denied\); failing closed/,
    );
  });

  it("recovers when a retry reads it", async () => {
    const { client } = fakeS3({}, (_c, call) => (call === 1 ? new Error("socket hang up") : undefined));
    expect(await pausedTier(client, "b", "gpu-small", noWait)).toBeUndefined();
  });

  it("counts a marker that does not parse as a pause", async () => {
    const { client } = fakeS3({ "_control/paused/gpu-small": "not json" });
    expect((await pausedTier(client, "b", "gpu-small"))?.reason).toMatch(/exists but is not valid/);
  });
});
