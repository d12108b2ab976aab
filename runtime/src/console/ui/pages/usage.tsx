import { useMemo, useState } from "preact/hooks";
import type { UsageReport } from "../../api-contract.js";
import { describeError, getJson, query } from "../api.js";
import type { ChartOption } from "../components/chart.js";
import { ACCENT, BASE_OPTION, Chart, GRID_LINE, MUTED } from "../components/chart.js";
import { ErrorNote } from "../components/common.js";
import { formatDuration, formatTime, formatUsd } from "../format.js";
import { usePoll, useTitle } from "../hooks.js";

type Period = "day" | "week" | "month";
type By = UsageReport["by"];

const PERIODS: readonly { value: Period; label: string }[] = [
  { value: "day", label: "Day" },
  { value: "week", label: "Week" },
  { value: "month", label: "Month" },
];
const GROUPS: readonly { value: By; label: string }[] = [
  { value: "user", label: "User" },
  { value: "project", label: "Project" },
  { value: "tier", label: "Tier" },
];

/** Spend for a period, by user, project or tier: a bar chart, a table and the CSV. */
export function UsagePage() {
  useTitle("Usage");
  const [period, setPeriod] = useState<Period>("week");
  const [by, setBy] = useState<By>("user");
  const params = query({ period, by });
  const report = usePoll(params, (signal) => getJson<UsageReport>(`/api/usage${params}`, signal), 30_000);
  const rows = useMemo(
    () => [...(report.data?.rows ?? [])].sort((a, b) => b.costUsd - a.costUsd),
    [report.data],
  );
  const total = rows.reduce((sum, r) => sum + r.costUsd, 0);

  const option = useMemo(
    (): ChartOption => ({
      ...BASE_OPTION,
      grid: { left: 16, right: 24, top: 16, bottom: 16, containLabel: true },
      tooltip: { ...BASE_OPTION.tooltip, valueFormatter: (v) => formatUsd(Number(v)) },
      xAxis: {
        type: "value",
        axisLabel: { formatter: (v: number) => formatUsd(v) },
        splitLine: { lineStyle: { color: GRID_LINE } },
      },
      yAxis: {
        type: "category",
        inverse: true,
        data: rows.map((r) => r.key),
        axisLine: { lineStyle: { color: MUTED } },
      },
      series: [
        {
          type: "bar",
          name: "cost",
          data: rows.map((r) => r.costUsd),
          itemStyle: { color: ACCENT, borderRadius: [0, 3, 3, 0] },
          barMaxWidth: 28,
        },
      ],
    }),
    [rows],
  );

  return (
    <section aria-labelledby="usage-heading" class="usage">
      <div class="page-head">
        <h1 id="usage-heading" tabIndex={-1}>
          Usage
        </h1>
        <a class="button-link secondary" href={`/api/usage.csv${params}`} download>
          Export CSV
        </a>
      </div>
      <div class="toolbar">
        <Segmented legend="Period" name="period" options={PERIODS} value={period} onChange={setPeriod} />
        <Segmented legend="Group by" name="by" options={GROUPS} value={by} onChange={setBy} />
      </div>
      {report.error !== undefined && (
        <ErrorNote>Could not load usage: {describeError(report.error)}</ErrorNote>
      )}
      {report.data === undefined && report.error === undefined && <p class="muted">Loading…</p>}
      {report.data && (
        <>
          <p class="muted">
            {formatTime(report.data.from)} – {formatTime(report.data.to)} · total {formatUsd(total)}
          </p>
          {rows.length === 0 ? (
            <p class="empty">No spend in this period.</p>
          ) : (
            <>
              <Chart
                className="chart usage-chart"
                option={option}
                label={`Spend by ${by}: ${rows.map((r) => `${r.key} ${formatUsd(r.costUsd)}`).join(", ")}`}
              />
              <div class="table-wrap">
                <table class="usage-table responsive">
                  <caption class="visually-hidden">Spend by {by}</caption>
                  <thead>
                    <tr>
                      <th scope="col">{GROUPS.find((g) => g.value === by)?.label}</th>
                      <th scope="col" class="num">
                        Cost
                      </th>
                      <th scope="col" class="num">
                        Run time
                      </th>
                      <th scope="col" class="num">
                        Jobs
                      </th>
                      <th scope="col" class="num">
                        Budget
                      </th>
                    </tr>
                  </thead>
                  <tbody>
                    {rows.map((r) => (
                      <tr key={r.key}>
                        <th scope="row" data-label={GROUPS.find((g) => g.value === by)?.label}>
                          {r.key}
                        </th>
                        <td class="num" data-label="Cost">
                          {formatUsd(r.costUsd)}
                        </td>
                        <td class="num" data-label="Run time">
                          {formatDuration(r.seconds)}
                        </td>
                        <td class="num" data-label="Jobs">
                          {r.jobs}
                        </td>
                        <td class="num" data-label="Budget">
                          {r.budgetUsd === undefined
                            ? "–"
                            : `${formatUsd(r.budgetUsd)}${r.budgetUsd > 0 ? ` (${Math.round((r.costUsd / r.budgetUsd) * 100)}% used)` : ""}`}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            </>
          )}
        </>
      )}
    </section>
  );
}

function Segmented<T extends string>(props: {
  legend: string;
  name: string;
  options: readonly { value: T; label: string }[];
  value: T;
  onChange: (value: T) => void;
}) {
  return (
    <fieldset class="segmented">
      <legend>{props.legend}</legend>
      {props.options.map((o) => (
        <label key={o.value}>
          <input
            type="radio"
            name={props.name}
            value={o.value}
            checked={props.value === o.value}
            onChange={() => props.onChange(o.value)}
          />
          <span>{o.label}</span>
        </label>
      ))}
    </fieldset>
  );
}
