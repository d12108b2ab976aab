import {
  CodeartifactClient,
  GetAuthorizationTokenCommand,
  GetRepositoryEndpointCommand,
} from "@aws-sdk/client-codeartifact";

/**
 * The stack's package index as a build reaches it (`CRUCIBLE_PACKAGE_INDEX`, runtime/src/catalog/agent-env.ts):
 * an index URL as given, or the stack's CodeArtifact repository (`codeartifact://<domain>/<owner>/<repository>`),
 * whose pypi endpoint and a short-lived token the agent asks CodeArtifact for before each build.
 */

/** Seconds a CodeArtifact token lasts: one build's worth (CodeArtifact takes 900 to 43200). */
export const CODEARTIFACT_TOKEN_SECONDS = 15 * 60;

/** What {@link resolvePackageIndex} asks of CodeArtifact ({@link sdkCodeArtifact}, or a test's). */
export interface CodeArtifactLike {
  getAuthorizationToken(input: {
    readonly domain: string;
    readonly domainOwner: string;
    readonly durationSeconds: number;
  }): Promise<{ readonly authorizationToken?: string }>;
  getRepositoryEndpoint(input: {
    readonly domain: string;
    readonly domainOwner: string;
    readonly repository: string;
    readonly format: "pypi";
  }): Promise<{ readonly repositoryEndpoint?: string }>;
}

/** {@link CodeArtifactLike} on the AWS SDK's client, with the node's credentials. */
export function sdkCodeArtifact(region: string): CodeArtifactLike {
  const client = new CodeartifactClient({ region });
  return {
    getAuthorizationToken: (input) => client.send(new GetAuthorizationTokenCommand(input)),
    getRepositoryEndpoint: (input) => client.send(new GetRepositoryEndpointCommand(input)),
  };
}

/** The index pip is given (it may carry a token: never log it) and the `host:port`s a build may reach. */
export interface ResolvedPackageIndex {
  readonly url: string;
  readonly hosts: string[];
}

/** A value that is not an index: the message names it and what is allowed. */
export class PackageIndexError extends Error {
  override readonly name = "PackageIndexError";
}

const ALLOWED =
  "an index URL (http:// or https://) or codeartifact://<domain>/<12-digit domain owner>/<repository>";
const CODEARTIFACT = /^codeartifact:\/\/([a-z][a-z0-9-]{1,49})\/(\d{12})\/([A-Za-z0-9][A-Za-z0-9._-]{1,99})$/;

/** `host:port` of a URL, the port spelled out (as the agent's index proxy lists destinations). */
function destination(url: URL): string {
  return `${url.hostname.toLowerCase()}:${url.port || (url.protocol === "https:" ? "443" : "80")}`;
}

/**
 * The index of `value`: an http(s) URL as it is, with its own host; for `codeartifact://domain/owner/repo`,
 * the repository's pypi endpoint with a {@link CODEARTIFACT_TOKEN_SECONDS} token as `aws:<token>@`, and
 * `/simple/` appended (pip's PEP 503 API there), with the endpoint's host.
 */
export async function resolvePackageIndex(
  value: string,
  options: { readonly region: string; readonly client?: CodeArtifactLike },
): Promise<ResolvedPackageIndex> {
  if (/^https?:\/\//.test(value)) {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      throw new PackageIndexError(`package index "${value}" is not a valid URL; it must be ${ALLOWED}`);
    }
    return { url: value, hosts: [destination(url)] };
  }
  const match = CODEARTIFACT.exec(value);
  if (!match) throw new PackageIndexError(`package index "${value}" must be ${ALLOWED}`);
  const [, domain, domainOwner, repository] = match as unknown as [string, string, string, string];
  const client = options.client ?? sdkCodeArtifact(options.region);
  const where = `CodeArtifact repository ${repository} of domain ${domain} (owner ${domainOwner}, ${options.region})`;
  const [token, endpoint] = await Promise.all([
    client.getAuthorizationToken({ domain, domainOwner, durationSeconds: CODEARTIFACT_TOKEN_SECONDS }),
    client.getRepositoryEndpoint({ domain, domainOwner, repository, format: "pypi" }),
  ]).catch((err: unknown) => {
    throw new PackageIndexError(
      `package index ${value}: ${where} refused the token or endpoint: ${err instanceof Error ? err.message : String(err)}`,
    );
  });
  if (!token.authorizationToken)
    throw new PackageIndexError(`package index ${value}: ${where} issued no token`);
  if (!endpoint.repositoryEndpoint || !/^https:\/\//.test(endpoint.repositoryEndpoint)) {
    throw new PackageIndexError(
      `package index ${value}: ${where} gave no https pypi endpoint (got ${JSON.stringify(endpoint.repositoryEndpoint)})`,
    );
  }
  const url = new URL(endpoint.repositoryEndpoint);
  const path = url.pathname.endsWith("/") ? url.pathname : `${url.pathname}/`;
  return {
    url: `https://aws:${encodeURIComponent(token.authorizationToken)}@${url.host}${path}simple/`,
    hosts: [destination(url)],
  };
}
