import type { LedgerEntry } from "../../runtime/src/cost/ledger";
import type { UsageWindow } from "../../runtime/src/cost/usage";
import { endedAt, formatUsd, inWindow, usdUnits } from "../../runtime/src/cost/usage";

/**
 * The month's spend as a small hand-written SVG: cumulative spend at the end of each UTC day as a line,
 * the monthly budget as a dashed line, axes with labels and a title. Plain text, so it diffs, and
 * every label is escaped, so any stack or month name keeps it valid XML.
 */

export interface SpendChart {
  readonly title: string;
  /** The month's first instant (UTC). */
  readonly month: Date;
  /** Cumulative spend in USD at the end of day 1, 2, … (as far as the month has gone). */
  readonly cumulativeUsd: readonly number[];
  /** The monthly budget, drawn when known. */
  readonly budgetUsd?: number;
}

const DAY_MS = 86_400_000;
const WIDTH = 720;
const HEIGHT = 360;
const PLOT = { left: 80, right: WIDTH - 30, top: 50, bottom: HEIGHT - 60 } as const;

export const daysInMonth = (month: Date): number =>
  new Date(Date.UTC(month.getUTCFullYear(), month.getUTCMonth() + 1, 0)).getUTCDate();

/**
 * Cumulative spend of the entries in `window` (a calendar month) at the end of each of its first
 * `days` days, by the day each attempt ended; summed in ten-thousandths of a dollar so it is exact.
 */
export function cumulativeDailySpend(
  entries: readonly LedgerEntry[],
  window: UsageWindow,
  days: number,
): number[] {
  const perDay = new Array<number>(days).fill(0);
  for (const entry of entries) {
    if (!inWindow(entry, window)) continue;
    const day = Math.floor((endedAt(entry) - window.from.getTime()) / DAY_MS);
    if (day < days) perDay[day]! += usdUnits(entry.costUsd);
  }
  let running = 0;
  return perDay.map((units) => (running += units) / 10_000);
}

/** Text and attribute values, escaped for XML. */
export function xmlEscape(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => `&${{ "&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos" }[c]!};`,
  );
}

/** A step of 1, 2, 2.5 or 5 times a power of ten, at least `raw`: tick labels people can read. */
function niceStep(raw: number): number {
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= raw * (1 - 1e-9))!;
  return step * power;
}

/** Coordinates to a hundredth of a pixel, without float noise in the file. */
const px = (value: number): string => String(Math.round(value * 100) / 100);
const dollars = (usd: number): string =>
  `$${usd.toLocaleString("en-US", { minimumFractionDigits: 0, maximumFractionDigits: 4 })}`;

function element(name: string, attributes: Record<string, string | number>, content?: string): string {
  const attrs = Object.entries(attributes)
    .map(([key, value]) => ` ${key}="${xmlEscape(String(value))}"`)
    .join("");
  return content === undefined ? `<${name}${attrs}/>` : `<${name}${attrs}>${content}</${name}>`;
}

