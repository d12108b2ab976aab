import * as echarts from "echarts";
import type { MetricRecord } from "../store/job-metrics";

const WIDTH = 960;
const PANEL_HEIGHT = 240;
const TOP = 60;

/**
 * A job's metrics against step as an SVG: one panel per metric, one line each, a dashed vertical line
 * where an attempt resumed. Rendered on the server side by ECharts (no browser, no canvas); the labels
 * are ECharts', escaped by it, so any metric or job name keeps the file valid XML.
 */
export function metricChartSvg(
  title: string,
  records: readonly MetricRecord[],
  metrics: readonly string[],
): string {
  const stepped = records.filter((r) => r.step !== undefined);
  const resumes = stepped.filter((r, i) => i > 0 && r.a !== stepped[i - 1]!.a);
  const height = TOP + metrics.length * PANEL_HEIGHT;
  const chart = echarts.init(null, null, { renderer: "svg", ssr: true, width: WIDTH, height });
  try {
    chart.setOption({
      animation: false,
      backgroundColor: "#ffffff",
      title: { text: title, left: "center", textStyle: { fontSize: 14 } },
      grid: metrics.map((_, i) => ({
        left: 80,
        right: 30,
        top: TOP + i * PANEL_HEIGHT,
        height: PANEL_HEIGHT - 70,
      })),
      xAxis: metrics.map((_, i) => ({
        type: "value",
        gridIndex: i,
        name: "step",
        nameLocation: "middle",
        nameGap: 25,
        scale: true,
      })),
      yAxis: metrics.map((name, i) => ({ type: "value", gridIndex: i, name, scale: true })),
      series: metrics.map((name, i) => ({
        type: "line",
        name,
        xAxisIndex: i,
        yAxisIndex: i,
        showSymbol: false,
        data: stepped.filter((r) => r.m[name] !== undefined).map((r) => [r.step, r.m[name]]),
        markLine: {
          symbol: "none",
          silent: true,
          lineStyle: { type: "dashed", color: "#999999" },
          data: resumes.map((r) => ({ xAxis: r.step, label: { formatter: `resumed: attempt ${r.a}` } })),
        },
      })),
    });
    return chart.renderToSVGString();
  } finally {
    chart.dispose();
  }
}
