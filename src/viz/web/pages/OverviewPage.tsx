import { Link } from '../components/Link.tsx';
import { LiveBadge } from '../components/LiveBadge.tsx';
import { LoadState } from '../components/LoadState.tsx';
import { StatusBadge } from '../components/StatusBadge.tsx';
import { useRunList } from '../data/use-run-list.ts';
import { fmtDuration, fmtFraction, fmtInt, fmtNumber, fmtTime, parseRegistryTime } from '../lib/format.ts';
import { runDuration } from '../lib/run-duration.ts';
import { navigate, runHref } from '../router.ts';

/** `/`: every run, newest first, with its latest numbers; a click opens the run. */
export function OverviewPage() {
  const { state, liveRuns } = useRunList('all');
  const runs = state.data?.runs ?? [];
  return (
    <section>
      <header class="page-head">
        <h1>Runs</h1>
        <LiveBadge live={liveRuns.size > 0} />
        <span class="muted">{state.data && `${runs.length} runs`}</span>
      </header>
      <LoadState state={state} what="runs" />
      {state.data && runs.length === 0 && (
        <p class="muted">No runs yet: `nmoe train` writes its metrics to the metrics dir this server reads.</p>
      )}
      {runs.length > 0 && (
        <table class="grid clickable" data-table="runs">
          <thead>
            <tr>
              <th>run</th>
              <th>status</th>
              <th class="num">step</th>
              <th class="num">loss</th>
              <th class="num">tok/s</th>
              <th class="num">MFU</th>
              <th class="num" title="latest eval/CORE: the in-training eval's mean centered accuracy">
                CORE
              </th>
              <th>started</th>
              <th class="num">duration</th>
            </tr>
          </thead>
          <tbody>
            {runs.map((r) => (
              <tr key={r.run} data-run={r.run} onClick={() => navigate(runHref(r.run))}>
                <td>
                  <Link href={runHref(r.run)}>{r.run}</Link> <LiveBadge live={liveRuns.has(r.run)} />
                </td>
                <td>
                  <StatusBadge status={r.status} />
                </td>
                <td class="num">{fmtInt(r.last_step)}</td>
                <td class="num" data-col="loss" title={String(r.last_loss ?? '')}>
                  {fmtNumber(r.last_loss)}
                </td>
                <td class="num">{fmtNumber(r.tokens_per_s)}</td>
                <td class="num">{fmtFraction(r.mfu)}</td>
                <td class="num" data-col="core" title={String(r.eval_core ?? '')}>
                  {fmtNumber(r.eval_core)}
                </td>
                <td>{fmtTime(parseRegistryTime(r.started_at))}</td>
                <td class="num">{fmtDuration(runDuration(r))}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
