/**
 * Syncs one directory through a JobStore in a process of its own, so a test can measure the sync's
 * memory apart from the embedded server's: `node --import tsx test/support/upload-dir.ts <project/user/jobId>
 * <dir>`, with the platform's `env()`, prints `{ uploaded, maxRssBytes }`.
 */
import { S3Client } from "@aws-sdk/client-s3";
import pino from "pino";
import { JobStore } from "../../runtime/src/store/job-store";

async function main(): Promise<void> {
  const [address, dir] = process.argv.slice(2);
  const [project, user, jobId] = address!.split("/");
  const s3 = new S3Client({ endpoint: process.env.CRUCIBLE_ENDPOINT, forcePathStyle: true });
  const store = new JobStore(s3, process.env.CRUCIBLE_BUCKET!, pino({ level: "silent" }));
  const uploaded = await store.uploadDir(
    { project: project!, user: user!, jobId: jobId! },
    "checkpoints",
    dir!,
    new Map(),
  );
  s3.destroy();
  process.stdout.write(JSON.stringify({ uploaded, maxRssBytes: process.resourceUsage().maxRSS * 1024 }));
}

void main();
