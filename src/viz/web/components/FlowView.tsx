import type { FlowResponse } from '../../api.ts';
import { fmtFraction, fmtInt } from '../lib/format.ts';
import { Link } from './Link.tsx';

type FlowSource = FlowResponse['stages'][number]['sources'][number];

/** On disk against quota, 0..1: the bar's fill. */
const filled = (s: FlowSource) => (s.quota_tokens > 0 ? Math.min(1, s.tokens / s.quota_tokens) : 1);

/**
 * A flow's plan against its tree: the plan_hash a run on it records, then per stage each source's weight, quota,
 * tokens on disk and a bar of the two; sources missing, short, unfinished or damaged are marked.
 */
export function FlowView({ flow, folderHref }: { flow: FlowResponse; folderHref: (path: string) => string }) {
  const f = flow;
  return (
    <div class="flow" data-flow={f.flow}>
      <h2>
        flow {f.flow}{' '}
        <span class="muted">
          mode {f.flow_mode}, plan {f.plan_id}, seq_len {f.seq_len}
        </span>
      </h2>
      <p class="agg">
        <span>
          plan_hash <b class="mono">{f.plan_hash}</b>
        </span>
      </p>
      {f.stages.map((st) => (
        <div key={st.stage}>
          <h3>
            stage {st.stage} <span class="muted">[mixtures.{st.mixture}]</span>
          </h3>
          <table class="grid" data-table={`flow-stage-${st.stage}`}>
            <thead>
              <tr>
                <th>source</th>
                <th class="num">weight</th>
                <th class="num">sequences</th>
                <th class="num">quota</th>
                <th class="num">on disk</th>
                <th>on disk / quota</th>
                <th>state</th>
              </tr>
            </thead>
            <tbody>
              {st.sources.map((s) => (
                <tr key={s.id} data-source={s.id} data-state={s.state} title={s.damage ?? undefined}>
                  <td class="mono">
                    <Link href={folderHref(s.path)}>{s.id}</Link>
                  </td>
                  <td class="num">{fmtFraction(s.weight)}</td>
                  <td class="num">{fmtInt(s.quota_sequences)}</td>
                  <td class="num">{fmtInt(s.quota_tokens)}</td>
                  <td class="num">{fmtInt(s.tokens)}</td>
                  <td>
                    <span class={`quota-bar quota-${s.state}`}>
                      <span style={{ width: `${(100 * filled(s)).toFixed(1)}%` }} />
                    </span>{' '}
                    <span class="muted">{fmtFraction(s.quota_tokens > 0 ? s.tokens / s.quota_tokens : 1)}</span>
                  </td>
                  <td class={s.state === 'complete' ? undefined : 'warn'}>
                    {s.state}
                    {s.tokenizers.length > 0 && <span class="muted"> ({s.tokenizers.join(', ')})</span>}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ))}
    </div>
  );
}
