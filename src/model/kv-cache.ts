/**
 * The KV cache for incremental decoding, and attention of one new token against it.
 *
 * MLA caches what DeepSeek-V2 caches: per token the normed latent kv_norm(c_kv) [kv_lora_rank] and the roped shared
 * key [d_rope], not the per-head keys and values (kv_lora_rank + d_rope numbers per token and layer instead of
 * H * (dqk + dv)). Decoding absorbs wkv_b into the query and output sides (DeepSeek-V2 §2.1.2): with wkv_b's head h
 * split into W_uk_h [d_nope, r] and W_uv_h [dv, r],
 *
 *   score_h(t) = ((q_nope_h W_uk_h) . latent_t + q_pe_h . kpe_t) * scale       (one product over the cache for all heads)
 *   o_h        = (sum_t p_h(t) latent_t) W_uv_h^T
 *
 * so per-head keys and values are never formed. Both absorptions are grouped GEMMs with one row per head.
 * MHA caches k and v head-major ([H, capacity, d]), so each head's first L keys are one contiguous [L, d] view.
 *
 * Models with SWA, KDA, NSA or DSA layers have no cache (the constructor refuses them). The cache holds one sequence. The
 * sums run in another order than the full forward's (the absorbed products), so cached decoding agrees with a full
 * re-forward to rounding, not bit for bit.
 */
import type { Backend } from '../tensor/backend.ts';
import type { DType, Tensor } from '../tensor/tensor.ts';
import { type KvSink, mhaProjections, mlaLatent, mlaQuery } from './attention.ts';
import { type LayerContext, freeAll, linear } from './context.ts';
import type { ParamStore } from './params.ts';
import { type ModelConfig, layerAttention, qkHeadDim } from './spec.ts';
import { UserError } from '../util/errors.ts';

type LayerKv = { kind: 'mla'; latent: Tensor; ropeKey: Tensor } | { kind: 'mha'; k: Tensor; v: Tensor };

/** wkv_b of every MLA layer split per head for the absorbed decode: W_uk [H, d_nope * r] and W_uv [H, dv * r]. */
export interface AbsorbedWeights {
  wUk: Tensor[];
  wUv: Tensor[];
  /** Segments of one row per head, for the grouped GEMMs. */
  heads: { offsets: Tensor; free(): void };
  free(): void;
}

export function absorbedWeights(b: Backend, cfg: ModelConfig, p: ParamStore): AbsorbedWeights {
  const H = cfg.n_heads,
    r = cfg.kv_lora_rank,
    dNope = cfg.qk_nope_head_dim,
    dV = cfg.v_head_dim;
  const wUk: Tensor[] = [],
    wUv: Tensor[] = [];
  for (let i = 0; i < cfg.n_layers; i++) {
    const perHead = b.view(p.get(`blocks.${i}.attn.wkv_b.weight`), [H, (dNope + dV) * r]);
    const [uk, uv] = b.splitCols(perHead, [dNope * r, dV * r]) as [Tensor, Tensor];
    wUk.push(uk);
    wUv.push(uv);
  }
  const ones = b.upload(new Int32Array(H).fill(1), [H], 'i32');
  const heads = b.moeSegments(ones, H);
  ones.free();
  return {
    wUk,
    wUv,
    heads,
    free: () => {
      for (const w of [...wUk, ...wUv]) w.free();
      heads.free();
    },
  };
}

export class KvCache {
  /** Tokens cached so far: the next token's position. */
  length = 0;
  readonly #layers: LayerKv[];

