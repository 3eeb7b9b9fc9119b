/**
 * `nmoe bench data`: tokenization alone (one thread, and the worker pool), prep end to end on the same documents
 * and workers, and the loader's time per moonlet batch (8 x 4097 tokens) from page cache, each against the issue's
 * target. The default input is the embedded Moby Dick, repeated to --mb; --input measures your own text files.
 */
import { availableParallelism, cpus } from 'node:os';
import type { Command } from 'commander';
import pc from 'picocolors';
import { type LoaderTiming, type Rate, benchLoader, benchPool, benchPrep, benchTokenize } from '../data/bench.ts';
import { embeddedDocuments } from '../data/embedded-corpus.ts';
import { createSource } from '../data/sources/index.ts';
import { loadTokenizer } from '../data/tokenizers.ts';
import { formatCount } from './progress.ts';

async function inputDocs(opts: { input?: string[]; mb: number }): Promise<{ docs: string[]; what: string }> {
  if (opts.input) {
    const source = createSource({
      source: 'text',
      paths: opts.input,
      dataset: null,
      subset: null,
      split: 'train',
      textField: 'text',
      workerIndex: 0,
      numWorkers: 1,
    });
    const docs: string[] = [];
    for await (const r of source.records()) if (r.kind === 'doc') docs.push(r.text);
    return { docs, what: `${opts.input.join(' ')}` };
  }
  const book = embeddedDocuments();
  const bookBytes = book.reduce((n, d) => n + Buffer.byteLength(d), 0);
  const copies = Math.max(1, Math.round((opts.mb * 1e6) / bookBytes));
  return { docs: Array.from({ length: copies }, () => book).flat(), what: `Moby Dick (embedded) x ${copies}` };
}

function row(label: string, r: Rate): string {
  const s = r.seconds;
  return `${label.padEnd(30)}${formatCount(r.docs / s).padStart(9)}${formatCount(r.tokens / s).padStart(11)}${(r.bytes / 1e6 / s).toFixed(2).padStart(9)}`;
}

const verdict = (ok: boolean) => (ok ? pc.green('PASS') : pc.red('MISS'));

function loaderLine(label: string, t: LoaderTiming): string {
  return `${label}: mean ${t.meanMs.toFixed(3)} ms, p50 ${t.p50Ms.toFixed(3)} ms, p99 ${t.p99Ms.toFixed(3)} ms, max ${t.maxMs.toFixed(3)} ms over ${t.batches} batches`;
}

export function registerBenchData(bench: Command): void {
  bench
    .command('data')
    .description("Tokenizer, prep and loader throughput on this machine, against nmoe's targets.")
    .option('--mb <n>', 'MB of English prose to tokenize (the embedded Moby Dick, repeated)', Number, 32)
    .option('--input <paths...>', 'text files or folders of .txt files to use instead (each file one document)')
    .option('-j, --workers <n>', 'tokenizer threads for the pool and prep measurements', Number, availableParallelism())
    .option('--tokenizer <name>', 'o200k_harmony or bytes', 'o200k_harmony')
    .option('--loader-batches <n>', 'batches timed through the loader', Number, 500)
    .option('--json', 'print the numbers as JSON', false)
    .action(
      async (opts: {
        mb: number;
        input?: string[];
        workers: number;
        tokenizer: string;
        loaderBatches: number;
        json: boolean;
      }) => {
        const { docs, what } = await inputDocs(opts);
        const tok = await loadTokenizer(opts.tokenizer);
        const cores = availableParallelism();
        const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cores} cores, Node ${process.version}`;
        const say = (line: string) => opts.json || process.stdout.write(`${line}\n`);
        say(`nmoe bench data on ${machine}; ${tok.name}${tok.version ? ` (${tok.version})` : ''}`);
        say(
          `input: ${what}: ${docs.length.toLocaleString('en-US')} documents, ${(docs.reduce((n, d) => n + Buffer.byteLength(d), 0) / 1e6).toFixed(1)} MB`,
        );
        say(`${''.padEnd(30)}${'docs/s'.padStart(9)}${'tokens/s'.padStart(11)}${'MB/s'.padStart(9)}`);
        const single = await benchTokenize(docs, tok.name);
        say(row('tokenize, 1 thread', single));
        const pool = await benchPool(docs, tok.name, opts.workers);
        say(row(`tokenize, ${opts.workers} workers`, pool));
        const prep = await benchPrep(docs, tok.name, opts.workers);
        say(
          `${row(`prep end to end, ${opts.workers} workers`, prep)}  (start-up ${prep.startupSeconds.toFixed(2)} s not included)`,
        );
        const moonlet = { seqLen: 4096, batch: 8, batches: opts.loaderBatches };
        const prefetched = await benchLoader({ ...moonlet, prefetch: 2 });
        const direct = await benchLoader({ ...moonlet, prefetch: 0 });
        say(loaderLine('loader, 8 x 4097 batch, prefetch 2', prefetched));
        say(loaderLine('loader, 8 x 4097 batch, no prefetch', direct));
        const perCore = single.tokens / single.seconds;
        const ratio = prep.tokens / prep.seconds / (pool.tokens / pool.seconds);
        say(
          `targets: tokenize >= 500K tokens/s per core: ${verdict(perCore >= 5e5)} (${formatCount(perCore)}); ` +
            `prep >= 80% of tokenization alone: ${verdict(ratio >= 0.8)} (${(100 * ratio).toFixed(0)}%); ` +
            `loader batch < 1 ms: ${verdict(Math.max(prefetched.meanMs, direct.meanMs) < 1)}`,
        );
        if (opts.json) {
          const report = {
            machine,
            tokenizer: tok.name,
            input: what,
            docs: docs.length,
            single,
            pool,
            prep,
            loader: { prefetched, direct },
            prepRatio: ratio,
          };
          process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
        }
      },
    );
}
