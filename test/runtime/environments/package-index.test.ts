import { describe, expect, it } from "vitest";
import {
  CODEARTIFACT_TOKEN_SECONDS,
  PackageIndexError,
  resolvePackageIndex,
  type CodeArtifactLike,
} from "../../../runtime/src/environments/package-index";

/** The package index a build reaches (runtime/src/environments/package-index.ts), with CodeArtifact injected. */

const ENDPOINT = "https://crucible-dev-123456789012.d.codeartifact.us-east-1.amazonaws.com/pypi/pypi/";

/** A CodeArtifact that records what it is asked and answers with `answers`. */
function codeArtifact(answers: { token?: string; endpoint?: string; fail?: Error } = {}) {
  const asked: unknown[] = [];
  const client: CodeArtifactLike = {
    getAuthorizationToken: (input) => {
      asked.push(["token", input]);
      if (answers.fail) return Promise.reject(answers.fail);
      return Promise.resolve({ authorizationToken: "token" in answers ? answers.token : "eyJ.tok/en+" });
    },
    getRepositoryEndpoint: (input) => {
      asked.push(["endpoint", input]);
      return Promise.resolve({ repositoryEndpoint: "endpoint" in answers ? answers.endpoint : ENDPOINT });
    },
  };
  return { client, asked };
}

describe("resolvePackageIndex", () => {
  it("takes an index URL as it is, with its host and port", async () => {
    const { client, asked } = codeArtifact();
    await expect(
      resolvePackageIndex("https://pypi.example.com/simple/", { region: "us-east-1", client }),
    ).resolves.toEqual({ url: "https://pypi.example.com/simple/", hosts: ["pypi.example.com:443"] });
    await expect(
      resolvePackageIndex("http://Mirror.internal:8080/simple", { region: "us-east-1", client }),
    ).resolves.toEqual({ url: "http://Mirror.internal:8080/simple", hosts: ["mirror.internal:8080"] });
    expect(asked).toEqual([]);
  });

  it("asks CodeArtifact for a 15-minute token and the repository's pypi endpoint", async () => {
    const { client, asked } = codeArtifact();
    const index = await resolvePackageIndex("codeartifact://crucible-dev/123456789012/pypi", {
      region: "us-east-1",
      client,
    });
    expect(CODEARTIFACT_TOKEN_SECONDS).toBe(900);
    expect(asked).toEqual([
      ["token", { domain: "crucible-dev", domainOwner: "123456789012", durationSeconds: 900 }],
      [
        "endpoint",
        { domain: "crucible-dev", domainOwner: "123456789012", repository: "pypi", format: "pypi" },
      ],
    ]);
    expect(index).toEqual({
      url: "https://aws:eyJ.tok%2Fen%2B@crucible-dev-123456789012.d.codeartifact.us-east-1.amazonaws.com/pypi/pypi/simple/",
      hosts: ["crucible-dev-123456789012.d.codeartifact.us-east-1.amazonaws.com:443"],
    });
  });

  it("adds the path's slash before simple/ when the endpoint lacks one", async () => {
    const { client } = codeArtifact({ endpoint: ENDPOINT.slice(0, -1) });
    const index = await resolvePackageIndex("codeartifact://crucible-dev/123456789012/pypi", {
      region: "us-east-1",
      client,
    });
    expect(index.url).toMatch(/\/pypi\/pypi\/simple\/$/);
  });

  it.each([
    ["ftp://pypi.example.com/simple/"],
    ["pypi.org"],
    ["codeartifact://crucible-dev/12345/pypi"],
    ["codeartifact://Crucible/123456789012/pypi"],
    ["codeartifact://crucible-dev/123456789012"],
  ])("refuses %s, naming it and what is allowed", async (value) => {
    await expect(
      resolvePackageIndex(value, { region: "us-east-1", client: codeArtifact().client }),
    ).rejects.toThrow(
      new PackageIndexError(
        `package index "${value}" must be an index URL (http:// or https://) or codeartifact://<domain>/<12-digit domain owner>/<repository>`,
      ),
    );
  });

  it("names the repository when CodeArtifact refuses, issues no token or no endpoint", async () => {
    const value = "codeartifact://crucible-dev/123456789012/pypi";
    const where = "CodeArtifact repository pypi of domain crucible-dev (owner 123456789012, us-east-1)";
    await expect(
      resolvePackageIndex(value, {
        region: "us-east-1",
        client: codeArtifact({
          fail: new Error("User is not authorized to perform: sts:GetServiceBearerToken"),
        }).client,
      }),
    ).rejects.toThrow(
      `package index ${value}: ${where} refused the token or endpoint: User is not authorized to perform: sts:GetServiceBearerToken`,
    );
    await expect(
      resolvePackageIndex(value, { region: "us-east-1", client: codeArtifact({ token: undefined }).client }),
    ).rejects.toThrow(`package index ${value}: ${where} issued no token`);
    await expect(
      resolvePackageIndex(value, {
        region: "us-east-1",
        client: codeArtifact({ endpoint: undefined }).client,
      }),
    ).rejects.toThrow(`package index ${value}: ${where} gave no https pypi endpoint (got undefined)`);
  });
});
