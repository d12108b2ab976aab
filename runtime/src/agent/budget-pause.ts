import type { S3Client } from "@aws-sdk/client-s3";
import { GetObjectCommand, ListObjectsV2Command } from "@aws-sdk/client-s3";
import { z } from "zod";
import { pauseMarkerKey } from "../catalog/bucket-layout";

/**
 * A tier's budget pause, as agents see it. The budget enforcer (infra/budget-enforcer/handler.ts) writes
 * `_control/paused/<tier>` to the workspaces bucket when the tier's budget is spent, before it sets the
 * tier's groups to 0; `npm run budget-resume` removes it. Nodes that scale-in protection keeps alive
 * (they run jobs) read it before each receive: while it exists they take no job, stop their running jobs
 * with reason `budget` (checkpointed) and release their protection, so the group can shrink.
 *
 * It lists the marker's key, then reads it (S3 answers a missing key with 403 to callers that may not list).
 * Fails closed: a marker that cannot be read (throttling, a network fault, a policy that denies the read)
 * is retried, and after {@link PAUSE_READ_ATTEMPTS} failures the tier counts as paused. A marker that
 * exists but does not parse also counts as paused. Only "no such key" means not paused.
 */

export const pauseMarkerSchema = z.object({
  /** Why, as the enforcer's decision put it ("crucible-prod-gpu-small: ACTUAL spend reached 100 % ..."). */
  reason: z.string(),
  /** The AWS budget whose notification paused the tier. */
  budget: z.string(),
  /** When the pause was written (ISO 8601). */
  at: z.string(),
});
export type PauseMarker = z.infer<typeof pauseMarkerSchema>;

/** Reads of the marker before an unreadable one counts as a pause. */
export const PAUSE_READ_ATTEMPTS = 3;

type ObjectReader = Pick<S3Client, "send">;

export interface PausedTierOptions {
  /** Attempts before an unreadable marker counts as a pause. Defaults to {@link PAUSE_READ_ATTEMPTS}. */
  readonly attempts?: number;
  /** Wait before the n-th retry, in ms. Defaults to 200 · 2^(n-1). */
  readonly backoffMs?: (retry: number) => number;
}

/**
 * The tier's pause marker, or undefined when there is none. An unreadable marker (after retries) or one
 * that does not parse is returned as a marker whose reason says so: the tier is treated as paused.
 */
export async function pausedTier(
  s3: ObjectReader,
  bucket: string,
  tier: string,
  options: PausedTierOptions = {},
): Promise<PauseMarker | undefined> {
  const key = pauseMarkerKey(tier);
  const attempts = Math.max(1, options.attempts ?? PAUSE_READ_ATTEMPTS);
  const backoff = options.backoffMs ?? ((n: number) => 200 * 2 ** (n - 1));
  let lastError: unknown;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    if (attempt > 1) await new Promise((r) => setTimeout(r, backoff(attempt - 1)));
    let text: string;
    try {
      // Listing first: S3 answers a missing key with 403, not 404, to a caller without s3:ListBucket,
      // and node roles may list only this key's prefix, so a GetObject alone could not tell.
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: key, MaxKeys: 10 }));
      if (!(listed.Contents ?? []).some((o) => o.Key === key)) return undefined;
      const out = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
      text = (await out.Body?.transformToString()) ?? "";
    } catch (error) {
      if (isMissing(error)) return undefined;
      lastError = error;
      continue;
    }
    const parsed = safeJson(text);
    const marker = pauseMarkerSchema.safeParse(parsed);
    return marker.success
      ? marker.data
      : {
          reason: `the pause marker s3://${bucket}/${key} exists but is not valid: the tier stays paused`,
          budget:
            typeof (parsed as { budget?: unknown })?.budget === "string"
              ? (parsed as { budget: string }).budget
              : "unknown",
          at: new Date().toISOString(),
        };
  }
  const why = lastError instanceof Error ? `${lastError.name}: ${lastError.message}` : String(lastError);
  return {
    reason: `the pause marker s3://${bucket}/${key} could not be read after ${attempts} attempts (${why}); failing closed`,
    budget: "unknown",
    at: new Date().toISOString(),
  };
}

/**
 * The agent's `paused` option for `tier`: the reason while the tier is paused, else undefined. Call it
 * before each receive.
 */
export function pauseCheck(
  s3: ObjectReader,
  bucket: string,
  tier: string,
  options?: PausedTierOptions,
): () => Promise<string | undefined> {
  return async () => (await pausedTier(s3, bucket, tier, options))?.reason;
}

function isMissing(error: unknown): boolean {
  const e = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === "NoSuchKey" || e.name === "NotFound" || e.$metadata?.httpStatusCode === 404;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
