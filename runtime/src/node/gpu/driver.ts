/**
 * The oldest Linux x86_64 driver that runs an application built with each CUDA major version, through
 * minor version compatibility: NVIDIA, CUDA Toolkit Release Notes, "CUDA Toolkit and Minimum Required
 * Driver Version for CUDA Minor Version Compatibility", and CUDA Compatibility, "Minor Version
 * Compatibility" (https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html),
 * which gives 13.x only as ">= 580". Within a major version, a driver older than the toolkit's own (e.g.
 * 535, CUDA 12.2, for an image built with 12.6) runs it without the features that need the newer driver,
 * PTX JIT among them; the compute probe proves the image's PyTorch works regardless.
 */
export const MINIMUM_DRIVER_BY_CUDA_MAJOR: Readonly<Record<number, string>> = {
  11: "450.80.02",
  12: "525.60.13",
  13: "580",
};

/** Compares dotted versions part by part as numbers ("525.105.17" > "525.60.13"); missing parts count as 0. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map(Number);
  const pb = b.split(".").map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const diff = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (diff !== 0) return Math.sign(diff);
  }
  return 0;
}

/** The oldest driver that runs an image built with `cuda` (e.g. "12.6"), from {@link MINIMUM_DRIVER_BY_CUDA_MAJOR}. */
export function minimumDriver(cuda: string): string {
  const major = Number(cuda.split(".")[0]);
  const minimum = MINIMUM_DRIVER_BY_CUDA_MAJOR[major];
  if (!minimum)
    throw new Error(`no minimum driver is known for CUDA ${cuda}; add CUDA ${major}.x to the table`);
  return minimum;
}
