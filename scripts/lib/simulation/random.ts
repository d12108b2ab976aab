import { mulberry32 } from "../random";

/** An independent stream for one purpose of one seed. */
export function stream(seed: number, purpose: string): () => number {
  let h = seed >>> 0;
  for (const c of purpose) h = Math.imul(h ^ c.charCodeAt(0), 0x9e3779b1) >>> 0;
  return mulberry32(h);
}

/** A draw from the standard normal distribution (Box–Muller); takes two uniform draws. */
export function standardNormal(rng: () => number): number {
  const u = 1 - rng();
  const v = rng();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
}
