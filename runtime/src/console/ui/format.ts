/** How the page writes numbers, sizes, times and money. */

const usd = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumFractionDigits: 2 });
const smallUsd = new Intl.NumberFormat("en-US", {
  style: "currency",
  currency: "USD",
  maximumFractionDigits: 4,
});

/** `$1.23`; amounts under a dollar keep up to four decimals (`$0.0042`). */
export function formatUsd(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return "–";
  return Math.abs(value) < 1 && value !== 0 ? smallUsd.format(value) : usd.format(value);
}

/** `1h 02m`, `3m 05s`, `42s`. */
export function formatDuration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/** `512 B`, `1.5 KiB`, `12.0 MiB`. */
export function formatBytes(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

/** A metric's value: four significant digits, plain or exponential. */
export function formatMetric(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return "–";
  if (value !== 0 && (Math.abs(value) < 1e-3 || Math.abs(value) >= 1e6)) return value.toExponential(3);
  return String(Number(value.toPrecision(4)));
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** A timestamp in the reader's locale and time zone. */
export function formatTime(iso: string | number | undefined): string {
  if (iso === undefined) return "–";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : dateTime.format(date);
}

/** `3 min ago`, `just now`, from `now`. */
export function formatAgo(iso: string | undefined, now = Date.now()): string {
  if (!iso) return "–";
  const seconds = (now - new Date(iso).getTime()) / 1000;
  if (!Number.isFinite(seconds)) return iso;
  if (seconds < 10) return "just now";
  return `${formatDuration(seconds).split(" ")[0]} ago`;
}

/** `16 GiB` from MiB. */
export function formatMemory(mib: number): string {
  return mib >= 1024 ? `${Number((mib / 1024).toFixed(1))} GiB` : `${mib} MiB`;
}
