/**
 * Writes one hash bucket's documents into `<name>-<version>-shard-NNNNNN.{npy,idx}` files, starting a new shard
 * when the next document would pass `tokensPerShard` (the reference's ShardedWriter). A shard grows as
 * `.npy.tmp`/`.idx.tmp` with zeroed headers; finishing it writes the real headers, hashes the data (from the page
 * cache), then seals it in the background: fsync, and rename index then data, so a `.npy` exists only when complete.
 * Seals run on libuv's thread pool, every bucket's at once, while the main thread goes on, instead of blocking it
 * for two fsyncs per shard. `state()` is what prep's journal records, after `durable()` has waited for the seals;
 * constructing from a state truncates the files back to it (or deletes what came after it), which is how an
 * interrupted prep resumes.
 */
import { createHash } from 'node:crypto';
import {
  close,
  closeSync,
  existsSync,
  fsync,
  ftruncateSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { rename } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { dataError } from '../errors.ts';
import { IDX_HEADER_BYTES, idxEntries, idxHeader } from '../idx.ts';
import type { ShardEntry } from '../manifest.ts';
import { NPY_HEADER_BYTES, npyHeader } from '../npy.ts';
import { makeDirs } from '../../util/dirs.ts';

export interface BucketState {
  /** Index of the shard being written. */
  next: number;
  /** Finished shards, paths relative to the bucket folder. */
  shards: ShardEntry[];
  /** Tokens and documents already in the open shard. */
  tokens: number;
  docs: number;
}

const BUFFER_TOKENS = 1 << 16;
const FIX_RESUME = 'run the prep again with --force to start over';

const fsyncAsync = promisify(fsync);
const closeAsync = promisify(close);

/** One read buffer for every hash: a fresh zero-filled one per shard cost more than the hashing of small shards. */
let hashBuffer: Buffer | null = null;

function sha256FileSync(path: string): string {
  hashBuffer ??= Buffer.allocUnsafe(1 << 22);
  const hash = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    for (let n; (n = readSync(fd, hashBuffer, 0, hashBuffer.length, null)) > 0;) hash.update(hashBuffer.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** Makes a finished shard (headers written) durable, then visible: fsync and close both files, rename index then data. */
async function seal(npy: number, idx: number, base: string): Promise<void> {
  await Promise.all(
    [npy, idx].map(async (fd) => {
      await fsyncAsync(fd);
      await closeAsync(fd);
    }),
  );
  await rename(`${base}.idx.tmp`, `${base}.idx`);
  await rename(`${base}.npy.tmp`, `${base}.npy`);
}

/** The shard files of `prefix` in `dir`: index -> file names. */
function shardFiles(dir: string, prefix: string): Map<number, string[]> {
  const re = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-shard-(\\d{6})\\.(npy|idx)(\\.tmp)?$`);
  const out = new Map<number, string[]>();
  if (!existsSync(dir)) return out;
  for (const f of readdirSync(dir)) {
    const m = re.exec(f);
    if (m) out.set(Number(m[1]), [...(out.get(Number(m[1])) ?? []), f]);
  }
  return out;
}

/** Deletes every shard file of `prefix` in `dir` (a bucket the journal does not know). */
export function removeShardFiles(dir: string, prefix: string): void {
  for (const files of shardFiles(dir, prefix).values()) for (const f of files) rmSync(join(dir, f));
}

export class BucketWriter {
  readonly #state: BucketState;
  readonly #buf = new Uint32Array(BUFFER_TOKENS);
  #bufUsed = 0;
  #idxPending: number[] = [];
  /** Finished shards still being sealed, in shard order; `#settle` moves them into the state. */
  #sealing: Promise<ShardEntry>[] = [];
  #npy: number | null = null;
  #idx: number | null = null;
  /** Tokens and documents of the open shard already on disk. */
  #flushedTokens = 0;
  #flushedDocs = 0;

  constructor(
    readonly dir: string,
    readonly prefix: string,
    readonly tokensPerShard: number,
    restored?: BucketState,
  ) {
    makeDirs(dir);
    this.#state = restored ? structuredClone(restored) : { next: 0, shards: [], tokens: 0, docs: 0 };
    if (restored) this.#restore();
  }

  #name(i: number): string {
    return `${this.prefix}-shard-${String(i).padStart(6, '0')}`;
  }

  #restore(): void {
    const s = this.#state;
    for (const e of s.shards) {
      if (!existsSync(join(this.dir, e.path)))
        throw dataError(`finished shard ${e.path} is missing`, this.dir, FIX_RESUME);
    }
    for (const [i, files] of shardFiles(this.dir, this.prefix)) {
      if (i > s.next || (i === s.next && s.docs === 0)) for (const f of files) rmSync(join(this.dir, f));
    }
    if (s.docs === 0) return;
    const base = join(this.dir, this.#name(s.next));
    for (const ext of ['npy', 'idx']) {
      if (!existsSync(`${base}.${ext}.tmp`) && existsSync(`${base}.${ext}`))
        renameSync(`${base}.${ext}`, `${base}.${ext}.tmp`);
      if (!existsSync(`${base}.${ext}.tmp`))
        throw dataError(`the open shard ${base}.${ext}.tmp is missing`, this.dir, FIX_RESUME);
    }
    this.#npy = openSync(`${base}.npy.tmp`, 'r+');
    this.#idx = openSync(`${base}.idx.tmp`, 'r+');
    ftruncateSync(this.#npy, NPY_HEADER_BYTES + 4 * s.tokens);
    ftruncateSync(this.#idx, IDX_HEADER_BYTES + 16 * s.docs);
    this.#flushedTokens = s.tokens;
    this.#flushedDocs = s.docs;
  }

  /** Appends one document (its tokens, EOS included). */
  add(doc: Uint32Array): void {
    const s = this.#state;
    if (s.tokens + doc.length > this.tokensPerShard) {
      if (s.docs === 0) {
        throw dataError(
          `a document of ${doc.length} tokens (with EOS) does not fit in a shard of ${this.tokensPerShard}`,
          this.dir,
          'raise --tokens-per-shard or lower --max-tokens',
        );
      }
      this.#finishShard();
    }
    if (this.#npy === null) this.#open();
    this.#idxPending.push(s.tokens, s.tokens + doc.length);
    s.tokens += doc.length;
    s.docs++;
    if (this.#bufUsed + doc.length > this.#buf.length) this.#flushTokens();
    if (doc.length > this.#buf.length) this.#write(doc);
    else {
      this.#buf.set(doc, this.#bufUsed);
      this.#bufUsed += doc.length;
    }
  }

  #open(): void {
    const base = join(this.dir, this.#name(this.#state.next));
    this.#npy = openSync(`${base}.npy.tmp`, 'w');
    this.#idx = openSync(`${base}.idx.tmp`, 'w');
    writeSync(this.#npy, Buffer.alloc(NPY_HEADER_BYTES));
    writeSync(this.#idx, Buffer.alloc(IDX_HEADER_BYTES));
    this.#flushedTokens = 0;
    this.#flushedDocs = 0;
  }

  #write(tokens: Uint32Array): void {
    const bytes = new Uint8Array(tokens.buffer, tokens.byteOffset, tokens.byteLength);
    writeSync(this.#npy!, bytes, 0, bytes.length, NPY_HEADER_BYTES + 4 * this.#flushedTokens);
    this.#flushedTokens += tokens.length;
  }

  #flushTokens(): void {
    if (this.#bufUsed > 0) this.#write(this.#buf.subarray(0, this.#bufUsed));
    this.#bufUsed = 0;
  }

  /** Writes buffered tokens and index entries. */
  flush(): void {
    if (this.#npy === null) return;
    this.#flushTokens();
    if (this.#idxPending.length > 0) {
      writeSync(
        this.#idx!,
        idxEntries(this.#idxPending),
        0,
        8 * this.#idxPending.length,
        IDX_HEADER_BYTES + 16 * this.#flushedDocs,
      );
      this.#flushedDocs += this.#idxPending.length / 2;
      this.#idxPending = [];
    }
  }

  /** Flushes, fsyncs the open shard and waits for every finished shard's seal, so that `state()` is on disk. */
  async durable(): Promise<void> {
    this.flush();
    const open = this.#npy === null ? [] : [this.#npy, this.#idx!];
    await Promise.all([...open.map((fd) => fsyncAsync(fd)), this.#settle()]);
  }

  /** The state for the journal; call `durable()` first. */
  state(): BucketState {
    return structuredClone(this.#state);
  }

  async #settle(): Promise<void> {
    for (const sealed of this.#sealing.splice(0)) this.#state.shards.push(await sealed);
  }

  #finishShard(): void {
    const s = this.#state;
    this.flush();
    writeSync(this.#npy!, npyHeader(s.tokens), 0, NPY_HEADER_BYTES, 0);
    writeSync(this.#idx!, idxHeader(s.docs), 0, IDX_HEADER_BYTES, 0);
    const name = this.#name(s.next);
    const base = join(this.dir, name);
    const entry = {
      path: `${name}.npy`,
      index_path: `${name}.idx`,
      num_tokens: s.tokens,
      num_documents: s.docs,
      checksum: sha256FileSync(`${base}.npy.tmp`),
    };
    const sealed = seal(this.#npy!, this.#idx!, base).then(() => entry);
    sealed.catch(() => {}); // #settle awaits it; this only keeps an abandoned prep's failure from going unhandled
    this.#sealing.push(sealed);
    this.#npy = this.#idx = null;
    s.next++;
    s.tokens = s.docs = 0;
  }

  /** Finishes the open shard and waits for every seal; returns every shard of the bucket. */
  async finish(): Promise<ShardEntry[]> {
    if (this.#state.docs > 0) this.#finishShard();
    await this.#settle();
    return this.#state.shards;
  }

  /** Closes files without finishing (an interrupted prep). */
  abandon(): void {
    for (const fd of [this.#npy, this.#idx]) if (fd !== null) closeSync(fd);
    this.#npy = this.#idx = null;
  }
}
