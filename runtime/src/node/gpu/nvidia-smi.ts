/** One GPU as `nvidia-smi --query-gpu` reports it; a field the GPU or driver does not report is absent. */
export interface GpuStatus {
  readonly index: number;
  readonly name: string;
  readonly busId?: string;
  readonly driverVersion?: string;
  readonly memoryMiB?: number;
  readonly temperatureC?: number;
  /** Uncorrectable ECC errors since the driver loaded: the memory held wrong data at least once. */
  readonly uncorrectedEccErrors?: number;
  /** Pages waiting to be retired at the next reset (GPUs before Ampere). */
  readonly retiredPagesPending?: boolean;
  /** Rows waiting to be remapped at the next reset (HBM GPUs from Ampere on). */
  readonly remappedRowsPending?: boolean;
  /** Row remapping has run out of spare rows: the GPU needs servicing. */
  readonly remappingFailed?: boolean;
  /** Clocks cut by half or more by the hardware (power brake, overheating, an external signal). */
  readonly hwSlowdown?: boolean;
  /** Percent of the last sample period a kernel ran (asked only by {@link GPU_USAGE_FIELDS}). */
  readonly utilizationPercent?: number;
  /** Memory in use (asked only by {@link GPU_USAGE_FIELDS}). */
  readonly memoryUsedMiB?: number;
}

/** The fields asked of `nvidia-smi --query-gpu`, in {@link GpuStatus}' order. */
export const GPU_QUERY_FIELDS = [
  "index",
  "name",
  "pci.bus_id",
  "driver_version",
  "memory.total",
  "temperature.gpu",
  "ecc.errors.uncorrected.volatile.total",
  "retired_pages.pending",
  "remapped_rows.pending",
  "remapped_rows.failure",
  "clocks_throttle_reasons.hw_slowdown",
] as const;
/** The fields a running job's GPU usage is sampled with: few, so the query is cheap every few seconds. */
export const GPU_USAGE_FIELDS = ["index", "name", "utilization.gpu", "memory.used"] as const;
/** Without these the answer means nothing; any other field a driver does not know is dropped and skipped. */
export const REQUIRED_FIELDS: readonly string[] = ["index", "name", "driver_version"];

/** "[N/A]", "[Not Supported]" and bare "N/A": the GPU or driver does not report it, which is no fault. */
const NOT_REPORTED = /^\[?(N\/A|Not Supported|Not Available)\]?$/i;
const FLAG_VALUES: Readonly<Record<string, boolean>> = {
  yes: true,
  active: true,
  true: true,
  no: false,
  "not active": false,
  false: false,
};

/**
 * Parses `--query-gpu=<fields> --format=csv,noheader,nounits`. A value that is neither reported nor
 * absent in a known way ("[GPU requires reset]", "[Unknown Error]") is returned in `unreadable`: a GPU
 * that cannot say whether its memory is sound is not sound.
 */
export function parseGpuQuery(
  csv: string,
  fields: readonly string[] = GPU_QUERY_FIELDS,
): { gpus: GpuStatus[]; unreadable: string[] } {
  const gpus: GpuStatus[] = [];
  const unreadable: string[] = [];
  for (const line of csv.split("\n").filter((l) => l.trim() !== "")) {
    // GPU names hold no commas; nvidia-smi neither quotes nor escapes.
    const cells = line.split(",").map((c) => c.trim());
    if (cells.length !== fields.length) {
      unreadable.push(
        `nvidia-smi printed ${cells.length} values where ${fields.length} were asked: "${line}"`,
      );
      continue;
    }
    const raw = (field: string): string | undefined => {
      const i = fields.indexOf(field);
      const value = i < 0 ? undefined : cells[i];
      return value === undefined || NOT_REPORTED.test(value) ? undefined : value;
    };
    const label = `GPU ${raw("index") ?? "?"} (${raw("name") ?? "unnamed"})`;
    const bad = (field: string, value: string): undefined => {
      unreadable.push(`${label} reports ${field} as "${value}"`);
      return undefined;
    };
    const num = (field: string): number | undefined => {
      const value = raw(field);
      if (value === undefined) return undefined;
      return /^\d+(\.\d+)?$/.test(value) ? Number(value) : bad(field, value);
    };
    const flag = (field: string): boolean | undefined => {
      const value = raw(field);
      if (value === undefined) return undefined;
      return FLAG_VALUES[value.toLowerCase()] ?? bad(field, value);
    };
    const optional = <K extends keyof GpuStatus>(key: K, value: GpuStatus[K] | undefined) =>
      value === undefined ? {} : { [key]: value };
    gpus.push({
      index: num("index") ?? gpus.length,
      name: raw("name") ?? "unnamed",
      ...optional("busId", raw("pci.bus_id")),
      ...optional("driverVersion", raw("driver_version")),
      ...optional("memoryMiB", num("memory.total")),
      ...optional("temperatureC", num("temperature.gpu")),
      ...optional("uncorrectedEccErrors", num("ecc.errors.uncorrected.volatile.total")),
      ...optional("retiredPagesPending", flag("retired_pages.pending")),
      ...optional("remappedRowsPending", flag("remapped_rows.pending")),
      ...optional("remappingFailed", flag("remapped_rows.failure")),
      ...optional("hwSlowdown", flag("clocks_throttle_reasons.hw_slowdown")),
      ...optional("utilizationPercent", num("utilization.gpu")),
      ...optional("memoryUsedMiB", num("memory.used")),
    });
  }
  return { gpus, unreadable };
}

/**
 * The driver's version and the newest CUDA version it supports, from the header of `nvidia-smi -q -x`
 * (`<driver_version>`, `<cuda_version>`), which it prints even when it finds no GPU.
 */
export function parseSmiLog(xml: string): { driverVersion?: string; cudaVersion?: string } {
  const driverVersion = /<driver_version>\s*([\d.]+)\s*<\/driver_version>/.exec(xml)?.[1];
  const cudaVersion = /<cuda_version>\s*(\d+\.\d+)\s*<\/cuda_version>/.exec(xml)?.[1];
  return { ...(driverVersion && { driverVersion }), ...(cudaVersion && { cudaVersion }) };
}
