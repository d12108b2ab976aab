import * as aws from "@pulumi/aws";
import {
  validateResourceOfType,
  type ResourceValidationPolicy,
  type StackValidationPolicy,
} from "@pulumi/policy";
import { configSchema, readSettings } from "./config";
import { UNKNOWN, forStacksWith, known, ofTypes, parseJson, tierTag } from "./lib";
import { COST_TAGS, KUBERNETES } from "@crucible/runtime/catalog";

/**
 * The job sandbox as deployed: each tier's agent reads `/crucible/<environment>/<tier>/agent-config`,
 * whose `sandbox` holds the facts the runtime derives from the container spec it will create
 * (`sandboxFacts` of runtime/src/launch/sandbox.ts); on Kubernetes each tier's agent Deployment carries
 * those of the pods it creates (`kubernetesSandboxFacts`). The pack checks those facts, not the code.
 */

export const agentConfigName = (environment: string, tier: string) =>
  `/crucible/${environment}/${tier}/agent-config`;
const AGENT_CONFIG = /^\/crucible\/[^/]+\/[^/]+\/agent-config$/;

interface SandboxFacts {
  networkMode?: unknown;
  dockerSocketMounted?: unknown;
  privileged?: unknown;
  capDrop?: unknown;
  capAdd?: unknown;
  noNewPrivileges?: unknown;
}

/**
 * The only capabilities a job's container may keep: its supervisor's, which starts the job as another uid
 * (SETUID, SETGID) and forwards it SIGTERM (KILL); the job itself loses them (runtime/src/launch/sandbox.ts).
 */
export const SUPERVISOR_CAPABILITIES: readonly string[] = ["KILL", "SETGID", "SETUID"];

export function agentConfigSandboxed(): ResourceValidationPolicy {
  return {
    name: "agent-config-sandboxed",
    description:
      "Each tier's agent config gives jobs no network, no Docker socket, no privileges and no capabilities but the supervisor's.",
    enforcementLevel: "mandatory",
    validateResource: validateResourceOfType(aws.ssm.Parameter, (param, args, report) => {
      if (typeof param.name !== "string" || !AGENT_CONFIG.test(param.name)) {
        args.notApplicable("not an agent config parameter");
      }
      const config = parseJson(param.value ?? param.insecureValue) as { sandbox?: SandboxFacts } | undefined;
      const sandbox = config?.sandbox;
      if (typeof sandbox !== "object" || sandbox === null) {
        report(
          `${args.name}: ${param.name} must be JSON with a "sandbox" object (sandboxFacts(tier) from runtime/src/launch/sandbox.ts).`,
        );
        return;
      }
      for (const problem of sandboxProblems(sandbox, SUPERVISOR_CAPABILITIES))
        report(`${args.name}: ${problem}`);
    }),
  };
}

/**
 * What is wrong with a sandbox's published facts, each as the fix to make; none when it holds. The same
 * rules for a fleet tier's containers and a Kubernetes agent's job pods, but the capabilities it may keep:
 * a fleet container's supervisor keeps three, a pod's runner runs as the job's own uid and keeps none.
 */
