import { CodeError, readZipTopLevel } from "../job/code-source";
import { InvalidJobError } from "../job/job-spec";

/**
 * A job's requirements as its code states them (`requirements.txt`, else `pyproject.toml`'s
 * `[project] dependencies`), read as the hostile input they are: only requirements on names the stack's
 * index serves, with versions, extras, markers and `--hash` pins. Anything that would reach elsewhere or
 * run the submitter's own build (options, URLs, paths, editable installs) is refused with the line named.
 * Normalised (names PEP 503, spacing, order), so two jobs that ask for the same thing share one environment.
 */
export interface JobRequirements {
  /** Where they were read: `requirements.txt` or `pyproject.toml`. */
  readonly source: string;
  /** One requirement a line, normalised and sorted: what the environment is built from and keyed by. */
  readonly lines: readonly string[];
  /** The PEP 503 names required, for the stack's allow and deny lists. */
  readonly names: readonly string[];
  /** Whether every line is hash-pinned (pip then checks every download against its hash). */
  readonly hashPinned: boolean;
}

/** Requirements files larger than this are refused: no real one comes close. */
export const MAX_REQUIREMENTS_BYTES = 64 * 1024;
/** Requirements (lines) at most. */
export const MAX_REQUIREMENTS = 256;

/** A requirement the platform will not build, naming where it is and what would be accepted. */
export class RequirementsError extends Error {
  override readonly name = "RequirementsError";
}

