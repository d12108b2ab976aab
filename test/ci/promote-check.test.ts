import { execFile } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../../scripts/lib/mock-engine";

/**
 * scripts/promote-check.sh, the promotion's guard, against a stand-in `pulumi` CLI that answers
 * `stack history` and `stack output imageRefs` from files, as Pulumi Cloud would.
 */

const COMMIT = "4b1af2c0c6e2d1f3a5b7c9d0e1f2a3b4c5d6e7f8";
const OTHER = "f296fea000000000000000000000000000000000";
const digest = (c: string) => `sha256:${c.repeat(64)}`;
const refs = (c: string) => ({
  cpu: `123456789012.dkr.ecr.us-east-1.amazonaws.com/crucible/dev/cpu@${digest(c)}`,
  agent: `123456789012.dkr.ecr.us-east-1.amazonaws.com/crucible/dev/agent@${digest(c)}`,
});
const update = (head: string, kind = "update", result = "succeeded") => ({
  version: 7,
  kind,
  result,
  startTime: "2026-08-01T10:00:00Z",
  message: "",
  environment: { "git.head": head, "git.headName": "refs/heads/main" },
  config: {},
});

let dir: string;
const run = promisify(execFile);

/** What the stand-in CLI answers for a stack: its history (newest first) and its imageRefs. */
function stack(name: string, history: object[], imageRefs?: object): void {
  const key = name.replace(/\//g, "_");
  writeFileSync(path.join(dir, `history-${key}.json`), JSON.stringify(history));
  if (imageRefs) writeFileSync(path.join(dir, `refs-${key}.json`), JSON.stringify(imageRefs));
}

async function check(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run("bash", [path.join(ROOT, "scripts/promote-check.sh"), ...args], {
      env: {
        ...process.env,
        PATH: `${dir}:${process.env.PATH}`,
        FAKE_PULUMI: dir,
        GITHUB_STEP_SUMMARY: path.join(dir, "summary.md"),
      },
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), "crucible-promote-"));
  const fake = `#!/usr/bin/env bash
set -euo pipefail
stack=""; args=("$@")
for ((i = 0; i < \${#args[@]}; i++)); do [ "\${args[$i]}" = --stack ] && stack=\${args[$((i + 1))]}; done
key=\${stack//\\//_}
case "$1 $2" in
  "stack history") cat "$FAKE_PULUMI/history-$key.json" ;;
  "stack output") [ "$3" = imageRefs ] && cat "$FAKE_PULUMI/refs-$key.json" ;;
  *) echo "unexpected: $*" >&2; exit 3 ;;
esac
`;
  writeFileSync(path.join(dir, "pulumi"), fake);
  chmodSync(path.join(dir, "pulumi"), 0o755);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("the upstream runs the commit being promoted", () => {
  it("passes when the upstream's last successful update ran it, whatever came after that was no update", async () => {
    stack("acme/crucible/dev", [
      update(OTHER, "refresh"),
      update(OTHER, "update", "failed"),
      update(COMMIT),
      update(OTHER),
    ]);
    const result = await check("acme/crucible/dev", COMMIT);
    expect(result).toMatchObject({ code: 0, stdout: `acme/crucible/dev runs ${COMMIT}\n` });
  });

  it("refuses a commit the upstream does not run, naming both", async () => {
    stack("acme/crucible/dev", [update(OTHER)]);
    const result = await check("acme/crucible/dev", COMMIT);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `acme/crucible/dev last deployed ${OTHER}, not ${COMMIT}: deploy ${COMMIT} there first`,
    );
  });

  it("refuses an upstream never deployed", async () => {
    stack("acme/crucible/dev", []);
    expect((await check("acme/crucible/dev", COMMIT)).stderr).toContain("last deployed no commit");
  });
});

describe("the downstream runs exactly the upstream's digests", () => {
  it("passes, and records them in the job summary", async () => {
    stack("acme/crucible/staging", [update(COMMIT)], refs("a"));
    stack("acme/crucible/prod", [update(COMMIT)], refs("a"));
    const result = await check("acme/crucible/staging", COMMIT, "acme/crucible/prod");
    expect(result.code).toBe(0);
    expect(readFileSync(path.join(dir, "summary.md"), "utf8")).toContain(
      `### acme/crucible/prod runs acme/crucible/staging's images (commit ${COMMIT})`,
    );
  });

  it("fails on any family whose digest differs, naming it", async () => {
    stack("acme/crucible/staging", [update(COMMIT)], refs("a"));
    stack("acme/crucible/prod", [update(COMMIT)], { ...refs("a"), agent: refs("b").agent });
    const result = await check("acme/crucible/staging", COMMIT, "acme/crucible/prod");
    expect(result.code).toBe(1);
    expect(result.stderr).toContain(
      `acme/crucible/prod does not run acme/crucible/staging's images: agent: ${refs("b").agent} (upstream: ${refs("a").agent})`,
    );
  });
});
