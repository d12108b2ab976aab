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
  /** The third-party packages the code imports (outside `try:` blocks), by their package index names. */
  readonly packages: readonly string[];
  /**
   * Lines to add to the job's requirements.txt: what it imports that no image of the matrix installs and
   * its requirements.txt does not list yet. The platform builds them into the job's environment.
   */
  readonly requirements: readonly string[];
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
/** Imports that {@link UNPROVIDED_FRAMEWORKS} and {@link TRANSFORMERS_IMPORT} already warn about. */
const WARNED_ELSEWHERE = new Set(["transformers", "tensorflow", "keras", "jax"]);

/** Where an import comes from: the job images' Python, or a package one of them installs. */
export interface Provided {
  /** Its name on the package index, as requirements.txt names it. */
  readonly dist: string;
  /** Only in the ML images (ml-cpu, ml-cuda); the rest are in every job image. */
  readonly ml?: true;
  /** Loads PyTorch (so it needs the memory PyTorch does). */
  readonly torch?: true;
}

const same = (names: string, extra: Omit<Provided, "dist"> = {}): [string, Provided][] =>
  names.split(" ").map((name) => [name, { dist: name, ...extra }]);

/**
 * Top-level modules the job images install, by import name: images/cpu/packages.txt with what those pull
 * in, and what images/ml-cpu/packages.txt (and ml-cuda's requirements.txt) add.
 * test/images/images.test.ts checks this table against the built images.
 */
export const PROVIDED_MODULES: ReadonlyMap<string, Provided> = new Map<string, Provided>([
  ...same("numpy scipy pandas matplotlib seaborn tqdm packaging pytz joblib threadpoolctl kiwisolver"),
  ...same("cycler pyparsing contourpy sympy mpmath lxml attrs brotli lz4 decorator fs platformdirs"),
  ...same("unicodedata2 zopfli"),
  ["sklearn", { dist: "scikit-learn" }],
  ["mpl_toolkits", { dist: "matplotlib" }],
  ["pylab", { dist: "matplotlib" }],
  ["PIL", { dist: "pillow" }],
  ["dateutil", { dist: "python-dateutil" }],
  ["attr", { dist: "attrs" }],
  ["fontTools", { dist: "fonttools" }],
  ["ufoLib2", { dist: "ufolib2" }],
  ["isympy", { dist: "sympy" }],
  ...same("torch torchvision torchaudio", { ml: true, torch: true }),
  ["functorch", { dist: "torch", ml: true, torch: true }],
  ...same("safetensors tiktoken sentencepiece regex requests urllib3 idna certifi networkx", { ml: true }),
  ...same("jinja2 markupsafe fsspec filelock typing_extensions", { ml: true }),
  ["charset_normalizer", { dist: "charset-normalizer", ml: true }],
  ["tiktoken_ext", { dist: "tiktoken", ml: true }],
]);

/** Modules of packages in the ML images that load PyTorch: `safetensors.numpy` does not, this does. */
const TORCH_SUBMODULES = new Set(["safetensors.torch"]);

/**
 * Import names whose package on the index is named otherwise; any other import is suggested as itself
 * (pip treats `_` and `-` alike).
 */
const INDEX_NAMES: Readonly<Record<string, string>> = {
  cv2: "opencv-python-headless",
  yaml: "pyyaml",
  bs4: "beautifulsoup4",
  skimage: "scikit-image",
  Crypto: "pycryptodome",
  dotenv: "python-dotenv",
  jwt: "pyjwt",
  docx: "python-docx",
  serial: "pyserial",
  faiss: "faiss-cpu",
  umap: "umap-learn",
  git: "gitpython",
  fitz: "pymupdf",
  google: "protobuf",
  sentence_transformers: "sentence-transformers",
  huggingface_hub: "huggingface-hub",
  pytorch_lightning: "pytorch-lightning",
  torch_geometric: "torch-geometric",
};

/** Libraries built on PyTorch: a job importing them needs an image with it, whatever else it installs. */
const ON_TORCH = new Set([
  "transformers",
  "accelerate",
  "peft",
  "trl",
  "diffusers",
  "timm",
  "lightning",
  "pytorch_lightning",
  "torchmetrics",
  "sentence_transformers",
  "bitsandbytes",
  "deepspeed",
  "xformers",
  "torchtext",
  "torch_geometric",
]);

/**
 * Python 3.13's standard library (`sys.stdlib_module_names` without its private names), which needs no
 * image's help; test/images/images.test.ts checks it against the images' Python.
 */
