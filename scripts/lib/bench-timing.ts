/** Timing helpers for `npm run bench` (scripts/bench.ts): repeated runs, interleaved, summarised. */

/** Milliseconds `fn` takes. */
export async function timed(fn: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await fn();
  return performance.now() - start;
}

export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new Error("median of no samples");
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** "412 ms (min 398, max 455, n 10)": the median first, then the spread. */
export function summary(xs: readonly number[]): string {
  const round = (x: number) => x.toFixed(0);
  return `${round(median(xs)).padStart(5)} ms (min ${round(Math.min(...xs))}, max ${round(Math.max(...xs))}, n ${xs.length})`;
}

/**
 * Runs every contender once per round, `rounds` times, rotating which goes first so that none always
 * runs on a cache the others warmed (or on a machine the others loaded); after one untimed warm-up
 * round. Returns each contender's samples, in milliseconds, in the order given.
 */
export async function interleave(
  rounds: number,
  contenders: readonly (() => Promise<unknown>)[],
): Promise<number[][]> {
  const samples = contenders.map((): number[] => []);
  for (const run of contenders) await run();
  for (let round = 0; round < rounds; round++) {
    for (let k = 0; k < contenders.length; k++) {
      const i = (round + k) % contenders.length;
      samples[i]!.push(await timed(contenders[i]!));
    }
  }
  return samples;
}
