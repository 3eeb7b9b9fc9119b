/**
 * `nmoe data inspect` (the reference's inspect.py, extended): per shard, streamed in chunks, the EOS count,
 * double EOS (an empty document, a classic prep bug), whether the shard ends with EOS, ids outside the vocabulary,
 * agreement with the .idx, optional token statistics, and sample documents decoded back to text. Shards come from a
 * manifest or from a folder (searched recursively, unlike the reference, which only looks at the top level).
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { UserError } from '../util/errors.ts';
import { indexPathFor, readIndex } from './idx.ts';
import { readManifest } from './manifest.ts';
import { NpyShard } from './shard.ts';
import { expandPaths } from './sources/paths.ts';
import { type TextTokenizer, loadTokenizer } from './tokenizers.ts';

export interface InspectOptions {
  manifest?: string;
  dataDir?: string;
  eosTokenId?: number;
  tokenizer?: string;
  numShards: number;
  all: boolean;
  sample: number;
  stats: boolean;
  verbose: boolean;
}

export interface ShardScan {
  /** Tokens scanned (the whole shard, or the first `limit`). */
  tokens: number;
  min: number;
  max: number;
  /** Tokens equal to the one before them. */
  repeats: number;
  eos: number;
  doubleEos: number[];
  doubleEosCount: number;
  endsWithEos: boolean;
  outOfVocab: number;
  /** Document boundaries [start0, end0, ...] found from EOS. */
  docs: number[];
  counts: Uint32Array | null;
}

const CHUNK = 1 << 22;
const n = (x: number) => x.toLocaleString('en-US');

/** One pass over the shard's first `limit` tokens (all of them by default), in chunks. */
export function scanShard(
  shard: NpyShard,
  eos: number,
  vocab: number,
  wantCounts: boolean,
  limit = shard.length,
): ShardScan {
  const end = Math.min(limit, shard.length);
  const s: ShardScan = {
    tokens: end,
    min: Infinity,
    max: -Infinity,
    repeats: 0,
    eos: 0,
    doubleEos: [],
    doubleEosCount: 0,
    endsWithEos: false,
    outOfVocab: 0,
    docs: [],
    counts: wantCounts ? new Uint32Array(vocab) : null,
  };
  const buf = new Uint32Array(Math.min(CHUNK, Math.max(1, end)));
  let prev = -1,
    start = 0;
  for (let base = 0; base < end; base += buf.length) {
    const n = Math.min(buf.length, end - base);
    shard.readSync(base, n, buf, 0);
    for (let i = 0; i < n; i++) {
      const t = buf[i]!;
      if (t < s.min) s.min = t;
      if (t > s.max) s.max = t;
      if (t === prev) s.repeats++;
      if (t >= vocab) s.outOfVocab++;
      else if (s.counts) s.counts[t]!++;
      if (t === eos) {
        s.eos++;
        if (prev === eos) {
          s.doubleEosCount++;
          if (s.doubleEos.length < 10) s.doubleEos.push(base + i - 1);
        }
        s.docs.push(start, base + i + 1);
        start = base + i + 1;
      }
      prev = t;
    }
  }
  s.endsWithEos = prev === eos;
  return s;
}

function sampleDocs(shard: NpyShard, docs: number[], n: number, tok: TextTokenizer | null): string[] {
  const count = docs.length / 2;
  const picks = Array.from({ length: Math.min(n, count) }, (_, k) =>
    Math.floor((k * count) / Math.max(1, Math.min(n, count))),
  );
  return picks.map((d) => {
    const start = docs[2 * d]!,
      end = Math.min(docs[2 * d + 1]!, docs[2 * d]! + 256);
    const ids = new Uint32Array(end - start);
    shard.readSync(start, ids.length, ids, 0);
    const body = tok && ids[ids.length - 1] === tok.eosTokenId ? ids.subarray(0, -1) : ids;
    const text = tok ? JSON.stringify(tok.decode(body).slice(0, 400)) : `[${ids.subarray(0, 24).join(', ')}, ...]`;
    return `doc ${d} (tokens ${start}..${docs[2 * d + 1]}): ${text}`;
  });
}

