import { beforeAll, describe, expect, it } from "vitest";
import { MOCK_ACCOUNT_ID } from "../../../scripts/lib/mock-engine";
import { GPU_TIERS, PRIORITIES, T, declaredFleet } from "../../support/fleet-plan";
import { STACKS, runStack, type DeclaredResource, type Plan } from "../../support/harness";

/** The node's boot script (infra/fleet/user-data.ts), as each stack's launch templates carry it. */

/** The runtime's scheduling defaults (runtime/src/catalog/scheduling.ts), written out. */
const DEFAULT_POLICY = {
  weights: { high: 6, normal: 3, low: 1 },
  fairShare: { perUser: 8, perProject: 32, deferSeconds: 15 },
  preemption: { enabled: true, afterSeconds: 600, noPreemptPriceFactor: 1.5 },
};
/**
 * The policy each stack hands its agents: `crucible:scheduling` over the defaults, and its user and project
 * budgets.
 */
const POLICY: Record<(typeof STACKS)[number], unknown> = {
  dev: {
    ...DEFAULT_POLICY,
    preemption: { ...DEFAULT_POLICY.preemption, afterSeconds: 120 },
    budgets: { users: { alice: 120, bob: 80 }, projects: { ci: 25, nanogpt: 150 } },
  },
  staging: { ...DEFAULT_POLICY, budgets: { users: {}, projects: {} } },
  prod: {
    ...DEFAULT_POLICY,
    fairShare: { perUser: 16, perProject: 64, deferSeconds: 15 },
    preemption: { ...DEFAULT_POLICY.preemption, afterSeconds: 900 },
    budgets: {
      users: { alice: 4000, bob: 2500, "ravi.k": 2500 },
      projects: { "llm-pretrain": 12000, "vision-eval": 5000 },
    },
  },
};

/** The environment defaults no stack file overrides. */
const HEARTBEAT_SECONDS = 30;
const VISIBILITY_TIMEOUT_SECONDS = 120;
const GRACE_SECONDS = 60;

