import { chmod, chown, lstat, mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { z } from "zod";
import type { JobSpec, JobSpecInput } from "./contract";
import { jobSpecSchema } from "./contract";
import type { CodeKind } from "./code-source";
import { codeKind, CodeError, packageCode, readSources } from "./code-source";
import type { Detection } from "./detect";
import { detectSources } from "./detect";
import type { ImageFamily } from "../catalog/image-matrix";
import { imageFamilyRefusal, imageRef, jobImageFamily } from "../catalog/image-matrix";
import { createQuotaDir, releaseQuotaDirsUnder } from "../launch/quota-volume";
import type { SandboxUser } from "../launch/sandbox";
import { effectiveTier } from "../launch/sandbox";
import type { Tier, TierLimits, TierName } from "../catalog/tiers";

/** A job that cannot run as given; `field` names the part of the spec that is wrong. */
export class InvalidJobError extends Error {
  override readonly name = "InvalidJobError";
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

/** Validates a spec, turning the first problem into an error that names the field, the rule and the value. */
export function parseJobSpec(input: unknown): JobSpec {
  return parseStrict(jobSpecSchema, input, "job spec");
}

/**
 * Parses `input` with a strict object schema; the first problem becomes an {@link InvalidJobError} naming
 * the field, the rule and the value given — except environment values, which may be secrets and are
 * never repeated back.
 */
export function parseStrict<S extends z.ZodObject>(schema: S, input: unknown, what: string): z.output<S> {
  const parsed = schema.safeParse(input, { reportInput: true });
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  // An unknown field is named by itself: the field the submitter should not have set.
  const path = issue.code === "unrecognized_keys" ? [...issue.path, issue.keys[0]!] : issue.path;
  const field = path.map(String).join(".");
  throw new InvalidJobError(field || "spec", describeIssue(issue, Object.keys(schema.shape), what));
}

function describeIssue(issue: z.core.$ZodIssue, known: readonly string[], what: string): string {
  const field = issue.path.map(String).join(".");
  const secret = issue.path[0] === "env";
  const got =
    !secret && "input" in issue && issue.input !== undefined ? `, got ${JSON.stringify(issue.input)}` : "";
  if (issue.code === "invalid_key") {
    const parent = issue.path.slice(0, -1).map(String).join(".");
    return `${parent} name ${JSON.stringify(issue.input)} ${issue.issues[0]?.message ?? issue.message}`;
  }
  if (issue.code === "unrecognized_keys") {
    return `${what} has unknown field(s) ${issue.keys.join(", ")}; known: ${known.join(", ")}`;
  }
  if (issue.code === "invalid_type" && issue.path.length === 0) {
    return `${what} must be a JSON object${got}`;
  }
  return `${field ? `${field} ` : ""}${issue.message}${got}`;
}

/** A spec that passed {@link checkJobSpec}, with its tier's effective limits and its timeout. */
export interface CheckedJobSpec {
  readonly spec: JobSpec;
  readonly tier: Tier;
  readonly capped: readonly string[];
  readonly timeoutSeconds: number;
}

/** The checks that need no file system: the spec's fields, and the timeout against the tier's limit. */
export function checkJobSpec(
  input: unknown,
  tierOverrides?: PrepareOptions["tierOverrides"],
): CheckedJobSpec {
  const spec = parseJobSpec(input);
  if (spec.datasetsDir && spec.datasetDirs)
    throw new InvalidJobError(
      "datasetDirs",
      "datasetDirs mounts datasets at /datasets/<name>, and datasetsDir takes all of /datasets: give one of them",
    );
  const { tier, capped } = effectiveTier(spec.tier, tierOverrides?.[spec.tier]);
  return { spec, tier, capped, timeoutSeconds: jobTimeout(tier, spec.timeoutSeconds) };
}

/** The seconds a job may run: what it asked for, at most the tier's maximum runtime (its default). */
export function jobTimeout(
  tier: Pick<Tier, "name" | "maxRuntimeSeconds">,
  asked: number | undefined,
): number {
  const timeoutSeconds = asked ?? tier.maxRuntimeSeconds;
  if (timeoutSeconds > tier.maxRuntimeSeconds) {
    throw new InvalidJobError(
      "timeoutSeconds",
      `timeoutSeconds must be at most ${tier.maxRuntimeSeconds} for tier ${tier.name}, got ${timeoutSeconds}`,
    );
  }
  return timeoutSeconds;
}

/** A job ready to run: validated, limits resolved, code packaged in its own scratch directory. */
export interface PreparedJob {
  readonly spec: JobSpec;
  /** The tier with the launcher's overrides applied, capped at its ceilings. */
  readonly tier: Tier;
  readonly capped: readonly string[];
  readonly image: string;
  /** Whether the image came from the matrix (as opposed to the caller's choice). */
  readonly defaultImage: boolean;
  readonly timeoutSeconds: number;
  /** How the image was chosen, when the matrix chose it. */
  readonly detection?: Detection;
  readonly scratchDir: string;
  readonly codeZip: string;
  readonly outputDir: string;
  readonly workspaceDir: string;
  readonly datasetsDir?: string;
  /** Dataset name → its host directory, resolved (contract.ts `datasetDirs`). */
  readonly datasetDirs?: Readonly<Record<string, string>>;
  /** The job's environment, its directory resolved (contract.ts `environment`). */
  readonly environment?: { readonly dir: string; readonly pythonPath: readonly string[] };
}

export interface PrepareOptions {
  readonly tierOverrides?: Partial<Record<TierName, Partial<TierLimits>>>;
  /**
   * Who the job runs as; directories the job writes are handed to this user, mode 0700, when the runtime
   * is root. The output directory (the supervisor's) stays the runtime's own.
   */
  readonly user: SandboxUser;
  /**
   * Make the workspace the launcher creates itself a volume of the tier's `workspaceMiB`
   * ({@link createQuotaDir}; needs root). A workspace the caller gives must be one already. Defaults to false.
   */
  readonly workspaceQuota?: boolean;
  /** The image of each family where it is not the local matrix tag (on a node: ECR references by digest). */
  readonly images?: Partial<Record<ImageFamily, string>>;
}

/** The prefix of scratch directories; `gc` removes only directories named like this. */
export const SCRATCH_PREFIX = "crucible-job-";

/**
 * Validates the spec and stages the job on the host: timeout within the tier's limit, the image (the
 * matrix's, chosen from the tier and what the code imports, unless given), the code as a zip, an empty
 * output directory and the workspace. Throws {@link InvalidJobError} for anything wrong with the job;
 * on error nothing is left behind.
 */
export async function prepareJob(input: JobSpecInput, options: PrepareOptions): Promise<PreparedJob> {
  const { spec, tier, capped, timeoutSeconds } = checkJobSpec(input, options.tierOverrides);
  const code = resolve(spec.code);
  const kind = await asInvalidJob("code", () => codeKind(code));
  const chosen = spec.image !== undefined || spec.imageFamily !== undefined;
  const detection = chosen ? undefined : await asInvalidJob("code", () => detectCode(code, kind));
  const refusal = spec.imageFamily && imageFamilyRefusal(tier, spec.imageFamily);
  if (refusal) throw new InvalidJobError("imageFamily", refusal);
  const family = spec.imageFamily ?? jobImageFamily(tier, { torch: detection?.needs.torch ?? false });
  const image = spec.image ?? options.images?.[family] ?? imageRef(family);
  const datasetsDir = spec.datasetsDir && (await existingDirectory("datasetsDir", spec.datasetsDir));
  const datasetDirs = spec.datasetDirs && (await existingDirectories("datasetDirs", spec.datasetDirs));
  const environment = spec.environment && {
    dir: await existingDirectory("environment.dir", spec.environment.dir),
    pythonPath: spec.environment.pythonPath,
  };
  const workspace = spec.workspaceDir && resolve(spec.workspaceDir);
  if (workspace) await ensureWorkspace(workspace);

  const scratchDir = await mkdtemp(join(tmpdir(), `${SCRATCH_PREFIX}${spec.jobId}-`));
  try {
    const codeZip = join(scratchDir, "code.zip");
    await asInvalidJob("code", () => packageCode(code, kind, codeZip));
    // The supervisor's alone (root's on a root runtime, 0700): the job cannot write its own runner.json.
    const outputDir = join(scratchDir, "output");
    await mkdir(outputDir, { mode: 0o700 });
    let workspaceDir = workspace;
    if (!workspaceDir) {
      workspaceDir = join(scratchDir, "workspace");
      if (options.workspaceQuota) await createQuotaDir(workspaceDir, tier.workspaceMiB, options.user);
      else await mkdir(workspaceDir, { mode: 0o700 });
    }
    await handTo(workspaceDir, options.user, true);
    return {
      spec,
      tier,
      capped,
      image,
      defaultImage: !spec.image,
      timeoutSeconds,
      ...(detection && { detection }),
      scratchDir,
      codeZip,
      outputDir,
      workspaceDir,
      ...(datasetsDir && { datasetsDir }),
      ...(datasetDirs && { datasetDirs }),
      ...(environment && { environment }),
    };
  } catch (error) {
    await disposeJob({ scratchDir });
    throw error;
  }
}

/** Removes what {@link prepareJob} staged (its quota volume included); the caller's workspace is kept. */
export async function disposeJob(job: Pick<PreparedJob, "scratchDir">): Promise<void> {
  await releaseQuotaDirsUnder(job.scratchDir);
  await rm(job.scratchDir, { recursive: true, force: true, maxRetries: 2 });
}

async function detectCode(code: string, kind: CodeKind): Promise<Detection> {
  return detectSources(await readSources(code, kind));
}

async function asInvalidJob<T>(field: string, action: () => Promise<T>): Promise<T> {
  try {
    return await action();
  } catch (error) {
    if (error instanceof CodeError) throw new InvalidJobError(field, error.message);
    throw error;
  }
}

async function existingDirectory(field: string, path: string): Promise<string> {
  const absolute = resolve(path);
  const info = await stat(absolute).catch(() => undefined);
  if (!info?.isDirectory())
    throw new InvalidJobError(field, `${field} must be an existing directory, got ${path}`);
  return absolute;
}

async function existingDirectories(
  field: string,
  paths: Readonly<Record<string, string>>,
): Promise<Record<string, string>> {
  const entries = Object.entries(paths).map(
    async ([name, path]) => [name, await existingDirectory(`${field}.${name}`, path)] as const,
  );
  return Object.fromEntries(await Promise.all(entries));
}

async function ensureWorkspace(path: string): Promise<void> {
  const info = await lstat(path).catch(() => undefined);
  if (!info) await mkdir(path, { recursive: true });
  else if (!info.isDirectory()) {
    throw new InvalidJobError(
      "workspaceDir",
      `workspaceDir must be a directory (or not exist yet), got ${path}`,
    );
  }
}

/**
 * Makes a directory the job's user's alone (mode 0700 at its top). Only a root runtime can (otherwise the
 * job runs as the caller, who owns it); the workspace is handed over whole so restored checkpoints stay
 * writable.
 */
async function handTo(path: string, user: SandboxUser, recursive: boolean): Promise<void> {
  if (process.getuid?.() !== 0) return;
  await chown(path, user.uid, user.gid);
  if (recursive) await chmod(path, 0o700);
  if (!recursive) return;
  for (const entry of await readdir(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    if (entry.isDirectory()) await handTo(child, user, true);
    else if (!entry.isSymbolicLink()) await chown(child, user.uid, user.gid);
  }
}
