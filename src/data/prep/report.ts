/**
 * The end-of-prep report: what was written, how fast, and every record or document that was not written and why,
 * with the first places of each skip reason, so nothing is dropped silently.
 */
import { SKIP_REASONS, type SkipReason } from '../sources/source.ts';
import { FILTER_REASONS, type FilterReason, REPEAT_NGRAM } from './filters.ts';
import { type PrepOptions, workerTokenLimit } from './options.ts';
import type { PrepResult } from './prep.ts';

const n = (x: number) => x.toLocaleString('en-US');

export function prepReport(r: PrepResult, o: PrepOptions, seconds: number): string[] {
  const s = r.stats;
  if (r.alreadyDone) {
    return [
      `already done: ${r.output}/manifest.json holds this prep (${n(r.manifest!.total_documents)} documents, ${n(r.manifest!.total_tokens)} tokens); --force redoes it`,
    ];
  }
  const lines: string[] = [];
  if (r.resumedAt > 0) lines.push(`resumed after ${n(r.resumedAt)} records applied by an earlier run`);
  const speed = `${n(Math.round(s.documents / seconds))} docs/s, ${n(Math.round(s.tokens / seconds))} tokens/s`;
  if (r.interrupted) {
    lines.push(
      `interrupted after ${n(s.records)} records (${n(s.documents)} documents, ${n(s.tokens)} tokens); run the same command again to resume`,
    );
  } else {
    const m = r.manifest!;
    lines.push(
      `done: ${n(m.total_documents)} documents, ${n(m.total_tokens)} tokens in ${m.num_shards} shards ` +
        `(${m.source_info.num_shard_dirs} buckets) -> ${r.output}/manifest.json [${seconds.toFixed(1)} s, ${speed}]`,
    );
  }
  if (s.reachedLimit) {
    lines.push(
      o.numWorkers > 1
        ? `stopped at this worker's share of --max-tokens-total: ${n(workerTokenLimit(o)!)} (${n(o.maxTokensTotal!)} / ${o.numWorkers} workers)`
        : `stopped at --max-tokens-total ${n(o.maxTokensTotal!)}`,
    );
  }
  const skipped = (Object.keys(SKIP_REASONS) as SkipReason[])
    .filter((k) => s.skipped[k] > 0)
    .map((k) => `${n(s.skipped[k])} ${SKIP_REASONS[k]} (first: ${s.examples[k]!.join(', ')})`);
  if (skipped.length > 0) lines.push(`skipped: ${skipped.join('; ')}`);
  const dropped = [
    [s.empty, 'empty after normalisation'],
    [s.tooShort, `under --min-tokens ${o.minTokens}`],
    [s.hasEosByte, "containing a NUL byte (the bytes tokenizer's EOS)"],
  ]
    .filter(([k]) => (k as number) > 0)
    .map(([k, why]) => `${n(k as number)} ${why}`);
  if (dropped.length > 0) lines.push(`dropped documents: ${dropped.join('; ')}`);
  if (s.truncated > 0) lines.push(`cut to --max-tokens ${n(o.maxTokens)}: ${n(s.truncated)} documents`);
  const f = o.filters;
  const why: Record<FilterReason, string> = {
    'few-words': `under --min-words ${f.minWords}`,
    'many-words': `over --max-words ${f.maxWords}`,
    'repeated-ngrams': `over --max-repeated-ngrams ${f.maxRepeatedNgrams} (word ${REPEAT_NGRAM}-grams)`,
    symbols: `over --max-symbol-ratio ${f.maxSymbolRatio}`,
    'exact-duplicate': 'exact duplicates of an earlier document',
    hydra: 'not kept by the HYDRA grader (--hydra-filter)',
  };
  const filtered = FILTER_REASONS.filter((k) => s.filtered[k] > 0).map((k) => `${n(s.filtered[k])} ${why[k]}`);
  if (filtered.length > 0) lines.push(`filtered documents: ${filtered.join('; ')}`);
  if (s.linesRemoved + s.paragraphsRemoved > 0) {
    lines.push(
      `removed within written documents: ${n(s.paragraphsRemoved)} repeated paragraphs, ${n(s.linesRemoved)} repeated lines`,
    );
  }
  return lines;
}
