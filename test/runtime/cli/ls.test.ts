import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { JobRow, LsFlags } from "../../../runtime/src/cli/commands/ls";
import {
  collectStates,
  formatDuration,
  jobRow,
  parseLsFlags,
  renderTable,
} from "../../../runtime/src/cli/commands/ls";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import { startLocalPlatform } from "../../../runtime/src/local/local-platform";
import type { IndexedJob } from "../../../runtime/src/store/job-index";
import { JobIndex } from "../../../runtime/src/store/job-index";
import type { JobAddress, JobState } from "../../../runtime/src/store/job-store";
import { crucible } from "../../support/cli";

const NOW = new Date("2026-03-18T12:00:00Z");
const TIER = "cpu-small";

describe("ls flags", () => {
  const flags = (over: Partial<LsFlags> = {}): LsFlags => ({
    project: "lab",
    user: "ada",
    state: [],
    ...over,
  });

  it("default to the caller's latest 50 jobs, in a table", () => {
    expect(parseLsFlags(flags(), NOW)).toEqual({
      project: "lab",
      user: "ada",
      allUsers: false,
      limit: 50,
      reindex: false,
      json: false,
    });
  });

  it("take states repeated or comma-separated, and --since as a date, a time or a duration back", () => {
    const states = collectStates("failed", collectStates("queued, running", []));
    expect(parseLsFlags(flags({ state: states }), NOW).statuses).toEqual(
      new Set(["queued", "running", "failed"]),
    );
    for (const [since, at] of [
      ["30m", "2026-03-18T11:30:00.000Z"],
      ["24h", "2026-03-17T12:00:00.000Z"],
      ["7d", "2026-03-11T12:00:00.000Z"],
      ["2w", "2026-03-04T12:00:00.000Z"],
      ["99999999w", "1970-01-01T00:00:00.000Z"],
      ["2026-03-01", "2026-03-01T00:00:00.000Z"],
      ["2026-03-18T09:00:00+02:00", "2026-03-18T07:00:00.000Z"],
    ])
      expect(parseLsFlags(flags({ since }), NOW).since?.toISOString(), since).toBe(at);
    expect(
      parseLsFlags(flags({ user: undefined, allUsers: true, limit: "7", json: true }), NOW),
    ).toMatchObject({
      allUsers: true,
      limit: 7,
      json: true,
    });
  });

  const FORMS =
    "a date (2026-03-01, UTC), a date and time (2026-03-01T09:00:00Z) or a duration back from now (30m, 24h, 7d, 2w)";
  it.each([
    [
      { state: ["queued", "done"] },
      '--state must be one of queued, running, succeeded, failed, cancelled, got "done"',
    ],
    [{ state: [""] }, '--state must be one of queued, running, succeeded, failed, cancelled, got ""'],
    [{ since: "yesterday" }, `--since must be ${FORMS}, got "yesterday"`],
    [{ since: "0h" }, `--since must be ${FORMS}, got "0h"`],
    [{ since: "2026-02-30" }, `--since must be ${FORMS}, got "2026-02-30"`],
    [
      { since: "2026-03-19" },
      '--since must not be in the future (now 2026-03-18T12:00:00.000Z), got "2026-03-19"',
    ],
    [{ limit: "0" }, '--limit must be a whole number of jobs, 1 or more, got "0"'],
    [{ limit: "1.5" }, '--limit must be a whole number of jobs, 1 or more, got "1.5"'],
    [{ project: "Vision!" }, '--project must be lowercase letters, digits and dashes, got "Vision!"'],
    [
      { allUsers: true },
      "--all-users and --user exclude each other: --all-users lists every user of the project, --user one of them",
    ],
  ])("refuse %j", (over, message) => {
    expect(() => parseLsFlags(flags(over as Partial<LsFlags>), NOW)).toThrow(
      expect.objectContaining({ name: "UsageError", message }),
    );
  });
});