export async function inspectShards(
  o: InspectOptions,
  print: (line: string) => void,
): Promise<{ issues: number; shards: number }> {
  let paths: string[],
    eos: number | undefined = o.eosTokenId,
    tokName = o.tokenizer,
    vocab = Infinity;
  if (o.manifest) {
    const m = readManifest(o.manifest);
    paths = m.shards.map((s) => join(dirname(o.manifest!), s.path));
    eos = m.eos_token_id;
    tokName = m.tokenizer;
    vocab = m.vocab_size;
    print(
      `manifest ${o.manifest}: ${n(m.total_documents)} documents, ${n(m.total_tokens)} tokens, ${m.num_shards} shards`,
    );
  } else if (o.dataDir) {
    paths = expandPaths([o.dataDir], ['.npy']);
  } else throw new UserError('inspect needs --manifest or --data-dir. Fix: give one.');
  if (eos === undefined)
    throw new UserError(
      'inspect without a manifest needs --eos-token-id. Fix: add it (199999 for o200k_harmony, 0 for bytes).',
    );
  const tok = tokName ? await loadTokenizer(tokName) : null;
  if (tok && vocab === Infinity) vocab = tok.vocabSize;
  const chosen = o.all ? paths : paths.slice(0, o.numShards);
  let issues = 0;
  const totals = { tokens: 0, eos: 0, doubleEos: 0 };
  for (const path of chosen) {
    let shard: NpyShard;
    try {
      shard = NpyShard.open(path);
    } catch (err) {
      print(`FAIL ${(err as Error).message}`);
      issues++;
      continue;
    }
    try {
      const s = scanShard(shard, eos, vocab === Infinity ? 2 ** 32 : vocab, o.stats && vocab !== Infinity);
      totals.tokens += s.tokens;
      totals.eos += s.eos;
      totals.doubleEos += s.doubleEosCount;
      print(`${path}: ${n(s.tokens)} tokens, ${n(s.eos)} EOS, ${s.doubleEosCount} double EOS`);
      const problems: string[] = [];
      if (s.doubleEosCount > 0)
        problems.push(`${s.doubleEosCount} double EOS (empty documents), first at token ${s.doubleEos.join(', ')}`);
      if (s.tokens > 0 && !s.endsWithEos) problems.push('does not end with EOS: its last document is cut');
      if (s.outOfVocab > 0) problems.push(`${s.outOfVocab} ids >= the vocabulary size ${vocab}`);
      const idx = indexPathFor(path);
      if (existsSync(idx) && readIndex(idx).length / 2 !== s.docs.length / 2) {
        problems.push(
          `its .idx lists ${readIndex(idx).length / 2} documents, the shard has ${s.docs.length / 2} (regenerate-index rebuilds it)`,
        );
      }
      for (const p of problems) print(`  ISSUE ${p}`);
      if (o.verbose && s.doubleEos.length > 0) print(`  double EOS at tokens ${s.doubleEos.join(', ')}`);
      issues += problems.length;
      if (s.counts) {
        const used = s.counts.reduce((n, c) => n + (c > 0 ? 1 : 0), 0);
        const top = [...s.counts.keys()].sort((a, b) => s.counts![b]! - s.counts![a]!).slice(0, 5);
        const coverage = ((100 * used) / vocab).toFixed(2);
        print(
          `  stats: ${n(used)} distinct ids (${coverage}% of the vocabulary), mean document ${(s.tokens / Math.max(1, s.eos)).toFixed(1)} tokens`,
        );
        print(
          `  most frequent: ${top.map((t) => `${t}${tok ? ` ${JSON.stringify(tok.decode([t]))}` : ''} x${s.counts![t]}`).join(', ')}`,
        );
      }
      for (const line of sampleDocs(shard, s.docs, o.sample, tok)) print(`  sample ${line}`);
    } finally {
      shard.close();
    }
  }
  print(
    `inspected ${chosen.length} of ${paths.length} shards: ${n(totals.tokens)} tokens, ${n(totals.eos)} EOS, ` +
      `${totals.doubleEos} double EOS; ${issues === 0 ? 'no issues' : `${issues} issue(s)`}`,
  );
  return { issues, shards: chosen.length };
}
