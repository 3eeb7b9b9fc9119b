/**
 * The heuristic-filter flags of `nmoe data prep`. Each is off unless given; given
 * without a value it takes the reference's threshold (REFERENCE_FILTERS), and `--heuristic-filters` turns on all
 * of them at once, each flag given beside it still setting its own value.
 */
import { Option, type Command } from 'commander';
import { type FilterSettings, NO_FILTERS, REFERENCE_FILTERS, REPEAT_NGRAM } from '../data/prep/filters.ts';
import { numberFlag, wholeFlag } from './flags.ts';

export interface FilterFlags {
  heuristicFilters: boolean;
  minWords?: number;
  maxWords?: number;
  maxRepeatedNgrams?: number;
  maxSymbolRatio?: number;
  dedupExact?: boolean;
  dedupLines?: boolean;
  dedupParagraphs?: boolean;
}

const r = REFERENCE_FILTERS;

export function addFilterOptions(cmd: Command): Command {
  const words = (flag: string) => (text: string) =>
    wholeFlag(flag, text, 0, `e.g. ${flag} ${flag === '--min-words' ? r.minWords : r.maxWords}`);
  const fraction = (flag: string, dflt: number) => (text: string) => numberFlag(flag, text, 0, 1, dflt);
  return cmd
    .option('--heuristic-filters', "all the filters below, at the reference's thresholds", false)
    .addOption(
      new Option('--min-words [n]', `drop documents of fewer words (alone: ${r.minWords})`)
        .preset(String(r.minWords))
        .argParser(words('--min-words')),
    )
    .addOption(
      new Option('--max-words [n]', `drop documents of more words (alone: ${r.maxWords})`)
        .preset(String(r.maxWords))
        .argParser(words('--max-words')),
    )
    .addOption(
      new Option(
        '--max-repeated-ngrams [fraction]',
        `drop documents whose word ${REPEAT_NGRAM}-grams repeat more (alone: ${r.maxRepeatedNgrams})`,
      )
        .preset(String(r.maxRepeatedNgrams))
        .argParser(fraction('--max-repeated-ngrams', r.maxRepeatedNgrams!)),
    )
    .addOption(
      new Option(
        '--max-symbol-ratio [fraction]',
        `drop documents with more symbol characters (alone: ${r.maxSymbolRatio})`,
      )
        .preset(String(r.maxSymbolRatio))
        .argParser(fraction('--max-symbol-ratio', r.maxSymbolRatio!)),
    )
    .option('--dedup-exact', 'drop documents whose text equals an earlier one (SHA-256 of the normalised text)')
    .option('--dedup-lines', 'remove repeated lines within each document')
    .option('--dedup-paragraphs', 'remove repeated paragraphs within each document');
}

export function filtersFrom(f: FilterFlags): FilterSettings {
  const base = f.heuristicFilters ? REFERENCE_FILTERS : NO_FILTERS;
  return {
    minWords: f.minWords ?? base.minWords,
    maxWords: f.maxWords ?? base.maxWords,
    maxRepeatedNgrams: f.maxRepeatedNgrams ?? base.maxRepeatedNgrams,
    maxSymbolRatio: f.maxSymbolRatio ?? base.maxSymbolRatio,
    dedupExact: f.dedupExact ?? base.dedupExact,
    dedupLines: f.dedupLines ?? base.dedupLines,
    dedupParagraphs: f.dedupParagraphs ?? base.dedupParagraphs,
  };
}
