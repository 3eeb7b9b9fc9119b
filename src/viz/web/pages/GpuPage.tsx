import type { GpuReading } from '../../api.ts';
import { LineChart } from '../components/LineChart.tsx';
import { LiveBadge } from '../components/LiveBadge.tsx';
import { LoadState } from '../components/LoadState.tsx';
import { RunSelect } from '../components/RunSelect.tsx';
import { endpoints } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { usePageRun } from '../data/use-page-run.ts';
import { useSeries } from '../data/use-series.ts';
import { chartPoints } from '../lib/chart-points.ts';
import { fmtInt, fmtNumber } from '../lib/format.ts';

/** Charted NVML readings (tags gpu/{i}/{metric}), a line per GPU. */
const CHARTS: { metric: keyof GpuReading; title: string }[] = [
  { metric: 'utilization_gpu', title: 'utilisation (%)' },
  { metric: 'memory_used_gib', title: 'memory used (GiB)' },
  { metric: 'power_draw_w', title: 'power (W)' },
  { metric: 'temperature_c', title: 'temperature (°C)' },
  { metric: 'clocks_sm_mhz', title: 'SM clock (MHz)' },
  { metric: 'throttle_power', title: 'throttled: power cap' },
  { metric: 'throttle_thermal', title: 'throttled: thermal' },
];

const THROTTLES = ['throttle_thermal', 'throttle_power', 'throttle_hw_slowdown', 'throttle_apps'] as const;

/** `/gpu?run=R`: the latest NVML reading of each GPU, and the readings over steps. */
export function GpuPage({ query }: { query: URLSearchParams }) {
  const { run, runList, choose } = usePageRun(query);
  const live = run !== undefined && runList.liveRuns.has(run);
  const gpu = useApi(run === undefined ? null : endpoints.gpu(run), { poll: live });
  const gpus = gpu.data?.gpus ?? [];
  const tags = gpus.flatMap((g) => CHARTS.map((c) => `gpu/${g.index}/${c.metric}`));
  const series = useSeries(run === undefined ? [] : [run], tags, { points: chartPoints(), liveRuns: runList.liveRuns });
  return (
    <section>
      <header class="page-head">
        <h1>GPUs</h1>
        {run && runList.state.data && <RunSelect runs={runList.state.data.runs} value={run} onChange={choose} />}
        <LiveBadge live={live} />
        {gpu.data && <span class="muted">step {fmtInt(gpu.data.step)}</span>}
      </header>
      <LoadState state={run === undefined ? runList.state : gpu} what={run === undefined ? 'runs' : 'GPU readings'} />
      {gpu.data && gpus.length === 0 && (
        <p class="muted" data-empty="gpu">
          This run has no GPU readings: it trained on the CPU, or NVML found no GPU.
        </p>
      )}
      {gpus.length > 0 && (
        <table class="grid" data-table="gpus">
          <thead>
            <tr>
              <th>GPU</th>
              <th class="num">util %</th>
              <th class="num">memory GiB</th>
              <th class="num">power W</th>
              <th class="num">temp °C</th>
              <th class="num">SM MHz</th>
              <th>throttled</th>
              <th class="num">ECC corr / uncorr</th>
            </tr>
          </thead>
          <tbody>
            {gpus.map((g) => {
              const throttled = THROTTLES.filter((t) => (g[t] ?? 0) > 0);
              return (
                <tr key={g.index}>
                  <td>{g.index}</td>
                  <td class="num">{fmtNumber(g.utilization_gpu)}</td>
                  <td class="num">
                    {fmtNumber(g.memory_used_gib)} / {fmtNumber(g.memory_total_gib)}
                  </td>
                  <td class="num">
                    {fmtNumber(g.power_draw_w)} / {fmtNumber(g.power_limit_w)}
                  </td>
                  <td class="num">{fmtNumber(g.temperature_c)}</td>
                  <td class="num">{fmtNumber(g.clocks_sm_mhz)}</td>
                  <td class={throttled.length ? 'warn' : 'muted'}>
                    {throttled.length ? throttled.map((t) => t.slice('throttle_'.length)).join(', ') : 'no'}
                  </td>
                  <td class="num">
                    {fmtNumber(g.ecc_corrected)} / {fmtNumber(g.ecc_uncorrected)}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {run && gpus.length > 0 && (
        <div class="chart-grid">
          {CHARTS.map(({ metric, title }) => (
            <LineChart
              key={metric}
              name={`gpu/${metric}`}
              title={title}
              lines={gpus.map((g) => ({ label: `GPU ${g.index}`, points: series(run, `gpu/${g.index}/${metric}`) }))}
            />
          ))}
        </div>
      )}
    </section>
  );
}
