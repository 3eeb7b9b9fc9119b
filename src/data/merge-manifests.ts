/**
 * `nmoe data merge-manifests <dir...> -o OUT`: one manifest.json in OUT that lists the shards of every prep output
 * given (each a folder below OUT holding a finished prep's manifest.json), as the reference merges the
 * `worker_NNN/` parts of a prep split over machines. The parts must share one tokenizer (name, vocab_size,
 * eos_token_id, and the tokenizer hash where both record one); shard paths become relative to OUT and the totals
 * are the sums. The parts stay below OUT because the loader reads the `.npy` files it finds below a folder: a
 * manifest listing shards elsewhere would describe data that training on OUT never sees.
 */
import { existsSync } from 'node:fs';
import { isAbsolute, join, relative, resolve } from 'node:path';
import { dataError } from './errors.ts';
import { MANIFEST_SCHEMA_VERSION, type Manifest, type ShardEntry, readManifest, writeJsonAtomic } from './manifest.ts';
import { CREATOR_VERSION } from './prep/prep.ts';

export const MERGE_SOURCE = 'merge-manifests';

export interface MergeOptions {
  dirs: string[];
  output: string;
  /** The merged dataset's name (default: the parts' common name, else "merged"). */
  name?: string;
}

const tokenizerOf = (m: Manifest) =>
  `tokenizer = ${JSON.stringify(m.tokenizer)}, vocab_size = ${m.vocab_size}, eos_token_id = ${m.eos_token_id}` +
  (m.tokenizer_hash ? ` (hash ${m.tokenizer_hash})` : '');

function sameTokenizer(a: Manifest, b: Manifest): boolean {
  const hashes = a.tokenizer_hash && b.tokenizer_hash ? a.tokenizer_hash === b.tokenizer_hash : true;
  return a.tokenizer === b.tokenizer && a.vocab_size === b.vocab_size && a.eos_token_id === b.eos_token_id && hashes;
}

function common<T>(values: T[], fallback: T): T {
  return values.every((v) => v === values[0]) ? values[0]! : fallback;
}

export function mergeManifests(o: MergeOptions): { path: string; manifest: Manifest } {
  const out = resolve(o.output);
  const target = join(out, 'manifest.json');
  if (existsSync(target) && readManifest(target).source_info.source !== MERGE_SOURCE) {
    throw dataError(
      'this manifest was written by a prep, and merging would replace it',
      target,
      'merge into a folder above the prep outputs (e.g. -o the folder that holds worker_000/, worker_001/, ...)',
    );
  }
  const parts = o.dirs.map((d) => {
    const dir = resolve(d);
    const rel = relative(out, dir);
    if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
      throw dataError(
        `${dir} is not below the output folder ${out}`,
        dir,
        'put the prep outputs in subfolders of -o (prep with -o OUT/part, or --num-workers), or give -o a folder above them',
      );
    }
    const path = join(dir, 'manifest.json');
    if (!existsSync(path)) {
      throw dataError(
        'no manifest.json: not the output of a finished `nmoe data prep`',
        dir,
        'give prep output folders (an interrupted prep: run it again to finish it first)',
      );
    }
    return { dir, rel, path, m: readManifest(path) };
  });
  const first = parts[0]!;
  for (const p of parts.slice(1)) {
    if (!sameTokenizer(first.m, p.m)) {
      throw dataError(
        `the parts were prepared with different tokenizers: ${first.path} has ${tokenizerOf(first.m)}, this one has ${tokenizerOf(p.m)}`,
        p.path,
        `merge only preps of one tokenizer, or re-prepare this one with \`nmoe data prep --tokenizer ${first.m.tokenizer}\``,
      );
    }
  }
  const shards: ShardEntry[] = [];
  const listed = new Set<string>();
  for (const p of parts) {
    for (const s of p.m.shards) {
      const path = relative(out, join(p.dir, s.path));
      if (listed.has(path))
        throw dataError(`shard ${path} is listed by two of the parts`, p.path, 'give each prep output once');
      listed.add(path);
      shards.push({ ...s, path, index_path: relative(out, join(p.dir, s.index_path)) });
    }
  }
  const m0 = first.m;
  const manifest: Manifest = {
    dataset:
      o.name ??
      common(
        parts.map((p) => p.m.dataset),
        'merged',
      ),
    version: common(
      parts.map((p) => p.m.version),
      'v1',
    ),
    tokenizer: m0.tokenizer,
    vocab_size: m0.vocab_size,
    eos_token_id: m0.eos_token_id,
    dtype: m0.dtype,
    created_at: new Date().toISOString(),
    total_tokens: shards.reduce((n, s) => n + s.num_tokens, 0),
    total_documents: shards.reduce((n, s) => n + s.num_documents, 0),
    num_shards: shards.length,
    shards,
    source_info: {
      source: MERGE_SOURCE,
      parts: parts.map((p) => ({
        manifest: join(p.rel, 'manifest.json'),
        dataset: p.m.dataset,
        total_tokens: p.m.total_tokens,
        total_documents: p.m.total_documents,
      })),
    },
    tokenizer_name: m0.tokenizer_name ?? m0.tokenizer,
    ...(parts.every((p) => p.m.tokenizer_hash) ? { tokenizer_hash: m0.tokenizer_hash } : {}),
    tokenizer_version: m0.tokenizer_version ?? null,
    schema_version: MANIFEST_SCHEMA_VERSION,
    creator_version: CREATOR_VERSION,
  };
  writeJsonAtomic(target, manifest);
  return { path: target, manifest };
}
