import { describe, expect, it } from "vitest";
import { defaultRootVolumeGiB, nodeDiskGiB } from "../../../infra/config";
import { TIER_NAMES, TIERS, ENVIRONMENT_CACHE_FACTOR } from "../../../runtime/src/catalog";
import { configProblems as problemsFor } from "../../support/harness";
import { parseWith } from "../../support/crucible-config";

/** `crucible:environments` (infra/config/schema.ts, rules.ts), and the node disk its caches need. */

const environments = (value: Record<string, unknown>) => ({ "crucible:environments": value });

describe("crucible:environments", () => {
  it("defaults to the stack's CodeArtifact proxy, every package allowed, none denied", () => {
    expect(parseWith("prod").environments).toEqual({ index: "codeartifact", deny: [] });
    expect(parseWith("staging").environments).toEqual({ index: "codeartifact", deny: [] });
  });

  it("reads dev's stack file: the proxy, tensorflow denied", () => {
    expect(parseWith("dev").environments).toEqual({ index: "codeartifact", deny: ["tensorflow"] });
  });

  it("takes an existing index's URL, or none", () => {
    const url = "https://pypi.internal.example.com/simple/";
    expect(parseWith("dev", environments({ index: { url } })).environments.index).toEqual({ url });
    expect(parseWith("dev", environments({ index: "none" })).environments.index).toBe("none");
    expect(
      parseWith("dev", environments({ index: { url: "http://10.0.0.5:8080/simple" } })).environments.index,
    ).toEqual({ url: "http://10.0.0.5:8080/simple" });
  });

  it("rejects an index that is none of the three, naming them", () => {
    expect(problemsFor("dev", environments({ index: "pypi" }))).toEqual([
      'crucible:environments.index must be "codeartifact" (a CodeArtifact proxy of PyPI this stack declares), "none" (no job environments) or { url: "https://…/simple/" } (an existing PEP 503 index), got "pypi"',
    ]);
  });

  it("rejects an index URL that is not http(s), or carries credentials, naming the key", () => {
    const rule =
      "must be the http(s) URL of a PEP 503 simple index without credentials, query or fragment, such as https://pypi.example.com/simple/";
    expect(problemsFor("dev", environments({ index: { url: "ftp://mirror/simple/" } }))).toEqual([
      `crucible:environments.index.url ${rule}, got "ftp://mirror/simple/"`,
    ]);
    expect(
      problemsFor("dev", environments({ index: { url: "https://bob:s3cret@pypi.example.com/simple/" } })),
    ).toEqual([`crucible:environments.index.url ${rule}, got "https://bob:s3cret@pypi.example.com/simple/"`]);
    expect(
      problemsFor("dev", environments({ index: { url: "https://pypi.example.com/", mirror: true } })),
    ).toEqual(["crucible:environments.index.mirror is not a known setting; allowed here: url"]);
  });

  it("rejects names PEP 503 would normalise, saying how to write them", () => {
    expect(
      problemsFor("dev", environments({ allow: ["numpy", "Scikit_Learn"], deny: ["torch..vision"] })),
    ).toEqual([
      'crucible:environments.allow[1] must be a package name as PEP 503 normalises it (lowercase letters, digits and single dashes, such as scikit-learn): write it scikit-learn, got "Scikit_Learn"',
      'crucible:environments.deny[0] must be a package name as PEP 503 normalises it (lowercase letters, digits and single dashes, such as scikit-learn): write it torch-vision, got "torch..vision"',
    ]);
    expect(problemsFor("dev", environments({ deny: ["numpy;rm -rf"] }))).toEqual([
      'crucible:environments.deny[0] must be a package name as PEP 503 normalises it (lowercase letters, digits and single dashes, such as scikit-learn), got "numpy;rm -rf"',
    ]);
  });

  it("rejects a repeated name and an empty allow list", () => {
    expect(problemsFor("dev", environments({ deny: ["numpy", "numpy"] }))).toEqual([
      'crucible:environments.deny must not repeat package names, got ["numpy","numpy"]',
    ]);
    expect(problemsFor("dev", environments({ allow: [] }))).toEqual([
      "crucible:environments.allow must name at least one package; leave allow out to allow every package, got []",
    ]);
  });

  it("rejects a package both allowed and denied, naming both keys", () => {
    expect(
      problemsFor(
        "dev",
        environments({ allow: ["numpy", "torch", "pandas"], deny: ["tensorflow", "pandas"] }),
      ),
    ).toEqual([
      'crucible:environments.deny[1] must not name a package crucible:environments.allow also names (pandas is at allow[2]); remove it from one of the two, got "pandas"',
    ]);
    expect(problemsFor("dev", environments({ allow: ["numpy"], deny: ["tensorflow"] }))).toEqual([]);
  });

  it("needs the builder image wherever a package index is set", () => {
    const registry = { families: ["cpu", "ml-cpu", "ml-cuda", "agent"] };
    expect(problemsFor("dev", { "crucible:registry": registry })).toEqual([
      'crucible:registry.families must include "builder" while crucible:environments.index is not "none": nodes build job environments with it (or set crucible:environments.index to "none"), got ["cpu","ml-cpu","ml-cuda","agent"]',
    ]);
    expect(problemsFor("dev", { "crucible:registry": registry, ...environments({ index: "none" }) })).toEqual(
      [],
    );
  });
});

