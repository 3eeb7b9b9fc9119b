/**
 * The inference path over a trained Transformer: forwards that keep no activations, incremental decoding against a
 * KV cache (kv-cache.ts), next-token logits and the summed log-likelihood of chosen tokens. Generation and the
 * evals (src/eval/) are built on it.
 *
 *   hidden(ids, batch, seqLen[, cache])   norm(x) for every position; with a cache (one sequence), a prefill
 *   residual(ids, batch, seqLen, layers)   the residual stream after the first `layers` blocks (a frozen backbone's
 *                                          hidden states; later blocks and the head are not run)
 *   resume(x, batch, seqLen, from, to)     the same stream carried on from block `from` to block `to`
 *   step(id, cache)                        norm(x) [1, D] of one more token, attending to the cache
 *   logits(h)                              the [1, V] next-token logits of one row, on the host
 *   logLikelihood(rows, targets)           sum of log p(target_i | row_i), through the chunked cross-entropy
 *
 * Nothing here forms [tokens x vocab]: logits() is one row, and the log-likelihood goes through the training
 * loss's fused, chunked cross-entropy. With expert parallelism (ep) every rank must make the same calls in the
 * same order (the MoE layers exchange tokens), stepping in lockstep.
 */
import type { Tensor } from '../tensor/tensor.ts';
import { attentionForward, releaseAttentionSaved } from './attention.ts';
import type { LayerContext } from './context.ts';
import { mlpForward, moeForward, releaseMlpSaved, releaseMoeSaved } from './ffn.ts';
import { type AbsorbedWeights, KvCache, absorbedWeights } from './kv-cache.ts';
import { isMoeLayer } from './spec.ts';
import { EMBED_SCALE, LOGIT_SCALE, type Transformer } from './transformer.ts';

/** The attention of block `layer`: h (normed) -> its output. */
type Attend = (layer: number, prefix: string, h: Tensor) => Tensor;

export class Decoder {
  /**
   * MLA's per-head split of wkv_b, copied on the first cached step (full forwards do not need it). A copy: after
   * the weights change (a training step), decode with a new Decoder.
   */
  #absorbed: AbsorbedWeights | null = null;

  constructor(readonly model: Transformer) {}

  /** A cache for one sequence of up to `capacity` tokens, in the weights' dtype. */
  newCache(capacity: number): KvCache {
    return new KvCache(this.model.b, this.model.cfg, capacity, this.model.params.dtype);
  }