describe("a listed job's row", () => {
  const job = (state: Partial<JobState> & Pick<JobState, "status">): Omit<IndexedJob, "cursor"> => ({
    address: { project: "lab", user: "ada", jobId: "job-1" },
    priority: "normal",
    state: {
      tier: TIER,
      attempts: 1,
      submittedAt: "2026-03-18T11:00:00Z",
      updatedAt: "2026-03-18T11:00:00Z",
      ...state,
    },
  });

  it("counts a running job's duration and cost up to now: finished attempts, plus this one at its rate", () => {
    const row = jobRow(
      job({
        status: "running",
        attempts: 2,
        startedAt: "2026-03-18T11:30:00Z",
        costUsd: 0.25,
        chargedHourlyUsd: 0.5,
        progress: { metrics: { acc: 0.8, loss: 1.25 }, at: "2026-03-18T11:59:00Z" },
      }),
      NOW,
    );
    expect(row).toEqual({
      project: "lab",
      user: "ada",
      jobId: "job-1",
      status: "running",
      tier: TIER,
      priority: "normal",
      attempts: 2,
      submittedAt: "2026-03-18T11:00:00Z",
      startedAt: "2026-03-18T11:30:00Z",
      durationSeconds: 1800,
      costUsd: 0.5,
      metric: { name: "loss", value: 1.25 },
    });
  });

  it("ends a finished job's duration when it finished, costs it at its attempts, and shows its first metric without a loss", () => {
    const row = jobRow(
      job({
        status: "failed",
        startedAt: "2026-03-18T11:00:10Z",
        finishedAt: "2026-03-18T11:00:52Z",
        costUsd: 0.002,
        chargedHourlyUsd: 0.5,
        progress: { metrics: { acc: 0.5, f1: 0.4 }, at: "2026-03-18T11:00:50Z" },
        note: "exit code 1",
      }),
      NOW,
    );
    expect(row).toMatchObject({ durationSeconds: 42, costUsd: 0.002, metric: { name: "acc", value: 0.5 } });
    expect(row.note).toBe("exit code 1");
    // Not started: no duration, no cost, no metric.
    const queued = jobRow(job({ status: "queued", attempts: 0 }), NOW);
    expect(Object.keys(queued)).not.toContain("durationSeconds");
    expect(Object.keys(queued)).not.toContain("costUsd");
    expect(Object.keys(queued)).not.toContain("metric");
  });

  it.each([
    [0, "0s"],
    [59, "59s"],
    [60, "1m00s"],
    [725, "12m05s"],
    [3600, "1h00m"],
    [10_920, "3h02m"],
    [86_400, "1d00h"],
    [183_600, "2d03h"],
  ])("spells %i seconds %s", (seconds, text) => {
    expect(formatDuration(seconds)).toBe(text);
  });

  it("has no duration or cost from times that are not times, and shows such a submission time as written", () => {
    const row = jobRow(
      job({ status: "running", submittedAt: "yesterday", startedAt: "soon", chargedHourlyUsd: 1 }),
      NOW,
    );
    expect(row).not.toHaveProperty("durationSeconds");
    expect(row).not.toHaveProperty("costUsd");
    expect(renderTable([row], false)).toBe(
      [
        "ID     NAME  STATE    TIER       PRIORITY  SUBMITTED (UTC)  DURATION  COST  METRIC",
        "job-1  -     running  cpu-small  normal    yesterday        -         -     -",
        "",
      ].join("\n"),
    );
  });

  it("is printed with the state's control characters escaped, so it cannot drive a terminal", () => {
    const row: JobRow = {
      ...jobRow(
        job({ status: "queued", progress: { metrics: { "\u001b[2J": 1 }, at: NOW.toISOString() } }),
        NOW,
      ),
      tier: "cpu\u001b]0;owned\u0007",
    };
    expect(renderTable([row], false)).toBe(
      [
        "ID     NAME  STATE   TIER                 PRIORITY  SUBMITTED (UTC)      DURATION  COST  METRIC",
        "job-1  -     queued  cpu\\x1b]0;owned\\x07  normal    2026-03-18 11:00:00  -         -     \\x1b[2J=1",
        "",
      ].join("\n"),
    );
  });
});

