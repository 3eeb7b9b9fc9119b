/**
 * Text generation with the KV cache: one prefill of the prompt, then one cached step per new token, until EOS, the
 * token budget, a stop condition or the model's last RoPE position. Used by `nmoe generate` and the generation tasks (GSM8K).
 * Prefill and decode are timed apart (each ends on a host read of its logits, so the time is the device's).
 * On several ranks, `lockstep` holds each forward until every rank has voted (lockstep.ts).
 */
import type { Decoder } from '../model/decoder.ts';
import type { Lockstep } from './lockstep.ts';
import type { Sampler } from './sampling.ts';

export interface GenerateOptions {
  maxTokens: number;
  /** Stop when this id is drawn (it is not returned); -1 never stops early. */
  eosTokenId: number;
  /** Called with each new token as it is chosen. */
  onToken?: (id: number) => void;
  /** Stops after the token that makes this true (a stop sequence); that token is kept. */
  until?: (tokens: readonly number[]) => boolean;
  /** With experts on several ranks: votes before each forward. The caller runs `finish()` after the generation. */
  lockstep?: Lockstep;
}

export interface Generation {
  tokens: number[];
  stop: 'eos' | 'max_tokens' | 'context' | 'until';
  prefillTokens: number;
  prefillSeconds: number;
  /** Cached steps (every new token after the first). */
  decodeTokens: number;
  decodeSeconds: number;
}

export async function generate(
  dec: Decoder,
  prompt: readonly number[],
  sampler: Sampler,
  o: GenerateOptions,
): Promise<Generation> {
  const { b, cfg } = dec.model;
  const limit = cfg.max_position_embeddings;
  if (prompt.length === 0) throw new Error('generate: empty prompt');
  if (prompt.length >= limit)
    throw new Error(`generate: the prompt has ${prompt.length} tokens, the model's positions end at ${limit}`);
  const cache = dec.newCache(Math.min(limit, prompt.length + o.maxTokens));
  const tokens: number[] = [];
  let stop: Generation['stop'] = 'max_tokens';
  try {
    const t0 = performance.now();
    await o.lockstep?.forward();
    const ids = b.upload(Int32Array.from(prompt), [prompt.length], 'i32');
    const h = dec.hidden(ids, 1, prompt.length, cache);
    const D = h.shape[1]!;
    let logits = await dec.logits(b.view(h, [1, D], (prompt.length - 1) * D));
    ids.free();
    h.free();
    const t1 = performance.now();
    while (tokens.length < o.maxTokens) {
      const id = sampler.next(logits);
      if (id === o.eosTokenId) {
        stop = 'eos';
        break;
      }
      tokens.push(id);
      o.onToken?.(id);
      if (o.until?.(tokens)) {
        stop = 'until';
        break;
      }
      if (tokens.length === o.maxTokens) break;
      if (cache.length === limit) {
        stop = 'context';
        break;
      }
      await o.lockstep?.forward();
      const x = b.upload(Int32Array.of(id), [1], 'i32');
      const hs = dec.step(x, cache);
      logits = await dec.logits(hs);
      x.free();
      hs.free();
    }
    const t2 = performance.now();
    return {
      tokens,
      stop,
      prefillTokens: prompt.length,
      prefillSeconds: (t1 - t0) / 1000,
      decodeTokens: cache.length - prompt.length,
      decodeSeconds: (t2 - t1) / 1000,
    };
  } finally {
    cache.free();
  }
}

/**
 * Decodes a growing token list into text for a terminal: each call returns the text not yet printed, holding back
 * a trailing incomplete character (U+FFFD while a multi-byte sequence is still arriving) until it completes.
 */
export class TextStream {
  readonly #ids: number[] = [];
  #printed = '';

  constructor(readonly decode: (ids: number[]) => string) {}

  push(id: number): string {
    this.#ids.push(id);
    const text = this.decode(this.#ids);
    if (text.endsWith('\uFFFD') || !text.startsWith(this.#printed)) return '';
    return this.#take(text);
  }

  /** Whatever is left, at the end. */
  flush(): string {
    return this.#take(this.decode(this.#ids));
  }

  #take(text: string): string {
    const fresh = text.slice(this.#printed.length);
    this.#printed = text;
    return fresh;
  }
}
