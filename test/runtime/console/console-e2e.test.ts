import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import pino from "pino";
import type { Browser, BrowserContext, Page } from "playwright-core";
import { chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Agent } from "../../../runtime/src/agent/agent";
import type { ConsoleBackend } from "../../../runtime/src/console/api";
import type { RunningConsole } from "../../../runtime/src/console/server";
import { startConsole } from "../../../runtime/src/console/server";
import { DockerLauncher } from "../../../runtime/src/launch/docker/docker-launcher";
import { localAgent, useLocalPlatform } from "../../support/local-agents";
import { consoleBackend, submitMain, zipOf } from "./console-fixture";

/**
 * The web console in a real browser: Debian's Chromium (scripts/setup.sh installs it), driven by
 * playwright-core, against the console's server over the local platform, with an agent running every
 * job in the sandbox. What a researcher does there: submit a template or their own uploaded code, watch a
 * job's log and loss as it trains, download a checkpoint and resubmit the job from it, cancel a job, and
 * read what a hostile job printed as plain text.
 * Screenshots of each page go to test-results/console/.
 */
const logger = pino({ level: process.env.CONSOLE_TEST_LOG ?? "silent" });
const TIER = "cpu-large" as const;
const OWNER = { project: "lab", user: "ada" } as const;
const CHROMIUM = "/usr/bin/chromium";
const ROOT = resolve(__dirname, "../../..");
const SHOTS = join(ROOT, "test-results", "console");
const JOB_MS = 90_000;

const local = useLocalPlatform(TIER, logger, { visibilityTimeoutSeconds: 30 });
const launcher = new DockerLauncher({ logger, graceSeconds: 5 });
let agent: Agent;
let running: Promise<void>;
let server: RunningConsole;
let browser: Browser;
let context: BrowserContext;
let page: Page;
let uiDir: string;
/** What the page logged as errors, and what threw in it: a CSP refusal would show here. */
const problems: string[] = [];
let counter = 0;

/** The checkpoint the trainer writes: bytes a download must give back exactly. */
const CHECKPOINT_BYTES = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 37 + 11) % 256));
const XSS = ["<script>window.__xss=1</script>", '<img src=x onerror="window.__xss=2">'];

const TRAINER = `
import sys, time
from crucible import checkpoint_dir, output_dir, progress

STEPS = 60

def main():
    if (checkpoint_dir() / "step-10.bin").exists():
        print("resumed from step 10", flush=True)
        return {"resumed_from": 10}
    for step in range(1, STEPS + 1):
        loss = 3.0 / step
        for batch in range(3):
            print(f"step {step} batch {batch}: tokens {batch * 512}", flush=True)
        print(f"step {step}: loss {loss:.4f}", flush=True)
        if step % 10 == 0:
            print(f"evaluating at step {step}", file=sys.stderr, flush=True)
        progress(step=step, total=STEPS, loss=loss, lr=0.001 * step)
        if step == 10:
            (checkpoint_dir() / "step-10.bin").write_bytes(bytes((i * 37 + 11) % 256 for i in range(4096)))
        time.sleep(0.5)
    (output_dir() / "summary.txt").write_text("trained\\n")
    return {"steps": STEPS, "final_loss": 3.0 / STEPS}
`;

const SLEEPER = `
import time

def main():
    print("waiting to be cancelled", flush=True)
    time.sleep(600)
`;

const HOSTILE = `
import sys

PAYLOADS = ${JSON.stringify(XSS)}

def main():
    for payload in PAYLOADS:
        print(payload, flush=True)
        print(payload, file=sys.stderr, flush=True)
    return {"payloads": PAYLOADS}
`;

/** Submits `main` as ada, straight to the queue (as `crucible submit` does); the console lists it. */
const submit = (name: string, main: string): Promise<string> =>
  submitMain(local, OWNER, TIER, { jobId: `console-${process.pid}-${++counter}`, name, main });

const backendOf = (): ConsoleBackend => consoleBackend(local, OWNER);

/** The shown job's result, or nothing while it has none. */
const resultText = (): Promise<string> =>
  page
    .locator("pre.result")
    .innerText()
    .catch(() => "");

