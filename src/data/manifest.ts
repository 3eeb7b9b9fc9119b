/**
 * manifest.json: the reference's fields in its order (as `Manifest` below lists them), so its `load_manifest` reads
 * ours, plus nmoe's stamps (tokenizer name, hash and version, schema version, creator version). Readers accept the
 * reference's manifests, which lack the stamps. Every JSON file is written atomically: a temp file, then rename.
 * `verifyManifest` checks that every shard and index exists and, on request, re-hashes each shard.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { dataError, dataProblem } from './errors.ts';
import { readIndex } from './idx.ts';
import { NpyShard } from './shard.ts';

export const MANIFEST_SCHEMA_VERSION = 1;

export interface ShardEntry {
  path: string;
  index_path: string;
  num_tokens: number;
  num_documents: number;
  /** SHA-256 of the .npy file, hex. */
  checksum: string;
}

export interface Manifest {
  dataset: string;
  version: string;
  tokenizer: string;
  vocab_size: number;
  eos_token_id: number;
  dtype: string;
  created_at: string;
  total_tokens: number;
  total_documents: number;
  num_shards: number;
  shards: ShardEntry[];
  source_info: Record<string, unknown>;
  // nmoe stamps (absent in the reference's manifests)
  tokenizer_name?: string;
  tokenizer_hash?: string;
  tokenizer_version?: string | null;
  schema_version?: number;
  creator_version?: string;
}

export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(tmp, path);
}

const REQUIRED: [keyof Manifest, 'string' | 'number' | 'object'][] = [
  ['dataset', 'string'],
  ['version', 'string'],
  ['tokenizer', 'string'],
  ['vocab_size', 'number'],
  ['eos_token_id', 'number'],
  ['dtype', 'string'],
  ['total_tokens', 'number'],
  ['total_documents', 'number'],
  ['num_shards', 'number'],
  ['shards', 'object'],
];

export function readManifest(path: string): Manifest {
  const fix = 're-run `nmoe data prep`, or restore manifest.json';
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    throw dataError(
      e.code === 'ENOENT' ? 'manifest not found' : `manifest is not valid JSON (${e.message})`,
      path,
      e.code === 'ENOENT' ? 'give the path of a manifest.json written by `nmoe data prep`' : fix,
    );
  }
  const m = raw as Record<string, unknown>;
  for (const [key, type] of REQUIRED) {
    if (typeof m[key] !== type) throw dataError(`manifest field "${key}" is missing or not a ${type}`, path, fix);
  }
  for (const [i, s] of (m.shards as ShardEntry[]).entries()) {
    if (typeof s?.path !== 'string' || typeof s.num_tokens !== 'number' || typeof s.checksum !== 'string') {
      throw dataError(`manifest shard entry ${i} lacks path, num_tokens or checksum`, path, fix);
    }
  }
  return { source_info: {}, created_at: '', ...m } as unknown as Manifest;
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 22 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export interface VerifyReport {
  shards: number;
  tokens: number;
  problems: string[];
}

/**
 * Existence, header and length of every shard and index; with `checksums`, the SHA-256 of each shard too. Each
 * problem is one line with the file and its fix. A prep that finished says "already done" when run again, so
 * re-creating lost or damaged shards takes --force; a lost or stale index alone is rebuilt from its shard.
 */
export async function verifyManifest(
  path: string,
  opts: { checksums: boolean; onShard?: (i: number) => void },
): Promise<VerifyReport> {
  const m = readManifest(path);
  const base = dirname(path);
  const problems: string[] = [];
  const reprep = 'restore it, or re-run the `nmoe data prep` that wrote this data with --force';
  let tokens = 0;
  for (const [i, s] of m.shards.entries()) {
    opts.onShard?.(i);
    const shardPath = join(base, s.path);
    if (!existsSync(shardPath)) {
      problems.push(dataProblem(`missing shard ${s.path}`, shardPath, reprep));
      continue;
    }
    try {
      const shard = NpyShard.open(shardPath);
      shard.close();
      if (shard.length !== s.num_tokens)
        problems.push(
          dataProblem(`${s.path}: ${shard.length} tokens, the manifest says ${s.num_tokens}`, shardPath, reprep),
        );
      tokens += shard.length;
    } catch (err) {
      problems.push((err as Error).message);
      continue;
    }
    const idxPath = join(base, s.index_path);
    const reindex = `rebuild it with \`nmoe data regenerate-index ${shardPath} --eos-token-id ${m.eos_token_id}\``;
    if (!existsSync(idxPath)) problems.push(dataProblem(`missing index ${s.index_path}`, idxPath, reindex));
    else {
      try {
        const docs = readIndex(idxPath).length / 2;
        if (docs !== s.num_documents)
          problems.push(
            dataProblem(`${s.index_path}: ${docs} documents, the manifest says ${s.num_documents}`, idxPath, reindex),
          );
      } catch (err) {
        problems.push((err as Error).message);
      }
    }
    if (opts.checksums) {
      const actual = await sha256File(shardPath);
      if (actual !== s.checksum)
        problems.push(
          dataProblem(`${s.path}: checksum mismatch, expected ${s.checksum}, got ${actual}`, shardPath, reprep),
        );
    }
  }
  const fixManifest = 'restore manifest.json, or re-run the `nmoe data prep` that wrote it with --force';
  if (m.num_shards !== m.shards.length)
    problems.push(
      dataProblem(`num_shards is ${m.num_shards} but ${m.shards.length} shards are listed`, path, fixManifest),
    );
  const listed = m.shards.reduce((n, s) => n + s.num_tokens, 0);
  if (listed !== m.total_tokens)
    problems.push(
      dataProblem(`total_tokens is ${m.total_tokens} but the shards add up to ${listed}`, path, fixManifest),
    );
  return { shards: m.shards.length, tokens, problems };
}
