import { execFile } from "node:child_process";
import { readdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { promisify } from "node:util";
import { beforeAll, describe, expect, it } from "vitest";
import { parseDocument } from "yaml";
import { ciSubjects } from "../../infra/ci";
import { ROOT } from "../../scripts/lib/mock-engine";
import { stackConfig } from "../../scripts/lib/policy-config";
import { STACKS } from "../support/harness";

/**
 * The GitHub Actions workflows, read as GitHub reads them: which events run which jobs, what each job
 * deploys with which role, and that the promotion path runs digests instead of rebuilding them.
 */

interface Step {
  readonly name?: string;
  readonly id?: string;
  readonly uses?: string;
  readonly run?: string;
  readonly with?: Record<string, string | boolean | number>;
  readonly env?: Record<string, string>;
  readonly "working-directory"?: string;
}
interface Job {
  readonly name?: string;
  readonly "runs-on": string;
  readonly needs?: string | string[];
  readonly if?: string;
  readonly environment?: string | { readonly name: string };
  readonly permissions?: Record<string, string>;
  readonly strategy?: { readonly matrix?: Record<string, unknown> };
  readonly steps: Step[];
}
interface Workflow {
  readonly name: string;
  readonly on: Record<string, { branches?: string[]; tags?: string[] } | null>;
  readonly permissions?: Record<string, string>;
  readonly concurrency?: unknown;
  readonly jobs: Record<string, Job>;
}

const run = promisify(execFile);
const WORKFLOWS = path.join(ROOT, ".github", "workflows");
const CREDENTIALS_ACTION = "./.github/actions/stack-credentials";
/** The org/project of every stack: what the stack files' promoteFrom names. */
const PROJECT = "acme/crucible";
const REPOSITORY = "acme/crucible";

function parse<T>(file: string): T {
  const doc = parseDocument(readFileSync(file, "utf8"), { uniqueKeys: true });
  expect(
    doc.errors.map((e) => e.message),
    file,
  ).toEqual([]);
  return doc.toJS() as T;
}

const files = readdirSync(WORKFLOWS).filter((f) => /\.ya?ml$/.test(f));
const workflows = Object.fromEntries(
  files.map((f) => [f, parse<Workflow>(path.join(WORKFLOWS, f))]),
) as Record<string, Workflow>;
const text = (file: string) => readFileSync(path.join(WORKFLOWS, file), "utf8");
const allJobs = () =>
  Object.entries(workflows).flatMap(([file, wf]) =>
    Object.entries(wf.jobs).map(([id, job]) => ({ file, id, job })),
  );

/** A job once per value of its `matrix.stack` (or once), with `${{ matrix.stack }}` filled in. */
function expand(job: Job): { stack: string | undefined; steps: Step[] }[] {
  const stacks = job.strategy?.matrix?.stack as string[] | undefined;
  if (!stacks) return [{ stack: undefined, steps: job.steps }];
  return stacks.map((stack) => ({
    stack,
    steps: JSON.parse(JSON.stringify(job.steps).replace(/\$\{\{ matrix\.stack \}\}/g, stack)) as Step[],
  }));
}
const commands = (steps: Step[]) => steps.flatMap((s) => (s.run ?? "").split("\n").map((l) => l.trim()));
const environmentOf = (job: Job) =>
  typeof job.environment === "string" ? job.environment : job.environment?.name;
const pulumiSteps = (steps: Step[], command?: string) =>
  steps.filter((s) => s.uses?.startsWith("pulumi/actions@") && (!command || s.with?.command === command));
const credentialSteps = (steps: Step[]) => steps.filter((s) => s.uses === CREDENTIALS_ACTION);

it("has the three workflows, every one valid YAML with a name, jobs and least-privilege defaults", () => {
  expect(files.sort()).toEqual(["main.yml", "promote.yml", "pull-request.yml"]);
  for (const [file, wf] of Object.entries(workflows)) {
    expect(wf.name, file).toBeTruthy();
    expect(Object.keys(wf.jobs).length, file).toBeGreaterThan(0);
    // The token of every job reads the repository and nothing more, unless the job says so.
    expect(wf.permissions, file).toEqual({ contents: "read" });
  }
});

describe("triggers", () => {
  it("pull-request.yml runs on pull requests to main, and only then", () => {
    expect(workflows["pull-request.yml"]!.on).toEqual({ pull_request: { branches: ["main"] } });
  });

  it("main.yml runs on pushes to main, and only then", () => {
    expect(workflows["main.yml"]!.on).toEqual({ push: { branches: ["main"] } });
  });

  it("promote.yml runs for a version tag or by hand, never for a branch or a pull request", () => {
    expect(workflows["promote.yml"]!.on).toEqual({ push: { tags: ["v*"] }, workflow_dispatch: null });
  });

  it("never runs two deployments of a stack at once", () => {
    for (const file of ["main.yml", "promote.yml"])
      expect(workflows[file]!.concurrency, file).toMatchObject({ "cancel-in-progress": false });
  });
});

describe("on a pull request", () => {
  const jobs = () => workflows["pull-request.yml"]!.jobs;

  it("typechecks, lints and runs the tests", () => {
    expect(commands(jobs().checks!.steps).filter(Boolean)).toEqual([
      "npm ci",
      "npm run typecheck",
      "npm run lint",
      "npm test",
    ]);
  });

  it.each(STACKS)("plans %s with the command an engineer runs, and diffs it against main's plan", (stack) => {
    const run = expand(jobs().plan!).find((j) => j.stack === stack);
    expect(run, `no plan job for ${stack}`).toBeDefined();
    const lines = commands(run!.steps);
    expect(lines).toContain(`npm run plan -- --stack ${stack}`);
    expect(lines).toContain(
      `npm run --silent plan -- --stack ${stack} --json > "$RUNNER_TEMP/plan-head.json"`,
    );
    const base = run!.steps.find((s) => s.with?.path === "base")!;
    expect(base).toMatchObject({
      uses: "actions/checkout@v7",
      with: { ref: "${{ github.event.pull_request.base.sha }}", path: "base" },
    });
    const onBase = run!.steps.find((s) => s["working-directory"] === "base")!;
    expect(commands([onBase])).toContain(
      `npm run --silent plan -- --stack ${stack} --json > "$RUNNER_TEMP/plan-base.json"`,
    );
    const diff = lines.find((l) => l.startsWith("npm run --silent plan-diff --"));
    expect(diff).toBe(
      'npm run --silent plan-diff -- "$RUNNER_TEMP/plan-base.json" "$RUNNER_TEMP/plan-head.json" \\',
    );
    expect(run!.steps.map((s) => s.run ?? "").join("\n")).toMatch(
      /--base-root base --head-root \. >> "\$GITHUB_STEP_SUMMARY"/,
    );
  });

  it.each(STACKS)(
    "the plan command CI runs for %s finishes and prints the stack (offline)",
    async (stack) => {
      // A stack reference once sent the text plan round its own parent forever; CI would wait on it.
      const { stdout } = await run(
        process.execPath,
        ["--import", "tsx", "scripts/plan.ts", "--stack", stack],
        {
          cwd: ROOT,
          timeout: 45_000, // under the test timeout, so a hung plan is killed with the test
        },
      );
      expect(stdout).toMatch(new RegExp(`^Stack ${stack}: \\d+ resources\n`));
      expect(stdout).toContain("crucible:ci:CiAccess ci");
    },
  );

  it("README shows the same plan command CI runs", () => {
    const readme = readFileSync(path.join(ROOT, "README.md"), "utf8");
    const ci = commands(expand(jobs().plan!).find((j) => j.stack === "prod")!.steps);
    expect(ci).toContain("npm run plan -- --stack prod");
    expect(readme).toContain("npm run plan -- --stack prod");
  });

  it.each(STACKS)(
    "previews %s under the policy pack, with the config npm run policy-config writes for it",
    (stack) => {
      const run = expand(jobs().preview!).find((j) => j.stack === stack)!;
      const [preview] = pulumiSteps(run.steps, "preview");
      expect(preview?.with).toMatchObject({
        "stack-name": `${PROJECT}/${stack}`,
        policyPacks: "policies",
        policyPackConfigs: "${{ runner.temp }}/policy-config.json",
      });
      const writes = run.steps.findIndex((s) =>
        commands([s]).includes(
          `npm run --silent policy-config -- ${stack} > "$RUNNER_TEMP/policy-config.json"`,
        ),
      );
      expect(writes).toBeGreaterThan(-1);
      expect(writes).toBeLessThan(run.steps.indexOf(preview!));
      expect(credentialSteps(run.steps).map((s) => s.with)).toEqual([{ stack, role: "preview" }]);
    },
  );

  it("deploys nothing and assumes no deploy role", () => {
    for (const [id, job] of Object.entries(jobs())) {
      for (const { steps } of expand(job)) {
        expect(
          pulumiSteps(steps).filter((s) => s.with?.command !== "preview"),
          id,
        ).toEqual([]);
        expect(
          credentialSteps(steps).filter((s) => s.with?.role !== "preview"),
          id,
        ).toEqual([]);
      }
    }
  });
});

describe("on main", () => {
  const jobs = () => workflows["main.yml"]!.jobs;

  it("builds and pushes the image matrix once, by deploying dev, which builds (no promoteFrom)", () => {
    const ups = Object.values(jobs()).flatMap((j) => pulumiSteps(j.steps, "up"));
    expect(ups.map((s) => s.with?.["stack-name"])).toEqual([`${PROJECT}/dev`]);
    expect(stackConfig("dev").registry.promoteFrom).toBeUndefined();
    expect(jobs()["deploy-dev"]).toMatchObject({ environment: "dev" });
  });

  it("then runs a smoke job through dev's queue", () => {
    const smoke = jobs()["smoke-dev"]!;
    expect(smoke.needs).toBe("deploy-dev");
    expect(commands(smoke.steps)).toContain("bash scripts/smoke.sh acme/crucible/dev");
    const script = readFileSync(path.join(ROOT, "scripts/smoke.sh"), "utf8");
    expect(script).toContain("npm run --silent crucible -- submit runtime/templates/hello --tier cpu-small");
    expect(script).toContain('npm run --silent crucible -- result "$job" --json');
  });
});

describe("promotion", () => {
  const jobs = () => workflows["promote.yml"]!.jobs;

  it("goes dev → staging → smoke → prod, each later stack configured to run the earlier one's digests", () => {
    expect(jobs().staging!.needs).toBeUndefined();
    expect(jobs()["smoke-staging"]!.needs).toBe("staging");
    expect(jobs().prod!.needs).toBe("smoke-staging");
    expect(stackConfig("staging").registry.promoteFrom).toBe(`${PROJECT}/dev`);
    expect(stackConfig("prod").registry.promoteFrom).toBe(`${PROJECT}/staging`);
  });

  it.each([
    { job: "staging", stack: "staging", upstream: "dev" },
    { job: "prod", stack: "prod", upstream: "staging" },
  ])(
    "$job runs in the $stack environment, builds nothing and deploys $upstream's digests",
    ({ job, stack, upstream }) => {
      const j = jobs()[job]!;
      expect(environmentOf(j)).toBe(stack);
      const lines = commands(j.steps);
      // No image build: no build script, no Docker build, no build action; the stack's config promotes.
      expect(lines.filter((l) => /npm run images|docker (build|push)|buildx/.test(l))).toEqual([]);
      expect(j.steps.filter((s) => /docker\/|build-push/.test(s.uses ?? ""))).toEqual([]);
      expect(pulumiSteps(j.steps, "up").map((s) => s.with)).toEqual([
        {
          command: "up",
          "stack-name": `${PROJECT}/${stack}`,
          policyPacks: "policies",
          policyPackConfigs: "${{ runner.temp }}/policy-config.json",
          "comment-on-summary": true,
        },
      ]);
      // Before: the upstream runs this commit; after: this stack runs exactly the upstream's digests.
      const checks = lines.filter((l) => l.startsWith("bash scripts/promote-check.sh"));
      expect(checks).toEqual([
        `bash scripts/promote-check.sh ${PROJECT}/${upstream} "$GITHUB_SHA"`,
        `bash scripts/promote-check.sh ${PROJECT}/${upstream} "$GITHUB_SHA" ${PROJECT}/${stack}`,
      ]);
    },
  );

  it("only promote.yml deploys prod or assumes prod's deploy role", () => {
    for (const { file, id, job } of allJobs()) {
      for (const { steps } of expand(job)) {
        const touchesProd =
          pulumiSteps(steps, "up").some((s) => s.with?.["stack-name"] === `${PROJECT}/prod`) ||
          credentialSteps(steps).some((s) => s.with?.stack === "prod" && s.with.role === "deploy");
        if (touchesProd) expect(`${file}#${id}`).toBe("promote.yml#prod");
      }
    }
  });
});

describe("credentials", () => {
  let action: { runs: { steps: Step[] }; inputs: Record<string, unknown> };
  beforeAll(() => {
    action = parse(path.join(ROOT, CREDENTIALS_ACTION, "action.yml"));
  });

  it("come only from OIDC: no stored AWS keys and no stored secrets anywhere", () => {
    const sources = [
      ...files.map(text),
      readFileSync(path.join(ROOT, CREDENTIALS_ACTION, "action.yml"), "utf8"),
    ];
    for (const source of sources) {
      expect(source).not.toMatch(
        /aws-access-key-id|aws-secret-access-key|AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID/,
      );
      expect(source).not.toMatch(/secrets\./);
    }
  });

  it("assume the role the stack exports, in the stack's region, after a Pulumi Cloud OIDC login", () => {
    expect(action.runs.steps.map((s) => s.uses).filter(Boolean)).toEqual([
      "pulumi/auth-actions@v2",
      "pulumi/actions@v7",
      "aws-actions/configure-aws-credentials@v6",
    ]);
    const [login, outputs, , assume] = action.runs.steps;
    // A team token, never the organization's: pull requests (and smoke jobs) get the read-only team's.
    expect(login!.with).toEqual({
      organization: "acme",
      "requested-token-type": "urn:pulumi:token-type:access_token:team",
      scope: "${{ inputs.role == 'deploy' && 'team:crucible-deploy' || 'team:crucible-readers' }}",
    });
    const sources = [
      ...files.map(text),
      readFileSync(path.join(ROOT, CREDENTIALS_ACTION, "action.yml"), "utf8"),
    ];
    for (const source of sources) expect(source).not.toContain("access_token:organization");
    expect(outputs!.with).toEqual({ command: "output", "stack-name": "acme/crucible/${{ inputs.stack }}" });
    expect(assume!.with).toMatchObject({
      "role-to-assume": "${{ steps.role.outputs.arn }}",
      "aws-region": "${{ steps.stack.outputs.region }}",
    });
  });

  it("are taken only by jobs with id-token: write, and no other job gets an OIDC token", () => {
    for (const { file, id, job } of allJobs()) {
      const assumes = job.steps.some(
        (s) => s.uses === CREDENTIALS_ACTION || /configure-aws-credentials|auth-actions/.test(s.uses ?? ""),
      );
      expect(job.permissions?.["id-token"], `${file}#${id}`).toBe(assumes ? "write" : undefined);
    }
  });

  it("are asked for only where the stack's trust policy admits the job's token", () => {
    // GitHub's `sub` claim: the job's environment when it has one, else the event's ref or pull_request.
    for (const { file, id, job } of allJobs()) {
      const wf = workflows[file]!;
      const environment = environmentOf(job);
      const sub = environment
        ? `repo:${REPOSITORY}:environment:${environment}`
        : "pull_request" in wf.on
          ? `repo:${REPOSITORY}:pull_request`
          : `repo:${REPOSITORY}:ref:refs/heads/${wf.on.push!.branches![0]!}`;
      for (const { steps } of expand(job)) {
        for (const step of credentialSteps(steps)) {
          const stack = String(step.with!.stack);
          const role = String(step.with!.role) as "deploy" | "preview" | "smoke";
          const config = stackConfig(stack);
          expect(config.ci?.github.repository).toBe(REPOSITORY);
          expect(
            ciSubjects(config.ci!.github, config.environment)[role],
            `${file}#${id} (${stack})`,
          ).toContain(sub);
        }
      }
    }
  });

  it("give pull requests only the preview role, and smoke jobs only the smoke role", () => {
    for (const { file, id, job } of allJobs()) {
      const wf = workflows[file]!;
      for (const { steps } of expand(job)) {
        const smokes = commands(steps).some((c) => c.startsWith("bash scripts/smoke.sh"));
        for (const step of credentialSteps(steps)) {
          if ("pull_request" in wf.on) expect(step.with!.role, `${file}#${id}`).toBe("preview");
          if (smokes) expect(step.with!.role, `${file}#${id}`).toBe("smoke");
        }
      }
    }
  });

  it("ask for no longer a session than the deploy role allows", () => {
    for (const { file, id, job } of allJobs()) {
      for (const step of credentialSteps(job.steps)) {
        expect(Number(step.with?.["session-seconds"] ?? 3600), `${file}#${id}`).toBeLessThanOrEqual(7200);
      }
    }
  });
});

describe("smoke jobs", () => {
  const smokeJobs = () =>
    allJobs().filter(({ job }) => commands(job.steps).some((c) => c.startsWith("bash scripts/smoke.sh")));
  const script = () => readFileSync(path.join(ROOT, "scripts/assume-submitter.sh"), "utf8");

  it("become project ci's submitter as user ci, after the smoke role and before submitting", () => {
    expect(smokeJobs().map(({ file, id }) => `${file}#${id}`)).toEqual([
      "main.yml#smoke-dev",
      "promote.yml#smoke-staging",
    ]);
    for (const { file, id, job } of smokeJobs()) {
      const stack = String(credentialSteps(job.steps)[0]!.with!.stack);
      const at = (pred: (s: Step) => boolean) => job.steps.findIndex(pred);
      const credentials = at((s) => s.uses === CREDENTIALS_ACTION);
      const become = at((s) => s.run === `bash scripts/assume-submitter.sh acme/crucible/${stack} ci ci`);
      const smoke = at((s) => (s.run ?? "").startsWith("bash scripts/smoke.sh"));
      expect(
        [credentials, become, smoke].every((i) => i >= 0),
        `${file}#${id}`,
      ).toBe(true);
      expect(credentials, `${file}#${id}`).toBeLessThan(become);
      expect(become, `${file}#${id}`).toBeLessThan(smoke);
      // The submitter's trust admits project ci's one user, the smoke role (infra/access.ts).
      expect(stackConfig(stack).access.ci?.users).toEqual({
        ci: `arn:aws:iam::123456789012:role/crucible-${stack}-ci-smoke`,
      });
    }
  });

  it("assume the submitter with exactly what its trust admits: session name and the one crucible-user tag", () => {
    const text = script();
    expect(text).toContain(
      'arn=$(pulumi stack output access --stack "$stack" --json | jq -r --arg p "$project" \'.submitterRoleArns[$p] // empty\')',
    );
    expect(text).toContain('creds=$(aws sts assume-role --role-arn "$arn" --role-session-name "$user" \\');
    expect(text).toContain('  --tags "Key=crucible-user,Value=$user" --duration-seconds 3600');
    // No action that adds its own session tags (configure-aws-credentials always tags GitHub's).
    expect(text).not.toMatch(/transitive|--policy/);
    for (const key of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
      expect(text).toContain(`echo "${key}=`);
    expect(text).toContain('echo "::add-mask::');
    // And smoke.sh submits as that user in that project, so the SenderId matches the job's address.
    expect(readFileSync(path.join(ROOT, "scripts/smoke.sh"), "utf8")).toContain(
      "CRUCIBLE_PROJECT=ci CRUCIBLE_USER=ci",
    );
  });
});

describe("every pulumi preview and up", () => {
  it("runs the policy pack with the stack's own config, written earlier in the same job", () => {
    for (const { file, id, job } of allJobs()) {
      for (const { steps } of expand(job)) {
        for (const step of pulumiSteps(steps).filter((s) =>
          ["preview", "up"].includes(String(s.with?.command)),
        )) {
          const stack = String(step.with!["stack-name"]).replace(`${PROJECT}/`, "");
          expect(step.with, `${file}#${id}`).toMatchObject({
            policyPacks: "policies",
            policyPackConfigs: "${{ runner.temp }}/policy-config.json",
          });
          const writes = steps.findIndex((s) =>
            commands([s]).includes(
              `npm run --silent policy-config -- ${stack} > "$RUNNER_TEMP/policy-config.json"`,
            ),
          );
          expect(writes, `${file}#${id}: no policy config for ${stack}`).toBeGreaterThan(-1);
          expect(writes).toBeLessThan(steps.indexOf(step));
        }
      }
    }
  });
});

it("pins every action by major version", () => {
  const sources = [
    ...files.map(text),
    readFileSync(path.join(ROOT, CREDENTIALS_ACTION, "action.yml"), "utf8"),
  ];
  const uses = sources.flatMap((s) => [...s.matchAll(/uses:\s*(\S+)/g)].map((m) => m[1]!));
  expect(uses.length).toBeGreaterThan(0);
  for (const ref of uses.filter((u) => !u.startsWith("./"))) expect(ref).toMatch(/^[\w-]+\/[\w-]+@v\d+$/);
});
