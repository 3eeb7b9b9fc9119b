/**
 * What `nmoe data prep` and `nmoe data prep-mixture` share: the flags of prep's output settings (tokenizer, shard
 * layout, document bounds, workers, resume checkpoints, --force and the heuristic filters), with the reference's
 * defaults, and the progress display of a running prep.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { PREP_DEFAULTS } from '../data/prep/options.ts';
import type { PrepProgress } from '../data/prep/prep.ts';
import { parseTokenCount } from '../data/text.ts';
import { addFilterOptions } from './filter-flags.ts';
import { Progress, formatCount, formatDuration } from './progress.ts';

/** An option parser for counts (`100M`, `1B` and plain numbers) of at least `min`. */
export function count(min: number) {
  return (text: string): number => {
    const n = parseTokenCount(text);
    if (n < min) throw new InvalidArgumentError(`must be at least ${min}.`);
    return n;
  };
}

/** Prep's output settings, on `cmd`. */
export function addPrepSettings(cmd: Command): Command {
  const d = PREP_DEFAULTS;
  cmd
    .option('--version <v>', 'dataset version, used in shard file names', d.version)
    .option('--tokenizer <name>', 'o200k_harmony or bytes', d.tokenizer)
    .option('--vocab-size <n>', 'must match the tokenizer (checked)', count(1))
    .option('--eos-token-id <n>', 'must match the tokenizer (checked)', count(0))
    .option('--num-shards <n>', 'hash buckets: md5(doc id) picks one', count(1), d.numShards)
    .option(
      '--tokens-per-shard <n>',
      'tokens per shard file before a new one starts (e.g. 500M)',
      count(2),
      d.tokensPerShard,
    )
    .option('-j, --workers <n>', 'tokenizer threads', count(1), d.workers)
    .option('--batch-size <n>', 'documents per tokenizer batch', count(1), d.batchSize)
    .option('--min-tokens <n>', 'drop documents with fewer tokens', count(0), d.minTokens)
    .option('--max-tokens <n>', 'cut documents to this many tokens', count(1), d.maxTokens)
    .option('--worker-index <i>', "this machine's part of a split prep (0-based)", count(0), d.workerIndex)
    .option('--num-workers <n>', 'machines sharing the prep (each takes every n-th file)', count(1), d.numWorkers)
    .option('--checkpoint-every <n>', 'input records between resume checkpoints', count(1), d.checkpointEvery)
    .option('--force', 'start over, deleting a finished or interrupted prep in the output folder', false);
  return addFilterOptions(cmd);
}

function rate(n: number, seconds: number): string {
  return `${formatCount(n / Math.max(seconds, 1e-9))}/s`;
}

/** Bar + periodic log lines for a prep; returns the progress callback. `label` starts each log line. */
export function prepProgress(progress: Progress, label = 'prep'): (p: PrepProgress) => void {
  const t0 = performance.now();
  let lastBar = 0,
    lastLine = t0;
  return (p) => {
    const now = performance.now();
    const s = (now - t0) / 1000;
    const mb = p.bytesRead / 1e6;
    const fields =
      `${formatCount(p.documents)} docs ${rate(p.documents, s)}  ${formatCount(p.tokens)} tok ${rate(p.tokens, s)}  ` +
      `${mb.toFixed(1)}${p.totalBytes ? `/${(p.totalBytes / 1e6).toFixed(1)}` : ''} MB read ${(mb / Math.max(s, 1e-9)).toFixed(1)} MB/s`;
    if (now - lastBar > 100) {
      progress.bar(p.bytesRead, p.totalBytes ?? p.bytesRead * 2, fields);
      lastBar = now;
    }
    if (now - lastLine > 15_000) {
      progress.line(`${label} ${formatDuration(s)}: ${fields}`);
      lastLine = now;
    }
  };
}
