/**
 * The per-document work of prep, as the reference's `_tokenize_document`: normalise (NFC + strip), apply the
 * heuristic filters that were asked for (filters.ts), encode as ordinary text, drop documents under `minTokens`,
 * cut those over `maxTokens`, append EOS, and pick the hash bucket. With exact dedup on, each written document's
 * key goes back too, for the main thread to check in input order. It runs on worker threads (tokenize-worker.ts)
 * and returns one flat token buffer per batch, so results cross threads as transferred memory, not as arrays of
 * numbers.
 */
import { bucketOf, normalizeText } from '../text.ts';
import type { TextTokenizer } from '../tokenizers.ts';
import { EXACT_KEY_BYTES, type FilterSettings, type FilterVerdict, exactKey, filterDocument } from './filters.ts';

/** What happened to each document; only KEPT and TRUNCATED documents are written. */
export const DocStatus = {
  KEPT: 0,
  TRUNCATED: 1,
  EMPTY: 2,
  SHORT: 3,
  HAS_EOS_BYTE: 4,
  FEW_WORDS: 5,
  MANY_WORDS: 6,
  REPEATED_NGRAMS: 7,
  SYMBOLS: 8,
} as const;

/** The status of each filter verdict, and back. */
export const VERDICT_STATUS: Record<FilterVerdict, number> = {
  'few-words': DocStatus.FEW_WORDS,
  'many-words': DocStatus.MANY_WORDS,
  'repeated-ngrams': DocStatus.REPEATED_NGRAMS,
  symbols: DocStatus.SYMBOLS,
};
export const STATUS_VERDICT = new Map(Object.entries(VERDICT_STATUS).map(([v, s]) => [s, v as FilterVerdict]));

export interface TokenizeSettings {
  minTokens: number;
  maxTokens: number;
  numShards: number;
  filters: FilterSettings;
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
  /** Per document: lines and paragraphs removed by the within-document dedups. */
  linesRemoved: Uint32Array;
  paragraphsRemoved: Uint32Array;
  /** With exact dedup on, per document EXACT_KEY_BYTES of its key (zeros when dropped); otherwise empty. */
  keys: Uint8Array;
}

export function tokenizeBatch(tok: TextTokenizer, s: TokenizeSettings, ids: string[], texts: string[]): TokenizedBatch {
  const n = texts.length;
  const status = new Uint8Array(n);
  const lengths = new Uint32Array(n);
  const buckets = new Uint32Array(n);
  const linesRemoved = new Uint32Array(n);
  const paragraphsRemoved = new Uint32Array(n);
  const keys = new Uint8Array(s.filters.dedupExact ? n * EXACT_KEY_BYTES : 0);
  let tokens = new Uint32Array(texts.reduce((a, t) => a + t.length, 0) / 3 + n + 16);
  let used = 0;
  for (let i = 0; i < n; i++) {
    const normalised = normalizeText(texts[i]!);
    // The bytes tokenizer's EOS is the NUL byte: a document holding one would split in two.
    if (tok.name === 'bytes' && normalised.includes('\0')) {
      status[i] = DocStatus.HAS_EOS_BYTE;
      continue;
    }
    const f = filterDocument(normalised, s.filters);
    const text = f.text;
    linesRemoved[i] = f.linesRemoved;
    paragraphsRemoved[i] = f.paragraphsRemoved;
    if (text.length === 0) {
      status[i] = DocStatus.EMPTY;
      continue;
    }
    if (f.verdict !== null) {
      status[i] = VERDICT_STATUS[f.verdict];
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
    if (s.filters.dedupExact) keys.set(exactKey(text), i * EXACT_KEY_BYTES);
  }
  return { status, lengths, buckets, tokens: tokens.slice(0, used), linesRemoved, paragraphsRemoved, keys };
}