/** The boot script, and the environment its `docker run` hands the agent (`-e KEY='value'` lines). */
function bootScript(template: DeclaredResource): {
  script: string;
  lines: string[];
  env: Record<string, string>;
} {
  const script = Buffer.from(template.inputs.userData as string, "base64").toString("utf8");
  const lines = script.split("\n");
  const env: Record<string, string> = {};
  for (const line of lines) {
    const m = /^ {2}-e ([A-Z_]+)='(.*)' \\$/.exec(line);
    if (m) env[m[1]!] = m[2]!.replace(/'"'"'/g, "'");
  }
  return { script, lines, env };
}

describe.each(STACKS)("%s stack fleet", (stack) => {
  let plan: Plan;
  beforeAll(async () => {
    plan = await runStack(stack);
  });
  const {
    want,
    tiers,
    environment,
    groupName,
    queue,
    queueField,
    group,
    template,
    imageRefs,
    workspacesBucket,
  } = declaredFleet(stack, () => plan);

  describe("user data", () => {
    it("pulls the agent by digest and runs `agent --tier <tier>` as the last command", () => {
      const agent = imageRefs().agent!;
      expect(agent).toMatch(/^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com\/[^@:]+@sha256:[0-9a-f]{64}$/);
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        expect(lines[0]).toBe("#!/bin/bash");
        expect(lines).toContain("set -euo pipefail");
        expect(lines).toContain(`docker pull ${agent}`);
        expect(lines.filter((l) => l.trim() !== "").at(-1)).toBe(`  ${agent} agent --tier ${tier}`);
      }
    });

    it("hands the agent its tier's priority queues, the scheduling policy, the workspaces and datasets buckets and its group's hooks", () => {
      for (const tier of tiers) {
        const { env } = bootScript(template(tier));
        const hooks = group(tier).inputs.initialLifecycleHooks as { name: string }[];
        const queues = JSON.parse(env.CRUCIBLE_QUEUES!) as Record<string, Record<string, string>>;
        expect(queues).toEqual({ [tier]: queueField(tier, "url") });
        expect(Object.keys(queues[tier]!)).toEqual([...PRIORITIES]);
        expect(JSON.parse(env.CRUCIBLE_SCHEDULING!)).toEqual(POLICY[stack]);
        expect(JSON.parse(env.CRUCIBLE_SCHEDULING!)).toEqual(plan.outputs.scheduling);
        expect(env.CRUCIBLE_QUEUE_URL).toBeUndefined();
        expect(env).toMatchObject({
          CRUCIBLE_TIER: tier,
          CRUCIBLE_BUCKET: workspacesBucket().state.bucket,
          CRUCIBLE_WORKSPACES_PREFIX: "workspaces/",
          CRUCIBLE_DATASETS_BUCKET: plan.get(T.bucket, "workspaces-datasets").state.bucket,
          CRUCIBLE_HEARTBEAT_SECONDS: String(HEARTBEAT_SECONDS),
          CRUCIBLE_VISIBILITY_TIMEOUT_SECONDS: String(VISIBILITY_TIMEOUT_SECONDS),
          CRUCIBLE_ASG_NAME: groupName(tier),
          CRUCIBLE_LAUNCH_HOOK: hooks[0]!.name,
          CRUCIBLE_TERMINATION_HOOK: hooks[1]!.name,
          CRUCIBLE_GRACE_SECONDS: String(GRACE_SECONDS),
          AWS_REGION: want.region,
        });
        // Another tier's queues never reach this tier's nodes.
        for (const other of tiers.filter((t) => t !== tier)) {
          for (const p of PRIORITIES) {
            expect(bootScript(template(tier)).script).not.toContain(queue(other, p).state.url as string);
          }
        }
        const { agent: _agent, ...jobImages } = imageRefs();
        expect(JSON.parse(env.CRUCIBLE_IMAGES!)).toEqual(jobImages);
        expect(Object.keys(jobImages)).toContain("builder");
      }
    });

    it("hands the agent the stack's package index and its allowed and denied packages", () => {
      const domain = plan.get("aws:codeartifact/domain:Domain", "environments-domain");
      const index = `codeartifact://crucible-${environment}/${MOCK_ACCOUNT_ID}/pypi`;
      expect(domain.inputs.domain).toBe(`crucible-${environment}`);
      expect(plan.outputs.environments).toMatchObject({ packageIndex: index });
      for (const tier of tiers) {
        const { env } = bootScript(template(tier));
        expect(env.CRUCIBLE_PACKAGE_INDEX).toBe(index);
        expect(env.CRUCIBLE_PACKAGE_ALLOW).toBeUndefined();
        expect(JSON.parse(env.CRUCIBLE_PACKAGE_DENY!)).toEqual(stack === "dev" ? ["tensorflow"] : []);
      }
    });

    it("pre-pulls by digest exactly the job images the tier's jobs can run in and the builder (the launcher never pulls)", () => {
      const refs = imageRefs();
      for (const tier of tiers) {
        const pulls = bootScript(template(tier))
          .lines.filter((l) => l.startsWith("docker pull "))
          .map((l) => l.slice("docker pull ".length));
        const families = GPU_TIERS.has(tier) ? ["ml-cuda"] : ["cpu", "ml-cpu"];
        expect(pulls).toEqual([refs.agent, ...families.map((f) => refs[f]), refs.builder]);
        for (const ref of pulls) expect(ref).toMatch(/@sha256:[0-9a-f]{64}$/);
      }
    });

    it("logs in to each registry it pulls from in that registry's own region, before pulling", () => {
      const host = imageRefs().agent!.split("/")[0]!;
      // A promoted stack runs its upstream's images, from the upstream's registry and region.
      const registryRegion = want.registryRegion;
      expect(host).toBe(`${MOCK_ACCOUNT_ID}.dkr.ecr.${registryRegion}.amazonaws.com`);
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        const logins = lines.filter((l) => l.startsWith("aws ecr get-login-password"));
        expect(logins).toEqual([
          `aws ecr get-login-password --region ${registryRegion} | docker login --username AWS --password-stdin ${host}`,
        ]);
        expect(lines.indexOf(logins[0]!)).toBeLessThan(lines.findIndex((l) => l.startsWith("docker pull ")));
      }
    });

    it("ships the agent's output to the tier's log group with the awslogs driver", () => {
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        expect(lines).toContain(
          `  --log-driver awslogs --log-opt awslogs-group=/crucible/${environment}/${tier}/agent` +
            ` --log-opt awslogs-region=${want.region} --log-opt awslogs-create-group=false \\`,
        );
      }
    });

    it("checks the GPU with nvidia-smi before anything else, exactly on GPU tiers", () => {
      for (const tier of tiers) {
        const { lines, script } = bootScript(template(tier));
        const check = lines.findIndex((l) => l.includes("nvidia-smi"));
        if (!GPU_TIERS.has(tier)) {
          expect(script).not.toContain("nvidia-smi");
          continue;
        }
        expect(lines[check]).toMatch(/^if ! nvidia-smi >\/dev\/null 2>&1; then .*exit 1; fi$/);
        expect(check).toBeLessThan(lines.findIndex((l) => l.startsWith("docker run")));
      }
    });

    it("runs the agent as root, privileged, with its scratch root (rshared) and uid leases at the host's own paths", () => {
      for (const tier of tiers) {
        const { lines, env } = bootScript(template(tier));
        const run = lines.findIndex((l) => l.startsWith("docker run"));
        expect(lines.slice(run, run + 5)).toEqual([
          "docker run -d --name crucible-agent --restart=always --network host --user 0:0 --privileged \\",
          `  --log-driver awslogs --log-opt awslogs-group=/crucible/${environment}/${tier}/agent` +
            ` --log-opt awslogs-region=${want.region} --log-opt awslogs-create-group=false \\`,
          "  -v /var/run/docker.sock:/var/run/docker.sock \\",
          "  -v /var/lib/crucible:/var/lib/crucible:rshared -v /run/crucible:/run/crucible \\",
          "  -e TMPDIR=/var/lib/crucible/tmp \\",
        ]);
        // Root needs no socket group; the scratch root is TMPDIR alone (the agent's and launcher's tmpdir()).
        expect(lines.filter((l) => l.includes("--group-add") || l.includes("--user "))).toEqual([lines[run]]);
        expect(env.CRUCIBLE_SCRATCH_ROOT).toBeUndefined();
        expect(lines.filter((l) => l.startsWith("docker run"))).toHaveLength(1);
      }
    });

    it("makes the agent's directories root's alone and its loop device nodes before the agent starts", () => {
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        const setup = [
          "install -d -m 0700 /var/lib/crucible /var/lib/crucible/tmp /run/crucible",
          "modprobe loop && for i in $(seq 0 63); do [ -b /dev/loop$i ] || mknod -m 0660 /dev/loop$i b 7 $i; done",
        ];
        for (const line of setup) {
          expect(lines).toContain(line);
          expect(lines.indexOf(line)).toBeLessThan(lines.findIndex((l) => l.startsWith("docker run")));
        }
        // Never ec2-user's uid (the agent was 1000 once).
        expect(lines.some((l) => /(-o|-g|--user) 1000\b/.test(l))).toBe(false);
      }
    });

    it("gives the agent nvidia-smi for its health checks (the utility capability only), exactly on GPU tiers", () => {
      for (const tier of tiers) {
        const { lines } = bootScript(template(tier));
        expect(lines.includes("  --gpus all -e NVIDIA_DRIVER_CAPABILITIES=utility \\")).toBe(
          GPU_TIERS.has(tier),
        );
      }
    });
  });
});