/** The chart as an SVG document. */
export function spendChartSvg(chart: SpendChart): string {
  const days = daysInMonth(chart.month);
  const spent = chart.cumulativeUsd.at(-1) ?? 0;
  const top = Math.max(spent, chart.budgetUsd ?? 0);
  const step = top > 0 ? niceStep(top / 4) : 0.25;
  const ticks = Math.max(1, Math.ceil(top / step - 1e-9));
  const yMax = step * ticks;
  const x = (day: number): number => PLOT.left + ((day - 1) / (days - 1)) * (PLOT.right - PLOT.left);
  const y = (usd: number): number => PLOT.bottom - (usd / yMax) * (PLOT.bottom - PLOT.top);
  const monthName = chart.month.toLocaleString("en-US", { month: "long", year: "numeric", timeZone: "UTC" });
  const isoMonth = chart.month.toISOString().slice(0, 7);
  const axis = { stroke: "#333", "stroke-width": 1 };

  const parts: string[] = [
    element("title", {}, xmlEscape(chart.title)),
    element("rect", { x: 0, y: 0, width: WIDTH, height: HEIGHT, fill: "#fff" }),
    element(
      "text",
      { class: "title", x: WIDTH / 2, y: 28, "text-anchor": "middle", "font-size": 16 },
      xmlEscape(chart.title),
    ),
    element("line", {
      class: "x-axis",
      x1: PLOT.left,
      y1: PLOT.bottom,
      x2: PLOT.right,
      y2: PLOT.bottom,
      ...axis,
    }),
    element("line", {
      class: "y-axis",
      x1: PLOT.left,
      y1: PLOT.top,
      x2: PLOT.left,
      y2: PLOT.bottom,
      ...axis,
    }),
  ];
  for (const day of [...new Set([1, 5, 10, 15, 20, 25, days])]) {
    parts.push(
      element("line", { x1: px(x(day)), y1: PLOT.bottom, x2: px(x(day)), y2: PLOT.bottom + 5, ...axis }),
      element(
        "text",
        { class: "x-tick", x: px(x(day)), y: PLOT.bottom + 20, "text-anchor": "middle" },
        String(day),
      ),
    );
  }
  for (let i = 0; i <= ticks; i++) {
    // Multiplying, not adding, keeps float error out of the labels.
    const usd = Math.round(i * step * 10_000) / 10_000;
    parts.push(
      element("line", { x1: PLOT.left - 5, y1: px(y(usd)), x2: PLOT.left, y2: px(y(usd)), ...axis }),
      element(
        "text",
        { class: "y-tick", x: PLOT.left - 8, y: px(y(usd) + 4), "text-anchor": "end" },
        xmlEscape(dollars(usd)),
      ),
    );
  }
  parts.push(
    element(
      "text",
      { class: "x-label", x: (PLOT.left + PLOT.right) / 2, y: HEIGHT - 15, "text-anchor": "middle" },
      xmlEscape(`day of ${monthName} (UTC)`),
    ),
    element(
      "text",
      {
        class: "y-label",
        x: 18,
        y: (PLOT.top + PLOT.bottom) / 2,
        "text-anchor": "middle",
        transform: `rotate(-90 18 ${(PLOT.top + PLOT.bottom) / 2})`,
      },
      "cumulative spend (USD)",
    ),
  );
  if (chart.budgetUsd !== undefined) {
    parts.push(
      element("line", {
        class: "budget",
        x1: PLOT.left,
        y1: px(y(chart.budgetUsd)),
        x2: PLOT.right,
        y2: px(y(chart.budgetUsd)),
        stroke: "#c0392b",
        "stroke-width": 1.5,
        "stroke-dasharray": "6 4",
      }),
      element(
        "text",
        {
          class: "budget-label",
          x: PLOT.right,
          y: px(y(chart.budgetUsd) - 6),
          "text-anchor": "end",
          fill: "#c0392b",
        },
        xmlEscape(`monthly budget ${dollars(chart.budgetUsd)}`),
      ),
    );
  }
  const points = chart.cumulativeUsd.map((usd, i) => ({ day: i + 1, usd }));
  parts.push(
    element("polyline", {
      class: "spend",
      points: points.map((p) => `${px(x(p.day))},${px(y(p.usd))}`).join(" "),
      fill: "none",
      stroke: "#1f6fb2",
      "stroke-width": 2,
    }),
    ...points.map((p) =>
      element(
        "circle",
        { class: "day", cx: px(x(p.day)), cy: px(y(p.usd)), r: 2.5, fill: "#1f6fb2" },
        element(
          "title",
          {},
          xmlEscape(`${isoMonth}-${String(p.day).padStart(2, "0")}: $${formatUsd(p.usd)}`),
        ),
      ),
    ),
  );
  const svg = element(
    "svg",
    {
      xmlns: "http://www.w3.org/2000/svg",
      width: WIDTH,
      height: HEIGHT,
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "font-family": "sans-serif",
      "font-size": 12,
    },
    `\n  ${parts.join("\n  ")}\n`,
  );
  return `<?xml version="1.0" encoding="UTF-8"?>\n${svg}\n`;
}
