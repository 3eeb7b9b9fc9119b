/**
 * The per-document work of prep, as the reference's `_tokenize_document`: normalise (NFC + strip), encode as
 * ordinary text, drop documents under `minTokens`, cut those over `maxTokens`, append EOS, and pick the hash
 * bucket. It runs on worker threads (tokenize-worker.ts) and returns one flat token buffer per batch, so results
 * cross threads as transferred memory, not as arrays of numbers.
 */
import { bucketOf, normalizeText } from '../text.ts';
import type { TextTokenizer } from '../tokenizers.ts';

/** What happened to each document; only KEPT and TRUNCATED documents are written. */
export const DocStatus = { KEPT: 0, TRUNCATED: 1, EMPTY: 2, SHORT: 3, HAS_EOS_BYTE: 4 } as const;

export interface TokenizeSettings {
  minTokens: number;
  maxTokens: number;
  numShards: number;
}

export interface TokenizedBatch {
  /** Per document: a DocStatus. */
  status: Uint8Array;
  /** Per document: tokens written (with EOS), 0 when dropped. */
  lengths: Uint32Array;
  /** Per document: its bucket. */
  buckets: Uint32Array;
  /** The written documents' tokens, back to back, each ending in EOS. */
  tokens: Uint32Array;
}

export function tokenizeBatch(tok: TextTokenizer, s: TokenizeSettings, ids: string[], texts: string[]): TokenizedBatch {
  const n = texts.length;
  const status = new Uint8Array(n);
  const lengths = new Uint32Array(n);
  const buckets = new Uint32Array(n);
  let tokens = new Uint32Array(texts.reduce((a, t) => a + t.length, 0) / 3 + n + 16);
  let used = 0;
  for (let i = 0; i < n; i++) {
    const text = normalizeText(texts[i]!);
    if (text.length === 0) {
      status[i] = DocStatus.EMPTY;
      continue;
    }
    // The bytes tokenizer's EOS is the NUL byte: a document holding one would split in two.
    if (tok.name === 'bytes' && text.includes('\0')) {
      status[i] = DocStatus.HAS_EOS_BYTE;
      continue;
    }
    const docIds = tok.encode(text);
    if (docIds.length < s.minTokens) {
      status[i] = DocStatus.SHORT;
      continue;
    }
    const keep = Math.min(docIds.length, s.maxTokens);
    status[i] = keep < docIds.length ? DocStatus.TRUNCATED : DocStatus.KEPT;
    if (used + keep + 1 > tokens.length) {
      const grown = new Uint32Array(Math.max(2 * tokens.length, used + keep + 1));
      grown.set(tokens.subarray(0, used));
      tokens = grown;
    }
    if (keep === docIds.length) tokens.set(docIds, used);
    else for (let j = 0; j < keep; j++) tokens[used + j] = docIds[j]!;
    tokens[used + keep] = tok.eosTokenId;
    used += keep + 1;
    lengths[i] = keep + 1;
    buckets[i] = bucketOf(ids[i]!, s.numShards);
  }
  return { status, lengths, buckets, tokens: tokens.slice(0, used) };
}
