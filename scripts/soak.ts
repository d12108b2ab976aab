import { Command } from "commander";
import pino from "pino";
import { numberFlag } from "./lib/flags";
import { runSoak } from "./lib/soak";

/**
 * `npm run soak -- [--jobs 200] [--agents 2] [--concurrency 2] [--kill-every 15] [--seed 1]`: short jobs
 * through `crucible agent` processes on the local platform while agents are SIGKILLed at random, then an
 * account of every job. Exits 1 when any job is lost, finished twice, or leaves a message or container.
 */
async function main(): Promise<void> {
  const whole = (flag: string) =>
    numberFlag(flag, "a whole number above 0", (n) => Number.isInteger(n) && n > 0);
  const opts = new Command("soak")
    .description("run many short jobs through agents that are killed at random, and account for each")
    .option("--jobs <n>", "jobs to submit", whole("--jobs"), 200)
    .option("--agents <n>", "agent processes at once", whole("--agents"), 2)
    .option("--concurrency <n>", "jobs each agent runs at once", whole("--concurrency"), 2)
    .option(
      "--kill-every <seconds>",
      "mean seconds between SIGKILLs of a random agent (0: none)",
      numberFlag("--kill-every", "a number of seconds, 0 or more", (n) => n >= 0),
      15,
    )
    .option("--seed <n>", "seed of the kill schedule", whole("--seed"), 1)
    .option("--timeout <seconds>", "give up after", whole("--timeout"), 1800)
    .parse()
    .opts<{
      jobs: number;
      agents: number;
      concurrency: number;
      killEvery: number;
      seed: number;
      timeout: number;
    }>();
  let shown = -1;
  const report = await runSoak({
    jobs: opts.jobs,
    agents: opts.agents,
    concurrency: opts.concurrency,
    meanKillIntervalMs: opts.killEvery * 1000,
    seed: opts.seed,
    timeoutMs: opts.timeout * 1000,
    logger: pino({ level: "warn" }),
    onProgress: (done, total, kills) => {
      if (done === shown) return;
      shown = done;
      process.stderr.write(`\r${done}/${total} jobs done, ${kills} agent kills`);
    },
  });
  process.stderr.write("\n");
  console.log(JSON.stringify(report, null, 2));
  const clean =
    report.missing.length === 0 &&
    report.finishedTwice.length === 0 &&
    report.messagesLeft === 0 &&
    report.deadLetters === 0 &&
    report.containersLeft === 0;
  console.log(
    `${report.succeeded}/${report.jobs} jobs succeeded exactly once in ${report.seconds.toFixed(0)} s ` +
      `(${(report.jobs / report.seconds).toFixed(2)} jobs/s) through ${report.agentStarts} agent processes, ` +
      `${report.kills} SIGKILLed; ${report.attempts} runs started: ${clean ? "every job accounted for" : "ACCOUNTING FAILED"}`,
  );
  process.exitCode = clean ? 0 : 1;
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exitCode = 1;
});
