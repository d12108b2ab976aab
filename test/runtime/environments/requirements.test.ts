import { describe, expect, it } from "vitest";
import {
  packageRefusal,
  parsePyproject,
  parseRequirementsText,
} from "../../../runtime/src/environments/requirements";
import { summarisePipFailure } from "../../../runtime/src/environments/builder";

describe("parseRequirementsText", () => {
  it("normalises names, extras, spacing and order, so equal requirements make one environment", () => {
    const a = parseRequirementsText(
      "Torch_Vision >= 0.14 ; python_version >= '3.9'\nrequests[Socks,security]==2.32.3  # http\n\n",
    );
    const b = parseRequirementsText(
      "requests[security, socks] == 2.32.3\ntorch.vision>=0.14;python_version >= '3.9'\n",
    );
    expect(a.lines).toEqual([
      "requests[security,socks]==2.32.3",
      "torch-vision>=0.14 ; python_version >= '3.9'",
    ]);
    expect(b.lines).toEqual(a.lines);
    expect(a.names).toEqual(["requests", "torch-vision"]);
    expect(a.hashPinned).toBe(false);
  });

  it("keeps hash pins, joined across continued lines, and requires them on every line once one has them", () => {
    const pinned = parseRequirementsText(
      "six==1.16.0 \\\n    --hash=sha256:bb \\\n    --hash=sha256:aa\nidna==3.7 --hash=sha256:cc\n",
    );
    expect(pinned.lines).toEqual([
      "idna==3.7 --hash=sha256:cc",
      "six==1.16.0 --hash=sha256:aa --hash=sha256:bb",
    ]);
    expect(pinned.hashPinned).toBe(true);
    expect(() => parseRequirementsText("six==1.16.0 --hash=sha256:aa\nidna==3.7\n")).toThrow(
      "requirements.txt: idna has no --hash while others do; with hashes, pip requires one on every requirement",
    );
  });

  it("refuses what would reach beyond the stack's index or run the submitter's own build, naming the line", () => {
    expect(() => parseRequirementsText("numpy\n-e ./mine\n")).toThrow(
      'requirements.txt line 2 (-e ./mine): options such as -e are not allowed; packages come only from the stack\'s index, so list requirements by name (e.g. "requests==2.32.3")',
    );
    expect(() => parseRequirementsText("--index-url https://elsewhere.example/simple\n")).toThrow(
      "requirements.txt line 1 (--index-url https://elsewhere.example/simple): options such as --index-url are not allowed",
    );
    expect(() => parseRequirementsText("pkg @ https://elsewhere.example/pkg.whl\n")).toThrow(
      "requirements.txt line 1 (pkg @ https://elsewhere.example/pkg.whl): direct references (URLs and paths) are not allowed",
    );
    expect(() => parseRequirementsText("./local-dir\n")).toThrow(
      "requirements.txt line 1 (./local-dir): not a requirement",
    );
    expect(() => parseRequirementsText("numpy --trusted-host x\n")).toThrow(
      "requirements.txt line 1 (numpy --trusted-host x): --trusted-host is not allowed after a requirement; only --hash=sha256:<hex> pins are",
    );
    expect(() => parseRequirementsText("numpy=>1\n")).toThrow('"=>1" is not a version specifier');
    expect(() => parseRequirementsText("x\n".repeat(70_000))).toThrow(
      "requirements.txt is 140000 bytes; at most 65536 are read",
    );
  });
});

describe("parsePyproject", () => {
  it("reads [project] dependencies, and nothing when there are none", async () => {
    const parsed = await parsePyproject('[project]\nname = "job"\ndependencies = ["Requests>=2", "tqdm"]\n');
    expect(parsed?.lines).toEqual(["requests>=2", "tqdm"]);
    expect(parsed?.source).toBe("pyproject.toml");
    expect(await parsePyproject("[tool.black]\nline-length = 100\n")).toBeUndefined();
  });

  it("names what is wrong with it", async () => {
    await expect(parsePyproject("[project\n")).rejects.toThrow("pyproject.toml is not valid TOML");
    await expect(parsePyproject('[project]\ndependencies = "numpy"\n')).rejects.toThrow(
      "pyproject.toml [project] dependencies must be a list of requirement strings",
    );
    await expect(parsePyproject('[project]\ndependencies = ["x @ file:///etc"]\n')).rejects.toThrow(
      "pyproject.toml dependencies[0] (x @ file:///etc): direct references (URLs and paths) are not allowed",
    );
  });
});

describe("packageRefusal", () => {
  it("applies deny first, then the allow list, on PEP 503 names", () => {
    expect(packageRefusal(["NumPy", "requests"], { allow: ["numpy", "Requests"] })).toBeUndefined();
    expect(packageRefusal(["tensor_flow"], { deny: ["Tensor.Flow"] })).toBe(
      "tensor-flow is on this stack's deny list (crucible:environments.deny)",
    );
    expect(packageRefusal(["wandb"], { allow: ["numpy"] })).toBe(
      "wandb is not on this stack's allow list (crucible:environments.allow: numpy)",
    );
  });
});

describe("summarisePipFailure", () => {
  it("names a conflict between pins", () => {
    const output = [
      "ERROR: Cannot install a==1.0 and b==2.0 because these package versions have conflicting dependencies.",
      "The conflict is caused by:",
      "    The user requested c==1.0",
      "    b 2.0 depends on c==2.0",
    ].join("\n");
    expect(summarisePipFailure(output, [], 1)).toBe(
      "the requirements conflict: pip cannot install a==1.0 and b==2.0 together (The user requested c==1.0; b 2.0 depends on c==2.0)",
    );
  });

  it("names a package that needs a compiler the builder lacks", () => {
    const output =
      "Building wheel for fastthing (pyproject.toml): started\nerror: command 'gcc' failed: No such file or directory\n";
    expect(summarisePipFailure(output, [], 1)).toBe(
      "fastthing has no wheel for this image and needs a compiler to build from source, which the builder does not have; pin a version that publishes a wheel",
    );
  });
});
