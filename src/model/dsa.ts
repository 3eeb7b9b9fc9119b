/**
 * DSA: the reference's DeepSeek Sparse Attention (experimental there too), MLA with each query's keys chosen by the
 * lightning indexer.
 *
 *   q_idx = wq_idx h  [T, n_idx_heads*idx_dim],  k_idx = wk_idx h  [T, idx_dim] (one key head),  w = w_idx h  [T, n_idx_heads]
 *   I[i, j] = sum_h w[i, h] ReLU(q_idx[i, h] . k_idx[j]),  j <= i in query i's sequence
 *   each query attends (MLA, every head) to its top_k keys by I; all of them while at most top_k are visible
 *
 * The indexer reads h detached, as the reference's does, and its top-k has no derivative, so the attention's
 * gradient reaches neither h through it nor its weights. training_mode = "dense_warmup" runs full causal MLA.
 * attn_dsa.indexer_loss_weight > 0 (nmoe's addition) adds the DSA paper's alignment loss, which is what trains the
 * indexer: its KL to the attention's head-summed probabilities, over the selected keys (every causal key in the
 * dense warm-up). The MLA projections and their backward are attention.ts's; this file supplies the choice and the
 * loss.
 */
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, freeAll, linear } from './context.ts';
import { dsaIndexer, qkHeadDim } from './spec.ts';

/** The indexer's query, key and head weights: wq_idx h, wk_idx h, w_idx h. */
function indexerInputs(ctx: LayerContext, prefix: string, h: Tensor): { qIdx: Tensor; kIdx: Tensor; wIdx: Tensor } {
  return {
    qIdx: linear(ctx, h, `${prefix}.wq_idx.weight`),
    kIdx: linear(ctx, h, `${prefix}.wk_idx.weight`),
    wIdx: linear(ctx, h, `${prefix}.w_idx.weight`),
  };
}

/** The keys each query of a DSA layer attends to (i32 [T, min(top_k, seq_len)], -1 unused), or null when dense. */
export function dsaSelection(ctx: LayerContext, prefix: string, h: Tensor): Tensor | null {
  const { heads, topK, mode } = dsaIndexer(ctx.cfg);
  if (mode === 'dense_warmup') return null;
  const { qIdx, kIdx, wIdx } = indexerInputs(ctx, prefix, h);
  const selected = ctx.b.indexerTopK(qIdx, kIdx, wIdx, { batch: ctx.batch, seqLen: ctx.seqLen, heads, topK });
  freeAll({ qIdx, kIdx, wIdx });
  return selected;
}

/** What the alignment loss needs of the layer's attention: its q, k and lse, and the keys it ran over. */
export interface AttendedKeys {
  q: Tensor;
  k: Tensor;
  lse: Tensor;
  selected: Tensor | null;
}

/**
 * The layer's indexer alignment loss (f32 [1], weight * mean over queries), or null while the weight is 0. With
 * `grad` it also accumulates the loss's gradients of wq_idx, wk_idx and w_idx; h is read detached, as for the choice.
 */
export function dsaAlignmentLoss(
  ctx: LayerContext,
  prefix: string,
  h: Tensor,
  attended: AttendedKeys,
  grad: boolean,
): Tensor | null {
  const { cfg, b, p } = ctx;
  const { heads, lossWeight } = dsaIndexer(cfg);
  if (lossWeight === 0) return null;
  const inputs = indexerInputs(ctx, prefix, h);
  const { q, k, lse, selected } = attended;
  const spec = {
    batch: ctx.batch,
    seqLen: ctx.seqLen,
    heads: cfg.n_heads,
    idxHeads: heads,
    scale: qkHeadDim(cfg) ** -0.5,
    weight: lossWeight,
  };
  const { loss, dqIdx, dkIdx, dwIdx } = b.indexerAlignment(
    inputs.qIdx,
    inputs.kIdx,
    inputs.wIdx,
    q,
    k,
    lse,
    selected,
    spec,
  );
  if (grad) {
    for (const [dy, w] of [
      [dqIdx, 'wq_idx'],
      [dkIdx, 'wk_idx'],
      [dwIdx, 'w_idx'],
    ] as const)
      b.matmul(dy, h, { transA: true, out: p.grad(`${prefix}.${w}.weight`), accumulate: true });
  }
  freeAll({ ...inputs, dqIdx, dkIdx, dwIdx });
  return loss;
}