async function open(hash: string): Promise<void> {
  await page.goto(`${server.url}${hash}`);
  await page.locator("main h1").first().waitFor();
}

async function shot(name: string, fullPage = false): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage });
}

const numberOf = async (selector: string, attribute: string): Promise<number> =>
  Number(
    (await page
      .locator(selector)
      .first()
      .getAttribute(attribute, { timeout: 1000 })
      .catch(() => null)) ?? 0,
  );

const statusOf = async (): Promise<string> => (await page.locator("h1 .badge").textContent()) ?? "";

beforeAll(async () => {
  if (!existsSync(CHROMIUM))
    throw new Error(
      `${CHROMIUM} is missing: bash scripts/setup.sh installs Debian's chromium (apt-get install chromium)`,
    );
  // The page as this checkout's sources build it, whatever runtime/dist holds.
  uiDir = await mkdtemp(join(tmpdir(), "crucible-console-ui-"));
  await promisify(execFile)(process.execPath, [
    join(ROOT, "runtime/scripts/build-console.mjs"),
    "--out",
    uiDir,
  ]);
  await mkdir(SHOTS, { recursive: true });
  agent = localAgent(local.platform, TIER, launcher, logger, { concurrency: 3 });
  running = agent.run();
  server = await startConsole({ backend: backendOf(), logger, port: 0, uiDir });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  page = await context.newPage();
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(message.text());
  });
  page.on("pageerror", (error) => problems.push(error.message));
}, 600_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  agent?.stop("interrupted", 0);
  await running;
  if (uiDir) await rm(uiDir, { recursive: true, force: true });
});

