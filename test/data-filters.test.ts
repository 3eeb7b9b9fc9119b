/**
 * Prep's heuristic filters: each rule against hand-computed answers, and a prep with the filters on whose manifest
 * counts every document a filter dropped and every line and paragraph it removed.
 */
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { readManifest } from '../src/data/manifest.ts';
import {
  NO_FILTERS,
  REFERENCE_FILTERS,
  dedupLines,
  dedupParagraphs,
  filterDocument,
  repeatedNgramFraction,
  symbolRatio,
  words,
} from '../src/data/prep/filters.ts';
import { PREP_DEFAULTS } from '../src/data/prep/options.ts';
import { runPrep } from '../src/data/prep/prep.ts';
import { removeTempDirs, tempDir, writeJsonl } from './fixtures/data/helpers.ts';

afterAll(removeTempDirs);

const numbered = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`);

describe('filter rules', () => {
  it('count words as runs of non-whitespace', () => {
    expect(words('  a b\tc\n\nd  ')).toEqual(['a', 'b', 'c', 'd']);
  });

  it('give the fraction of word 10-grams that repeat an earlier one', () => {
    expect(repeatedNgramFraction(numbered(9))).toBe(0); // no 10-gram at all
    expect(repeatedNgramFraction(numbered(30))).toBe(0); // 21 distinct windows
    expect(repeatedNgramFraction(Array(25).fill('x'))).toBe(15 / 16); // (m - n) / (m - n + 1)
    expect(repeatedNgramFraction([...numbered(10), ...numbered(10)])).toBe(1 / 11); // only the last window repeats the first
  });

  it('give the fraction of non-whitespace characters that are neither letters, marks nor numbers', () => {
    expect(symbolRatio('ab !!')).toBe(0.5);
    expect(symbolRatio('café 42')).toBe(0);
    expect(symbolRatio('   ')).toBe(0);
    expect(symbolRatio('a#€😀')).toBe(0.75); // an emoji is one code point, one symbol
  });

  it('remove repeated lines and paragraphs, keeping the first and the blank lines', () => {
    expect(dedupLines('a\n b \n\nb\na')).toEqual({ text: 'a\n b \n', removed: 2 });
    expect(dedupParagraphs('p one\nq\n\n  \nr\n\np one\n q ')).toEqual({ text: 'p one\nq\n\n  \nr', removed: 1 });
    expect(dedupParagraphs('single')).toEqual({ text: 'single', removed: 0 });
  });

  it('drop by the reference thresholds, and change nothing when off', () => {
    const prose = numbered(60).join(' ');
    expect(filterDocument(prose, REFERENCE_FILTERS).verdict).toBeNull();
    expect(filterDocument(numbered(49).join(' '), REFERENCE_FILTERS).verdict).toBe('few-words');
    expect(filterDocument(Array(60).fill('x').join(' '), REFERENCE_FILTERS).verdict).toBe('repeated-ngrams');
    expect(filterDocument(`${prose} ${'!'.repeat(200)}`, REFERENCE_FILTERS).verdict).toBe('symbols');
    expect(filterDocument('a\na', NO_FILTERS)).toEqual({
      text: 'a\na',
      verdict: null,
      linesRemoved: 0,
      paragraphsRemoved: 0,
    });
  });
});

describe('prep with filters', () => {
  it("counts each filter's drops and the removed lines and paragraphs in the manifest", async () => {
    const dir = tempDir('filters');
    const prose = (k: number) =>
      numbered(60)
        .map((w) => `${w}k${k}`)
        .join(' ');
    const rows = [
      { id: 'keep', text: prose(1) },
      { id: 'dup', text: prose(1) },
      { id: 'short', text: 'too few words' },
      { id: 'rep', text: Array(60).fill('spam').join(' ') },
      { id: 'sym', text: `${prose(2)} ${'#'.repeat(300)}` },
      { id: 'edit', text: `${prose(3)}\n${prose(3)}\n\n${prose(4)}\n\n${prose(4)}` },
    ];
    writeJsonl(join(dir, 'in.jsonl'), rows);
    const r = await runPrep({
      ...PREP_DEFAULTS,
      source: 'jsonl',
      paths: [join(dir, 'in.jsonl')],
      output: join(dir, 'out'),
      name: 'f',
      tokenizer: 'bytes',
      numShards: 1,
      workers: 1,
      filters: REFERENCE_FILTERS,
    });
    expect(r.stats.documents).toBe(2);
    const stats = readManifest(join(dir, 'out', 'manifest.json')).source_info.prep_stats as Record<string, unknown>;
    expect(stats.filtered).toEqual({
      'few-words': 1,
      'many-words': 0,
      'repeated-ngrams': 1,
      symbols: 1,
      'exact-duplicate': 1,
      hydra: 0,
    });
    expect([stats.paragraphsRemoved, stats.linesRemoved]).toEqual([1, 1]);
  });
});
