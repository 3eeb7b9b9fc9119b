/**
 * The data root for the dashboard: folder listings, manifests, token shards and their .idx, read with nmoe's own
 * readers (data/shard.ts, idx.ts, manifest.ts, inspect.ts, tokenizers.ts). Every path is relative to the data root
 * and confined to it (paths.ts); a file that is not what it should be is a 422 with the reader's message and fix.
 * A shard's EOS, vocabulary and tokenizer come from the nearest manifest.json above it, unless given.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, posix } from 'node:path';
import type {
  DatasetManifestResponse,
  DatasetsListResponse,
  IndexDocResponse,
  IndexHeaderResponse,
  ShardStatsResponse,
  ShardWindowResponse,
} from '../api.ts';
import { indexPathFor, readIndex } from '../../data/idx.ts';
import { scanShard } from '../../data/inspect.ts';
import { type Manifest, readManifest } from '../../data/manifest.ts';
import { NpyShard } from '../../data/shard.ts';
import { loadTokenizer } from '../../data/tokenizers.ts';
import { badRequest, notFound } from './errors.ts';
import { confine, isInside, realInside } from './paths.ts';
import { quantile } from '../../util/quantile.ts';

/** A path as the client gave it, in canonical form ('.' for the root). */
export const canonical = (rel: string) => posix.normalize(rel.replace(/\\/g, '/')).replace(/\/$/, '') || '.';

export function listDir(root: string, rel: string): DatasetsListResponse {
  const dir = confine(root, rel, 'path');
  if (!statSync(dir).isDirectory()) throw badRequest(`path=${JSON.stringify(rel)} is a file, not a folder`);
  const realRoot = confine(root, '.', 'path');
  const entries: DatasetsListResponse['entries'] = [];
  for (const name of readdirSync(dir)) {
    const full = join(dir, name);
    // A symlink that leads outside the root is left out, as following it would be refused.
    if (!realInside(realRoot, full)) continue;
    const st = statSync(full);
    entries.push({
      name,
      kind: st.isDirectory() ? 'dir' : 'file',
      size: st.isDirectory() ? 0 : st.size,
      mtime_ms: st.mtimeMs,
    });
  }
  entries.sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'dir' ? -1 : 1));
  return { path: canonical(rel), entries };
}

export function manifestPreview(root: string, rel: string, limitShards: number): DatasetManifestResponse {
  let file = confine(root, rel, 'path');
  let fileRel = canonical(rel);
  if (statSync(file).isDirectory()) {
    file = join(file, 'manifest.json');
    fileRel = posix.join(fileRel, 'manifest.json');
    if (!existsSync(file)) throw notFound(`path=${JSON.stringify(rel)} holds no manifest.json`);
  }
  const m = readManifest(file);
  const base = posix.dirname(fileRel);
  return {
    path: fileRel,
    dataset: m.dataset,
    version: m.version,
    tokenizer: m.tokenizer,
    vocab_size: m.vocab_size,
    eos_token_id: m.eos_token_id,
    total_tokens: m.total_tokens,
    total_documents: m.total_documents,
    num_shards: m.num_shards,
    // Relative to the data root, ready for the shard routes.
    shards: m.shards.slice(0, limitShards).map((s) => ({
      path: posix.join(base, s.path),
      index_path: s.index_path ? posix.join(base, s.index_path) : null,
      num_tokens: s.num_tokens,
      num_documents: s.num_documents,
    })),
  };
}

/** The manifest.json nearest above `file`, not above the root; null if there is none. */
function nearestManifest(root: string, file: string): Manifest | null {
  const realRoot = confine(root, '.', 'path');
  for (let dir = dirname(file); isInside(realRoot, dir); dir = dirname(dir)) {
    if (existsSync(join(dir, 'manifest.json'))) return readManifest(join(dir, 'manifest.json'));
    if (dir === realRoot) break;
  }
  return null;
}

function openShard(root: string, rel: string): { shard: NpyShard; file: string } {
  const file = confine(root, rel, 'path');
  if (!file.endsWith('.npy')) throw badRequest(`path=${JSON.stringify(rel)} is not a token shard: shards end in .npy`);
  return { shard: NpyShard.open(file), file };
}

export interface StatsOptions {
  scanTokens: number;
  topK: number;
  vocabSize: number | null;
  eosTokenId: number | null;
}

