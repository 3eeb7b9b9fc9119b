/**
 * SWA: the reference's sliding-window attention with sinks (gpt-oss style), forward and backward.
 *
 *   [q | k | v] = qkv(h)             Linear(dim, (H + 2 KV) d) with bias, d = v_head_dim, KV = attn_swa.kv_heads
 *   RoPE on the last qk_rope_head_dim dims of every q and k head
 *   o = softmax over [q.k_j * d^-1/2 for i - window < j <= i, sinks[h]] applied to [v_j, 0]
 *   out = out(o)                     Linear(H d, dim) with bias
 *
 * Query head h reads key/value head floor(h / (H / KV)). A global SWA layer (attn = "swa") has window 0: every
 * earlier key.
 */
import type { SlidingAttentionSpec } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, addBias, biasBackward, freeAll, linear, linearBackward, rope } from './context.ts';
import { swaHeads } from './spec.ts';

export interface SwaSaved {
  kind: 'swa';
  window: number;
  h: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  lse: Tensor;
}

function swaSpec(ctx: LayerContext, window: number): SlidingAttentionSpec {
  const { heads, kvHeads, headDim } = swaHeads(ctx.cfg);
  return { batch: ctx.batch, seqLen: ctx.seqLen, heads, kvHeads, scale: headDim ** -0.5, window };
}

/** RoPE over the last qk_rope_head_dim dims of each of `heads` heads of x. */
function ropeHeads(ctx: LayerContext, x: Tensor, heads: number, inverse: boolean): void {
  const d = ctx.cfg.v_head_dim;
  rope(ctx, x, heads, d, d - ctx.cfg.qk_rope_head_dim, inverse);
}

/** Everything swaBackward needs, up to the attention output before `out`. */
export function swaCore(ctx: LayerContext, prefix: string, h: Tensor, window: number): SwaSaved {
  const { heads, kvHeads, headDim } = swaHeads(ctx.cfg);
  const qkv = linear(ctx, h, `${prefix}.qkv.weight`);
  addBias(ctx, qkv, `${prefix}.qkv.bias`);
  const [q, k, v] = ctx.b.splitCols(qkv, [heads * headDim, kvHeads * headDim, kvHeads * headDim]) as [
    Tensor,
    Tensor,
    Tensor,
  ];
  qkv.free();
  ropeHeads(ctx, q, heads, false);
  ropeHeads(ctx, k, kvHeads, false);
  const spec = swaSpec(ctx, window);
  const { out: o, lse } = ctx.b.slidingAttention(q, k, v, ctx.p.get(`${prefix}.sinks`), spec);
  return { kind: 'swa', window, h, q, k, v, o, lse };
}

/** The layer's output projection: out(o) [T, D]. */
export function swaOutput(ctx: LayerContext, prefix: string, s: SwaSaved): Tensor {
  const y = linear(ctx, s.o, `${prefix}.out.weight`);
  addBias(ctx, y, `${prefix}.out.bias`);
  return y;
}

/** Frees a saved record except h (the caller's). */
export function releaseSwaSaved(s: SwaSaved): void {
  freeAll({ q: s.q, k: s.k, v: s.v, o: s.o, lse: s.lse });
}

/** Returns dh; accumulates the gradients of qkv, out (weights and biases) and sinks; frees `s` except h. */
export function swaBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: SwaSaved): Tensor {
  const { heads, kvHeads } = swaHeads(ctx.cfg);
  biasBackward(ctx, dOut, `${prefix}.out.bias`);
  const dO = linearBackward(ctx, dOut, s.o, `${prefix}.out.weight`);
  const sinks = `${prefix}.sinks`;
  const { dq, dk, dv } = ctx.b.slidingAttentionBackward(
    dO,
    s.q,
    s.k,
    s.v,
    ctx.p.get(sinks),
    s.o,
    s.lse,
    swaSpec(ctx, s.window),
    ctx.p.grad(sinks),
  );
  ropeHeads(ctx, dq, heads, true);
  ropeHeads(ctx, dk, kvHeads, true);
  const dqkv = ctx.b.concatCols([dq, dk, dv]);
  biasBackward(ctx, dqkv, `${prefix}.qkv.bias`);
  const dh = linearBackward(ctx, dqkv, s.h, `${prefix}.qkv.weight`);
  freeAll({ dO, dq, dk, dv, dqkv });
  releaseSwaSaved(s);
  return dh;
}
