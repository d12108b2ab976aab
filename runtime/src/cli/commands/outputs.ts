import type { Command } from "commander";
import { byteProgressBar } from "../byte-progress";
import { formatBytes } from "../../job/detect";
import type { JobFileKind, PullFile } from "../../store/job-files";
import {
  JobAccessError,
  JobFiles,
  JobNotFoundError,
  matcher,
  MAX_SHARE_SECONDS,
  printable,
  PullDirectoryError,
  stepOf,
} from "../../store/job-files";
import type { JobAddress } from "../../store/job-store";
import type { Owner } from "./platform-access";
import { address, ownerOf, ownerOptions, platformFromEnv } from "./platform-access";
import { asUsage, cliLogger, EXIT, printJson, UsageError } from "./shared";

const UNIT_SECONDS = { s: 1, m: 60, h: 3600, d: 86_400 } as const;
const EXPIRES_FORMS = "a whole number of s, m, h or d, such as 30m, 12h or 7d";

/** `--expires`: a duration such as `24h`, 1 second to 7 days (SigV4's limit on a presigned URL), in seconds. */
export function parseExpires(value: string): number {
  const match = /^(\d+)([smhd])$/.exec(value.trim());
  if (!match) throw new UsageError(`--expires must be ${EXPIRES_FORMS}, got "${value}"`);
  const seconds = Number(match[1]) * UNIT_SECONDS[match[2] as keyof typeof UNIT_SECONDS];
  if (seconds < 1 || seconds > MAX_SHARE_SECONDS)
    throw new UsageError(
      `--expires must be from 1s to 7d (a presigned link lasts at most 7 days), got "${value}"`,
    );
  return seconds;
}

/** The job's files through the caller's own credentials, and the job's address. */
function reach(jobId: string, flags: Owner): { files: JobFiles; job: JobAddress } {
  const { s3, store } = platformFromEnv(cliLogger());
  return { files: new JobFiles(s3, store), job: address(ownerOf(flags), jobId) };
}

/** What the caller named wrongly (the job, its owner, the directory) is bad usage; the rest a failure. */
const FILES_USAGE = [JobNotFoundError, JobAccessError, PullDirectoryError];

const isoSeconds = (date: Date): string => date.toISOString().replace(/\.\d{3}Z$/, "Z");

