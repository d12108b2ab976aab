import * as aws from "@pulumi/aws";
import * as pulumi from "@pulumi/pulumi";
import type { EnvironmentsSettings, Environment } from "../config";
import { componentTags } from "../providers";

/** The external connection the store repository proxies: PyPI itself. */
export const PYPI_EXTERNAL_CONNECTION = "public:pypi";
/** The repository nodes read (`codeartifact://…/<repository>`): everything it serves comes through its upstream. */
export const NODES_REPOSITORY = "pypi";
/** The upstream repository that holds the external connection and caches what PyPI served. */
export const STORE_REPOSITORY = "pypi-store";

/** `crucible-<environment>`: one domain per environment and account, as ECR repositories and groups are named. */
export const packageDomainName = (environment: string) => `crucible-${environment}`;

/** Arguments of {@link PackageIndex}. */
export interface PackageIndexArgs {
  readonly environment: Environment;
  /** `crucible:environments`: the index, and the packages allowed and denied. */
  readonly settings: EnvironmentsSettings;
  /** Name of the CodeArtifact domain. Defaults to `crucible-<environment>` ({@link packageDomainName}). */
  readonly domainName?: string;
}

/** The stack's CodeArtifact proxy of PyPI: what the node role reads, and where. */
export interface CodeArtifactIndex {
  readonly domain: pulumi.Output<string>;
  /** The 12-digit account that owns the domain: the stack's own. */
  readonly domainOwner: pulumi.Output<string>;
  readonly domainArn: pulumi.Output<string>;
  /** The repository nodes read ({@link NODES_REPOSITORY}). */
  readonly repository: pulumi.Output<string>;
  readonly repositoryArn: pulumi.Output<string>;
}

/**
 * Where job environments' packages come from, as the agent reads it (`CRUCIBLE_PACKAGE_INDEX`,
 * runtime/src/catalog/agent-env.ts): with `index: codeartifact`, a CodeArtifact domain holding a store
 * repository with PyPI as its external connection and the repository nodes read, with the store as its
 * only upstream (`codeartifact://<domain>/<owner>/<repository>`: the agent asks for its endpoint and a
 * token); with `{ url }`, that index; with `none`, nothing (the agent refuses jobs that carry requirements).
 * Nodes may only read: no repository policy grants anyone more, and the node role has no write action.
 */
export class PackageIndex extends pulumi.ComponentResource {
  /** `CRUCIBLE_PACKAGE_INDEX`; undefined with `index: none`. */
  public readonly packageIndex: pulumi.Output<string> | undefined;
  /** `CRUCIBLE_PACKAGE_ALLOW`; undefined (every package) when the stack names none. */
  public readonly allow: readonly string[] | undefined;
  /** `CRUCIBLE_PACKAGE_DENY`. */
  public readonly deny: readonly string[];
  /** The declared proxy, with `index: codeartifact` only. */
  public readonly codeArtifact: CodeArtifactIndex | undefined;

  constructor(name: string, args: PackageIndexArgs, opts?: pulumi.ComponentResourceOptions) {
    super("crucible:environments:PackageIndex", name, {}, opts);
    const { index, allow, deny } = args.settings;
    this.allow = allow;
    this.deny = deny;
    if (index === "codeartifact") {
      this.codeArtifact = pypiProxy(name, args.domainName ?? packageDomainName(args.environment), this);
      const { domain, domainOwner, repository } = this.codeArtifact;
      this.packageIndex = pulumi.interpolate`codeartifact://${domain}/${domainOwner}/${repository}`;
    } else if (index !== "none") {
      this.packageIndex = pulumi.output(index.url);
    }
    this.registerOutputs({
      packageIndex: this.packageIndex,
      allow: this.allow,
      deny: this.deny,
      codeArtifact: this.codeArtifact,
    });
  }
}

/** The domain, the store repository (external connection to PyPI) and the nodes' repository reading it. */
function pypiProxy(name: string, domainName: string, parent: pulumi.Resource): CodeArtifactIndex {
  const tags = componentTags("environments");
  // The domain is created in the deploying account, which therefore owns it.
  const owner = aws.getCallerIdentityOutput({}, { parent }).accountId;
  // Encrypted with CodeArtifact's AWS-managed key (aws/codeartifact): the packages are PyPI's, public.
  const domain = new aws.codeartifact.Domain(`${name}-domain`, { domain: domainName, tags }, { parent });
  const store = new aws.codeartifact.Repository(
    `${name}-${STORE_REPOSITORY}`,
    {
      domain: domain.domain,
      repository: STORE_REPOSITORY,
      description: "PyPI, proxied and cached for job environments (external connection public:pypi)",
      externalConnections: { externalConnectionName: PYPI_EXTERNAL_CONNECTION },
      tags,
    },
    { parent },
  );
  const nodes = new aws.codeartifact.Repository(
    `${name}-${NODES_REPOSITORY}`,
    {
      domain: domain.domain,
      repository: NODES_REPOSITORY,
      description: "What nodes build job environments from (read-only): PyPI through pypi-store",
      upstreams: [{ repositoryName: store.repository }],
      tags,
    },
    { parent },
  );
  return {
    domain: domain.domain,
    domainOwner: owner,
    domainArn: domain.arn,
    repository: nodes.repository,
    repositoryArn: nodes.arn,
  };
}
