import type { Policies } from "@pulumi/policy";
import {
  asgMaxWithinCap,
  ebsVolumesEncrypted,
  gpuAsgsUseLaunchTemplates,
  instanceTypesWithinTier,
  launchTemplatesRequireImdsv2,
  nodesHaveNoPublicIp,
} from "./compute";
import { codeartifactNodesReadOnly } from "./codeartifact";
import { policyConfigMatchesStack } from "./config";
import { costAllocationTags, gpuStacksHaveBudgets } from "./cost";
import { ecrImmutableTags, ecrLifecyclePolicies, ecrScanOnPush } from "./ecr";
import { iamNoInlineAdminPolicies, iamNoWildcardActions, iamNodeRolesScoped } from "./iam";
import { iamRolesHavePermissionsBoundary } from "./iam-boundary";
import { iamNoIfExistsConditions } from "./iam-conditions";
import { iamNoWildcardTrust } from "./iam-trust";
import { jobQueuesHaveDlq, snsTopicsEncrypted, sqsQueuesEncrypted } from "./messaging";
import { vpcEndpointsHavePolicies } from "./network";
import { agentConfigSandboxed, asgTiersHaveAgentConfig, kubernetesAgentsSandboxed } from "./sandbox";
import {
  s3BucketPolicyRequiresTls,
  s3BucketsEncrypted,
  s3BucketsHavePublicAccessBlocks,
  s3BucketsHaveTlsPolicy,
  s3BucketsVersioned,
  s3EncryptionConfigured,
  s3PublicAccessBlocked,
  s3VersioningEnabled,
  s3WorkspacesExpire,
  s3LedgerKept,
} from "./s3";

/** The pack's name, as `pulumi preview --policy-pack policies` reports it. */
export const PACK_NAME = "crucible";

/**
 * Every policy of the pack, built fresh (tests and the config script import this module; only
 * index.ts starts the pack's server).
 */
export function cruciblePolicies(): Policies {
  return [
    s3PublicAccessBlocked(),
    s3BucketsHavePublicAccessBlocks(),
    s3EncryptionConfigured(),
    s3BucketsEncrypted(),
    s3BucketPolicyRequiresTls(),
    s3BucketsHaveTlsPolicy(),
    s3VersioningEnabled(),
    s3BucketsVersioned(),
    s3WorkspacesExpire(),
    s3LedgerKept(),
    ecrImmutableTags(),
    ecrScanOnPush(),
    ecrLifecyclePolicies(),
    launchTemplatesRequireImdsv2(),
    ebsVolumesEncrypted(),
    nodesHaveNoPublicIp(),
    instanceTypesWithinTier(),
    asgMaxWithinCap(),
    gpuAsgsUseLaunchTemplates(),
    sqsQueuesEncrypted(),
    snsTopicsEncrypted(),
    jobQueuesHaveDlq(),
    iamNoWildcardActions(),
    iamNoInlineAdminPolicies(),
    iamNodeRolesScoped(),
    iamRolesHavePermissionsBoundary(),
    iamNoWildcardTrust(),
    iamNoIfExistsConditions(),
    costAllocationTags(),
    gpuStacksHaveBudgets(),
    agentConfigSandboxed(),
    kubernetesAgentsSandboxed(),
    asgTiersHaveAgentConfig(),
    vpcEndpointsHavePolicies(),
    codeartifactNodesReadOnly(),
    policyConfigMatchesStack(),
  ];
}
