/**
 * Attention blocks, forward and backward.
 *
 * MLA (DeepSeek-V2/V3, dense causal, as the reference's): q = wq_b(q_norm(wq_a x)) (or wq x when q_lora_rank = 0),
 * split per head into [q_nope | q_pe]; wkv_a x = [c_kv | k_pe] with one rope key shared by all heads; k_nope and v come
 * from wkv_b(kv_norm(c_kv)). RoPE rotates q_pe and k_pe; softmax scale is (d_nope + d_rope)^-1/2 (no YaRN mscale, as
 * the reference). MHA: plain q/k/v projections with RoPE on the last qk_rope_head_dim dims of each q and k head.
 * SWA (sliding window with sinks) lives in swa.ts, KDA (Kimi Delta Attention) in kda.ts, NSA (native sparse
 * attention) in nsa.ts; the functions here dispatch on each layer's kind. DSA is MLA over the keys its indexer
 * (dsa.ts) selects.
 *
 * Shapes: T = batch*seq tokens, D dim, H heads, dqk = d_nope + d_rope, dv.
 */
import type { AttentionSpec } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, freeAll, linear, linearBackward, rope } from './context.ts';
import { layerAttention, qkHeadDim } from './spec.ts';
import { type SwaSaved, releaseSwaSaved, swaBackward, swaCore, swaOutput } from './swa.ts';
import { type KdaSaved, kdaBackward, kdaCore, releaseKdaSaved } from './kda.ts';
import { type NsaSaved, nsaBackward, nsaCore, nsaOutput, releaseNsaSaved } from './nsa.ts';
import { dsaAlignmentLoss, dsaSelection } from './dsa.ts';

/** What an MLA or MHA layer (dense causal) keeps for its backward. */
export interface DenseAttentionSaved {
  kind: 'dense';
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
  /** DSA: each query's selected keys (attention ran over these only); null for dense attention. */
  selected: Tensor | null;
}

export type AttentionSaved = DenseAttentionSaved | SwaSaved | KdaSaved | NsaSaved;

function attnSpec(ctx: LayerContext): AttentionSpec {
  const { cfg } = ctx;
  return {
    batch: ctx.batch,
    seqLen: ctx.seqLen,
    heads: cfg.n_heads,
    scale: qkHeadDim(cfg) ** -0.5,
    kernel: cfg.attn_kernel,
    deterministic: cfg.deterministic,
  };
}

/**
 * Where an inference forward puts each layer's keys for a KV cache (kv-cache.ts): MLA's normed latent kv_norm(c_kv)
 * [T, kv_lora_rank] and its roped shared key [T, d_rope]; MHA's roped k [T, H*dqk] and v [T, H*dv]. The sink copies
 * what it keeps; the tensors stay the caller's.
 */
export interface KvSink {
  mla(latent: Tensor, ropeKey: Tensor): void;
  mha(k: Tensor, v: Tensor): void;
}

/**
 * Block `layer`'s attention (its kind from layerAttention): h [T, D] (already normed) -> out [T, D]. The caller keeps
 * ownership of h; `saved` holds it until backward. With `training`, a DSA layer also returns its indexer alignment
 * loss (null elsewhere and while attn_dsa.indexer_loss_weight is 0), whose gradient it accumulates when `grad`.
 */
export function attentionForward(
  ctx: LayerContext,
  layer: number,
  prefix: string,
  h: Tensor,
  sink?: KvSink,
  training?: { grad: boolean },
): { out: Tensor; saved: AttentionSaved; indexerLoss: Tensor | null } {
  const saved = attentionCore(ctx, layer, prefix, h, sink);
  if (saved.kind === 'nsa') return { out: nsaOutput(ctx, prefix, saved), saved, indexerLoss: null };
  const out = saved.kind === 'swa' ? swaOutput(ctx, prefix, saved) : linear(ctx, saved.o, `${prefix}.wo.weight`);
  // DSA: the alignment loss reads the attention's probabilities.
  const dsa = training && layerAttention(ctx.cfg, layer).kind === 'dsa' && saved.kind === 'dense';
  const indexerLoss = dsa ? dsaAlignmentLoss(ctx, prefix, h, saved, training.grad) : null;
  return { out, saved, indexerLoss };
}

