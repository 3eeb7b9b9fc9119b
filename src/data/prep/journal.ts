/**
 * Prep's resume journal (`.nmoe-prep.json` in the output folder, written atomically at each checkpoint): the
 * output parameters, how many input records were fully applied (and the id of the last document, to detect changed
 * input on resume), the running statistics and every bucket's writer state. It is deleted once the manifest is
 * written, so "journal present" means "interrupted", and "manifest without journal" means "finished".
 */
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { writeJsonAtomic } from '../manifest.ts';
import type { SkipReason } from '../sources/source.ts';
import type { BucketState } from './bucket-writer.ts';
import type { FilterReason } from './filters.ts';
import type { OutputParams } from './options.ts';

export interface PrepStats {
  /** Input records consumed (documents and skipped records). */
  records: number;
  /** Documents written, and their tokens (EOS included). */
  documents: number;
  tokens: number;
  skipped: Record<SkipReason, number>;
  /** Documents dropped after reading: empty once normalised, under --min-tokens, or holding the bytes EOS. */
  empty: number;
  tooShort: number;
  hasEosByte: number;
  /** Documents cut to --max-tokens (still written). */
  truncated: number;
  /** Documents dropped by a heuristic filter, by filter. */
  filtered: Record<FilterReason, number>;
  /** Lines and paragraphs removed from written documents by --dedup-lines / --dedup-paragraphs. */
  linesRemoved: number;
  paragraphsRemoved: number;
  /** A few places of each skip reason, for the report. */
  examples: Partial<Record<SkipReason, string[]>>;
  /** --max-tokens-total was reached. */
  reachedLimit: boolean;
}

export function emptyStats(): PrepStats {
  return {
    records: 0,
    documents: 0,
    tokens: 0,
    skipped: { unparseable: 0, 'no-text': 0, 'not-utf8': 0 },
    empty: 0,
    tooShort: 0,
    hasEosByte: 0,
    truncated: 0,
    filtered: { 'few-words': 0, 'many-words': 0, 'repeated-ngrams': 0, symbols: 0, 'exact-duplicate': 0, hydra: 0 },
    linesRemoved: 0,
    paragraphsRemoved: 0,
    examples: {},
    reachedLimit: false,
  };
}

export interface Journal {
  journal_version: 1;
  params: OutputParams;
  /** Id of the last document applied; the resumed input must have the same one at the same record. */
  lastDocId: string | null;
  stats: PrepStats;
  buckets: Record<string, BucketState>;
  /** Keys in the exact-dedup file (seen-texts.ts) that this checkpoint counts. */
  seenKeys: number;
}

export const JOURNAL_FILE = '.nmoe-prep.json';

export function readJournal(dir: string): Journal | null {
  const path = join(dir, JOURNAL_FILE);
  return existsSync(path) ? (JSON.parse(readFileSync(path, 'utf8')) as Journal) : null;
}

export function writeJournal(dir: string, j: Journal): void {
  writeJsonAtomic(join(dir, JOURNAL_FILE), j);
}

export function removeJournal(dir: string): void {
  rmSync(join(dir, JOURNAL_FILE), { force: true });
}
