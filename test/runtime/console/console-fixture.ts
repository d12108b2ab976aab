import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import yazl from "yazl";
import type { TierName } from "../../../runtime/src/catalog/tiers";
import { DEFAULT_SCHEDULING, PRIORITIES } from "../../../runtime/src/catalog/scheduling";
import type { Priority } from "../../../runtime/src/catalog/scheduling";
import type { ConsoleBackend } from "../../../runtime/src/console/api";
import { submitJob } from "../../../runtime/src/job/submit";
import type { LocalPlatform } from "../../../runtime/src/local/local-platform";
import type { JobQueue } from "../../../runtime/src/queue/job-queue";
import { PriorityQueues } from "../../../runtime/src/queue/priority-queues";

/** What the console's tests share: the local platform they run on, as useLocalPlatform gives it. */
export interface ConsoleTestPlatform {
  readonly platform: LocalPlatform;
  readonly root: string;
}

export interface TestOwner {
  readonly project: string;
  readonly user: string;
}

/** The console's backend for `owner`: the local platform through that owner's own credentials. */
export function consoleBackend(local: ConsoleTestPlatform, owner: TestOwner): ConsoleBackend {
  const own = local.platform.as(owner.project, owner.user);
  return {
    platform: {
      s3: own.s3,
      store: own.store,
      queues: (tier) =>
        new PriorityQueues(
          Object.fromEntries(PRIORITIES.map((p) => [p, own.queue(tier, p)])) as Record<Priority, JobQueue>,
        ),
    },
    owner,
    name: "local",
    policy: DEFAULT_SCHEDULING,
    costWarningUsd: 5,
  };
}

/** Submits `main` as `owner` straight to the tier's queue, as `crucible submit` does; the console lists it. */
export async function submitMain(
  local: ConsoleTestPlatform,
  owner: TestOwner,
  tier: TierName,
  job: { readonly jobId: string; readonly name: string; readonly main: string },
): Promise<string> {
  const dir = join(local.root, `${owner.user}-${job.name}`);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, "main.py"), job.main);
  const submitter = local.platform.as(owner.project, owner.user);
  await submitJob(submitter.store, submitter.queue(tier), {
    path: dir,
    address: { ...owner, jobId: job.jobId },
    spec: { jobId: job.jobId, tier, imageFamily: "cpu", env: {} },
    quotaGiB: 1,
  });
  return job.jobId;
}

/** A zip of `files`, as a researcher's zip tool would write it. */
export function zipOf(files: Readonly<Record<string, string>>): Promise<Buffer> {
  const zip = new yazl.ZipFile();
  for (const [name, text] of Object.entries(files)) zip.addBuffer(Buffer.from(text), name);
  zip.end();
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    zip.outputStream.on("data", (chunk: Buffer) => chunks.push(chunk));
    zip.outputStream.on("end", () => resolve(Buffer.concat(chunks)));
    zip.outputStream.on("error", reject);
  });
}