export const STANDARD_LIBRARY: ReadonlySet<string> = new Set(
  (
    "abc antigravity argparse array ast asyncio atexit base64 bdb binascii bisect builtins bz2 cProfile " +
    "calendar cmath cmd code codecs codeop collections colorsys compileall concurrent configparser " +
    "contextlib contextvars copy copyreg csv ctypes curses dataclasses datetime dbm decimal difflib dis " +
    "doctest email encodings ensurepip enum errno faulthandler fcntl filecmp fileinput fnmatch fractions " +
    "ftplib functools gc genericpath getopt getpass gettext glob graphlib grp gzip hashlib heapq hmac " +
    "html http idlelib imaplib importlib inspect io ipaddress itertools json keyword linecache locale " +
    "logging lzma mailbox marshal math mimetypes mmap modulefinder msvcrt multiprocessing netrc nt " +
    "ntpath nturl2path numbers opcode operator optparse os pathlib pdb pickle pickletools pkgutil " +
    "platform plistlib poplib posix posixpath pprint profile pstats pty pwd py_compile pyclbr pydoc " +
    "pydoc_data pyexpat queue quopri random re readline reprlib resource rlcompleter runpy sched secrets " +
    "select selectors shelve shlex shutil signal site smtplib socket socketserver sqlite3 sre_compile " +
    "sre_constants sre_parse ssl stat statistics string stringprep struct subprocess symtable sys " +
    "sysconfig syslog tabnanny tarfile tempfile termios textwrap this threading time timeit tkinter " +
    "token tokenize tomllib trace traceback tracemalloc tty turtle turtledemo types typing unicodedata " +
    "unittest urllib uuid venv warnings wave weakref webbrowser winreg winsound wsgiref xml xmlrpc " +
    "zipapp zipfile zipimport zlib zoneinfo"
  ).split(" "),
);

/** The PEP 503 form of a package name, under which requirements.txt lines and suggestions compare. */
const normalize = (name: string): string => name.toLowerCase().replace(/[-_.]+/g, "-");

/** The index name pip installs for an import name. */
export function indexName(module: string): string {
  return PROVIDED_MODULES.get(module)?.dist ?? INDEX_NAMES[module] ?? module;
}

