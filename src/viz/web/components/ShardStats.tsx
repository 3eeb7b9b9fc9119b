import type { ShardStatsResponse } from '../../api.ts';
import { fmtFraction, fmtInt } from '../lib/format.ts';

/** A shard's token statistics over its scanned prefix, and its most frequent ids. */
export function ShardStats({ stats }: { stats: ShardStatsResponse }) {
  const s = stats;
  return (
    <div data-shard-stats={s.path}>
      <p class="agg">
        <span>
          tokens <b>{fmtInt(s.num_tokens)}</b>
        </span>
        <span>
          scanned <b>{fmtInt(s.scanned)}</b>
        </span>
        <span>
          ids{' '}
          <b>
            {s.min_token}…{s.max_token}
          </b>
        </span>
        <span>
          EOS <b>{fmtInt(s.eos_count)}</b>
        </span>
        <span class={s.double_eos ? 'warn' : undefined}>
          double EOS <b>{fmtInt(s.double_eos)}</b>
        </span>
        <span class={s.out_of_range ? 'warn' : undefined}>
          out of vocabulary <b>{fmtInt(s.out_of_range)}</b>
        </span>
        <span>
          repeats <b>{fmtFraction(s.repetition_ratio)}</b>
        </span>
        <span>
          index <b>{s.has_index ? 'yes' : 'missing'}</b>
        </span>
      </p>
      <p class="top-tokens">
        <span class="muted">most frequent ids </span>
        {s.top.map((t) => (
          <span key={t.token} class="tok" title={`${fmtInt(t.count)} times`}>
            {t.token}
          </span>
        ))}
      </p>
    </div>
  );
}
