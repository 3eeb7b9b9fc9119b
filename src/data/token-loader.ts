/**
 * "Global stream, local slice" (inventory §8.4), over in-memory token sources. A cursor (file, position, wrap
 * count) walks the concatenated sources; each step takes batch_size windows of seq_len + 1 tokens, windows do not
 * overlap and may cross source boundaries, and the stream wraps to the start when it runs out. Every rank advances
 * the same global cursor and keeps only its slice of the step's sequences, so the state is identical on all ranks.
 */
export interface Cursor {
  file: number;
  pos: number;
  wrap: number;
}

export interface LoaderState {
  version: 1;
  cursor: Cursor;
  /** Sequences emitted so far (globally). */
  sequences: number;
}

export interface Batch {
  /** i32 [local batch * seq_len]: inputs and next-token targets. */
  inputs: Int32Array;
  targets: Int32Array;
  localBatch: number;
}

export class TokenLoader {
  #cursor: Cursor = { file: 0, pos: 0, wrap: 0 };
  #sequences = 0;

  constructor(
    readonly sources: readonly Int32Array[],
    readonly seqLen: number,
    readonly globalBatch: number,
    readonly rank = 0,
    readonly world = 1,
  ) {
    const total = sources.reduce((n, s) => n + s.length, 0);
    if (total < seqLen + 1) throw new Error(`the data holds ${total} tokens, fewer than one window of seq_len + 1 = ${seqLen + 1}`);
  }

  /** This rank's share of the global batch: the first (global % world) ranks take one more. */
  get localBatch(): number {
    const q = Math.floor(this.globalBatch / this.world);
    return q + (this.rank < this.globalBatch % this.world ? 1 : 0);
  }

  get #sliceStart(): number {
    const q = Math.floor(this.globalBatch / this.world), r = this.globalBatch % this.world;
    return this.rank * q + Math.min(this.rank, r);
  }

  next(): Batch {
    const S = this.seqLen;
    const local = this.localBatch;
    const inputs = new Int32Array(local * S);
    const targets = new Int32Array(local * S);
    const window = new Int32Array(S + 1);
    const start = this.#sliceStart;
    for (let g = 0; g < this.globalBatch; g++) {
      const mine = g >= start && g < start + local;
      this.#take(S + 1, mine ? window : null);
      if (mine) {
        const row = g - start;
        inputs.set(window.subarray(0, S), row * S);
        targets.set(window.subarray(1), row * S);
      }
    }
    this.#sequences += this.globalBatch;
    return { inputs, targets, localBatch: local };
  }

  /** Advances the cursor by n tokens, copying them into `out` when given. */
  #take(n: number, out: Int32Array | null): void {
    let filled = 0;
    while (filled < n) {
      const src = this.sources[this.#cursor.file]!;
      const k = Math.min(n - filled, src.length - this.#cursor.pos);
      if (out) out.set(src.subarray(this.#cursor.pos, this.#cursor.pos + k), filled);
      filled += k;
      this.#cursor.pos += k;
      if (this.#cursor.pos === src.length) {
        this.#cursor = { file: this.#cursor.file + 1, pos: 0, wrap: this.#cursor.wrap };
        if (this.#cursor.file === this.sources.length) this.#cursor = { file: 0, pos: 0, wrap: this.#cursor.wrap + 1 };
      }
    }
  }

  state(): LoaderState {
    return { version: 1, cursor: { ...this.#cursor }, sequences: this.#sequences };
  }

  restore(s: LoaderState): void {
    if (s.version !== 1) throw new Error(`loader state version ${s.version} is not supported`);
    if (s.cursor.file >= this.sources.length || s.cursor.pos > this.sources[s.cursor.file]!.length) {
      throw new Error(`loader state cursor ${JSON.stringify(s.cursor)} does not fit the data (${this.sources.length} sources)`);
    }
    this.#cursor = { ...s.cursor };
    this.#sequences = s.sequences;
  }
}
