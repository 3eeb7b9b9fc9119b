/**
 * KDA: the reference's Kimi Delta Attention layer (experimental there too), forward and backward.
 *
 *   q = wq_b(q_norm(wq_a h))                               MLA's query path, H heads of dqk = d_nope + d_rope
 *   [c_kv | k_pe] = wkv_a h;  [k_nope | v] = wkv_b(kv_norm(c_kv)) per head;  k = [k_nope | k_pe]   (k_pe shared)
 *   gate = wg h + bias  [T, H*dqk],  beta = wb h  [T, H]   (logits; the op takes logsigmoid and sigmoid)
 *   o = deltaAttention(q, k, v, gate, beta), scale dqk^-1/2, q and k L2-normalised in the op
 *   out = wo o
 *
 * As in the reference, the projections are MLA's without RoPE (positions enter only through the recurrence), wg has
 * a bias and wb none, and a layer's keys span all dqk dims (the shared k_pe included).
 */
import type { DeltaAttentionSpec } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, addBias, biasBackward, freeAll, linear, linearBackward } from './context.ts';
import { qkHeadDim } from './spec.ts';

export interface KdaSaved {
  kind: 'kda';
  h: Tensor;
  qa: Tensor;
  qaRstd: Tensor;
  qan: Tensor;
  kvc: Tensor;
  kvRstd: Tensor;
  kvn: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  gate: Tensor;
  beta: Tensor;
  o: Tensor;
}

function kdaSpec(ctx: LayerContext): DeltaAttentionSpec {
  return { batch: ctx.batch, seqLen: ctx.seqLen, heads: ctx.cfg.n_heads, scale: qkHeadDim(ctx.cfg) ** -0.5 };
}

/** Everything kdaBackward needs, up to the attention output before `wo`. */
export function kdaCore(ctx: LayerContext, prefix: string, h: Tensor): KdaSaved {
  const { b, cfg, p } = ctx;
  const eps = cfg.rms_norm_eps;
  const qa = linear(ctx, h, `${prefix}.wq_a.weight`);
  const { y: qan, rstd: qaRstd } = b.rmsnorm(qa, p.get(`${prefix}.q_norm.weight`), eps);
  const q = linear(ctx, qan, `${prefix}.wq_b.weight`);
  const kva = linear(ctx, h, `${prefix}.wkv_a.weight`);
  const [kvc, kpe] = b.splitCols(kva, [cfg.kv_lora_rank, cfg.qk_rope_head_dim]) as [Tensor, Tensor];
  kva.free();
  const { y: kvn, rstd: kvRstd } = b.rmsnorm(kvc, p.get(`${prefix}.kv_norm.weight`), eps);
  const kvb = linear(ctx, kvn, `${prefix}.wkv_b.weight`);
  const { k, v } = b.mlaAssembleKV(kvb, kpe, cfg.n_heads, cfg.qk_nope_head_dim, cfg.v_head_dim);
  freeAll({ kvb, kpe });
  const gate = linear(ctx, h, `${prefix}.wg.weight`);
  addBias(ctx, gate, `${prefix}.wg.bias`);
  const beta = linear(ctx, h, `${prefix}.wb.weight`);
  const o = b.deltaAttention(q, k, v, gate, beta, kdaSpec(ctx));
  return { kind: 'kda', h, qa, qaRstd, qan, kvc, kvRstd, kvn, q, k, v, gate, beta, o };
}

/** Frees a saved record except h (the caller's). */
export function releaseKdaSaved(s: KdaSaved): void {
  const { kind: _kind, h: _h, ...rest } = s;
  freeAll(rest);
}

/** Returns dh; accumulates every weight gradient of the layer (wo's included); frees `s` except h. */
export function kdaBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: KdaSaved): Tensor {
  const { b, cfg, p } = ctx;
  const dO = linearBackward(ctx, dOut, s.o, `${prefix}.wo.weight`);
  const { dq, dk, dv, dGate, dBeta } = b.deltaAttentionBackward(dO, s.q, s.k, s.v, s.gate, s.beta, kdaSpec(ctx));
  const dh = linearBackward(ctx, dBeta, s.h, `${prefix}.wb.weight`);
  biasBackward(ctx, dGate, `${prefix}.wg.bias`);
  linearBackward(ctx, dGate, s.h, `${prefix}.wg.weight`, dh);
  const { dkvb, dkpe } = b.mlaAssembleKVBackward(dk, dv, cfg.n_heads, cfg.qk_nope_head_dim, cfg.v_head_dim);
  const dkvn = linearBackward(ctx, dkvb, s.kvn, `${prefix}.wkv_b.weight`);
  const kvNorm = `${prefix}.kv_norm.weight`;
  const dkvc = b.rmsnormBackward(dkvn, s.kvc, p.get(kvNorm), s.kvRstd, p.grad(kvNorm));
  const dkva = b.concatCols([dkvc, dkpe]);
  linearBackward(ctx, dkva, s.h, `${prefix}.wkv_a.weight`, dh);
  const dqan = linearBackward(ctx, dq, s.qan, `${prefix}.wq_b.weight`);
  const qNorm = `${prefix}.q_norm.weight`;
  const dqa = b.rmsnormBackward(dqan, s.qa, p.get(qNorm), s.qaRstd, p.grad(qNorm));
  linearBackward(ctx, dqa, s.h, `${prefix}.wq_a.weight`, dh);
  freeAll({ dO, dq, dk, dv, dGate, dBeta, dkvb, dkpe, dkvn, dkvc, dkva, dqan, dqa });
  releaseKdaSaved(s);
  return dh;
}
