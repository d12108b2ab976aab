/**
 * Job environments' infrastructure: the package index builds read ({@link PackageIndex}). The node's
 * grants on it and on the built environments are in infra/fleet/node-role.ts, beside the agent's other data.
 */
export {
  PackageIndex,
  type PackageIndexArgs,
  type CodeArtifactIndex,
  packageDomainName,
  PYPI_EXTERNAL_CONNECTION,
  NODES_REPOSITORY,
  STORE_REPOSITORY,
} from "./package-index";