// PEP 508: a name, optional extras, then a version specifier and/or a marker.
const NAME = /^([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[A-Za-z0-9._,\s-]*\])?\s*(.*)$/;
const SPECIFIER = /^(\(?\s*(?:(?:===|==|~=|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*\)?)\s*(;.*)?$/;
const HASH = /^--hash[=\s]\s*(sha256|sha384|sha512):([0-9a-f]+)$/;

/** The PEP 503 form of a project name: lower case, runs of `-`, `_` and `.` as one `-`. */
export function normalizePackageName(name: string): string {
  return name.toLowerCase().replace(/[-_.]+/g, "-");
}

/**
 * Reads `requirements.txt` text. `where` names the file in messages. Throws {@link RequirementsError}
 * for the first line that cannot be accepted.
 */
export function parseRequirementsText(text: string, where = "requirements.txt"): JobRequirements {
  checkSize(text, where);
  const logical: { number: number; text: string }[] = [];
  let pending: { number: number; text: string } | undefined;
  text.split(/\r?\n/).forEach((raw, index) => {
    const continued = raw.endsWith("\\");
    const part = continued ? raw.slice(0, -1) : raw;
    pending = pending ? { ...pending, text: `${pending.text} ${part}` } : { number: index + 1, text: part };
    if (!continued) {
      logical.push(pending);
      pending = undefined;
    }
  });
  if (pending) logical.push(pending);
  const entries = logical
    .map(({ number, text: line }) => ({ number, text: stripComment(line).trim() }))
    .filter(({ text: line }) => line !== "");
  return requirementsOf(
    entries.map(({ number, text: line }) => parseLine(line, `${where} line ${number}`)),
    where,
  );
}

/** Reads `pyproject.toml`'s `[project] dependencies`; undefined when it declares none. */
export async function parsePyproject(
  text: string,
  where = "pyproject.toml",
): Promise<JobRequirements | undefined> {
  checkSize(text, where);
  // An ES module: loaded when a job has a pyproject.toml at all.
  const { parse } = await import("smol-toml");
  let document: Record<string, unknown>;
  try {
    document = parse(text);
  } catch (error) {
    throw new RequirementsError(`${where} is not valid TOML: ${(error as Error).message.split("\n")[0]}`);
  }
  const project = document.project as Record<string, unknown> | undefined;
  const dependencies = project?.dependencies;
  if (dependencies === undefined) return undefined;
  if (!Array.isArray(dependencies) || !dependencies.every((d) => typeof d === "string"))
    throw new RequirementsError(`${where} [project] dependencies must be a list of requirement strings`);
  return requirementsOf(
    dependencies.map((d, index) => {
      if (d.trim().startsWith("-"))
        throw new RequirementsError(
          `${where} dependencies[${index}] (${shown(d)}): options are not requirements`,
        );
      return parseLine(d.trim(), `${where} dependencies[${index}]`);
    }),
    where,
  );
}

/**
 * The stack's allow and deny lists applied to `names`: the first name refused, with why, or undefined.
 * Deny wins; with an allow list, only names on it pass.
 */
export function packageRefusal(
  names: readonly string[],
  lists: { readonly allow?: readonly string[]; readonly deny?: readonly string[] },
): string | undefined {
  const deny = new Set((lists.deny ?? []).map(normalizePackageName));
  const allow = lists.allow && new Set(lists.allow.map(normalizePackageName));
  for (const name of names.map(normalizePackageName)) {
    if (deny.has(name)) return `${name} is on this stack's deny list (crucible:environments.deny)`;
    if (allow && !allow.has(name))
      return `${name} is not on this stack's allow list (crucible:environments.allow: ${[...allow].join(", ")})`;
  }
  return undefined;
}

interface Line {
  readonly name: string;
  readonly text: string;
  readonly hashed: boolean;
}

function parseLine(line: string, where: string): Line {
  const [head = "", ...options] = line.split(/\s+(?=--)/);
  if (head.startsWith("-"))
    throw new RequirementsError(
      `${where} (${shown(line)}): options such as ${head.split(/[\s=]/)[0]} are not allowed; packages come only from the stack's index, so list requirements by name (e.g. "requests==2.32.3")`,
    );
  const match = NAME.exec(head);
  if (!match)
    throw new RequirementsError(`${where} (${shown(line)}): not a requirement (a package name first)`);
  const [, name = "", extras, rest = ""] = match;
  if (/^@|:\/\/|^\.|^\//.test(rest.trim()) || /^[./~]/.test(head))
    throw new RequirementsError(
      `${where} (${shown(line)}): direct references (URLs and paths) are not allowed; packages come only from the stack's index`,
    );
  const spec = SPECIFIER.exec(rest.trim());
  if (!spec)
    throw new RequirementsError(`${where} (${shown(line)}): "${shown(rest)}" is not a version specifier`);
  const hashes = options.map((option) => {
    const hash = HASH.exec(option.trim());
    if (!hash)
      throw new RequirementsError(
        `${where} (${shown(line)}): ${option.trim().split(/[\s=]/)[0]} is not allowed after a requirement; only --hash=sha256:<hex> pins are`,
      );
    return `--hash=${hash[1]}:${hash[2]}`;
  });
  const normalized = normalizePackageName(name);
  const extrasText = extras
    ? `[${extras
        .slice(1, -1)
        .split(",")
        .map((e) => normalizePackageName(e.trim()))
        .filter(Boolean)
        .sort()
        .join(",")}]`
    : "";
  const version = (spec[1] ?? "").replace(/\s+/g, "");
  const marker = spec[2]
    ? ` ; ${spec[2]
        .slice(1)
        .replace(/\s*(===|==|~=|!=|<=|>=|<|>)\s*/g, " $1 ")
        .replace(/\s+/g, " ")
        .trim()}`
    : "";
  return {
    name: normalized,
    text: [`${normalized}${extrasText}${version}${marker}`, ...hashes.sort()].join(" "),
    hashed: hashes.length > 0,
  };
}

function requirementsOf(lines: readonly Line[], source: string): JobRequirements {
  if (lines.length > MAX_REQUIREMENTS)
    throw new RequirementsError(
      `${source} lists ${lines.length} requirements; at most ${MAX_REQUIREMENTS} are allowed`,
    );
  const hashed = lines.filter((l) => l.hashed).length;
  if (hashed > 0 && hashed < lines.length) {
    const unpinned = lines.find((l) => !l.hashed)!;
    throw new RequirementsError(
      `${source}: ${unpinned.name} has no --hash while others do; with hashes, pip requires one on every requirement`,
    );
  }
  return {
    source,
    lines: [...new Set(lines.map((l) => l.text))].sort(),
    names: [...new Set(lines.map((l) => l.name))].sort(),
    hashPinned: hashed > 0,
  };
}

function checkSize(text: string, where: string): void {
  const bytes = Buffer.byteLength(text);
  if (bytes > MAX_REQUIREMENTS_BYTES)
    throw new RequirementsError(`${where} is ${bytes} bytes; at most ${MAX_REQUIREMENTS_BYTES} are read`);
}

/** A line without its comment: `#` at its start or after whitespace (a URL fragment is not a comment). */
function stripComment(line: string): string {
  const at = line.search(/(^|\s)#/);
  return at === -1 ? line : line.slice(0, at);
}

function shown(text: string): string {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is replaced.
  const oneLine = text.replace(/[\u0000-\u001f\u007f]/g, "?");
  return oneLine.length > 80 ? `${oneLine.slice(0, 80)}...` : oneLine;
}

/**
 * Reads a job's requirements from its staged code: `requirements.txt`, else `pyproject.toml`'s
 * `[project] dependencies`; undefined when it has neither. A bad one is an {@link InvalidJobError}.
 */
export async function readJobRequirements(codeZip: string): Promise<JobRequirements | undefined> {
  try {
    const files = await readZipTopLevel(
      codeZip,
      ["requirements.txt", "pyproject.toml"],
      MAX_REQUIREMENTS_BYTES,
    );
    if (files["requirements.txt"] !== undefined) {
      const parsed = parseRequirementsText(files["requirements.txt"]);
      return parsed.lines.length > 0 ? parsed : undefined;
    }
    if (files["pyproject.toml"] !== undefined) {
      const parsed = await parsePyproject(files["pyproject.toml"]);
      return parsed && parsed.lines.length > 0 ? parsed : undefined;
    }
    return undefined;
  } catch (error) {
    if (error instanceof RequirementsError || error instanceof CodeError)
      throw new InvalidJobError("requirements", error.message);
    throw error;
  }
}