  constructor(
    readonly b: Backend,
    readonly cfg: ModelConfig,
    readonly capacity: number,
    dtype: DType,
  ) {
    if (capacity > cfg.max_position_embeddings) {
      throw new Error(`KvCache: capacity ${capacity} exceeds max_position_embeddings ${cfg.max_position_embeddings}`);
    }
    const cacheless = Array.from({ length: cfg.n_layers }, (_, i) => layerAttention(cfg, i).kind).find(
      (kind) => kind === 'swa' || kind === 'kda' || kind === 'nsa' || kind === 'dsa',
    );
    if (cacheless) {
      throw new UserError(
        `this model has ${cacheless.toUpperCase()} layers (attn or attn_local = "${cacheless}"), and cached decoding ` +
          'holds MLA and MHA layers only. Fix: score it with `nmoe eval` likelihood tasks, which run full forwards.',
      );
    }
    const H = cfg.n_heads;
    this.#layers = Array.from({ length: cfg.n_layers }, (): LayerKv =>
      cfg.attn === 'mha'
        ? {
            kind: 'mha',
            k: b.zeros([H, capacity, qkHeadDim(cfg)], dtype),
            v: b.zeros([H, capacity, cfg.v_head_dim], dtype),
          }
        : {
            kind: 'mla',
            latent: b.zeros([capacity, cfg.kv_lora_rank], dtype),
            ropeKey: b.zeros([capacity, cfg.qk_rope_head_dim], dtype),
          },
    );
  }

  /** Where layer `layer` writes the keys of new tokens: positions [length, length + rows). advance() moves length, after the last layer. */
  sink(layer: number): KvSink {
    const b = this.b,
      at = this.length,
      l = this.#layers[layer]!,
      cap = this.capacity;
    const room = (rows: number) => {
      if (at + rows > cap) throw new Error(`KvCache: ${at + rows} tokens exceed the capacity ${cap}`);
    };
    return {
      mla: (latent, ropeKey) => {
        if (l.kind !== 'mla') throw new Error('KvCache: MLA keys for an MHA cache');
        const rows = latent.shape[0]!;
        room(rows);
        b.copy(latent, b.view(l.latent, [rows, this.cfg.kv_lora_rank], at * this.cfg.kv_lora_rank));
        b.copy(ropeKey, b.view(l.ropeKey, [rows, this.cfg.qk_rope_head_dim], at * this.cfg.qk_rope_head_dim));
      },
      mha: (k, v) => {
        if (l.kind !== 'mha') throw new Error('KvCache: MHA keys for an MLA cache');
        const rows = k.shape[0]!,
          H = this.cfg.n_heads;
        room(rows);
        for (const [src, cache, d] of [
          [k, l.k, qkHeadDim(this.cfg)],
          [v, l.v, this.cfg.v_head_dim],
        ] as const) {
          const perHead = b.splitCols(src, Array<number>(H).fill(d));
          perHead.forEach((part, h) => {
            b.copy(part, b.view(cache, [rows, d], (h * cap + at) * d));
            part.free();
          });
        }
      },
    };
  }

  advance(rows: number): void {
    this.length += rows;
  }

  free(): void {
    for (const l of this.#layers)
      freeAll(l.kind === 'mla' ? { latent: l.latent, ropeKey: l.ropeKey } : { k: l.k, v: l.v });
  }

  /**
   * Attention of one token (h [1, D], normed; `ctx` positioned at this.length) against the cache plus itself:
   * appends its keys to layer `layer` and returns the attention block's output [1, D]. Call advance(1) after the
   * last layer.
   */
  attend(ctx: LayerContext, prefix: string, layer: number, h: Tensor, absorbed: AbsorbedWeights | null): Tensor {
    const { b, cfg } = ctx;
    const H = cfg.n_heads,
      dqk = qkHeadDim(cfg),
      dNope = cfg.qk_nope_head_dim,
      dV = cfg.v_head_dim;
    const scale = dqk ** -0.5,
      L = this.length + 1,
      l = this.#layers[layer]!;
    let o: Tensor;
    if (l.kind === 'mha') {
      const { q, k, v } = mhaProjections(ctx, prefix, h);
      this.sink(layer).mha(k, v);
      o = b.empty([1, H * dV], q.dtype);
      for (let i = 0; i < H; i++) {
        const scores = b.matmul(b.view(q, [1, dqk], i * dqk), b.view(l.k, [L, dqk], i * this.capacity * dqk), {
          transB: true,
          alpha: scale,
          outDtype: 'f32',
        });
        const p = b.softmax(scores);
        b.matmul(p, b.view(l.v, [L, dV], i * this.capacity * dV), { out: b.view(o, [1, dV], i * dV) });
        freeAll({ scores, p });
      }
      freeAll({ q, k, v });
    } else {
      if (!absorbed) throw new Error('KvCache.attend: MLA decoding needs the absorbed weights');
      const r = cfg.kv_lora_rank,
        dRope = cfg.qk_rope_head_dim;
      const query = mlaQuery(ctx, prefix, h);
      const { kvc, kvRstd, kvn, kpe } = mlaLatent(ctx, prefix, h);
      this.sink(layer).mla(kvn, kpe);
      const [qNope, qPe] = b.splitCols(b.view(query.q, [H, dqk]), [dNope, dRope]) as [Tensor, Tensor];
      const qAbs = b.groupedMatmul(qNope, b.view(absorbed.wUk[layer]!, [H, dNope, r]), absorbed.heads.offsets);
      const latent = b.view(l.latent, [L, r], 0);
      const scores = b.matmul(qAbs, latent, { transB: true, alpha: scale, outDtype: 'f32' });
      b.matmul(qPe, b.view(l.ropeKey, [L, dRope], 0), { transB: true, alpha: scale, out: scores, accumulate: true });
      const p = b.softmax(scores);
      const mixed = b.matmul(p, latent, { outDtype: latent.dtype });
      // [H, dv] per head, which is [1, H * dv] in the layout wo reads.
      o = b.groupedMatmul(mixed, b.view(absorbed.wUv[layer]!, [H, dV, r]), absorbed.heads.offsets, true);
      freeAll({ ...query, kvc, kvRstd, kvn, kpe, qNope, qPe, qAbs, scores, p, mixed });
    }
    const out = linear(ctx, b.view(o, [1, H * dV]), `${prefix}.wo.weight`);
    o.free();
    return out;
  }
}
