/**
 * "Global stream, local slice", the reference's DeterministicLoader: each step walks all batch_size global sequences;
 * before each it advances the stage once every source met its quota, then picks a source by smooth weighted round-robin
 * (skipping sources at quota) and moves that source's cursor by seq_len + 1; only the sequences in this rank's slice
 * are read. Every rank therefore holds the same state, which is the reference's state_dict plus a plan hash and a pass
 * count (when the last stage is used up the plan starts again from its first stage, with the sources rewound: the data
 * wraps instead of ending).
 *
 * Prefetch: the next `prefetch` steps are planned ahead and read on libuv's thread pool while the current step
 * trains. `state()` is always the state after the last batch handed out, never after a prefetched one, so saving
 * and restoring is exact whatever is in flight; a batch whose background read has not finished is read directly.
 */
import { dataError, type Warn } from '../errors.ts';
import type { TokenArray } from '../shard.ts';
import { type Cursor, START, type Segment, type TokenStream, readSegments } from './stream.ts';

export interface LoaderSource {
  id: string;
  weight_fp: number;
  quota_sequences: number;
  stream: TokenStream;
}

export interface LoaderStage {
  stage_id: string;
  sources: LoaderSource[];
}

export interface LoaderState {
  version: 1;
  plan_hash: string;
  pass: number;
  current_stage: string;
  stage_index: number;
  global_sequence_index: number;
  accumulators: number[];
  emitted_sequences: Record<string, number>;
  cursors: Record<string, Cursor>;
}

export interface Batch {
  /** i32 [localBatch * seqLen]: inputs and their next-token targets. */
  inputs: Int32Array;
  targets: Int32Array;
  localBatch: number;
}

export interface LoaderOptions {
  seqLen: number;
  globalBatch: number;
  /** The steps of data the plan is for (the run's step count). */
  steps: number;
  rank: number;
  world: number;
  planHash: string;
  vocabSize: number;
  /** Steps read ahead in the background (0: none). */
  prefetch: number;
  warn: Warn;
}

interface Planned {
  segments: Segment[];
  stateAfter: LoaderState;
  buf: Int32Array;
  /** A background read was issued; `pending` of its segments are still in flight. */
  reading: boolean;
  pending: number;
  failed: boolean;
}

export class DeterministicLoader {
  readonly localBatch: number;
  readonly #sliceStart: number;
  #state: LoaderState;
  #delivered: LoaderState;
  readonly #queue: Planned[] = [];

  constructor(
    readonly stages: LoaderStage[],
    readonly o: LoaderOptions,
  ) {
    const q = Math.floor(o.globalBatch / o.world),
      r = o.globalBatch % o.world;
    this.localBatch = q + (o.rank < r ? 1 : 0);
    this.#sliceStart = o.rank * q + Math.min(o.rank, r);
    this.#state = this.#stageState(0, 0, 0);
    this.#delivered = structuredClone(this.#state);
  }

  /** The run's step count: the config's, or derived from the flow budget (build.ts). */
  get steps(): number {
    return this.o.steps;
  }

  /** Tokens in the first stage's sources (for the startup line). */
  get totalTokens(): number {
    return this.stages[0]!.sources.reduce((n, s) => n + s.stream.totalTokens, 0);
  }