export function shardStats(root: string, rel: string, o: StatsOptions): ShardStatsResponse {
  const { shard, file } = openShard(root, rel);
  try {
    const m = o.vocabSize === null || o.eosTokenId === null ? nearestManifest(root, file) : null;
    const vocab = o.vocabSize ?? m?.vocab_size,
      eos = o.eosTokenId ?? m?.eos_token_id;
    if (vocab === undefined || eos === undefined) {
      throw badRequest(
        `no manifest.json above ${canonical(rel)} gives its vocabulary and EOS; pass vocab_size and eos_token_id (o200k_harmony: 201088 and 199999; bytes: 256 and 0)`,
      );
    }
    const s = scanShard(shard, eos, vocab, true, o.scanTokens);
    const counts = s.counts!;
    const top = [...counts.keys()]
      .filter((t) => counts[t]! > 0)
      .sort((a, b) => counts[b]! - counts[a]! || a - b)
      .slice(0, o.topK);
    return {
      path: canonical(rel),
      num_tokens: shard.length,
      scanned: s.tokens,
      min_token: s.tokens ? s.min : 0,
      max_token: s.tokens ? s.max : 0,
      eos_count: s.eos,
      double_eos: s.doubleEosCount,
      repetition_ratio: s.tokens > 1 ? s.repeats / (s.tokens - 1) : 0,
      out_of_range: s.outOfVocab,
      top: top.map((token) => ({ token, count: counts[token]! })),
      has_index: existsSync(indexPathFor(file)),
    };
  } finally {
    shard.close();
  }
}

/** `length` tokens from `offset`, cut at the end of the shard. */
export function shardWindow(root: string, rel: string, offset: number, length: number): ShardWindowResponse {
  const { shard } = openShard(root, rel);
  try {
    if (offset >= shard.length)
      throw badRequest(
        `offset=${offset} is out of range: the shard has ${shard.length} tokens (offset 0..${shard.length - 1})`,
      );
    const tokens = new Uint32Array(Math.min(length, shard.length - offset));
    shard.readSync(offset, tokens.length, tokens, 0);
    return { path: canonical(rel), offset, tokens: Array.from(tokens) };
  } finally {
    shard.close();
  }
}

const percentile = (sorted: Float64Array, q: number) => (sorted.length ? quantile(sorted, q) : 0);

export function indexHeader(root: string, rel: string): IndexHeaderResponse {
  const file = confine(root, rel, 'path');
  if (!file.endsWith('.idx'))
    throw badRequest(`path=${JSON.stringify(rel)} is not a document index: indexes end in .idx`);
  const idx = readIndex(file);
  const lengths = new Float64Array(idx.length / 2);
  for (let d = 0; d < lengths.length; d++) lengths[d] = idx[2 * d + 1]! - idx[2 * d]!;
  lengths.sort();
  // Powers-of-two bins: document lengths span orders of magnitude.
  const histogram: IndexHeaderResponse['histogram'] = [];
  for (const len of lengths) {
    const lo = len < 1 ? 0 : 2 ** Math.floor(Math.log2(len));
    if (histogram.at(-1)?.lo === lo) histogram.at(-1)!.count++;
    else histogram.push({ lo, hi: Math.max(1, 2 * lo), count: 1 });
  }
  return {
    path: canonical(rel),
    num_documents: lengths.length,
    histogram,
    doc_len: {
      min: percentile(lengths, 0),
      p50: percentile(lengths, 0.5),
      p90: percentile(lengths, 0.9),
      p99: percentile(lengths, 0.99),
      max: lengths.at(-1) ?? 0,
    },
  };
}

export async function indexDoc(
  root: string,
  rel: string,
  docIdx: number,
  maxTokens: number,
): Promise<IndexDocResponse> {
  const { shard, file } = openShard(root, rel);
  try {
    const idxFile = indexPathFor(file);
    if (!existsSync(idxFile))
      throw notFound(
        `${canonical(rel)} has no .idx beside it; rebuild it with \`nmoe data regenerate-index <shard.npy> --eos-token-id N\``,
      );
    const idx = readIndex(idxFile);
    const docs = idx.length / 2;
    if (docIdx >= docs)
      throw badRequest(`doc_idx=${docIdx} is out of range: the index has ${docs} documents (doc_idx 0..${docs - 1})`);
    const start = idx[2 * docIdx]!,
      end = idx[2 * docIdx + 1]!;
    if (end > shard.length)
      throw badRequest(
        `document ${docIdx} ends at token ${end}, past the shard's ${shard.length} tokens; the .idx does not match the shard`,
      );
    const tokens = new Uint32Array(Math.min(end - start, maxTokens));
    shard.readSync(start, tokens.length, tokens, 0);
    return {
      shard_path: canonical(rel),
      doc_idx: docIdx,
      num_documents: docs,
      start,
      end,
      tokens: Array.from(tokens),
      truncated: end - start > maxTokens,
      text: await decode(nearestManifest(root, file), tokens),
    };
  } finally {
    shard.close();
  }
}

/** The tokens as text with the manifest's tokenizer (a trailing EOS left out); null where nmoe lacks it. */
async function decode(m: Manifest | null, tokens: Uint32Array): Promise<string | null> {
  if (!m) return null;
  const tok = await loadTokenizer(m.tokenizer).catch(() => null);
  if (!tok) return null;
  return tok.decode(tokens.at(-1) === m.eos_token_id ? tokens.subarray(0, -1) : tokens);
}
