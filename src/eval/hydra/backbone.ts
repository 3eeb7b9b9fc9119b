/**
 * The frozen backbone HYDRA's heads read: any model `loadModel` opens (nmoe checkpoints and their Hugging Face
 * exports), on the backend it runs on. A batch of documents is right-padded to its longest one and run through
 * the model's own blocks (Decoder.residual/resume) up to a layer and no further; attention is causal, so the
 * padding changes no real position's states, and each document's rows come back to the host unpadded. A batch
 * advances layer by layer on demand, and `subset` carries some of its documents on alone from the host copy of
 * their states: that is how the grader exits early, running the judge layer's blocks only for the documents the
 * probe passes.
 */
import type { Config } from '../../config/schema.ts';
import { normalizeText } from '../../data/text.ts';
import type { TextTokenizer } from '../../data/tokenizers.ts';
import { Decoder } from '../../model/decoder.ts';
import type { Tensor } from '../../tensor/tensor.ts';
import { UserError } from '../../util/errors.ts';
import { type Opened, openModel } from '../load-model.ts';

export class Backbone {
  readonly decoder: Decoder;
  /** Tokens read per document: --max-ctx, at most the model's max_position_embeddings. */
  readonly maxCtx: number;

  constructor(
    readonly opened: Opened,
    maxCtx: number,
  ) {
    this.decoder = new Decoder(opened.model);
    this.maxCtx = Math.min(maxCtx, opened.model.cfg.max_position_embeddings);
  }

  static async open(path: string, device: 'auto' | 'cpu' | 'cuda', maxCtx: number, warn: (m: string) => void) {
    return new Backbone(await openModel(path, device, warn), maxCtx);
  }

  get config(): Config {
    return this.opened.config;
  }

  get tokenizer(): TextTokenizer {
    return this.opened.tokenizer;
  }

  get hidden(): number {
    return this.opened.model.cfg.dim;
  }

  get layers(): number {
    return this.opened.model.cfg.n_layers;
  }

  /** Checks a 1-based layer number given by `flag` (or read from `where`) against the model. */
  checkLayer(layer: number, where: string): number {
    if (!Number.isInteger(layer) || layer < 1 || layer > this.layers)
      throw new UserError(
        `${where} ${layer} is out of range: the backbone (${this.opened.from}) has layers 1 to ${this.layers}. Fix: pick a layer in 1..${this.layers}.`,
      );
    return layer;
  }

  /** A document's tokens as the backbone reads it: the normalised text, cut to maxCtx; never empty. */
  tokenize(text: string): Int32Array {
    const ids = Int32Array.from(this.tokenizer.encode(normalizeText(text)));
    return ids.length === 0 ? Int32Array.of(this.tokenizer.eosTokenId) : ids.subarray(0, this.maxCtx);
  }

  /** Starts `docs` (token ids, each 1..maxCtx long) through the model. */
  batch(docs: readonly Int32Array[]): BackboneBatch {
    return new BackboneBatch(this, docs);
  }

  free(): void {
    this.decoder.free();
    this.opened.model.free();
  }
}

export class BackboneBatch {
  readonly seqLen: number;
  #x: Tensor | null = null;
  #layer = 0;

  constructor(
    readonly backbone: Backbone,
    readonly docs: readonly Int32Array[],
  ) {
    this.seqLen = Math.max(...docs.map((d) => d.length));
  }

  /**
   * A batch of documents `keep` (indices into this batch) at this batch's current layer, rebuilt from `states`,
   * what statesAt returned for that layer: the residual stream goes back to the device (right-padded with zeros,
   * which no real position attends to) in its own dtype, so bf16 states return unchanged.
   */
  subset(keep: readonly number[], states: readonly Float32Array[]): BackboneBatch {
    if (this.#x === null) throw new Error('BackboneBatch.subset before statesAt');
    const { hidden, opened } = this.backbone;
    const part = new BackboneBatch(
      this.backbone,
      keep.map((i) => this.docs[i]!),
    );
    const S = part.seqLen;
    const x = new Float32Array(keep.length * S * hidden);
    keep.forEach((i, k) => x.set(states[i]!, k * S * hidden));
    part.#x = opened.backend.upload(x, [keep.length * S, hidden], this.#x.dtype);
    part.#layer = this.#layer;
    return part;
  }

  /** Each document's hidden states [len, H] after block `layer` (1-based), which must not be below the last one. */
  async statesAt(layer: number): Promise<Float32Array[]> {
    const { decoder, opened, hidden } = this.backbone;
    const n = this.docs.length,
      S = this.seqLen;
    if (this.#x === null) {
      const ids = new Int32Array(n * S).fill(opened.tokenizer.eosTokenId);
      this.docs.forEach((d, i) => ids.set(d, i * S));
      const t = opened.backend.upload(ids, [n * S], 'i32');
      this.#x = decoder.residual(t, n, S, layer);
      t.free();
    } else this.#x = decoder.resume(this.#x, n, S, this.#layer, layer);
    this.#layer = layer;
    const all = (await opened.backend.read(this.#x)) as Float32Array;
    return this.docs.map((d, i) => all.slice(i * S * hidden, (i * S + d.length) * hidden));
  }

  free(): void {
    this.#x?.free();
    this.#x = null;
  }
}
