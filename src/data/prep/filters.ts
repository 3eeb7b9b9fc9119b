/**
 * Prep's heuristic filters, with the thresholds of the reference's pipeline design (its stage-1 pre-filter):
 * document length in words (50 to 100,000), at most 20% repeated word 10-grams, at most 30% symbol characters,
 * and, from its dedup library, paragraph- and line-level dedup within a document and exact dedup across documents
 * (SHA-256 of the normalised text). Every filter is off unless asked for: the reference's own prep runs none of
 * them. The rules are pure functions of one document's text, so they run on the tokenizer threads; only exact
 * dedup needs memory across documents, and prep applies it in input order (see seen-texts.ts).
 */
import { createHash } from 'node:crypto';
import { normalizeText } from '../text.ts';

/** Word n-gram length of the repetition filter. */
export const REPEAT_NGRAM = 10;

export interface FilterSettings {
  /** Drop documents with fewer words (null: no lower bound). */
  minWords: number | null;
  /** Drop documents with more words (null: no upper bound). */
  maxWords: number | null;
  /** Drop documents whose repeated word-10-gram fraction is above this (null: off). */
  maxRepeatedNgrams: number | null;
  /** Drop documents whose symbol fraction is above this (null: off). */
  maxSymbolRatio: number | null;
  /** Drop a document whose text equals an earlier written document's text. */
  dedupExact: boolean;
  /** Remove repeated lines within a document (first occurrence kept). */
  dedupLines: boolean;
  /** Remove repeated paragraphs within a document (first occurrence kept). */
  dedupParagraphs: boolean;
}

export const NO_FILTERS: FilterSettings = {
  minWords: null,
  maxWords: null,
  maxRepeatedNgrams: null,
  maxSymbolRatio: null,
  dedupExact: false,
  dedupLines: false,
  dedupParagraphs: false,
};

/** The reference's thresholds, which each filter flag takes when given without a value. */
export const REFERENCE_FILTERS: FilterSettings = {
  minWords: 50,
  maxWords: 100_000,
  maxRepeatedNgrams: 0.2,
  maxSymbolRatio: 0.3,
  dedupExact: true,
  dedupLines: true,
  dedupParagraphs: true,
};

/** Words: maximal runs of non-whitespace characters. */
export function words(text: string): string[] {
  return text.split(/\s+/u).filter((w) => w.length > 0);
}

/**
 * Of the document's word n-grams (the windows of n consecutive words, n = 10 by default), the fraction that repeat
 * one at an earlier position. A text shorter than n words has no n-grams and scores 0; one word said m >= n times
 * over scores (m - n) / (m - n + 1), as every window after the first repeats it.
 */
export function repeatedNgramFraction(ws: readonly string[], n = REPEAT_NGRAM): number {
  const windows = ws.length - n + 1;
  if (windows <= 0) return 0;
  const seen = new Set<string>();
  let repeated = 0;
  for (let i = 0; i < windows; i++) {
    const gram = ws.slice(i, i + n).join(' ');
    if (seen.has(gram)) repeated++;
    else seen.add(gram);
  }
  return repeated / windows;
}

const SYMBOL = /[^\p{L}\p{M}\p{N}\s]/u;
const SPACE = /\s/u;

/**
 * Of the non-whitespace characters (code points), the fraction that are symbols: neither a letter, a combining mark
 * nor a number, i.e. punctuation, math and currency signs, emoji, markup. A text with no such characters scores 0.
 */
export function symbolRatio(text: string): number {
  let visible = 0,
    symbols = 0;
  for (const c of text) {
    if (SPACE.test(c)) continue;
    visible++;
    if (SYMBOL.test(c)) symbols++;
  }
  return visible === 0 ? 0 : symbols / visible;
}