/** MHA's projections, q and k roped: q, k [T, H*dqk], v [T, H*dv]. */
export function mhaProjections(ctx: LayerContext, prefix: string, h: Tensor): { q: Tensor; k: Tensor; v: Tensor } {
  const { cfg } = ctx;
  const q = linear(ctx, h, `${prefix}.wq.weight`);
  const k = linear(ctx, h, `${prefix}.wk.weight`);
  const v = linear(ctx, h, `${prefix}.wv.weight`);
  rope(ctx, q, cfg.n_heads, qkHeadDim(cfg), cfg.qk_nope_head_dim, false);
  rope(ctx, k, cfg.n_heads, qkHeadDim(cfg), cfg.qk_nope_head_dim, false);
  return { q, k, v };
}

/** MLA's query, roped: q [T, H*dqk], per head [q_nope | q_pe], with the low-rank path's activations (null without). */
export function mlaQuery(
  ctx: LayerContext,
  prefix: string,
  h: Tensor,
): { qa: Tensor | null; qaRstd: Tensor | null; qan: Tensor | null; q: Tensor } {
  const { b, cfg } = ctx;
  let qa: Tensor | null = null,
    qaRstd: Tensor | null = null,
    qan: Tensor | null = null,
    q: Tensor;
  if (cfg.q_lora_rank > 0) {
    qa = linear(ctx, h, `${prefix}.wq_a.weight`);
    ({ y: qan, rstd: qaRstd } = b.rmsnorm(qa, ctx.p.get(`${prefix}.q_norm.weight`), cfg.rms_norm_eps));
    q = linear(ctx, qan, `${prefix}.wq_b.weight`);
  } else {
    q = linear(ctx, h, `${prefix}.wq.weight`);
  }
  rope(ctx, q, cfg.n_heads, qkHeadDim(cfg), cfg.qk_nope_head_dim, false);
  return { qa, qaRstd, qan, q };
}

/** MLA's compressed key/value: c_kv [T, kv_lora_rank], its norm kvn and rstd, and the roped shared key kpe [T, d_rope]. */
export function mlaLatent(
  ctx: LayerContext,
  prefix: string,
  h: Tensor,
): { kvc: Tensor; kvRstd: Tensor; kvn: Tensor; kpe: Tensor } {
  const { b, cfg } = ctx;
  const kva = linear(ctx, h, `${prefix}.wkv_a.weight`);
  const [kvc, kpe] = b.splitCols(kva, [cfg.kv_lora_rank, cfg.qk_rope_head_dim]) as [Tensor, Tensor];
  kva.free();
  const { y: kvn, rstd: kvRstd } = b.rmsnorm(kvc, ctx.p.get(`${prefix}.kv_norm.weight`), cfg.rms_norm_eps);
  rope(ctx, kpe, 1, cfg.qk_rope_head_dim, 0, false);
  return { kvc, kvRstd, kvn, kpe };
}

/**
 * Everything attentionBackward needs, up to the attention output before `wo`. With `attn_recompute` the forward
 * keeps only h and the backward calls this again (the reference's checkpoint around the attention call).
 */
export function attentionCore(
  ctx: LayerContext,
  layer: number,
  prefix: string,
  h: Tensor,
  sink?: KvSink,
): AttentionSaved {
  const { b, cfg } = ctx;
  const { kind, window } = layerAttention(cfg, layer);
  if (kind === 'swa') {
    if (sink) throw new Error('attention: SWA layers keep no KV cache');
    return swaCore(ctx, prefix, h, window);
  }
  if (kind === 'kda') {
    if (sink) throw new Error('attention: KDA layers keep no KV cache');
    return kdaCore(ctx, prefix, h);
  }
  if (kind === 'nsa') {
    if (sink) throw new Error('attention: NSA layers keep no KV cache');
    return nsaCore(ctx, prefix, h, window);
  }
  if (kind === 'mha') {
    const { q, k, v } = mhaProjections(ctx, prefix, h);
    sink?.mha(k, v);
    const { out: o, lse } = b.attention(q, k, v, attnSpec(ctx));
    const none = { qa: null, qaRstd: null, qan: null, kvc: null, kvRstd: null, kvn: null, selected: null };
    return { kind: 'dense', h, ...none, q, k, v, o, lse };
  }
  // DSA: MLA over the indexer's keys.
  if (kind === 'dsa' && sink) throw new Error('attention: DSA layers keep no KV cache');
  const selected = kind === 'dsa' ? dsaSelection(ctx, prefix, h) : null;
  const { qa, qaRstd, qan, q } = mlaQuery(ctx, prefix, h);
  const { kvc, kvRstd, kvn, kpe } = mlaLatent(ctx, prefix, h);
  sink?.mla(kvn, kpe);
  const kvb = linear(ctx, kvn, `${prefix}.wkv_b.weight`);
  const { k, v } = b.mlaAssembleKV(kvb, kpe, cfg.n_heads, cfg.qk_nope_head_dim, cfg.v_head_dim);
  kvb.free();
  kpe.free();
  const { out: o, lse } = selected
    ? b.selectedAttention(q, k, v, selected, attnSpec(ctx))
    : b.attention(q, k, v, attnSpec(ctx));
  return { kind: 'dense', h, qa, qaRstd, qan, kvc, kvRstd, kvn, q, k, v, o, lse, selected };
}

