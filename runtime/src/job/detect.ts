import type { SourceReading, SourceText } from "./code-source";
import { MAX_DETECTION_BYTES, MAX_SOURCE_BYTES, readSources } from "./code-source";
import type { ImageFamily } from "../catalog/image-matrix";
import { imageRef, jobImageFamily } from "../catalog/image-matrix";
import type { TierName } from "../catalog/tiers";
import { TIER_NAMES, TIERS } from "../catalog/tiers";

/** What the code seems to need, and the tier and image that would serve it, with the evidence. */
export interface Detection {
  readonly tier: TierName;
  readonly family: ImageFamily;
  readonly image: string;
  readonly needs: {
    readonly torch: boolean;
    readonly gpu: boolean;
    /** Estimated peak memory of the job, when the code allocates something large with literal sizes. */
    readonly memoryBytes?: number;
  };
  /** Why this tier and image, each naming the file and line that showed it. */
  readonly reasons: readonly string[];
  /** Things that will likely fail whatever the tier. */
  readonly warnings: readonly string[];
}

/**
 * Reads the job's code (directory, .py file or zip) and suggests a tier and image. What it reads is
 * bounded ({@link readSources}); sources left unread are named in a warning.
 */
export async function detect(codePath: string, reading?: SourceReading): Promise<Detection> {
  const read = reading ?? { bytesRead: 0, unread: 0 };
  const found = detectSources(await readSources(codePath, undefined, read));
  if (read.unread === 0) return found;
  return {
    ...found,
    warnings: [
      ...found.warnings,
      `${read.unread} source file(s) not read: detection reads at most ${formatBytes(MAX_SOURCE_BYTES)} a file and ${formatBytes(MAX_DETECTION_BYTES)} in all, so it may miss what they use`,
    ],
  };
}

const MiB = 2 ** 20;
/** Resident memory of the interpreter with the scientific stack loaded, and with PyTorch loaded. */
const BASE_MEMORY = 120 * MiB;
const TORCH_MEMORY = 600 * MiB;
/** Allocations smaller than this are not worth a reason. */
const NOTABLE_ALLOCATION = 64 * MiB;

interface Finding {
  readonly where: string;
  readonly what: string;
}