/** Removes every line whose text (trimmed) already appeared in the document; blank lines are kept. */
export function dedupLines(text: string): { text: string; removed: number } {
  const seen = new Set<string>();
  const lines = text.split('\n');
  const kept: string[] = [];
  for (const line of lines) {
    const key = line.trim();
    if (key.length > 0 && seen.has(key)) continue;
    seen.add(key);
    kept.push(line);
  }
  const removed = lines.length - kept.length;
  return { text: removed === 0 ? text : kept.join('\n'), removed };
}

/** One or more blank (empty or whitespace-only) lines: what separates paragraphs. */
const PARAGRAPH_BREAK = /(\n[^\S\n]*\n(?:[^\S\n]*\n)*)/u;

/**
 * Removes every paragraph (lines between blank lines) whose text, each line trimmed, already appeared in the
 * document, together with the break before it; the kept paragraphs keep their own breaks.
 */
export function dedupParagraphs(text: string): { text: string; removed: number } {
  const parts = text.split(PARAGRAPH_BREAK); // paragraphs at even indices, breaks at odd ones
  const seen = new Set<string>();
  let out = '',
    removed = 0;
  for (let i = 0; i < parts.length; i += 2) {
    const key = parts[i]!.split('\n')
      .map((l) => l.trim())
      .join('\n');
    if (seen.has(key)) {
      removed++;
      continue;
    }
    seen.add(key);
    out += (i > 0 ? parts[i - 1]! : '') + parts[i]!;
  }
  return { text: removed === 0 ? text : out, removed };
}

/** Why a filter dropped a document. */
export type FilterVerdict = 'few-words' | 'many-words' | 'repeated-ngrams' | 'symbols';

/**
 * Every reason a filter drops a document, exact dedup's and the document gate's (HYDRA, --hydra-filter) included:
 * the keys of prep's `filtered` counts.
 */
export const FILTER_REASONS = [
  'few-words',
  'many-words',
  'repeated-ngrams',
  'symbols',
  'exact-duplicate',
  'hydra',
] as const;
export type FilterReason = (typeof FILTER_REASONS)[number];

export interface FilteredDoc {
  /** The text to tokenize (normalised again after any lines or paragraphs were removed). */
  text: string;
  /** Why the document is dropped, or null when it is kept. */
  verdict: FilterVerdict | null;
  linesRemoved: number;
  paragraphsRemoved: number;
}

/**
 * Applies the within-document dedups (paragraphs first, so a repeated paragraph counts once, not as its lines),
 * then the drop rules, cheapest first, to a normalised text.
 */
export function filterDocument(normalised: string, s: FilterSettings): FilteredDoc {
  let text = normalised,
    linesRemoved = 0,
    paragraphsRemoved = 0;
  if (s.dedupParagraphs) ({ text, removed: paragraphsRemoved } = dedupParagraphs(text));
  if (s.dedupLines) ({ text, removed: linesRemoved } = dedupLines(text));
  if (linesRemoved + paragraphsRemoved > 0) text = normalizeText(text);
  const verdict = (v: FilterVerdict | null): FilteredDoc => ({ text, verdict: v, linesRemoved, paragraphsRemoved });
  if (s.minWords !== null || s.maxWords !== null || s.maxRepeatedNgrams !== null) {
    const ws = words(text);
    if (s.minWords !== null && ws.length < s.minWords) return verdict('few-words');
    if (s.maxWords !== null && ws.length > s.maxWords) return verdict('many-words');
    if (s.maxRepeatedNgrams !== null && repeatedNgramFraction(ws) > s.maxRepeatedNgrams)
      return verdict('repeated-ngrams');
  }
  if (s.maxSymbolRatio !== null && symbolRatio(text) > s.maxSymbolRatio) return verdict('symbols');
  return verdict(null);
}

/** The exact-dedup key of a document: the first 16 bytes of the SHA-256 of its (normalised, filtered) text. */
export const EXACT_KEY_BYTES = 16;

export function exactKey(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest().subarray(0, EXACT_KEY_BYTES);
}
