/**
 * DSA: the reference's DeepSeek Sparse Attention (experimental there too), MLA with each query's keys chosen by the
 * lightning indexer.
 *
 *   q_idx = wq_idx h  [T, n_idx_heads*idx_dim],  k_idx = wk_idx h  [T, idx_dim] (one key head),  w = w_idx h  [T, n_idx_heads]
 *   I[i, j] = sum_h w[i, h] ReLU(q_idx[i, h] . k_idx[j]),  j <= i in query i's sequence
 *   each query attends (MLA, every head) to its top_k keys by I; all of them while at most top_k are visible
 *
 * The indexer reads h detached, as the reference's does, and its top-k has no derivative, so the attention's
 * gradient reaches neither h through it nor its weights. training_mode = "dense_warmup" runs full causal MLA and
 * leaves the indexer out. The MLA projections and their backward are attention.ts's; this file supplies the choice.
 */
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, freeAll, linear } from './context.ts';
import { dsaIndexer } from './spec.ts';

/** The keys each query of a DSA layer attends to (i32 [T, min(top_k, seq_len)], -1 unused), or null when dense. */
export function dsaSelection(ctx: LayerContext, prefix: string, h: Tensor): Tensor | null {
  const { heads, topK, mode } = dsaIndexer(ctx.cfg);
  if (mode === 'dense_warmup') return null;
  const qIdx = linear(ctx, h, `${prefix}.wq_idx.weight`);
  const kIdx = linear(ctx, h, `${prefix}.wk_idx.weight`);
  const wIdx = linear(ctx, h, `${prefix}.w_idx.weight`);
  const selected = ctx.b.indexerTopK(qIdx, kIdx, wIdx, { batch: ctx.batch, seqLen: ctx.seqLen, heads, topK });
  freeAll({ qIdx, kIdx, wIdx });
  return selected;
}