/** Frees a saved record except h (the caller's). */
export function releaseAttentionSaved(s: AttentionSaved): void {
  if (s.kind === 'swa') return releaseSwaSaved(s);
  if (s.kind === 'kda') return releaseKdaSaved(s);
  if (s.kind === 'nsa') return releaseNsaSaved(s);
  const { kind: _kind, h: _h, ...rest } = s;
  freeAll(rest);
}

/** Returns dh; accumulates every weight gradient of the block; frees `saved` except h (the caller's). */
export function attentionBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: AttentionSaved): Tensor {
  if (s.kind === 'swa') return swaBackward(ctx, prefix, dOut, s);
  if (s.kind === 'kda') return kdaBackward(ctx, prefix, dOut, s);
  if (s.kind === 'nsa') return nsaBackward(ctx, prefix, dOut, s);
  const { b, cfg } = ctx;
  const H = cfg.n_heads,
    dqk = qkHeadDim(cfg),
    dNope = cfg.qk_nope_head_dim;
  const dO = linearBackward(ctx, dOut, s.o, `${prefix}.wo.weight`);
  const { dq, dk, dv } = s.selected
    ? b.selectedAttentionBackward(dO, s.q, s.k, s.v, s.selected, s.o, s.lse, attnSpec(ctx))
    : b.attentionBackward(dO, s.q, s.k, s.v, s.o, s.lse, attnSpec(ctx));
  dO.free();
  rope(ctx, dq, H, dqk, dNope, true);
  let dh: Tensor;
  if (cfg.attn === 'mha') {
    rope(ctx, dk, H, dqk, dNope, true);
    dh = linearBackward(ctx, dq, s.h, `${prefix}.wq.weight`);
    for (const [g, w] of [
      [dk, 'wk'],
      [dv, 'wv'],
    ] as const)
      linearBackward(ctx, g, s.h, `${prefix}.${w}.weight`, dh);
  } else {
    const { dkvb, dkpe } = b.mlaAssembleKVBackward(dk, dv, H, dNope, cfg.v_head_dim);
    rope(ctx, dkpe, 1, cfg.qk_rope_head_dim, 0, true);
    const dkvn = linearBackward(ctx, dkvb, s.kvn!, `${prefix}.wkv_b.weight`);
    const dkvc = b.rmsnormBackward(
      dkvn,
      s.kvc!,
      ctx.p.get(`${prefix}.kv_norm.weight`),
      s.kvRstd!,
      ctx.p.grad(`${prefix}.kv_norm.weight`),
    );
    const dkva = b.concatCols([dkvc, dkpe]);
    dh = linearBackward(ctx, dkva, s.h, `${prefix}.wkv_a.weight`);
    freeAll({ dkvb, dkpe, dkvn, dkvc, dkva });
    if (cfg.q_lora_rank > 0) {
      const dqan = linearBackward(ctx, dq, s.qan!, `${prefix}.wq_b.weight`);
      const dqa = b.rmsnormBackward(
        dqan,
        s.qa!,
        ctx.p.get(`${prefix}.q_norm.weight`),
        s.qaRstd!,
        ctx.p.grad(`${prefix}.q_norm.weight`),
      );
      linearBackward(ctx, dqa, s.h, `${prefix}.wq_a.weight`, dh);
      freeAll({ dqan, dqa });
    } else {
      linearBackward(ctx, dq, s.h, `${prefix}.wq.weight`, dh);
    }
  }
  freeAll({ dq, dk, dv });
  releaseAttentionSaved(s);
  return dh;
}
