/**
 * Attention blocks, forward and backward.
 *
 * MLA (DeepSeek-V2/V3, inventory §3.5): q = wq_b(q_norm(wq_a x)) (or wq x when q_lora_rank = 0), split per head
 * into [q_nope | q_pe]; wkv_a x = [c_kv | k_pe] with one rope key shared by all heads; k_nope and v come from
 * wkv_b(kv_norm(c_kv)). RoPE rotates q_pe and k_pe; softmax scale is (d_nope + d_rope)^-1/2 (no YaRN mscale, as the
 * reference). MHA: plain q/k/v projections with RoPE on the last qk_rope_head_dim dims of each q and k head.
 *
 * Shapes: T = batch*seq tokens, D dim, H heads, dqk = d_nope + d_rope, dv.
 */
import type { AttentionSpec, RopeSpec } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, freeAll, linear, linearBackward } from './context.ts';
import { qkHeadDim } from './spec.ts';

export interface AttentionSaved {
  h: Tensor;
  qa: Tensor | null;
  qaRstd: Tensor | null;
  qan: Tensor | null;
  kvc: Tensor | null;
  kvRstd: Tensor | null;
  kvn: Tensor | null;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  o: Tensor;
  lse: Tensor;
}

function attnSpec(ctx: LayerContext): AttentionSpec {
  const { cfg } = ctx;
  return { batch: ctx.batch, seqLen: ctx.seqLen, heads: cfg.n_heads, scale: qkHeadDim(cfg) ** -0.5, kernel: cfg.attn_kernel, deterministic: cfg.deterministic };
}

/** RoPE over the rope part of each of `heads` segments of width `stride`. */
function ropeSpec(ctx: LayerContext, heads: number, stride: number, offset: number): RopeSpec {
  return { heads, headStride: stride, base: 0, offset, dim: ctx.cfg.qk_rope_head_dim, seqLen: ctx.seqLen };
}

function rope(ctx: LayerContext, x: Tensor, spec: RopeSpec, inverse: boolean): void {
  ctx.b.ropeInPlace(x, ctx.ropeCos, ctx.ropeSin, spec, inverse);
}

/** h [T, D] (already normed) -> out [T, D]. The caller keeps ownership of h; `saved` holds it until backward. */
export function attentionForward(ctx: LayerContext, prefix: string, h: Tensor): { out: Tensor; saved: AttentionSaved } {
  const saved = attentionCore(ctx, prefix, h);
  return { out: linear(ctx, saved.o, `${prefix}.wo.weight`), saved };
}

/**
 * Everything attentionBackward needs, up to the attention output before `wo`. With `attn_recompute` the forward
 * keeps only h and the backward calls this again (the reference's checkpoint around the attention call).
 */
