/**
 * The .idx document index beside each shard, as the reference writes it (struct "<8sQQQ"): a 32-byte little-endian
 * header (magic "NMOEIDX\0", version 1, document count, reserved 0), then one (start, end) uint64 pair per document, in
 * tokens, end exclusive and including the document's EOS. `regenerateIndex` rebuilds it from a shard by scanning for
 * EOS in chunks, so a shard of any size is indexed in bounded memory.
 */
import { closeSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { dataError } from './errors.ts';
import { NpyShard } from './shard.ts';

export const IDX_MAGIC = Buffer.from('NMOEIDX\0', 'latin1');
export const IDX_VERSION = 1;
export const IDX_HEADER_BYTES = 32;

export function idxHeader(numDocs: number): Buffer {
  const h = Buffer.alloc(IDX_HEADER_BYTES);
  IDX_MAGIC.copy(h, 0);
  h.writeBigUInt64LE(BigInt(IDX_VERSION), 8);
  h.writeBigUInt64LE(BigInt(numDocs), 16);
  return h;
}

/** (start, end) pairs as a little-endian uint64 body. */
export function idxEntries(pairs: ArrayLike<number>): Buffer {
  const body = Buffer.alloc(8 * pairs.length);
  for (let i = 0; i < pairs.length; i++) body.writeBigUInt64LE(BigInt(pairs[i]!), 8 * i);
  return body;
}

/** Reads an index: a flat array [start0, end0, start1, end1, ...]. */
export function readIndex(path: string): Float64Array {
  const buf = readFileSync(path);
  const fix = 'rebuild it with `nmoe data regenerate-index <shard.npy> --eos-token-id N`';
  if (buf.length < IDX_HEADER_BYTES || !buf.subarray(0, 8).equals(IDX_MAGIC)) {
    throw dataError('not an nmoe index: the magic "NMOEIDX\\0" is missing', `${path}, byte 0`, fix);
  }
  const version = Number(buf.readBigUInt64LE(8));
  if (version !== IDX_VERSION)
    throw dataError(`index version ${version} is not supported (only ${IDX_VERSION})`, `${path}, byte 8`, fix);
  const docs = Number(buf.readBigUInt64LE(16));
  if (buf.length !== IDX_HEADER_BYTES + 16 * docs) {
    throw dataError(
      `index header says ${docs} documents (${IDX_HEADER_BYTES + 16 * docs} bytes) but the file has ${buf.length} bytes`,
      `${path}, byte 16`,
      fix,
    );
  }
  const out = new Float64Array(2 * docs);
  for (let i = 0; i < out.length; i++) out[i] = Number(buf.readBigUInt64LE(IDX_HEADER_BYTES + 8 * i));
  return out;
}

export function indexPathFor(shardPath: string): string {
  return shardPath.replace(/\.npy$/, '') + '.idx';
}

export interface RegeneratedIndex {
  path: string;
  documents: number;
  /** Tokens after the last EOS: they belong to no document (the shard was cut mid-document). */
  trailingTokens: number;
}

/** Rebuilds `<shard>.idx` from the EOS positions in the shard; written to a temp file, then renamed. */
export function regenerateIndex(shardPath: string, eosTokenId: number, chunkTokens = 1 << 22): RegeneratedIndex {
  const shard = NpyShard.open(
    shardPath,
    'give regenerate-index the path of a .npy shard, e.g. <output>/shard_0000/<name>-v1-shard-000000.npy ' +
      '(`nmoe data verify <output>/manifest.json` names the shards whose index is missing)',
  );
  const path = indexPathFor(shardPath);
  const fd = openSync(`${path}.tmp`, 'w');
  let docs = 0;
  let start = 0;
  try {
    writeSync(fd, idxHeader(0));
    const chunk = new Uint32Array(Math.min(chunkTokens, Math.max(1, shard.length)));
    for (let base = 0; base < shard.length; base += chunk.length) {
      const n = Math.min(chunk.length, shard.length - base);
      shard.readSync(base, n, chunk, 0);
      const pairs: number[] = [];
      for (let i = 0; i < n; i++) {
        if (chunk[i] === eosTokenId) {
          pairs.push(start, base + i + 1);
          start = base + i + 1;
        }
      }
      if (pairs.length > 0) writeSync(fd, idxEntries(pairs));
      docs += pairs.length / 2;
    }
    writeSync(fd, idxHeader(docs), 0, IDX_HEADER_BYTES, 0);
  } finally {
    closeSync(fd);
    shard.close();
  }
  renameSync(`${path}.tmp`, path);
  return { path, documents: docs, trailingTokens: shard.length - start };
}
