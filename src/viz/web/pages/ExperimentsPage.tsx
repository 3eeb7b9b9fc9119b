import { useState } from 'preact/hooks';
import { Link } from '../components/Link.tsx';
import { LoadState } from '../components/LoadState.tsx';
import { StatusBadge } from '../components/StatusBadge.tsx';
import { endpoints } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { fmtDuration, fmtInt, fmtTime, parseRegistryTime } from '../lib/format.ts';
import { runDuration } from '../lib/run-duration.ts';
import { navigate, runHref, withQuery } from '../router.ts';

/**
 * `/experiments[?experiment=E]`: the registry's experiments with run counts by status, and the runs of the chosen
 * one (all runs when none is chosen). Ticked runs open together in the run page's compare view.
 */
export function ExperimentsPage({ query }: { query: URLSearchParams }) {
  const chosen = query.get('experiment') ?? undefined;
  const experiments = useApi(endpoints.experiments());
  const runs = useApi(endpoints.experimentRuns(chosen));
  const [ticked, setTicked] = useState<string[]>([]);
  const tick = (id: string) => setTicked((t) => (t.includes(id) ? t.filter((x) => x !== id) : [...t, id]));
  const choose = (id: string | null) => navigate(withQuery('/experiments', { experiment: id }));

  return (
    <section>
      <header class="page-head">
        <h1>Experiments</h1>
      </header>
      <LoadState state={experiments} what="experiments" />
      {experiments.data && experiments.data.experiments.length === 0 && (
        <p class="muted">The registry has no experiments yet.</p>
      )}
      {experiments.data && experiments.data.experiments.length > 0 && (
        <table class="grid clickable" data-table="experiments">
          <thead>
            <tr>
              <th>experiment</th>
              <th>project</th>
              <th class="num">runs</th>
              <th>by status</th>
              <th>last started</th>
              <th>description</th>
            </tr>
          </thead>
          <tbody>
            {experiments.data.experiments.map((e) => (
              <tr
                key={e.id}
                class={e.id === chosen ? 'selected' : undefined}
                onClick={() => choose(e.id === chosen ? null : e.id)}
              >
                <td>{e.name}</td>
                <td>{e.project}</td>
                <td class="num">{e.runs}</td>
                <td>
                  {Object.entries(e.by_status).map(([status, n]) => (
                    <span key={status} class={`status status-${status}`}>
                      {n} {status}
                    </span>
                  ))}
                </td>
                <td>{fmtTime(parseRegistryTime(e.last_started_at))}</td>
                <td class="muted">{e.description ?? ''}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <header class="page-head">
        <h2>{chosen ? `Runs of ${chosen}` : 'All runs'}</h2>
        <button
          type="button"
          disabled={ticked.length === 0}
          onClick={() => navigate(runHref(ticked[0]!, ticked.length > 1 ? `compare=${ticked.slice(1).join(',')}` : ''))}
        >
          compare {ticked.length || ''} selected
        </button>
      </header>
      <LoadState state={runs} what="runs" />
      {runs.data && (
        <table class="grid" data-table="experiment-runs">
          <thead>
            <tr>
              <th />
              <th>run</th>
              <th>experiment</th>
              <th>status</th>
              <th class="num">step</th>
              <th>started</th>
              <th class="num">duration</th>
              <th>git</th>
            </tr>
          </thead>
          <tbody>
            {runs.data.runs.map((r) => (
              <tr key={r.id}>
                <td>
                  <input
                    type="checkbox"
                    aria-label={`select ${r.id}`}
                    checked={ticked.includes(r.id)}
                    onChange={() => tick(r.id)}
                  />
                </td>
                <td>
                  <Link href={runHref(r.id)}>{r.id}</Link>
                </td>
                <td>{r.experiment_id}</td>
                <td>
                  <StatusBadge status={r.status} />
                </td>
                <td class="num">{fmtInt(r.last_step)}</td>
                <td>{fmtTime(parseRegistryTime(r.started_at))}</td>
                <td class="num">{fmtDuration(runDuration(r))}</td>
                <td class="mono">
                  {r.git_hash?.slice(0, 10) ?? '—'}
                  {r.git_dirty ? ' (dirty)' : ''}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