export function detectSources(sources: readonly SourceText[]): Detection {
  const torch: Finding[] = [];
  const gpu: Finding[] = [];
  const ml: Finding[] = [];
  const reasons: string[] = [];
  const warnings: string[] = [];
  const packages = new Set<string>();
  const missing = new Map<string, string>();
  let largest: { bytes: number; where: string; call: string } | undefined;
  const local = new Set(sources.filter((s) => s.name.endsWith(".py")).map((s) => topLevelName(s.name)));
  const listed = new Set(
    sources.filter((s) => s.name.endsWith("requirements.txt")).flatMap((s) => requirementNames(s.text)),
  );

  for (const { name, text } of sources) {
    const code = name.endsWith(".py") ? stripComments(text) : text;
    if (name.endsWith("requirements.txt")) {
      const line = lineOf(code, /^\s*torch\b/m);
      if (line) torch.push({ where: `${name}:${line}`, what: "requires torch" });
      for (const [requirement, at] of requirementLines(code)) {
        const provided = [...PROVIDED_MODULES].find(
          ([, p]) => p.ml && normalize(p.dist) === requirement,
        )?.[1];
        if (provided && provided.dist !== "torch")
          (provided.torch ? torch : ml).push({ where: `${name}:${at}`, what: `requires ${provided.dist}` });
      }
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
    const seen = new Set<string>();
    for (const { module, path, line, optional } of findImports(code)) {
      // `crucible` is the runner's helper module, in every job image.
      if (
        STANDARD_LIBRARY.has(module) ||
        module.startsWith("_") ||
        local.has(module) ||
        module === "crucible"
      )
        continue;
      const key = TORCH_SUBMODULES.has(path) ? path : module;
      if (seen.has(key)) continue;
      seen.add(key);
      const where = `${name}:${line}`;
      const provided = PROVIDED_MODULES.get(module);
      if (provided) {
        if (!optional) packages.add(provided.dist);
        if (module === "torch") continue; // TORCH_IMPORT found it
        if (provided.torch || TORCH_SUBMODULES.has(path)) torch.push({ where, what: `imports ${key}` });
        else if (provided.ml) ml.push({ where, what: `imports ${key}` });
        continue;
      }
      if (optional) continue; // an optional dependency: the code runs without it
      const dist = indexName(module);
      packages.add(dist);
      if (ON_TORCH.has(module) && module !== "transformers")
        torch.push({ where, what: `imports ${module} (built on PyTorch)` });
      if (listed.has(normalize(dist))) continue;
      if (!WARNED_ELSEWHERE.has(module))
        warnings.push(`${where} imports ${module}, which no image of the matrix installs`);
      if (!missing.has(dist)) missing.set(dist, where);
    }
    for (const allocation of findAllocations(code)) {
      if (!largest || allocation.bytes > largest.bytes)
        largest = { ...allocation, where: `${name}:${allocation.line}` };
    }
  }

  const needsTorch = torch.length > 0;
  const needsGpu = gpu.length > 0;
  for (const f of torch) reasons.push(`${f.where} ${f.what}: needs an image with PyTorch`);
  for (const f of ml) reasons.push(`${f.where} ${f.what}: needs an ML image (ml-cpu or ml-cuda)`);
  for (const f of gpu) reasons.push(`${f.where} ${f.what}: needs a GPU tier`);
  const requirements = [...missing.keys()];
  if (requirements.length > 0) {
    warnings.push(
      `add to requirements.txt (one a line): ${requirements.join(", ")}; the platform builds them into the job's environment before it runs, as jobs have no network`,
    );
  }

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

  const family = jobImageFamily(TIERS[tier], { torch: needsTorch || ml.length > 0 });
  return {
    tier,
    family,
    image: imageRef(family),
    needs: { torch: needsTorch, gpu: needsGpu, ...(memoryBytes !== undefined && { memoryBytes }) },
    reasons,
    warnings,
    packages: [...packages].sort(),
    requirements,
  };
}

/** `pkg/sub/mod.py` -> `pkg`, `bpe.py` -> `bpe`: the name the job's own code is imported by. */
function topLevelName(path: string): string {
  return path.split("/")[0]!.replace(/\.py$/, "");
}

interface Import {
  /** The top-level module: `a` of `import a.b` and `from a.b import c`. */
  readonly module: string;
  /** The module as the statement names it: `a.b`. */
  readonly path: string;
  readonly line: number;
  /** Inside a `try:` block, the way optional dependencies are imported. */
  readonly optional: boolean;
}

const IMPORT_LINE =
  /^([ \t]*)import[ \t]+([\w.]+(?:[ \t]+as[ \t]+\w+)?(?:[ \t]*,[ \t]*[\w.]+(?:[ \t]+as[ \t]+\w+)?)*)[ \t]*;?[ \t]*$/;
const FROM_LINE = /^([ \t]*)from[ \t]+(\w+[\w.]*)[ \t]+import\b/;

/**
 * The modules of every absolute import statement of the code, unguarded ones first. Only whole
 * statements count, so prose in a docstring that starts with "from" or "import" is not evidence.
 */
function findImports(code: string): Import[] {
  const lines = code.split("\n");
  const found: Import[] = [];
  lines.forEach((text, index) => {
    const plain = IMPORT_LINE.exec(text);
    const from = plain ? undefined : FROM_LINE.exec(text);
    const indent = (plain ?? from)?.[1];
    if (indent === undefined) return;
    const paths = plain ? plain[2]!.split(",").map((part) => part.trim().split(/\s/)[0]!) : [from![2]!];
    const optional = indent.length > 0 && insideTry(lines, index, indent.length);
    for (const path of paths) found.push({ module: path.split(".")[0]!, path, line: index + 1, optional });
  });
  // Unguarded imports first: a module imported both ways is not optional.
  return found.sort((x, y) => Number(x.optional) - Number(y.optional) || x.line - y.line);
}

/** Whether the nearest less-indented line above `index` opens a `try:` block. */
function insideTry(lines: readonly string[], index: number, indent: number): boolean {
  for (let i = index - 1; i >= 0; i--) {
    const text = lines[i]!;
    if (text.trim() === "") continue;
    const own = text.length - text.trimStart().length;
    if (own < indent) return /^\s*try\s*:\s*$/.test(text);
  }
  return false;
}

/** The normalized names a requirements.txt lists (options, comments and blank lines skipped). */
function requirementNames(text: string): string[] {
  return requirementLines(text).map(([name]) => name);
}

function requirementLines(text: string): [string, number][] {
  return text.split("\n").flatMap((raw, index): [string, number][] => {
    const name = /^\s*([A-Za-z0-9][A-Za-z0-9._-]*)/.exec(raw.split("#")[0]!)?.[1];
    return name ? [[normalize(name), index + 1]] : [];
  });
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