describe("crucible ls against the local platform", () => {
  let platform: LocalPlatform;
  /** A researcher's environment: their submitter identity, project and user. */
  const as = (project: string, user: string): NodeJS.ProcessEnv => ({
    ...platform.as(project, user).env(),
    CRUCIBLE_PROJECT: project,
    CRUCIBLE_USER: user,
  });

  async function seed(
    address: JobAddress,
    state: Partial<JobState> & Pick<JobState, "status" | "submittedAt">,
    index: { priority?: "high" | "normal" | "low"; name?: string } | false = {},
  ): Promise<void> {
    const { store } = platform.as(address.project, address.user);
    await store.updateState(address, { tier: TIER, ...state });
    if (index)
      await JobIndex.of(store).put(address, {
        jobId: address.jobId,
        tier: TIER,
        priority: index.priority ?? "normal",
        submittedAt: state.submittedAt,
        ...(index.name && { name: index.name }),
      });
  }

  beforeAll(async () => {
    platform = await startLocalPlatform({ tiers: [], logger: pino({ level: "silent" }) });
    const ada = (jobId: string): JobAddress => ({ project: "lab", user: "ada", jobId });
    await seed(
      ada("job-a1"),
      {
        status: "succeeded",
        submittedAt: "2026-03-18T10:00:00.000Z",
        attempts: 1,
        startedAt: "2026-03-18T10:00:30.000Z",
        finishedAt: "2026-03-18T10:10:30.000Z",
        costUsd: 0.0283,
        progress: {
          step: 100,
          total: 100,
          metrics: { acc: 0.91, loss: 0.4321 },
          at: "2026-03-18T10:10:00.000Z",
        },
      },
      { name: "mnist" },
    );
    await seed(
      ada("job-a2"),
      {
        status: "failed",
        submittedAt: "2026-03-18T10:01:00.000Z",
        attempts: 1,
        startedAt: "2026-03-18T10:01:10.000Z",
        finishedAt: "2026-03-18T10:01:52.000Z",
        costUsd: 0.002,
        note: "exit code 1",
        progress: { metrics: { acc: 0.5 }, at: "2026-03-18T10:01:50.000Z" },
      },
      { priority: "high" },
    );
    await seed(
      ada("job-a3"),
      { status: "queued", submittedAt: "2026-03-18T10:02:00.000Z" },
      { priority: "low", name: "sweep.v2" },
    );
    await seed(
      { project: "lab", user: "bob", jobId: "job-b1" },
      {
        status: "cancelled",
        submittedAt: "2026-03-18T10:01:30.000Z",
        finishedAt: "2026-03-18T10:01:31.000Z",
      },
    );
    // Submitted before the index existed: a state and a spec, no entry.
    const legacy = { project: "legacy", user: "ada", jobId: "job-old" };
    await seed(legacy, { status: "succeeded", submittedAt: "2026-03-01T09:00:00.000Z" }, false);
    await platform
      .as("legacy", "ada")
      .store.putSpec(legacy, { jobId: "job-old", tier: TIER, env: {}, priority: "low" });
  });

  afterAll(() => platform?.stop());

  it("ls: the caller's jobs newest first, as a table", async () => {
    expect(await crucible(["ls"], undefined, as("lab", "ada"))).toMatchObject({
      code: 0,
      stdout: [
        "ID      NAME      STATE      TIER       PRIORITY  SUBMITTED (UTC)      DURATION  COST     METRIC",
        "job-a3  sweep.v2  queued     cpu-small  low       2026-03-18 10:02:00  -         -        -",
        "job-a2  -         failed     cpu-small  high      2026-03-18 10:01:00  42s       $0.0020  acc=0.5",
        "job-a1  mnist     succeeded  cpu-small  normal    2026-03-18 10:00:00  10m00s    $0.0283  loss=0.4321",
        "",
      ].join("\n"),
    });
  });

  it("jobs --json, filtered by state and time, and limited", async () => {
    const [filtered, since] = await Promise.all([
      crucible(
        ["jobs", "--json", "--state", "failed,succeeded", "--state", "cancelled", "--limit", "1"],
        undefined,
        as("lab", "ada"),
      ),
      crucible(["jobs", "--json", "--since", "2026-03-18T10:01:00Z"], undefined, as("lab", "ada")),
    ]);
    expect(filtered.code).toBe(0);
    expect(JSON.parse(filtered.stdout)).toEqual([
      {
        project: "lab",
        user: "ada",
        jobId: "job-a2",
        status: "failed",
        tier: TIER,
        priority: "high",
        attempts: 1,
        submittedAt: "2026-03-18T10:01:00.000Z",
        startedAt: "2026-03-18T10:01:10.000Z",
        finishedAt: "2026-03-18T10:01:52.000Z",
        durationSeconds: 42,
        costUsd: 0.002,
        metric: { name: "acc", value: 0.5 },
        note: "exit code 1",
      },
    ]);
    expect((JSON.parse(since.stdout) as JobRow[]).map((r) => r.jobId)).toEqual(["job-a3", "job-a2"]);
  });

  it("--all-users: every user's jobs with an operator's credentials, refused with a submitter's", async () => {
    const [operator, submitter, other] = await Promise.all([
      crucible(["ls", "--all-users", "--project", "lab", "--json"], undefined, platform.env()),
      crucible(["ls", "--all-users"], undefined, as("lab", "ada")),
      crucible(["ls", "--user", "bob"], undefined, as("lab", "ada")),
    ]);
    expect(operator.code).toBe(0);
    expect((JSON.parse(operator.stdout) as JobRow[]).map((r) => `${r.user}/${r.jobId}`)).toEqual([
      "ada/job-a3",
      "bob/job-b1",
      "ada/job-a2",
      "ada/job-a1",
    ]);
    expect(submitter).toMatchObject({ code: 1, stdout: "" });
    expect(submitter.stderr).toContain(
      'crucible: --all-users: your credentials may not list the users of project lab (AccessDenied: lab/ada may list only under workspaces/lab/ada/, not "workspaces/lab/"); ' +
        "that needs read access to the whole project (an operator's role), and a project's submitter role reads only its own user's jobs: drop --all-users to list yours\n",
    );
    expect(other).toMatchObject({ code: 1, stdout: "" });
    expect(other.stderr).toContain(
      "crucible: your credentials may not read lab/bob's jobs (AccessDenied: lab/ada may list only under workspaces/lab/ada/, " +
        'not "workspaces/lab/bob/index/"); a project\'s submitter role reads only the jobs of the user it was assumed as\n',
    );
  });

  it("says how to list jobs submitted before the index, and --reindex indexes them", async () => {
    const before = await crucible(["ls"], undefined, as("legacy", "ada"));
    expect(before).toMatchObject({ code: 0, stdout: "no jobs in legacy/ada\n" });
    expect(before.stderr).toContain(
      "none of legacy/ada's jobs is indexed: jobs submitted before `crucible ls` existed are listed once indexed by `crucible ls --reindex`\n",
    );
    const after = await crucible(["ls", "--reindex", "--json"], undefined, as("legacy", "ada"));
    expect(after.code).toBe(0);
    expect(after.stderr).toContain("indexed 1 job that had no index entry\n");
    expect(JSON.parse(after.stdout)).toEqual([
      {
        project: "legacy",
        user: "ada",
        jobId: "job-old",
        status: "succeeded",
        tier: TIER,
        priority: "low",
        attempts: 0,
        submittedAt: "2026-03-01T09:00:00.000Z",
      },
    ]);
  });

  it("bad flags are usage errors (exit 2) naming the flag, the value and what is allowed", async () => {
    expect(await crucible(["ls", "--since", "yesterday"], undefined, as("lab", "ada"))).toMatchObject({
      code: 2,
      stdout: "",
      stderr:
        'crucible: --since must be a date (2026-03-01, UTC), a date and time (2026-03-01T09:00:00Z) or a duration back from now (30m, 24h, 7d, 2w), got "yesterday"\n',
    });
  });
});
