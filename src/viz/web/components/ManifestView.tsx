import type { DatasetManifestResponse } from '../../api.ts';
import { fmtInt } from '../lib/format.ts';
import { Link } from './Link.tsx';

/** A dataset's manifest: what it is, its totals, and its shards (a click opens one). */
export function ManifestView({
  manifest,
  shardHref,
}: {
  manifest: DatasetManifestResponse;
  shardHref: (shardPath: string) => string;
}) {
  const m = manifest;
  return (
    <div class="manifest" data-manifest={m.path}>
      <h2>
        {m.dataset} <span class="muted">{m.version}</span>
      </h2>
      <p class="agg">
        <span>
          tokenizer <b>{m.tokenizer}</b>
        </span>
        <span>
          vocab <b>{fmtInt(m.vocab_size)}</b>
        </span>
        <span>
          EOS <b>{m.eos_token_id}</b>
        </span>
        <span>
          tokens <b>{fmtInt(m.total_tokens)}</b>
        </span>
        <span>
          documents <b>{fmtInt(m.total_documents)}</b>
        </span>
        <span>
          shards <b>{fmtInt(m.num_shards)}</b>
        </span>
      </p>
      <table class="grid" data-table="shards">
        <thead>
          <tr>
            <th>shard</th>
            <th class="num">tokens</th>
            <th class="num">documents</th>
          </tr>
        </thead>
        <tbody>
          {m.shards.map((s) => (
            <tr key={s.path}>
              <td class="mono">
                <Link href={shardHref(s.path)}>{s.path}</Link>
              </td>
              <td class="num">{fmtInt(s.num_tokens)}</td>
              <td class="num">{fmtInt(s.num_documents)}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {m.shards.length < m.num_shards && (
        <p class="muted">
          The first {m.shards.length} of {m.num_shards} shards.
        </p>
      )}
    </div>
  );
}