const TORCH_IMPORT = /^\s*(?:import|from)\s+torch\b/m;
const GPU_USES: readonly [RegExp, string][] = [
  [/\btorch\.cuda\b/, "uses torch.cuda"],
  [/\.cuda\(\s*\)/, "moves tensors to the GPU with .cuda()"],
  [/\.to\(\s*["']cuda(?::\d+)?["']/, "moves tensors to the GPU with .to('cuda')"],
  [/device\s*=\s*["']cuda(?::\d+)?["']/, "selects device='cuda'"],
  [/torch\.device\(\s*["']cuda/, "creates a CUDA torch.device"],
];
/** Frameworks that want a GPU but that no image of the matrix installs (the matrix provides PyTorch). */
const UNPROVIDED_FRAMEWORKS: readonly [RegExp, string][] = [
  [/^\s*(?:import|from)\s+(?:tensorflow|keras)\b/m, "tensorflow"],
  [/^\s*(?:import|from)\s+jax\b/m, "jax"],
];
const TRANSFORMERS_IMPORT = /^\s*(?:import|from)\s+transformers\b/m;

export function detectSources(sources: readonly SourceText[]): Detection {
  const torch: Finding[] = [];
  const gpu: Finding[] = [];
  const reasons: string[] = [];
  const warnings: string[] = [];
  let largest: { bytes: number; where: string; call: string } | undefined;

  for (const { name, text } of sources) {
    const code = name.endsWith(".py") ? stripComments(text) : text;
    if (name.endsWith("requirements.txt")) {
      const line = lineOf(code, /^\s*torch\b/m);
      if (line) torch.push({ where: `${name}:${line}`, what: "requires torch" });
      continue;
    }
    const at = (pattern: RegExp): string | undefined => {
      const line = lineOf(code, pattern);
      return line ? `${name}:${line}` : undefined;
    };
    const torchAt = at(TORCH_IMPORT);
    if (torchAt) torch.push({ where: torchAt, what: "imports torch" });
    const transformersAt = at(TRANSFORMERS_IMPORT);
    if (transformersAt) {
      torch.push({ where: transformersAt, what: "imports transformers (PyTorch models)" });
      warnings.push(`${transformersAt} imports transformers, which no image of the matrix installs`);
    }
    for (const [pattern, what] of GPU_USES) {
      const where = at(pattern);
      if (where) gpu.push({ where, what });
    }
    for (const [pattern, framework] of UNPROVIDED_FRAMEWORKS) {
      const where = at(pattern);
      if (!where) continue;
      gpu.push({ where, what: `imports ${framework}, which uses a GPU when one is present` });
      warnings.push(
        `${where} imports ${framework}, which no image of the matrix installs (they provide PyTorch)`,
      );
    }
    for (const allocation of findAllocations(code)) {
      if (!largest || allocation.bytes > largest.bytes)
        largest = { ...allocation, where: `${name}:${allocation.line}` };
    }
  }

  const needsTorch = torch.length > 0;
  const needsGpu = gpu.length > 0;
  for (const f of torch) reasons.push(`${f.where} ${f.what}: needs an image with PyTorch`);
  for (const f of gpu) reasons.push(`${f.where} ${f.what}: needs a GPU tier`);

  const baseline = needsTorch ? TORCH_MEMORY : BASE_MEMORY;
  const memoryBytes = largest ? largest.bytes + baseline : needsTorch ? baseline : undefined;
  const candidates = TIER_NAMES.filter((t) => !needsGpu || TIERS[t].gpu);
  const fits = candidates.find((t) => memoryBytes === undefined || TIERS[t].memoryMiB * MiB >= memoryBytes);
  const tier = fits ?? candidates.reduce((a, b) => (TIERS[b].memoryMiB > TIERS[a].memoryMiB ? b : a));

  if (largest && largest.bytes >= NOTABLE_ALLOCATION) {
    reasons.push(`${largest.where} allocates ${largest.call}, about ${formatBytes(largest.bytes)}`);
  }
  if (memoryBytes !== undefined && fits && fits !== candidates[0]) {
    reasons.push(
      `about ${formatBytes(memoryBytes)} at peak: more than ${candidates[0]}'s ${formatBytes(TIERS[candidates[0]!].memoryMiB * MiB)}, within ${fits}'s ${formatBytes(TIERS[fits].memoryMiB * MiB)}`,
    );
  }
  if (memoryBytes !== undefined && !fits) {
    warnings.push(
      `about ${formatBytes(memoryBytes)} at peak, more than any tier allows (largest: ${tier} with ${formatBytes(TIERS[tier].memoryMiB * MiB)}); the job will be killed for memory`,
    );
  }
  if (reasons.length === 0) reasons.push("no GPU, PyTorch or large-memory use found: the smallest tier fits");

  const family = jobImageFamily(TIERS[tier], { torch: needsTorch });
  return {
    tier,
    family,
    image: imageRef(family),
    needs: { torch: needsTorch, gpu: needsGpu, ...(memoryBytes !== undefined && { memoryBytes }) },
    reasons,
    warnings,
  };
}

/** Removes `#` comments outside string literals, keeping line numbers, so commented-out code is not evidence. */
function stripComments(text: string): string {
  return text
    .split("\n")
    .map((line) => {
      let quote: string | undefined;
      for (let i = 0; i < line.length; i++) {
        const c = line[i]!;
        if (quote) {
          if (c === "\\") i++;
          else if (c === quote) quote = undefined;
        } else if (c === '"' || c === "'") quote = c;
        else if (c === "#") return line.slice(0, i);
      }
      return line;
    })
    .join("\n");
}

function lineOf(text: string, pattern: RegExp): number | undefined {
  const match = pattern.exec(text);
  if (!match) return undefined;
  // `^\s*` may have matched blank lines before the statement: count from its first character.
  const offset = match.index + match[0].length - match[0].trimStart().length;
  return text.slice(0, offset).split("\n").length;
}

/** Bytes per element of the dtypes jobs name; numpy defaults to float64, torch to float32. */
const DTYPE_BYTES: Readonly<Record<string, number>> = {
  float64: 8,
  double: 8,
  int64: 8,
  long: 8,
  uint64: 8,
  complex64: 8,
  complex128: 16,
  float32: 4,
  single: 4,
  int32: 4,
  uint32: 4,
  int: 4,
  float16: 2,
  half: 2,
  bfloat16: 2,
  int16: 2,
  uint16: 2,
  int8: 1,
  uint8: 1,
  bool: 1,
};

/** numpy creators whose first argument is the shape; torch creators and numpy's rand/randn take dims. */
const ALLOCATION =
  /\b(np|numpy|torch)\.(?:random\.)?(zeros|ones|empty|full|rand|randn|random|standard_normal)\s*\(/g;

interface Allocation {
  readonly bytes: number;
  readonly line: number;
  readonly call: string;
}

function findAllocations(code: string): Allocation[] {
  const found: Allocation[] = [];
  for (const match of code.matchAll(ALLOCATION)) {
    const [, lib, fn] = match;
    const open = match.index + match[0].length;
    const args = balancedArgs(code, open);
    if (args === undefined) continue;
    const parts = splitTopLevel(args);
    const positional = parts.filter((p) => !/^\s*\w+\s*=/.test(p));
    const dimsTakeVarargs = lib === "torch" || fn === "rand" || fn === "randn";
    const first = positional[0]?.trim() ?? "";
    const shapeParts = /^[([]/.test(first)
      ? splitTopLevel(first.slice(1, -1))
      : dimsTakeVarargs
        ? positional
        : [first];
    const dims = shapeParts.filter((p) => p.trim() !== "").map(evaluateDim);
    if (dims.length === 0 || dims.some((d) => d === undefined)) continue;
    const elements = dims.reduce<number>((a, b) => a * b!, 1);
    const dtype = /dtype\s*=\s*(?:(?:np|numpy|torch)\.)?["']?(\w+)/.exec(args)?.[1];
    const itemBytes = (dtype ? DTYPE_BYTES[dtype] : undefined) ?? (lib === "torch" ? 4 : 8);
    found.push({
      bytes: elements * itemBytes,
      line: code.slice(0, match.index).split("\n").length,
      call: `${match[0]}${args.length > 60 ? `${args.slice(0, 57)}...` : args})`,
    });
  }
  return found;
}

function balancedArgs(code: string, start: number): string | undefined {
  let depth = 1;
  for (let i = start; i < code.length && i < start + 2000; i++) {
    const c = code[i];
    if (c === "(" || c === "[") depth++;
    else if (c === ")" || c === "]") depth--;
    if (depth === 0) return code.slice(start, i);
  }
  return undefined;
}

function splitTopLevel(text: string): string[] {
  const parts: string[] = [];
  let depth = 0;
  let current = "";
  for (const c of text) {
    if (c === "(" || c === "[") depth++;
    if (c === ")" || c === "]") depth--;
    if (c === "," && depth === 0) {
      parts.push(current);
      current = "";
    } else current += c;
  }
  parts.push(current);
  return parts;
}

/** A dimension written with literals only (`100_000`, `1e5`, `10**5`, `1024 * 1024`), else undefined. */
function evaluateDim(text: string): number | undefined {
  const expr = text.trim().replace(/_/g, "");
  if (!/^[\d.eE+\-*\s()]+$/.test(expr)) return undefined;
  const factors = expr.split(/(?<!\*)\*(?!\*)/);
  let product = 1;
  for (const factor of factors) {
    const [base, exponent, ...rest] = factor
      .split("**")
      .map((p) => Number(p.trim().replace(/^\((.*)\)$/, "$1")));
    if (rest.length > 0 || base === undefined || !Number.isFinite(base)) return undefined;
    const value = exponent === undefined ? base : base ** exponent;
    if (!Number.isFinite(value) || value < 0) return undefined;
    product *= value;
  }
  return Math.floor(product);
}

export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value >= 10 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}