  #stageState(index: number, pass: number, globalIndex: number): LoaderState {
    const st = this.stages[index]!;
    return {
      version: 1,
      plan_hash: this.o.planHash,
      pass,
      current_stage: st.stage_id,
      stage_index: index,
      global_sequence_index: globalIndex,
      accumulators: st.sources.map(() => 0),
      emitted_sequences: Object.fromEntries(st.sources.map((s) => [s.id, 0])),
      cursors: Object.fromEntries(st.sources.map((s) => [s.id, { ...START }])),
    };
  }

  #nextSource(): LoaderSource {
    let s = this.#state;
    let stage = this.stages[s.stage_index]!;
    const done = (st: LoaderStage) => st.sources.every((src) => s.emitted_sequences[src.id]! >= src.quota_sequences);
    if (done(stage)) {
      const last = s.stage_index + 1 === this.stages.length;
      this.#state = s = this.#stageState(
        last ? 0 : s.stage_index + 1,
        last ? s.pass + 1 : s.pass,
        s.global_sequence_index,
      );
      stage = this.stages[s.stage_index]!;
      if (done(stage))
        throw dataError(
          `stage ${stage.stage_id} has no sequences to give`,
          'data plan',
          'check the mixture: every stage needs sources with quota',
        );
    }
    const total = stage.sources.reduce((n, src) => n + src.weight_fp, 0) || 1;
    // Smooth weighted round-robin; a source at quota is skipped (the reference gives up after 2n picks, which can
    // fail while a light source still has quota; picking on finds it within total/weight picks).
    for (;;) {
      let k = 0;
      for (let i = 0; i < stage.sources.length; i++) {
        s.accumulators[i]! += stage.sources[i]!.weight_fp;
        if (s.accumulators[i]! > s.accumulators[k]!) k = i;
      }
      s.accumulators[k]! -= total;
      const src = stage.sources[k]!;
      if (s.emitted_sequences[src.id]! < src.quota_sequences) return src;
    }
  }

  /** Plans one global step: moves every cursor, records this rank's windows. */
  #planStep(): Planned {
    const S1 = this.o.seqLen + 1;
    const segments: Segment[] = [];
    for (let g = 0; g < this.o.globalBatch; g++) {
      const src = this.#nextSource();
      const row = g - this.#sliceStart;
      const mine = row >= 0 && row < this.localBatch;
      const s = this.#state;
      s.cursors[src.id] = src.stream.plan(s.cursors[src.id]!, S1, mine ? segments : null, row * S1);
      s.emitted_sequences[src.id]!++;
      s.global_sequence_index++;
    }
    return {
      segments,
      stateAfter: structuredClone(this.#state),
      buf: new Int32Array(this.localBatch * S1),
      reading: false,
      pending: 0,
      failed: false,
    };
  }

  #startRead(p: Planned): void {
    p.reading = true;
    p.pending = p.segments.length;
    for (const s of p.segments) {
      s.file.readAsync(s.pos, s.count, p.buf, s.offset, (err) => {
        p.pending--;
        if (err) p.failed = true;
      });
    }
  }

  next(): Batch {
    const p = this.#queue.shift() ?? this.#planStep();
    if (!p.reading || p.pending > 0 || p.failed) {
      p.buf = new Int32Array(p.buf.length); // a late background read must not land in the batch we return
      readSegments(p.segments, p.buf);
    }
    this.#check(p.buf, p.segments);
    if (p.stateAfter.pass > this.#delivered.pass) {
      this.o.warn(
        `the data plan was used up after ${this.#delivered.global_sequence_index} sequences; ` +
          `it starts again from stage ${this.stages[0]!.stage_id} (pass ${p.stateAfter.pass + 1})`,
      );
    }
    this.#delivered = p.stateAfter;
    while (this.#queue.length < this.o.prefetch) {
      const ahead = this.#planStep();
      this.#startRead(ahead);
      this.#queue.push(ahead);
    }
    return this.#split(p.buf);
  }

  /** Every id must index the embedding; a bad one names its file and position. */
  #check(buf: TokenArray, segments: Segment[]): void {
    const V = this.o.vocabSize;
    for (const s of segments) {
      for (let i = s.offset; i < s.offset + s.count; i++) {
        const t = buf[i]!;
        if (t < 0 || t >= V) {
          throw dataError(
            `token id ${t >>> 0} is outside the vocabulary (vocab_size ${V})`,
            `${s.file.path}, token ${s.pos + i - s.offset}`,
            'the shard is corrupt or was made with another tokenizer: check it with `nmoe data inspect`, and match tokenizer / vocab_size to the data',
          );
        }
      }
    }
  }

  #split(buf: Int32Array): Batch {
    const S = this.o.seqLen;
    const inputs = new Int32Array(this.localBatch * S);
    const targets = new Int32Array(this.localBatch * S);
    for (let r = 0; r < this.localBatch; r++) {
      const row = buf.subarray(r * (S + 1), (r + 1) * (S + 1));
      inputs.set(row.subarray(0, S), r * S);
      targets.set(row.subarray(1), r * S);
    }
    return { inputs, targets, localBatch: this.localBatch };
  }

  state(): LoaderState {
    return structuredClone(this.#delivered);
  }

  load(saved: LoaderState): void {
    const fix = 'resume with the data config the state was saved with, or start the data from the beginning';
    if (saved.version !== 1)
      throw dataError(`loader state version ${saved.version} is not supported`, 'loader state', fix);
    if (saved.plan_hash !== this.o.planHash) {
      throw dataError(
        `loader state belongs to data plan ${saved.plan_hash.slice(0, 12)}, this run's plan is ${this.o.planHash.slice(0, 12)}`,
        'loader state',
        fix,
      );
    }
    const stage = this.stages[saved.stage_index];
    if (!stage || stage.stage_id !== saved.current_stage) {
      throw dataError(
        `loader state is in stage ${saved.current_stage} (#${saved.stage_index}), which this plan lacks`,
        'loader state',
        fix,
      );
    }
    for (const src of stage.sources) {
      const c = saved.cursors[src.id];
      if (!c || saved.emitted_sequences[src.id] === undefined || !src.stream.fits(c)) {
        throw dataError(
          `loader state cursor ${JSON.stringify(c)} does not fit source ${src.id} (${src.stream.files.length} files)`,
          'loader state',
          fix,
        );
      }
    }
    this.#queue.length = 0;
    this.#state = structuredClone(saved);
    this.#delivered = structuredClone(saved);
  }

  close(): void {
    this.#queue.length = 0;
    for (const st of this.stages) for (const src of st.sources) for (const f of src.stream.files) f.close();
  }
}
