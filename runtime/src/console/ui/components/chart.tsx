import { BarChart, LineChart } from "echarts/charts";
import { GridComponent, MarkLineComponent, TooltipComponent } from "echarts/components";
import type { ComposeOption, ECharts } from "echarts/core";
import { init, use } from "echarts/core";
import type { BarSeriesOption, LineSeriesOption } from "echarts/charts";
import type {
  GridComponentOption,
  MarkLineComponentOption,
  TooltipComponentOption,
} from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";
import { useEffect, useRef } from "preact/hooks";

// Only the parts the console draws, so the bundle carries no more of ECharts than it uses.
use([LineChart, BarChart, GridComponent, TooltipComponent, MarkLineComponent, CanvasRenderer]);

export type ChartOption = ComposeOption<
  LineSeriesOption | BarSeriesOption | GridComponentOption | TooltipComponentOption | MarkLineComponentOption
>;

/** The palette's accent and neutrals (app.css uses the same). */
export const ACCENT = "#2f5bd3";
export const MUTED = "#6b7280";
export const GRID_LINE = "#e5e7eb";

/**
 * An ECharts chart in a div: created once, given `option` on every change (merged, so a running job's
 * new points extend the line without redrawing from nothing), resized with its box, disposed on unmount.
 * `label` names it for screen readers; the text around it carries the numbers.
 */
export function Chart({
  option,
  label,
  className,
}: {
  option: ChartOption;
  label: string;
  className?: string;
}) {
  const box = useRef<HTMLDivElement>(null);
  const chart = useRef<ECharts>();

  useEffect(() => {
    const element = box.current!;
    const instance = init(element, undefined, { renderer: "canvas" });
    chart.current = instance;
    // For tests and tools: how many times the chart has finished drawing.
    let draws = 0;
    instance.on("finished", () => element.setAttribute("data-draws", String(++draws)));
    const resize = new ResizeObserver(() => instance.resize());
    resize.observe(element);
    return () => {
      resize.disconnect();
      instance.dispose();
      chart.current = undefined;
    };
  }, []);

  useEffect(() => {
    chart.current?.setOption(option, { lazyUpdate: true });
  }, [option]);

  return <div ref={box} class={className ?? "chart"} role="img" aria-label={label} />;
}

/** Axis and tooltip settings every chart shares. */
export const BASE_OPTION = {
  animation: false,
  textStyle: { fontFamily: "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", color: "#374151" },
  grid: { left: 56, right: 20, top: 16, bottom: 36, containLabel: false },
  // Drawn on the canvas: an HTML tooltip would carry inline styles, which the console's CSP refuses.
  tooltip: { trigger: "axis" as const, confine: true, renderMode: "richText" as const },
} satisfies ChartOption;