export function attentionCore(ctx: LayerContext, prefix: string, h: Tensor): AttentionSaved {
  const { b, cfg } = ctx;
  const H = cfg.n_heads, dqk = qkHeadDim(cfg), dNope = cfg.qk_nope_head_dim;
  const qRope = ropeSpec(ctx, H, dqk, dNope);
  let saved: AttentionSaved;
  if (cfg.attn === 'mha') {
    const q = linear(ctx, h, `${prefix}.wq.weight`);
    const k = linear(ctx, h, `${prefix}.wk.weight`);
    const v = linear(ctx, h, `${prefix}.wv.weight`);
    rope(ctx, q, qRope, false);
    rope(ctx, k, qRope, false);
    const { out: o, lse } = b.attention(q, k, v, attnSpec(ctx));
    saved = { h, qa: null, qaRstd: null, qan: null, kvc: null, kvRstd: null, kvn: null, q, k, v, o, lse };
  } else {
    let qa: Tensor | null = null, qaRstd: Tensor | null = null, qan: Tensor | null = null, q: Tensor;
    if (cfg.q_lora_rank > 0) {
      qa = linear(ctx, h, `${prefix}.wq_a.weight`);
      ({ y: qan, rstd: qaRstd } = b.rmsnorm(qa, ctx.p.get(`${prefix}.q_norm.weight`), cfg.rms_norm_eps));
      q = linear(ctx, qan, `${prefix}.wq_b.weight`);
    } else {
      q = linear(ctx, h, `${prefix}.wq.weight`);
    }
    rope(ctx, q, qRope, false);
    const kva = linear(ctx, h, `${prefix}.wkv_a.weight`);
    const [kvc, kpe] = b.splitCols(kva, [cfg.kv_lora_rank, cfg.qk_rope_head_dim]) as [Tensor, Tensor];
    kva.free();
    const { y: kvn, rstd: kvRstd } = b.rmsnorm(kvc, ctx.p.get(`${prefix}.kv_norm.weight`), cfg.rms_norm_eps);
    const kvb = linear(ctx, kvn, `${prefix}.wkv_b.weight`);
    rope(ctx, kpe, ropeSpec(ctx, 1, cfg.qk_rope_head_dim, 0), false);
    const { k, v } = b.mlaAssembleKV(kvb, kpe, H, dNope, cfg.v_head_dim);
    kvb.free();
    kpe.free();
    const { out: o, lse } = b.attention(q, k, v, attnSpec(ctx));
    saved = { h, qa, qaRstd, qan, kvc, kvRstd, kvn, q, k, v, o, lse };
  }
  return saved;
}

/** Returns dh; accumulates every weight gradient of the block; frees `saved` except h (the caller's). */
export function attentionBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: AttentionSaved): Tensor {
  const { b, cfg } = ctx;
  const H = cfg.n_heads, dqk = qkHeadDim(cfg), dNope = cfg.qk_nope_head_dim;
  const qRope = ropeSpec(ctx, H, dqk, dNope);
  const dO = linearBackward(ctx, dOut, s.o, `${prefix}.wo.weight`);
  const { dq, dk, dv } = b.attentionBackward(dO, s.q, s.k, s.v, s.o, s.lse, attnSpec(ctx));
  dO.free();
  rope(ctx, dq, qRope, true);
  let dh: Tensor;
  if (cfg.attn === 'mha') {
    rope(ctx, dk, qRope, true);
    dh = linearBackward(ctx, dq, s.h, `${prefix}.wq.weight`);
    for (const [g, w] of [[dk, 'wk'], [dv, 'wv']] as const) linearBackward(ctx, g, s.h, `${prefix}.${w}.weight`, dh);
  } else {
    const { dkvb, dkpe } = b.mlaAssembleKVBackward(dk, dv, H, dNope, cfg.v_head_dim);
    rope(ctx, dkpe, ropeSpec(ctx, 1, cfg.qk_rope_head_dim, 0), true);
    const dkvn = linearBackward(ctx, dkvb, s.kvn!, `${prefix}.wkv_b.weight`);
    const dkvc = b.rmsnormBackward(dkvn, s.kvc!, ctx.p.get(`${prefix}.kv_norm.weight`), s.kvRstd!, ctx.p.grad(`${prefix}.kv_norm.weight`));
    const dkva = b.concatCols([dkvc, dkpe]);
    dh = linearBackward(ctx, dkva, s.h, `${prefix}.wkv_a.weight`);
    freeAll({ dkvb, dkpe, dkvn, dkvc, dkva });
    if (cfg.q_lora_rank > 0) {
      const dqan = linearBackward(ctx, dq, s.qan!, `${prefix}.wq_b.weight`);
      const dqa = b.rmsnormBackward(dqan, s.qa!, ctx.p.get(`${prefix}.q_norm.weight`), s.qaRstd!, ctx.p.grad(`${prefix}.q_norm.weight`));
      linearBackward(ctx, dqa, s.h, `${prefix}.wq_a.weight`, dh);
      freeAll({ dqan, dqa });
    } else {
      linearBackward(ctx, dq, s.h, `${prefix}.wq.weight`, dh);
    }
  }
  freeAll({ dq, dk, dv });
  const { h: _h, ...rest } = s;
  freeAll(rest);
  return dh;
}