describe("a node's root volume", () => {
  it("holds the system, a workspace per job, the dataset cache and the environment cache", () => {
    for (const name of TIER_NAMES) {
      const tier = TIERS[name];
      const disk = nodeDiskGiB(name, { instanceTypes: [...tier.instanceTypes] });
      expect(disk.environments, name).toBe(ENVIRONMENT_CACHE_FACTOR * tier.environmentGiB);
      expect(disk.datasets, name).toBe(tier.datasetCacheGiB);
      expect(disk.total, name).toBe(disk.system + disk.workspaces + disk.datasets + disk.environments);
    }
    // 8 half-vCPU jobs on a 4-vCPU node, 1 GiB each; 3 × 2 GiB of environments.
    expect(nodeDiskGiB("cpu-small", { instanceTypes: ["m6i.xlarge"] })).toEqual({
      system: 30,
      workspaces: 8,
      datasets: 4,
      environments: 6,
      total: 48,
    });
  });

  it("defaults to what the tier's nodes keep there, rounded up to 10 GiB, and never below 50 (CPU) or 200 (GPU)", () => {
    expect(Object.fromEntries(TIER_NAMES.map((t) => [t, defaultRootVolumeGiB(t)]))).toEqual({
      "cpu-small": 50,
      "cpu-large": 80,
      "gpu-small": 200,
      "gpu-medium": 200,
      "gpu-large": 210,
    });
    for (const stack of ["dev", "staging", "prod"]) {
      const config = parseWith(stack);
      for (const [name, tier] of Object.entries(config.fleet.tiers))
        expect(tier.rootVolumeGiB, `${stack} ${name}`).toBeGreaterThanOrEqual(
          nodeDiskGiB(name as (typeof TIER_NAMES)[number], tier).total,
        );
    }
  });

  it("rejects a root volume smaller than that, listing the parts", () => {
    expect(
      problemsFor("dev", {
        "crucible:fleet": { tiers: { "cpu-large": { enabled: true, rootVolumeGiB: 50 } } },
      }),
    ).toEqual([
      "crucible:fleet.tiers.cpu-large.rootVolumeGiB must be at least 73 for cpu-large on m6i.xlarge, m6a.xlarge, m5.xlarge, m7i.xlarge, c6i.xlarge: 30 GiB for the OS and images, 20 GiB of job workspaces, a 8 GiB dataset cache and a 15 GiB environment cache, got 50",
    ]);
  });
});
