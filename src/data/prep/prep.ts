/**
 * `nmoe data prep`: source -> (worker threads: normalise, tokenize, filter, bucket) -> per-bucket shard writers ->
 * manifests, streaming in batches as the reference's PrepPipeline. Batches are tokenized in parallel but applied
 * strictly in input order, so the output bytes depend only on the input and the output parameters. Every
 * `checkpointEvery` records the writers are flushed and fsynced and the journal is written; an interrupted prep
 * (Ctrl-C, a crash, a kill) resumes from the last checkpoint when run again, and ends with the same bytes as an
 * uninterrupted one. The layout is the reference's: `<output>/shard_NNNN/<name>-<version>-shard-NNNNNN.{npy,idx}`.
 */
import { existsSync, readdirSync, rmSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { canonicalJson } from '../../config/fingerprint.ts';
import { createDir } from '../../util/dirs.ts';
import { UserError } from '../../util/errors.ts';
import { MANIFEST_SCHEMA_VERSION, type Manifest, type ShardEntry, readManifest, writeJsonAtomic } from '../manifest.ts';
import { createSource } from '../sources/index.ts';
import type { SourceRecord } from '../sources/source.ts';
import { type TextTokenizer, loadTokenizer, tokenizerHash } from '../tokenizers.ts';
import { BucketWriter, removeShardFiles } from './bucket-writer.ts';
import { type Journal, type PrepStats, emptyStats, readJournal, removeJournal, writeJournal } from './journal.ts';
import { EXACT_KEY_BYTES } from './filters.ts';
import { type OutputParams, type PrepOptions, checkPrepOptions, outputParams, workerTokenLimit } from './options.ts';
import { TokenizerPool } from './pool.ts';
import { SeenTexts } from './seen-texts.ts';
import { DocStatus, STATUS_VERDICT, type TokenizedBatch } from './tokenize.ts';

export const CREATOR_VERSION = 'nmoe 0.1.0';
/** Text per tokenizer batch, besides the reference's document count (--batch-size): keeps workers evenly fed. */
export const BATCH_CHARS = 1 << 20;
/**
 * Batches in flight per worker. Results are applied oldest first, so a worker that finishes early idles unless
 * several of its batches are queued behind a slow one.
 */
export const INFLIGHT_PER_WORKER = 4;
const EXAMPLES_PER_REASON = 3;

export interface PrepProgress {
  records: number;
  documents: number;
  tokens: number;
  bytesRead: number;
  totalBytes: number | null;
}

export interface PrepResult {
  output: string;
  manifest: Manifest | null;
  stats: PrepStats;
  /** Records skipped at the start because a previous run had applied them. */
  resumedAt: number;
  alreadyDone: boolean;
  interrupted: boolean;
  /** Seconds to load the tokenizer and start the worker threads (a fixed cost, included in the total). */
  startupSeconds: number;
}

export interface PrepHooks {
  progress?(p: PrepProgress): void;
  signal?: AbortSignal;
}

const bucketDir = (b: number) => `shard_${String(b).padStart(4, '0')}`;

/** Removes this prep's files from one bucket folder. */
function wipeBucket(dir: string, prefix: string): void {
  removeShardFiles(dir, prefix);
  rmSync(join(dir, 'manifest.json'), { force: true });
  if (readdirSync(dir).length === 0) rmdirSync(dir);
}

/** Removes this prep's files from `out` (shards, indexes, temp files, manifests, journal). */
function wipe(out: string, prefix: string): void {
  for (const d of readdirSync(out)) if (/^shard_\d{4}$/.test(d)) wipeBucket(join(out, d), prefix);
  rmSync(join(out, 'manifest.json'), { force: true });
  removeJournal(out);
  SeenTexts.remove(out);
}

/**
 * What applying a batch needs of a record. A document's text goes to the tokenizer and is not kept, so it dies young
 * instead of living (and being copied by the garbage collector) for as long as its batch is in flight.
 */
type Applied = { kind: 'doc'; id: string } | Extract<SourceRecord, { kind: 'skip' }>;

function recordName(r: Applied): string {
  return r.kind === 'doc' ? `doc ${r.id}` : `skip ${r.where}`;
}

class PrepRun {
  readonly stats: PrepStats;
  readonly writers = new Map<number, BucketWriter>();
  /** Keys of the documents written so far, with --dedup-exact. */
  readonly #seen: SeenTexts | null;
  readonly #tokenLimit: number | null;
  #lastRecord: string | null;
  #sinceCheckpoint = 0;

  constructor(
    readonly o: PrepOptions,
    readonly out: string,
    readonly prefix: string,
    readonly params: OutputParams,
    journal: Journal | null,
  ) {
    this.stats = journal?.stats ?? emptyStats();
    this.#tokenLimit = workerTokenLimit(o);
    this.#lastRecord = journal?.lastDocId ?? null;
    this.#seen = o.filters.dedupExact ? new SeenTexts(out, journal?.seenKeys ?? 0) : null;
    for (const [b, state] of Object.entries(journal?.buckets ?? {})) {
      this.writers.set(Number(b), new BucketWriter(join(out, bucketDir(Number(b))), prefix, o.tokensPerShard, state));
    }
    for (const d of readdirSync(out)) {
      const b = /^shard_(\d{4})$/.exec(d);
      if (b && !this.writers.has(Number(b[1]))) wipeBucket(join(out, d), prefix);
    }
  }

  get lastRecord(): string | null {
    return this.#lastRecord;
  }

  #writer(b: number): BucketWriter {
    let w = this.writers.get(b);
    if (!w)
      this.writers.set(b, (w = new BucketWriter(join(this.out, bucketDir(b)), this.prefix, this.o.tokensPerShard)));
    return w;
  }

  /** Writes document `i` of a batch, or counts why it is not written (`kept`: the gate's decision). */
  #applyDoc(r: TokenizedBatch, i: number, tokens: Uint32Array, kept: boolean): void {
    const s = this.stats,
      status = r.status[i]!;
    if (status === DocStatus.EMPTY) s.empty++;
    else if (status === DocStatus.SHORT) s.tooShort++;
    else if (status === DocStatus.HAS_EOS_BYTE) s.hasEosByte++;
    else if (STATUS_VERDICT.has(status)) s.filtered[STATUS_VERDICT.get(status)!]++;
    else if (!kept) s.filtered.hydra++;
    else if (this.#seen?.seenBefore(r.keys.subarray(i * EXACT_KEY_BYTES, (i + 1) * EXACT_KEY_BYTES)))
      s.filtered['exact-duplicate']++;
    else {
      if (status === DocStatus.TRUNCATED) s.truncated++;
      s.linesRemoved += r.linesRemoved[i]!;
      s.paragraphsRemoved += r.paragraphsRemoved[i]!;
      this.#writer(r.buckets[i]!).add(tokens);
      s.documents++;
      s.tokens += tokens.length;
      if (this.#tokenLimit !== null && s.tokens >= this.#tokenLimit) s.reachedLimit = true;
    }
  }

  /**
   * Applies one tokenized batch in record order (`kept`: the gate's decision per document, null without a gate);
   * stops at this worker's share of --max-tokens-total.
   */
  async apply(records: Applied[], r: TokenizedBatch, kept: boolean[] | null): Promise<void> {
    const s = this.stats;
    let doc = 0,
      offset = 0;
    for (const rec of records) {
      if (s.reachedLimit) return;
      s.records++;
      this.#lastRecord = recordName(rec);
      if (rec.kind === 'skip') {
        s.skipped[rec.reason]++;
        const ex = (s.examples[rec.reason] ??= []);
        if (ex.length < EXAMPLES_PER_REASON) ex.push(rec.where);
      } else {
        const i = doc++,
          length = r.lengths[i]!;
        this.#applyDoc(r, i, r.tokens.subarray(offset, offset + length), kept?.[i] ?? true);
        offset += length;
      }
      if (++this.#sinceCheckpoint >= this.o.checkpointEvery) await this.checkpoint();
    }
  }

  async checkpoint(): Promise<void> {
    this.#seen?.durable();
    await Promise.all([...this.writers.values()].map((w) => w.durable()));
    const buckets = Object.fromEntries([...this.writers].map(([b, w]) => [String(b), w.state()]));
    writeJournal(this.out, {
      journal_version: 1,
      params: this.params,
      lastDocId: this.#lastRecord,
      stats: this.stats,
      buckets,
      seenKeys: this.#seen?.size ?? 0,
    });
    this.#sinceCheckpoint = 0;
  }

  /** Finishes every bucket, all sealing at once, and writes the per-bucket and combined manifests. */
  async finish(tok: TextTokenizer, tokHash: string, sourceName: string): Promise<Manifest> {
    const all: ShardEntry[] = [];
    const base = {
      dataset: this.o.name,
      version: this.o.version,
      tokenizer: tok.name,
      vocab_size: tok.vocabSize,
      eos_token_id: tok.eosTokenId,
      dtype: 'uint32',
      created_at: new Date().toISOString(),
    };
    const stamps = {
      tokenizer_name: tok.name,
      tokenizer_hash: tokHash,
      tokenizer_version: tok.version,
      schema_version: MANIFEST_SCHEMA_VERSION,
      creator_version: CREATOR_VERSION,
    };
    const buckets = [...this.writers.keys()].sort((a, b) => a - b);
    const finished = await Promise.all(buckets.map((b) => this.writers.get(b)!.finish()));
    for (const [i, b] of buckets.entries()) {
      const shards = finished[i]!;
      const m: Manifest = {
        ...base,
        total_tokens: shards.reduce((n, s) => n + s.num_tokens, 0),
        total_documents: shards.reduce((n, s) => n + s.num_documents, 0),
        num_shards: shards.length,
        shards,
        source_info: { source: sourceName },
        ...stamps,
      };
      writeJsonAtomic(join(this.out, bucketDir(b), 'manifest.json'), m);
      all.push(
        ...shards.map((s) => ({
          ...s,
          path: `${bucketDir(b)}/${s.path}`,
          index_path: `${bucketDir(b)}/${s.index_path}`,
        })),
      );
    }
    const { examples: _examples, ...counts } = this.stats;
    const manifest: Manifest = {
      ...base,
      total_tokens: this.stats.tokens,
      total_documents: this.stats.documents,
      num_shards: all.length,
      shards: all,
      source_info: { source: sourceName, num_shard_dirs: buckets.length, prep_params: this.params, prep_stats: counts },
      ...stamps,
    };
    writeJsonAtomic(join(this.out, 'manifest.json'), manifest);
    removeJournal(this.out);
    SeenTexts.remove(this.out);
    return manifest;
  }
}

/** Decides between a fresh start, a resume and "already done" from what the output folder holds. */
function openOutput(
  o: PrepOptions,
  out: string,
  prefix: string,
  params: OutputParams,
): { journal: Journal | null; done: Manifest | null } {
  createDir(out, '--output', 'pick an --output folder you can write to');
  if (o.force) wipe(out, prefix);
  const journal = readJournal(out);
  const manifestPath = join(out, 'manifest.json');
  const same = (p: unknown) => canonicalJson(p) === canonicalJson(params);
  if (!journal && existsSync(manifestPath)) {
    const m = readManifest(manifestPath);
    if (same(m.source_info.prep_params)) return { journal: null, done: m };
    throw new UserError(
      `${out} already holds a finished prep made with other settings or inputs. Fix: add --force to replace it, or pick another --output.`,
    );
  }
  if (journal && !same(journal.params)) {
    throw new UserError(
      `${out} holds an interrupted prep made with other settings or inputs. ` +
        'Fix: rerun it with the same flags and inputs to resume, or add --force to start over.',
    );
  }
  if (!journal) wipe(out, prefix); // leftovers of a run stopped before its first checkpoint
  return { journal, done: null };
}

export async function runPrep(o: PrepOptions, hooks: PrepHooks = {}): Promise<PrepResult> {
  const t0 = performance.now();
  const tok = await loadTokenizer(o.tokenizer);
  checkPrepOptions(o, tok);
  const out = o.numWorkers > 1 ? join(o.output, `worker_${String(o.workerIndex).padStart(3, '0')}`) : o.output;
  const source = createSource(o);
  await source.open?.();
  const params = outputParams(o, tok, source.inputs());
  const prefix = `${o.name}-${o.version}`;
  const { journal, done } = openOutput(o, out, prefix, params);
  if (done)
    return {
      output: out,
      manifest: done,
      stats: emptyStats(),
      resumedAt: 0,
      alreadyDone: true,
      interrupted: false,
      startupSeconds: 0,
    };

  const run = new PrepRun(o, out, prefix, params, journal);
  const resumedAt = run.stats.records;
  const starting = TokenizerPool.start(o.workers, {
    tokenizer: tok.name,
    minTokens: o.minTokens,
    maxTokens: o.maxTokens,
    numShards: o.numShards,
    filters: o.filters,
  });
  // A fixed cost (the first encode on this thread builds the tokenizer's tables), paid while the workers start.
  const tokHash = tokenizerHash(tok);
  const pool = await starting;
  const startupSeconds = (performance.now() - t0) / 1000;
  const inflight: { records: Applied[]; result: Promise<TokenizedBatch>; kept: Promise<boolean[]> | null }[] = [];
  let batch: Applied[] = [],
    ids: string[] = [],
    texts: string[] = [],
    chars = 0;
  const progress = () =>
    hooks.progress?.({
      records: run.stats.records,
      documents: run.stats.documents,
      tokens: run.stats.tokens,
      bytesRead: source.bytesRead(),
      totalBytes: source.totalBytes,
    });
  const dispatch = () => {
    const kept = o.gate?.keep(ids, texts) ?? null;
    kept?.catch(() => {}); // its failure surfaces when the batch is applied, not as an unhandled rejection first
    inflight.push({ records: batch, result: pool.run(ids, texts), kept });
    batch = [];
    ids = [];
    texts = [];
    chars = 0;
  };
  const applyOldest = async () => {
    const head = inflight.shift()!;
    await run.apply(head.records, await head.result, head.kept && (await head.kept));
    progress();
  };
  try {
    let seen = 0;
    for await (const rec of source.records()) {
      if (seen++ < resumedAt) {
        if (seen === resumedAt && recordName(rec) !== run.lastRecord) {
          throw new UserError(
            `the input changed since the interrupted prep: record ${seen} is ${recordName(rec)}, ` +
              `the journal says ${run.lastRecord} [${out}]. Fix: add --force to start over.`,
          );
        }
        continue;
      }
      if (rec.kind === 'doc') {
        batch.push({ kind: 'doc', id: rec.id });
        ids.push(rec.id);
        texts.push(rec.text);
        chars += rec.text.length;
      } else batch.push(rec);
      if (ids.length >= o.batchSize || chars >= BATCH_CHARS) dispatch();
      while (inflight.length >= INFLIGHT_PER_WORKER * pool.size) await applyOldest();
      if (run.stats.reachedLimit || hooks.signal?.aborted) break;
    }
    if (seen < resumedAt) {
      throw new UserError(
        `the input changed since the interrupted prep: it now ends after ${seen} records, ` +
          `the journal had applied ${resumedAt} [${out}]. Fix: add --force to start over.`,
      );
    }
    if (!hooks.signal?.aborted) {
      if (batch.length > 0) dispatch();
      while (inflight.length > 0 && !run.stats.reachedLimit) await applyOldest();
    }
    if (hooks.signal?.aborted) {
      await run.checkpoint();
      return {
        output: out,
        manifest: null,
        stats: run.stats,
        resumedAt,
        alreadyDone: false,
        interrupted: true,
        startupSeconds,
      };
    }
    void pool.close(); // the workers are done: let them stop while the shards are sealed
    const manifest = await run.finish(tok, tokHash, source.name);
    return {
      output: out,
      manifest,
      stats: run.stats,
      resumedAt,
      alreadyDone: false,
      interrupted: false,
      startupSeconds,
    };
  } finally {
    for (const w of run.writers.values()) w.abandon();
    await pool.close();
  }
}
