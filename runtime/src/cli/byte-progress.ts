import { Presets, SingleBar } from "cli-progress";
import { formatBytes } from "../job/detect";

/**
 * A progress bar of bytes on stderr, for a terminal (`pull`, `datasets push`): `update(done)` moves it,
 * `setTotal` where the total is known only once the work has started.
 */
export function byteProgressBar(total = 0): SingleBar {
  const bar = new SingleBar(
    {
      format: " {bar} {percentage}% | {done}/{size} | {eta_formatted}",
      hideCursor: true,
      gracefulExit: false,
      stream: process.stderr,
    },
    Presets.shades_classic,
  );
  bar.start(total, 0, { done: formatBytes(0), size: formatBytes(total) });
  return bar;
}
