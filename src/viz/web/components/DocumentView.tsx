import { endpoints } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { fmtInt } from '../lib/format.ts';
import { LoadState } from './LoadState.tsx';

interface Props {
  shard: string;
  doc: number;
  onDoc: (doc: number) => void;
}

/** The shard's index in brief (document lengths), then one document decoded back to text. */
export function DocumentView({ shard, doc, onDoc }: Props) {
  const header = useApi(endpoints.indexHeader(shard.replace(/\.npy$/, '.idx')));
  const view = useApi(endpoints.indexDoc(shard, doc));
  const count = header.data?.num_documents ?? view.data?.num_documents ?? 0;
  const d = view.data;
  return (
    <div class="document">
      <LoadState state={header} what="the index" />
      {header.data && (
        <p class="agg">
          <span>
            documents <b>{fmtInt(header.data.num_documents)}</b>
          </span>
          {Object.entries(header.data.doc_len).map(([k, v]) => (
            <span key={k}>
              length {k} <b>{fmtInt(v)}</b>
            </span>
          ))}
        </p>
      )}
      <div class="controls">
        <button type="button" disabled={doc <= 0} onClick={() => onDoc(doc - 1)}>
          ◀
        </button>
        <label>
          document{' '}
          <input
            type="number"
            min={0}
            max={Math.max(0, count - 1)}
            value={doc}
            onChange={(e) => onDoc(Math.min(Math.max(0, count - 1), Math.max(0, Number(e.currentTarget.value) || 0)))}
          />
        </label>
        <button type="button" disabled={doc >= count - 1} onClick={() => onDoc(doc + 1)}>
          ▶
        </button>
        {d && (
          <span class="muted">
            tokens {fmtInt(d.start)}…{fmtInt(d.end)} ({fmtInt(d.end - d.start)}){d.truncated && ', first 4,096 shown'}
          </span>
        )}
      </div>
      <LoadState state={view} what="the document" />
      {d &&
        (d.text !== null ? (
          <pre class="doc-text" data-doc={d.doc_idx}>
            {d.text}
          </pre>
        ) : (
          <p class="tokens">{d.tokens.join(' ')}</p>
        ))}
    </div>
  );
}
