import { cp, readdir, readFile, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { JobImageFamily } from "../catalog/image-matrix";
import type { TierName } from "../catalog/tiers";
import { detect } from "./detect";

/** Where the job templates live: next to the package's own code, in source and in the built package. */
export const TEMPLATES_DIR = resolve(__dirname, "..", "..", "templates");

export interface Template {
  readonly name: string;
  /** The first line of its main.py's docstring. */
  readonly summary: string;
  readonly path: string;
  /** What it runs on, as `crucible detect` reads its code. */
  readonly needs: TemplateNeeds;
}

/** The image family and tier a template's code asks for, and the third-party packages it imports. */
export interface TemplateNeeds {
  readonly family: JobImageFamily;
  readonly tier: TierName;
  readonly packages: readonly string[];
}

/** The templates `crucible init` can copy, each a directory with a main.py. */
export async function listTemplates(dir = TEMPLATES_DIR): Promise<Template[]> {
  const names = (await readdir(dir, { withFileTypes: true }))
    .filter((e) => e.isDirectory())
    .map((e) => e.name);
  const templates = await Promise.all(
    names.sort().map(async (name) => {
      const path = join(dir, name);
      const main = await readFile(join(path, "main.py"), "utf8").catch(() => undefined);
      if (main === undefined) return undefined;
      const { family, tier, packages } = await detect(path);
      return { name, summary: docstringSummary(main), path, needs: { family, tier, packages } };
    }),
  );
  return templates.filter((t): t is Template => t !== undefined);
}

/** `ml-cpu on cpu-large: torch, torchvision`: a template's needs on one line. */
export function describeNeeds({ family, tier, packages }: TemplateNeeds): string {
  return `${family} on ${tier}${packages.length > 0 ? `: ${packages.join(", ")}` : ""}`;
}

function docstringSummary(source: string): string {
  return /^\s*(?:"""|''')\s*([^\n]*?)\s*(?:"""|''')?\s*$/m.exec(source)?.[1]?.trim() ?? "";
}

/** Copies a template into `target`, which must not exist yet (nothing of the user's is overwritten). */
export async function initTemplate(name: string, target: string, dir = TEMPLATES_DIR): Promise<Template> {
  const templates = await listTemplates(dir);
  const template = templates.find((t) => t.name === name);
  if (!template) {
    throw new TemplateError(
      `no template named "${name}"; there are: ${templates.map((t) => t.name).join(", ")}`,
    );
  }
  if (await stat(target).catch(() => undefined)) {
    throw new TemplateError(`${target} already exists; name a new directory for the job`);
  }
  await cp(template.path, target, { recursive: true, errorOnExist: true, force: false });
  return template;
}

export class TemplateError extends Error {
  override readonly name = "TemplateError";
}