  /**
   * norm(x) [batch * seqLen, D] of `batch` sequences of `seqLen` tokens (ids i32 [batch * seqLen]), each attending
   * within itself with positions from 0. With `cache` (batch 1), every layer's keys are appended to it.
   */
  hidden(ids: Tensor, batch: number, seqLen: number, cache?: KvCache): Tensor {
    if (cache && (batch !== 1 || cache.length !== 0))
      throw new Error('Decoder.hidden: a prefill fills an empty cache with one sequence');
    const ctx = this.model.layerContext(batch, seqLen);
    const out = this.#run(ids, ctx, (layer, prefix, h) => {
      const { out: o, saved } = attentionForward(ctx, layer, prefix, h, cache?.sink(layer));
      releaseAttentionSaved(saved);
      return o;
    });
    cache?.advance(seqLen);
    return out;
  }

  /** norm(x) [1, D] of token `id` (i32 [1]) at position cache.length; the cache grows by one. */
  step(id: Tensor, cache: KvCache): Tensor {
    const ctx = this.#positioned(cache.length);
    const { b, cfg, params } = this.model;
    if (cfg.attn === 'mla') this.#absorbed ??= absorbedWeights(b, cfg, params);
    const out = this.#run(id, ctx, (layer, prefix, h) => cache.attend(ctx, prefix, layer, h, this.#absorbed));
    cache.advance(1);
    return out;
  }

  /** The next-token logits of one normed row h [1, D] (lm_head x 0.125), read back as f32 [V]. */
  async logits(h: Tensor): Promise<Float32Array> {
    const { b, params: p } = this.model;
    const logits = b.matmul(h, p.get('lm_head.weight'), { transB: true, alpha: LOGIT_SCALE, outDtype: 'f32' });
    const values = (await b.read(logits)) as Float32Array;
    logits.free();
    return values;
  }

  /** sum_i log p(targets[i] | rows[i]) for normed rows [n, D]: through the chunked cross-entropy, nothing masked. */
  async logLikelihood(rows: Tensor, targets: Int32Array): Promise<number> {
    const { b, params: p } = this.model;
    const t = b.upload(targets, [targets.length], 'i32');
    const { loss, count } = b.crossEntropy(rows, p.get('lm_head.weight'), t, {
      logitScale: LOGIT_SCALE,
      ignoreIndex: -1,
    });
    const mean = (await b.read(loss))[0]!;
    for (const x of [t, loss, count]) x.free();
    return -mean * targets.length;
  }

  free(): void {
    this.#absorbed?.free();
    this.#absorbed = null;
  }

  /** A one-token context whose RoPE tables start at `position` (positions are row % seqLen, here always row 0). */
  #positioned(position: number): LayerContext {
    const ctx = this.model.layerContext(1, 1);
    const { b, cfg } = this.model;
    if (position >= cfg.max_position_embeddings)
      throw new Error(
        `Decoder.step: position ${position} is past max_position_embeddings ${cfg.max_position_embeddings}`,
      );
    const half = cfg.qk_rope_head_dim / 2,
      rows = cfg.max_position_embeddings - position;
    return {
      ...ctx,
      ropeCos: b.view(ctx.ropeCos, [rows, half], position * half),
      ropeSin: b.view(ctx.ropeSin, [rows, half], position * half),
    };
  }

  /**
   * x [batch * seqLen, D] after blocks [0, layers) of `batch` sequences of `seqLen` tokens (ids i32), each attending
   * within itself, not normed: the hidden states a probe reads at layer `layers` (1-based: 1 is the first block's
   * output). Nothing after block `layers` runs.
   */
  residual(ids: Tensor, batch: number, seqLen: number, layers: number): Tensor {
    const { b, params: p } = this.model;
    return this.resume(b.embedding(ids, p.get('embedding.weight'), EMBED_SCALE), batch, seqLen, 0, layers);
  }

  /** Runs blocks [from, to) on the residual stream x of `residual` (which it takes over and frees). */
  resume(x: Tensor, batch: number, seqLen: number, from: number, to: number): Tensor {
    const n = this.model.cfg.n_layers;
    if (!(Number.isInteger(from) && Number.isInteger(to) && 0 <= from && from <= to && to <= n))
      throw new Error(`Decoder.resume: blocks [${from}, ${to}) are not within the model's ${n}`);
    const ctx = this.model.layerContext(batch, seqLen);
    return this.#blocks(x, ctx, from, to, (layer, prefix, h) => {
      const { out, saved } = attentionForward(ctx, layer, prefix, h);
      releaseAttentionSaved(saved);
      return out;
    });
  }

  /** embedding -> blocks -> final norm, freeing as it goes. */
  #run(ids: Tensor, ctx: LayerContext, attend: Attend): Tensor {
    const { b, cfg, params: p } = this.model;
    const x = this.#blocks(b.embedding(ids, p.get('embedding.weight'), EMBED_SCALE), ctx, 0, cfg.n_layers, attend);
    const { y, rstd } = b.rmsnorm(x, p.get('norm.weight'), cfg.rms_norm_eps);
    x.free();
    rstd.free();
    return y;
  }

  /** Blocks [from, to) (attention by `attend`, then the dense MLP or MoE) on x, which is freed. */
  #blocks(x: Tensor, ctx: LayerContext, from: number, to: number, attend: Attend): Tensor {
    const { b, cfg, params: p } = this.model;
    for (let i = from; i < to; i++) {
      const pre = `blocks.${i}`;
      const { y: attnIn, rstd: attnRstd } = b.rmsnorm(x, p.get(`${pre}.attn_norm.weight`), cfg.rms_norm_eps);
      const a = attend(i, `${pre}.attn`, attnIn);
      const mid = b.add(x, a);
      for (const t of [x, a, attnIn, attnRstd]) t.free();
      const { y: ffnIn, rstd: ffnRstd } = b.rmsnorm(mid, p.get(`${pre}.ffn_norm.weight`), cfg.rms_norm_eps);
      let f: Tensor;
      if (isMoeLayer(cfg, i)) {
        const r = moeForward(ctx, `${pre}.ffn`, ffnIn);
        releaseMoeSaved(r.saved);
        if (r.saved.shared) releaseMlpSaved(r.saved.shared);
        r.counts.free();
        f = r.out;
      } else {
        const r = mlpForward(ctx, `${pre}.ffn`, ffnIn);
        releaseMlpSaved(r.saved);
        f = r.out;
      }
      x = b.add(mid, f);
      for (const t of [mid, f, ffnIn, ffnRstd]) t.free();
    }
    return x;
  }
}