describe("the web console in a browser", () => {
  it(
    "submits a template or uploaded code from the new-job page, shows its recommendation and estimate, and lists the job",
    async () => {
      await open("#/new");
      await page.locator('input[name="template"][value="hello"]').check();
      await expect.poll(() => page.locator(".recommendation li").count()).toBeGreaterThan(0);
      // The platform serves cpu-large only; the estimate is an hour of it at its on-demand rate.
      await page.locator('input[name="tier"][value="cpu-large"]').check();
      await expect.poll(() => page.getByTestId("estimate").innerText()).toBe("$0.096");
      await shot("new");
      await page.getByRole("button", { name: "Submit job" }).click();
      await page.waitForURL(/#\/jobs\/[a-z0-9-]+$/);
      const jobId = decodeURIComponent(page.url().split("#/jobs/")[1]!);
      await expect.poll(resultText, { timeout: JOB_MS }).toContain("hello from Crucible");
      expect(await statusOf()).toBe("succeeded");

      await open("#/jobs");
      await expect.poll(() => page.locator(`tr[data-job-id="${jobId}"]`).count()).toBe(1);
      expect(await page.locator(`tr[data-job-id="${jobId}"]`).getAttribute("data-status")).toBe("succeeded");

      // The researcher's own code: a zip picked with the file input, detected, then submitted alike.
      await open("#/new");
      const code = await zipOf({
        "main.py": "from greeting import GREETING\n\ndef main():\n    return {'greeting': GREETING}\n",
        "greeting.py": "GREETING = 'hello from an upload'\n",
      });
      await page
        .getByLabel("A .zip of your code with main.py at its root, or a single .py file")
        .setInputFiles({ name: "greeter.zip", mimeType: "application/zip", buffer: code });
      await expect
        .poll(() => page.getByTestId("upload-status").innerText())
        .toMatch(/^greeter\.zip \(\d+(\.\d)? (B|KiB)\) is ready/);
      expect(await page.locator("#why-heading").innerText()).toBe("Why cpu-small with the cpu image");
      expect(await page.locator(".recommendation li").allInnerTexts()).toEqual([
        "no GPU, PyTorch or large-memory use found: the smallest tier fits",
      ]);
      expect(await page.locator('input[name="template"]:checked').count()).toBe(0);
      await page.locator('input[name="tier"][value="cpu-large"]').check();
      await expect.poll(() => page.getByTestId("estimate").innerText()).toBe("$0.096");
      await shot("new-upload");
      await page.getByRole("button", { name: "Submit job" }).click();
      await page.waitForURL((url) => url.hash.startsWith("#/jobs/") && !url.hash.endsWith(jobId));
      const uploadedId = decodeURIComponent(page.url().split("#/jobs/")[1]!);
      await open("#/jobs");
      const row = page.locator(`tr[data-job-id="${uploadedId}"]`);
      await expect.poll(() => row.count()).toBe(1);
      expect(await row.innerText()).toContain("greeter");
    },
    JOB_MS + 30_000,
  );

  it(
    "follows a running job's log and loss chart as they grow, pauses following on scroll, downloads its checkpoint byte for byte, and resubmits from it",
    async () => {
      const jobId = await submit("trainer", TRAINER);
      await open(`#/jobs/${jobId}`);
      const lines = (): Promise<number> => numberOf(".log-lines", "data-lines");
      const points = (): Promise<number> => numberOf('figure[data-metric="loss"]', "data-points");
      await expect.poll(lines, { timeout: JOB_MS }).toBeGreaterThan(0);
      await expect.poll(points, { timeout: 30_000 }).toBeGreaterThan(0);
      const [linesBefore, pointsBefore] = [await lines(), await points()];
      await expect.poll(lines, { timeout: 30_000 }).toBeGreaterThan(linesBefore);
      await expect.poll(points, { timeout: 30_000 }).toBeGreaterThan(pointsBefore);
      // While it runs: scrolling up from the end pauses following; Follow resumes it.
      const status = page.locator(".log-status");
      expect(await statusOf()).toBe("running");
      await expect.poll(() => status.innerText()).toContain("Following");
      // (Again if lines drawn at that moment took it back to the end first.)
      await expect
        .poll(async () => {
          await page.locator(".log-lines").evaluate((box) => box.scrollTo({ top: 0 }));
          return status.innerText();
        })
        .toContain("Paused");
      await page.getByRole("button", { name: "Follow" }).click();
      await expect.poll(() => status.innerText()).toMatch(/Following|finished/);

      // Loss first, then the other metrics.
      expect(await page.locator("figure[data-metric]").first().getAttribute("data-metric")).toBe("loss");
      await page.locator('figure[data-metric="loss"] .chart[data-draws]').waitFor();
      await shot("job");
      await page.setViewportSize({ width: 400, height: 800 });
      await shot("job-narrow");
      await shot("job-narrow-full", true);
      await page.setViewportSize({ width: 1280, height: 800 });

      // The search box keeps matching lines, marked; the stream toggle keeps one stream.
      await page.getByLabel("Search the log").fill("evaluating");
      const texts = (): Promise<string[]> => page.locator(".log-line .log-text").allInnerTexts();
      // The job evaluates at step 10, which it may not have reached yet: its line shows when it comes.
      await expect
        .poll(
          async () => {
            const shown = await texts();
            return shown.length > 0 && shown.every((text) => text.includes("evaluating"));
          },
          { timeout: 30_000 },
        )
        .toBe(true);
      expect(await page.locator(".log-line mark").count()).toBe((await texts()).length);
      await page.getByLabel("Search the log").fill("");
      await page.getByLabel("stderr only").check();
      await expect.poll(() => page.locator('.log-line[data-stream="stdout"]').count()).toBe(0);
      expect(await page.locator('.log-line[data-stream="stderr"]').count()).toBeGreaterThan(0);
      await page.getByLabel("Both").check();

      await expect.poll(statusOf, { timeout: JOB_MS }).toBe("succeeded");
      await expect.poll(() => status.innerText(), { timeout: 30_000 }).toContain("finished");
      const link = page.locator('a[data-kind="checkpoints"][data-name="step-10.bin"]');
      await link.waitFor({ timeout: 30_000 });
      const [download] = await Promise.all([page.waitForEvent("download"), link.click()]);
      expect(Buffer.compare(await readFile(await download.path()), CHECKPOINT_BYTES)).toBe(0);
      expect(await page.locator('a[data-kind="outputs"][data-name="summary.txt"]').count()).toBe(1);
      expect(await page.locator("pre.result").innerText()).toContain('"final_loss"');
      // What the job used, sampled while it ran: memory (against the tier's limit) and CPU over time.
      await expect
        .poll(() => numberOf('figure[data-resource="memoryMiB"]', "data-points"))
        .toBeGreaterThan(1);
      expect(await page.locator('figure[data-resource="cpuCores"]').count()).toBe(1);
      expect(await page.locator('figure[data-resource="memoryMiB"] figcaption').innerText()).toContain(
        "of 4 GiB",
      );
      await shot("job-full", true);
      expect(await page.locator("a", { hasText: "Download whole log" }).getAttribute("href")).toBe(
        `/api/jobs/${jobId}/log.txt`,
      );

      // A new job of its own code from its checkpoint: the step and a tier, confirmed.
      await page.getByRole("button", { name: "Resubmit from checkpoint" }).click();
      const dialog = page.getByRole("dialog", { name: "Resubmit from a checkpoint" });
      expect(await dialog.getByLabel("Checkpoint step").inputValue()).toBe("10");
      await expect.poll(() => dialog.getByLabel("Tier").inputValue()).toBe(TIER);
      await dialog.getByRole("button", { name: "Submit", exact: true }).click();
      await page.waitForURL((url) => url.hash.startsWith("#/jobs/") && !url.hash.endsWith(jobId));
      await expect.poll(statusOf, { timeout: JOB_MS }).toBe("succeeded");
      expect(await page.locator("pre.result").innerText()).toContain('"resumed_from": 10');
    },
    JOB_MS * 2,
  );

  it(
    "cancels a running job from its page after confirming, and shows it cancelled",
    async () => {
      const jobId = await submit("sleeper", SLEEPER);
      await open(`#/jobs/${jobId}`);
      await expect.poll(statusOf, { timeout: JOB_MS }).toBe("running");
      await page.getByRole("button", { name: "Cancel job" }).click();
      const dialog = page.getByRole("dialog", { name: "Cancel this job?" });
      await dialog.waitFor();
      await shot("cancel-dialog");
      await dialog.getByRole("button", { name: "Cancel the job" }).click();
      await dialog.waitFor({ state: "hidden" });
      await expect.poll(statusOf, { timeout: 60_000 }).toBe("cancelled");
      expect(await page.getByRole("button", { name: "Cancel job" }).count()).toBe(0);
    },
    JOB_MS + 60_000,
  );

  it(
    "renders what a job printed and returned as text: no script of it runs",
    async () => {
      const jobId = await submit("hostile", HOSTILE);
      await open(`#/jobs/${jobId}`);
      await expect.poll(resultText, { timeout: JOB_MS }).toContain(XSS[0]);
      expect(await page.locator("pre.result").innerText()).toContain(XSS[1]!.replace(/"/g, '\\"'));
      await expect
        .poll(() => page.locator(".log-line .log-text").allInnerTexts())
        .toEqual(expect.arrayContaining([XSS[0], XSS[1]]));
      expect(await page.evaluate(() => (window as { __xss?: unknown }).__xss)).toBeUndefined();
      expect(await page.locator("#app script, #app img").count()).toBe(0);
    },
    JOB_MS + 30_000,
  );

  it("shows usage by user, project and tier with a CSV export, and the jobs list filtered by status", async () => {
    await open("#/usage");
    await expect.poll(() => page.locator(".usage-table, .empty").count()).toBeGreaterThan(0);
    expect(await page.getByRole("link", { name: "Export CSV" }).getAttribute("href")).toBe(
      "/api/usage.csv?period=week&by=user",
    );
    await page.getByLabel("Tier").check();
    expect(await page.getByRole("link", { name: "Export CSV" }).getAttribute("href")).toBe(
      "/api/usage.csv?period=week&by=tier",
    );
    await page.locator(".usage-chart[data-draws], .empty").first().waitFor();
    await shot("usage");

    await open("#/jobs");
    await expect.poll(() => page.locator("tbody tr").count()).toBe(6);
    await shot("jobs");
    await page.getByLabel("cancelled").check();
    await expect.poll(() => page.locator("tbody tr").count()).toBe(1);
    expect(await page.locator("tbody tr").getAttribute("data-status")).toBe("cancelled");
    // Nothing the page did was refused by its content security policy, and nothing threw.
    expect(problems).toEqual([]);
  });
});
