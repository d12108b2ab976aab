import { PolicyPack } from "@pulumi/policy";
import { PACK_NAME, cruciblePolicies } from "./pack";

// Mandatory unless the --policy-pack-config file says otherwise; `npm run policy-config` writes
// advisory levels for dev stacks only (see policies/config.ts).
new PolicyPack(PACK_NAME, { policies: cruciblePolicies(), enforcementLevel: "mandatory" });