/** checkpoints, pull and share: a job's files, from the caller's machine. */
export function registerOutputs(program: Command): void {
  ownerOptions(
    program
      .command("checkpoints")
      .description(
        "list a job's checkpoint files, newest first, with the step each name gives: a number after " +
          '"step" (step=1500, step_500), else the one number of the file name (ckpt_000500.pt) or, failing ' +
          "that, of the nearest directory that has exactly one (step-1200/model.safetensors); - when none",
      )
      .argument("<job>", "job id")
      .option("--json", "print them as JSON (step null when none)"),
  ).action(async (jobId: string, flags: Owner & { json?: boolean }) => {
    const { files, job } = reach(jobId, flags);
    const listed = (await asUsage(files.list(job, "checkpoints"), FILES_USAGE))
      .map((f) => ({ name: f.name, size: f.size, lastModified: f.lastModified, step: stepOf(f.name) }))
      .sort(
        (a, b) =>
          b.lastModified.getTime() - a.lastModified.getTime() ||
          (b.step ?? -1) - (a.step ?? -1) ||
          (a.name < b.name ? -1 : 1),
      );
    if (flags.json) {
      printJson(
        listed.map((f) => ({ ...f, lastModified: f.lastModified.toISOString(), step: f.step ?? null })),
      );
      return;
    }
    if (listed.length === 0) {
      process.stdout.write(`job ${jobId} has no checkpoints yet\n`);
      return;
    }
    const rows = [
      ["STEP", "SIZE", "MODIFIED", "NAME"],
      ...listed.map((f) => [
        f.step === undefined ? "-" : String(f.step),
        formatBytes(f.size),
        isoSeconds(f.lastModified),
        printable(f.name),
      ]),
    ];
    const widths = [0, 1, 2].map((i) => Math.max(...rows.map((r) => r[i]!.length)));
    for (const row of rows)
      process.stdout.write(`${row.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell)).join("  ")}\n`);
  });

  ownerOptions(
    program
      .command("pull")
      .description(
        "download a job's outputs (and checkpoints) into DIR/outputs and DIR/checkpoints, each verified by " +
          "the SHA-256 recorded at upload; a cut pull leaves FILE.part files that the next one resumes",
      )
      .argument("<job>", "job id")
      .argument("[dir]", "where to put them (default: ./<job>)")
      .option("--checkpoints", "also the job's checkpoints")
      .option(
        "--only <glob>",
        "only the files matching GLOB: against the path under DIR (outputs/**) or, without a slash, the file name (*.pt)",
      ),
  ).action(
    async (
      jobId: string,
      dir: string | undefined,
      flags: Owner & { checkpoints?: boolean; only?: string },
    ) => {
      const { only } = flags;
      let matches: (path: string) => boolean = () => true;
      if (only !== undefined) {
        try {
          matches = matcher(only);
        } catch {
          throw new UsageError(`--only must be a glob such as "*.pt" or "outputs/**", got "${only}"`);
        }
      }
      const { files, job } = reach(jobId, flags);
      const into = dir ?? jobId;
      const kinds: JobFileKind[] = flags.checkpoints ? ["outputs", "checkpoints"] : ["outputs"];
      const all = await asUsage(files.plan(job, kinds), FILES_USAGE);
      const what = kinds.join(" or ");
      if (all.length === 0) {
        process.stdout.write(`nothing to pull: job ${jobId} has no ${what} yet\n`);
        return;
      }
      const chosen = all.filter((f) => matches(f.path));
      if (chosen.length === 0)
        throw new UsageError(
          `--only "${only}" matches none of the job's ${all.length} files (paths such as ${printable(all[0]!.path)})`,
        );
      const total = chosen.reduce((sum, f) => sum + f.size, 0);
      const bar = process.stderr.isTTY ? byteProgressBar(total) : undefined;
      // Ctrl-C stops between two writes, so a part ends on a whole write and its sidecar stays true.
      const interrupt = new AbortController();
      const stop = (): void => interrupt.abort();
      process.once("SIGINT", stop);
      let result;
      try {
        result = await asUsage(
          files.pull(chosen, into, {
            onProgress: (done) => bar?.update(done, { done: formatBytes(done) }),
            signal: interrupt.signal,
          }),
          FILES_USAGE,
        );
      } catch (error) {
        if (!interrupt.signal.aborted) throw error;
      } finally {
        process.off("SIGINT", stop);
        bar?.stop();
      }
      if (!result) {
        process.stderr.write("pull interrupted; run it again to resume where it stopped\n");
        process.exitCode = EXIT.interrupted;
        return;
      }
      const bytes = result.downloaded.reduce((sum, f) => sum + f.size, 0);
      process.stdout.write(
        `pulled ${count(result.downloaded)} (${formatBytes(bytes)}) into ${into}` +
          `${result.present.length > 0 ? `; ${count(result.present)} already there` : ""}\n`,
      );
    },
  );

  ownerOptions(
    program
      .command("share")
      .description(
        "print presigned links to each of a job's outputs, which anyone can download until they expire",
      )
      .argument("<job>", "job id")
      .option("--expires <duration>", `how long the links work: ${EXPIRES_FORMS}; at most 7d`, "24h"),
  ).action(async (jobId: string, flags: Owner & { expires: string }) => {
    const seconds = parseExpires(flags.expires);
    const { files, job } = reach(jobId, flags);
    const { links, expiresAt, validUntil } = await asUsage(files.share(job, seconds), FILES_USAGE);
    if (links.length === 0) {
      process.stderr.write(
        `job ${jobId} has no outputs yet (the agent uploads them when the job finishes)\n`,
      );
      return;
    }
    for (const link of links) process.stdout.write(`${printable(link.name)}\t${link.url}\n`);
    process.stderr.write(
      validUntil < expiresAt
        ? `warning: the links stop working at ${isoSeconds(validUntil)}, when the credentials that signed them expire, before the ${flags.expires} asked; sign with longer-lived credentials to share for longer\n`
        : `the links expire at ${isoSeconds(expiresAt)}\n`,
    );
  });
}

const count = (files: readonly PullFile[]): string => `${files.length} file${files.length === 1 ? "" : "s"}`;
