import { endpoints } from '../data/endpoints.ts';
import { useApi } from '../data/use-api.ts';
import { fmtInt } from '../lib/format.ts';
import { LoadState } from './LoadState.tsx';

const WINDOW_TOKENS = 256;

interface Props {
  shard: string;
  offset: number;
  numTokens: number;
  eosTokenId: number | undefined;
  onOffset: (offset: number) => void;
}

/** The raw ids of a shard from `offset`, a window at a time; EOS ids (document ends) are marked. */
export function TokenWindow({ shard, offset, numTokens, eosTokenId, onOffset }: Props) {
  const window = useApi(endpoints.shardWindow(shard, offset, WINDOW_TOKENS));
  const last = Math.max(0, numTokens - WINDOW_TOKENS);
  return (
    <div class="token-window">
      <div class="controls">
        <button type="button" disabled={offset <= 0} onClick={() => onOffset(Math.max(0, offset - WINDOW_TOKENS))}>
          ◀
        </button>
        <label>
          offset{' '}
          <input
            type="number"
            min={0}
            max={last}
            value={offset}
            onChange={(e) => onOffset(Math.min(last, Math.max(0, Number(e.currentTarget.value) || 0)))}
          />
        </label>
        <button
          type="button"
          disabled={offset >= last}
          onClick={() => onOffset(Math.min(last, offset + WINDOW_TOKENS))}
        >
          ▶
        </button>
        <span class="muted">of {fmtInt(numTokens)}</span>
      </div>
      <LoadState state={window} what="tokens" />
      {window.data && (
        <p class="tokens" data-tokens={window.data.tokens.length}>
          {window.data.tokens.map((t, i) => (
            <span key={i} class={t === eosTokenId ? 'tok eos' : 'tok'} title={`position ${window.data!.offset + i}`}>
              {t}
            </span>
          ))}
        </p>
      )}
    </div>
  );
}