function sandboxProblems(sandbox: SandboxFacts, kept: readonly string[]): string[] {
  const problems: string[] = [];
  if (sandbox.networkMode !== "none") {
    problems.push(
      `jobs must get no network; sandbox.networkMode is ${JSON.stringify(sandbox.networkMode)}, must be "none".`,
    );
  }
  if (sandbox.dockerSocketMounted !== false) {
    problems.push(`jobs must never see the Docker socket; sandbox.dockerSocketMounted must be false.`);
  }
  if (sandbox.privileged !== false) {
    problems.push(`jobs must not run privileged; sandbox.privileged must be false.`);
  }
  if (!Array.isArray(sandbox.capDrop) || !sandbox.capDrop.includes("ALL")) {
    problems.push(
      `jobs must drop every capability; sandbox.capDrop is ${JSON.stringify(sandbox.capDrop)}, must include "ALL".`,
    );
  }
  const added: unknown[] = Array.isArray(sandbox.capAdd)
    ? sandbox.capAdd
    : sandbox.capAdd === undefined
      ? []
      : [sandbox.capAdd];
  const extra = added.filter((c) => typeof c !== "string" || !kept.includes(c));
  if (extra.length > 0) {
    problems.push(
      kept.length > 0
        ? `jobs may keep only the supervisor's capabilities (${kept.join(", ")}); remove ${JSON.stringify(extra)} from sandbox.capAdd.`
        : `jobs may keep no capability (their runner runs as the job's own uid); remove ${JSON.stringify(extra)} from sandbox.capAdd.`,
    );
  }
  if (sandbox.noNewPrivileges !== true) {
    problems.push(`jobs must not gain privileges; sandbox.noNewPrivileges must be true.`);
  }
  return problems;
}

/** Kubernetes Deployments the program declares for its agents, which launch job pods. */
const DEPLOYMENT = "kubernetes:apps/v1:Deployment";

export function kubernetesAgentsSandboxed(): ResourceValidationPolicy {
  const annotation = KUBERNETES.sandboxFactsAnnotation;
  return {
    name: "kubernetes-agents-sandboxed",
    description:
      "Each Kubernetes agent publishes its job pods' sandbox facts, and they give jobs no network, no Docker socket, no privileges and no capabilities.",
    enforcementLevel: "mandatory",
    validateResource: (args, report) => {
      if (args.type !== DEPLOYMENT) return;
      const metadata = args.props.metadata as
        { labels?: Record<string, unknown>; annotations?: Record<string, unknown> } | undefined;
      const role = known(() => metadata?.labels?.[KUBERNETES.labels.role]);
      if (role === UNKNOWN || role !== "agent") {
        args.notApplicable("not a Crucible agent Deployment");
        return;
      }
      const published = known(() => metadata?.annotations?.[annotation]);
      if (published === UNKNOWN) return;
      const sandbox = parseJson(published) as SandboxFacts | undefined;
      if (typeof sandbox !== "object" || sandbox === null) {
        report(
          `${args.name}: an agent Deployment must publish its job pods' sandbox facts as JSON in the ${annotation} annotation (kubernetesSandboxFacts(tier) from runtime/src/launch/kubernetes/kubernetes-job.ts).`,
        );
        return;
      }
      for (const problem of sandboxProblems(sandbox, [])) report(`${args.name}: ${problem}`);
    },
  };
}

export function asgTiersHaveAgentConfig(): StackValidationPolicy {
  const name = "asg-tiers-have-agent-config";
  return {
    name,
    description:
      "Every tier with an Auto Scaling group has its agent config parameter, so its sandbox can be checked.",
    enforcementLevel: "mandatory",
    configSchema: configSchema("environment"),
    validateStack: forStacksWith([aws.autoscaling.Group], (args, report) => {
      const { environment } = readSettings(args, name, "environment");
      const names = ofTypes(args.resources, [aws.ssm.Parameter]).map((p) =>
        known(() => p.props.name as unknown),
      );
      for (const asg of ofTypes(args.resources, [aws.autoscaling.Group])) {
        const tier = tierTag(asg.props);
        if (tier === UNKNOWN) continue;
        if (tier === undefined) {
          report(
            `Auto Scaling group ${asg.name}: tag it ${COST_TAGS.tier}=<tier> so its agent config can be found.`,
            asg.urn,
          );
          continue;
        }
        const expected = agentConfigName(environment, tier);
        if (!names.includes(expected) && !names.includes(UNKNOWN)) {
          report(
            `Auto Scaling group ${asg.name} runs tier ${tier} but the stack declares no SSM parameter ${expected}: ` +
              `write it with the tier's queues, bucket, images and sandboxFacts("${tier}").`,
            asg.urn,
          );
        }
      }
    }),
  };
}
