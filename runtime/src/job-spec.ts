import { chown, lstat, mkdir, mkdtemp, readdir, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { z } from "zod";
import type { JobSpec, JobSpecInput } from "./contract";
import { jobSpecSchema } from "./contract";
import type { CodeKind } from "./code-source";
import { codeKind, CodeError, packageCode, readSources } from "./code-source";
import type { Detection } from "./detect";
import { detectSources } from "./detect";
import type { ImageFamily } from "./image-matrix";
import { imageRef, jobImageFamily } from "./image-matrix";
import type { SandboxUser } from "./sandbox";
import { effectiveTier } from "./sandbox";
import type { Tier, TierLimits, TierName } from "./tiers";

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
  const parsed = jobSpecSchema.safeParse(input, { reportInput: true });
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  throw new InvalidJobError(issue.path.join(".") || "spec", describeIssue(issue));
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const field = issue.path.map(String).join(".");
  const got = "input" in issue && issue.input !== undefined ? `, got ${JSON.stringify(issue.input)}` : "";
  if (issue.code === "invalid_key") {
    const parent = issue.path.slice(0, -1).map(String).join(".");
    return `${parent} name ${JSON.stringify(issue.input)} ${issue.issues[0]?.message ?? issue.message}`;
  }
  if (issue.code === "unrecognized_keys") {
    return `job spec has unknown field(s) ${issue.keys.join(", ")}; known: ${Object.keys(jobSpecSchema.shape).join(", ")}`;
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
  const { tier, capped } = effectiveTier(spec.tier, tierOverrides?.[spec.tier]);
  const timeoutSeconds = spec.timeoutSeconds ?? tier.maxRuntimeSeconds;
  if (timeoutSeconds > tier.maxRuntimeSeconds) {
    throw new InvalidJobError(
      "timeoutSeconds",
      `timeoutSeconds must be at most ${tier.maxRuntimeSeconds} for tier ${tier.name}, got ${timeoutSeconds}`,
    );
  }
  return { spec, tier, capped, timeoutSeconds };
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
}

export interface PrepareOptions {
  readonly tierOverrides?: Partial<Record<TierName, Partial<TierLimits>>>;
  /** Who the job runs as; directories the job writes are handed to this user when the runtime is root. */
  readonly user: SandboxUser;
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
  const detection = spec.image ? undefined : await asInvalidJob("code", () => detectCode(code, kind));
  const family = jobImageFamily(tier, { torch: detection?.needs.torch ?? false });
  const image = spec.image ?? options.images?.[family] ?? imageRef(family);
  const datasetsDir = spec.datasetsDir && (await existingDirectory("datasetsDir", spec.datasetsDir));
  const workspace = spec.workspaceDir && resolve(spec.workspaceDir);
  if (workspace) await ensureWorkspace(workspace);

  const scratchDir = await mkdtemp(join(tmpdir(), `${SCRATCH_PREFIX}${spec.jobId}-`));
  try {
    const codeZip = join(scratchDir, "code.zip");
    await asInvalidJob("code", () => packageCode(code, kind, codeZip));
    const outputDir = join(scratchDir, "output");
    await mkdir(outputDir, { mode: 0o700 });
    await handTo(outputDir, options.user, false);
    let workspaceDir = workspace;
    if (!workspaceDir) {
      workspaceDir = join(scratchDir, "workspace");
      await mkdir(workspaceDir, { mode: 0o700 });
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
    };
  } catch (error) {
    await rm(scratchDir, { recursive: true, force: true });
    throw error;
  }
}

/** Removes what {@link prepareJob} staged; the caller's workspace directory is kept. */
export async function disposeJob(job: Pick<PreparedJob, "scratchDir">): Promise<void> {
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
 * Makes a directory writable by the job's user. Only a root runtime needs to (otherwise the job runs as
 * the caller, who owns it); the workspace is handed over whole so restored checkpoints stay writable.
 */
async function handTo(path: string, user: SandboxUser, recursive: boolean): Promise<void> {
  if (process.getuid?.() !== 0) return;
  await chown(path, user.uid, user.gid);
  if (!recursive) return;
  for (const entry of await readdir(path, { withFileTypes: true })) {
    const child = join(path, entry.name);
    if (entry.isDirectory()) await handTo(child, user, true);
    else if (!entry.isSymbolicLink()) await chown(child, user.uid, user.gid);
  }
}
