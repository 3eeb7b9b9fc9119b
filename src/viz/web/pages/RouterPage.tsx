import { LiveBadge } from '../components/LiveBadge.tsx';
import { LoadState } from '../components/LoadState.tsx';
import { RouterHeatmap } from '../components/RouterHeatmap.tsx';
import { RunSelect } from '../components/RunSelect.tsx';
import { endpoints, type RouterMetric } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { usePageRun } from '../data/use-page-run.ts';
import { fmtInt, fmtNumber } from '../lib/format.ts';

/** Each is a column of the latest-values table and a heatmap. */
const METRICS: RouterMetric[] = ['max_load', 'cv', 'entropy', 'bias_range', 'experts_active'];

/**
 * `/router?run=R`: router health. Dead-expert alerts first (layers where some expert got no token at the latest
 * step) and the router aggregates, then each metric over steps as a layers x steps heatmap, then the latest value
 * of each per layer.
 */
export function RouterPage({ query }: { query: URLSearchParams }) {
  const { run, runList, choose } = usePageRun(query);
  const live = run !== undefined && runList.liveRuns.has(run);
  const router = useApi(run === undefined ? null : endpoints.router(run), { poll: live });
  const r = router.data;
  return (
    <section>
      <header class="page-head">
        <h1>Router health</h1>
        {run && runList.state.data && <RunSelect runs={runList.state.data.runs} value={run} onChange={choose} />}
        <LiveBadge live={live} />
        {r && <span class="muted">step {fmtInt(r.step)}</span>}
      </header>
      <LoadState
        state={run === undefined ? runList.state : router}
        what={run === undefined ? 'runs' : 'router metrics'}
      />
      {runList.state.data && run === undefined && <p class="muted">No runs yet.</p>}
      {r && r.layers.length === 0 && (
        <p class="muted">This run has written no router metrics (no MoE layer, or no log step yet).</p>
      )}
      {r && r.alerts.length > 0 && (
        <ul class="alerts" data-alerts={r.alerts.length}>
          {r.alerts.map((a) => (
            <li key={a.idx} class="alert">
              layer {a.idx}: {a.dead_experts} dead expert{a.dead_experts === 1 ? '' : 's'}
              {r.n_routed_experts !== null && ` of ${r.n_routed_experts}`} received no tokens at step {r.step}
            </li>
          ))}
        </ul>
      )}
      {r && Object.keys(r.agg).length > 0 && (
        <p class="agg">
          {Object.entries(r.agg).map(([k, v]) => (
            <span key={k}>
              {k} <b>{fmtNumber(v)}</b>
            </span>
          ))}
        </p>
      )}
      {/* Loaded alongside the latest values, not after them; hidden only once the run turns out to have none. */}
      {run && !(r && r.layers.length === 0) && (
        <div class="heatmaps">
          {METRICS.map((metric) => (
            <RouterHeatmap key={`${run}/${metric}`} run={run} metric={metric} live={live} />
          ))}
        </div>
      )}
      {r && r.layers.length > 0 && (
        <>
          <h2>Latest per layer</h2>
          <table class="grid" data-table="router-layers">
            <thead>
              <tr>
                <th>layer</th>
                {METRICS.map((c) => (
                  <th key={c} class="num">
                    {c}
                  </th>
                ))}
              </tr>
            </thead>
            <tbody>
              {r.layers.map((layer) => (
                <tr key={layer.idx} class={r.alerts.some((a) => a.idx === layer.idx) ? 'row-alert' : undefined}>
                  <td>{layer.idx}</td>
                  {METRICS.map((c) => (
                    <td key={c} class="num">
                      {fmtNumber(layer[c])}
                    </td>
                  ))}
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </section>
  );
}
