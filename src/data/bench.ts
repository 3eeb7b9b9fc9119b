/**
 * Measurements behind `nmoe bench data`: tokenization alone on one thread and on the worker pool, prep end to end
 * (read JSONL, tokenize, write shards, hash, manifests) on the same documents and workers, and the loader's time
 * per batch from page cache. All three start with a loaded tokenizer and an empty BPE merge cache, so none is
 * flattered by having seen the text before; the fixed start-up (loading the tokenizer, starting threads) is left
 * out of every rate and reported apart for prep.
 */
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LoaderConfig } from '../config/sections.ts';
import { createLoader } from './loader/build.ts';
import { npyHeader } from './npy.ts';
import { NO_FILTERS } from './prep/filters.ts';
import { PREP_DEFAULTS } from './prep/options.ts';
import { TokenizerPool } from './prep/pool.ts';
import { BATCH_CHARS, INFLIGHT_PER_WORKER, runPrep } from './prep/prep.ts';
import { loadTokenizer } from './tokenizers.ts';
import { ascending, quantile } from '../util/quantile.ts';

export interface Rate {
  seconds: number;
  docs: number;
  tokens: number;
  bytes: number;
}

export interface LoaderTiming {
  batches: number;
  meanMs: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

const utf8Bytes = (docs: string[]) => docs.reduce((n, d) => n + Buffer.byteLength(d), 0);
const idsFor = (batch: string[]) => batch.map((_, i) => String(i));

export async function benchTokenize(docs: string[], tokenizer: string): Promise<Rate> {
  const tok = await loadTokenizer(tokenizer);
  const t0 = performance.now();
  let tokens = 0;
  for (const d of docs) tokens += tok.encode(d).length;
  return { seconds: (performance.now() - t0) / 1000, docs: docs.length, tokens, bytes: utf8Bytes(docs) };
}

/** The same batches prep would send, through `workers` threads, with nothing else going on. */
export async function benchPool(docs: string[], tokenizer: string, workers: number): Promise<Rate> {
  const pool = await TokenizerPool.start(workers, {
    tokenizer,
    minTokens: 0,
    maxTokens: 1 << 30,
    numShards: 1,
    filters: NO_FILTERS,
  });
  try {
    const batches: string[][] = [];
    for (let i = 0, chars = 0, cur: string[] = []; i < docs.length; i++) {
      cur.push(docs[i]!);
      chars += docs[i]!.length;
      if (cur.length >= PREP_DEFAULTS.batchSize || chars >= BATCH_CHARS || i === docs.length - 1) {
        batches.push(cur);
        cur = [];
        chars = 0;
      }
    }
    const t0 = performance.now();
    let tokens = 0;
    const inflight: Promise<{ tokens: Uint32Array }>[] = [];
    for (const b of batches) {
      inflight.push(pool.run(idsFor(b), b));
      while (inflight.length >= INFLIGHT_PER_WORKER * workers) tokens += (await inflight.shift()!).tokens.length;
    }
    for (const p of inflight) tokens += (await p).tokens.length;
    // The pool appends EOS to each document; count text tokens as benchTokenize does.
    return {
      seconds: (performance.now() - t0) / 1000,
      docs: docs.length,
      tokens: tokens - docs.length,
      bytes: utf8Bytes(docs),
    };
  } finally {
    await pool.close();
  }
}

export interface PrepRate extends Rate {
  startupSeconds: number;
}

export async function benchPrep(docs: string[], tokenizer: string, workers: number): Promise<PrepRate> {
  const dir = mkdtempSync(join(tmpdir(), 'nmoe-bench-prep-'));
  try {
    const input = join(dir, 'docs.jsonl');
    writeFileSync(input, docs.map((text, i) => JSON.stringify({ id: `doc-${i}`, text })).join('\n') + '\n');
    readFileSync(input); // into the page cache, as the other measurements read from memory
    const t0 = performance.now();
    const r = await runPrep({
      ...PREP_DEFAULTS,
      source: 'jsonl',
      paths: [input],
      output: join(dir, 'out'),
      name: 'bench',
      tokenizer,
      workers,
      minTokens: 0,
    });
    const seconds = (performance.now() - t0) / 1000 - r.startupSeconds;
    return {
      seconds,
      startupSeconds: r.startupSeconds,
      docs: r.stats.documents,
      tokens: r.stats.tokens - r.stats.documents,
      bytes: utf8Bytes(docs),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** `batches` batches of batch x (seqLen + 1) tokens through the loader, from shards already in the page cache. */
export async function benchLoader(o: {
  seqLen: number;
  batch: number;
  batches: number;
  prefetch: number;
}): Promise<LoaderTiming> {
  const dir = mkdtempSync(join(tmpdir(), 'nmoe-bench-loader-'));
  const perShard = Math.ceil((o.batch * (o.seqLen + 1) * (o.batches + 8)) / 2);
  try {
    for (let s = 0; s < 2; s++) {
      const fd = openSync(join(dir, `bench-shard-${s}.npy`), 'w');
      writeSync(fd, npyHeader(perShard));
      const ids = new Uint32Array(1 << 20);
      for (let done = 0; done < perShard; done += ids.length) {
        for (let i = 0; i < ids.length; i++) ids[i] = (i * 2654435761 + done) % 200000;
        writeSync(fd, new Uint8Array(ids.buffer, 0, 4 * Math.min(ids.length, perShard - done)));
      }
      closeSync(fd);
      readFileSync(join(dir, `bench-shard-${s}.npy`));
    }
    const cfg: LoaderConfig = {
      data_path: dir,
      flow_mode: null,
      mixture_toml: null,
      flow_profiles_toml: null,
      data_root: dir,
      active_params_b: null,
      tokenizer: 'o200k_harmony',
      vocab_size: 201088,
      eos_token_id: 199999,
      seq_len: o.seqLen,
      batch_size: o.batch,
      steps: o.batches + 8,
      strict_data: false,
    };
    const loader = createLoader(cfg, 0, 1, { prefetch: o.prefetch, warn: () => {} });
    const ms: number[] = [];
    for (let i = 0; i < o.batches + 8; i++) {
      const t0 = performance.now();
      loader.next();
      if (i >= 8) ms.push(performance.now() - t0);
      await new Promise((r) => setImmediate(r)); // a training step lets the event loop run
    }
    loader.close();
    const s = ascending(ms);
    return {
      batches: s.length,
      meanMs: s.reduce((a, b) => a + b, 0) / s.length,
      p50Ms: quantile(s, 0.5),
      p99Ms: quantile(s, 0.99),
      maxMs: quantile(s, 1),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
