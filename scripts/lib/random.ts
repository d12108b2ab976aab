/** mulberry32: a small, fast, seedable PRNG with 32 bits of state; uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Time to the next event of a Poisson process with this rate (events per unit of the result). */
export function exponential(rng: () => number, rate: number): number {
  return -Math.log(1 - rng()) / rate;
}
