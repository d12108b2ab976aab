import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { describeNeeds, initTemplate, listTemplates } from "../../../runtime/src/job/templates";

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "crucible-templates-"));
});

afterAll(() => rm(dir, { recursive: true, force: true }));

describe("listTemplates", () => {
  it("lists every template with its summary and what it needs, as detect reads its code", async () => {
    const templates = new Map((await listTemplates()).map((t) => [t.name, t]));
    expect([...templates.keys()]).toEqual(["gpt-finetune", "hello", "nanogpt", "numpy", "resnet", "sklearn"]);
    expect(templates.get("hello")!.needs).toEqual({ family: "cpu", tier: "cpu-small", packages: [] });
    expect(templates.get("sklearn")!.needs).toEqual({
      family: "cpu",
      tier: "cpu-small",
      packages: ["scikit-learn"],
    });
    // The ML templates pick a GPU when one is there (torch.cuda.is_available()), so detect suggests one;
    // their tiny configs run on cpu-large in the ml-cpu image.
    expect(templates.get("resnet")!.needs).toEqual({
      family: "ml-cuda",
      tier: "gpu-small",
      packages: ["scikit-learn", "torch", "torchvision"],
    });
    // bpe.py is the template's own module, not a package; regex comes with tiktoken.
    expect(templates.get("gpt-finetune")!.needs.packages).toEqual(["regex", "tiktoken", "torch"]);
    // nanogpt's mlflow is optional (imported in a try: block): not a need.
    expect(templates.get("nanogpt")!.needs.packages).toEqual(["torch"]);
    expect(describeNeeds(templates.get("resnet")!.needs)).toBe(
      "ml-cuda on gpu-small: scikit-learn, torch, torchvision",
    );
    for (const t of templates.values()) expect(t.summary, t.name).not.toBe("");
  });
});

describe("initTemplate", () => {
  it("copies a template with its own modules and data", async () => {
    const target = join(dir, "tuned");
    await initTemplate("gpt-finetune", target);
    expect((await readdir(target)).sort()).toEqual(["README.md", "bpe.py", "data", "main.py"]);
    expect(await readdir(join(target, "data"))).toEqual(["tinyshakespeare.txt.gz"]);
  });
});
