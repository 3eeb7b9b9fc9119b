/**
 * The Backend ops of NSA (Native Sparse Attention, arXiv 2502.11089, as the reference builds it; the layer is
 * src/model/nsa.ts). Three branches read the same roped q [T, H*D] and k, v [T, KV*D]:
 *
 * - compressed: overlapping blocks of cmpLen tokens at stride cmpStride (block c covers tokens
 *   [c*cmpStride, c*cmpStride + cmpLen)) become one key and one value each through a learned MLP (the model's
 *   Linears around `gelu`); the group-mean query of each key/value head attends to the blocks that have ended
 *   (c*cmpStride + cmpLen - 1 <= t), and its probabilities, summed per selection block, score those blocks;
 * - selected: from the scores, each token picks topkBlocks blocks of slcBlock tokens and attends, causally, to
 *   them and to its own block;
 * - sliding: the SWA op (slidingAttention) over a window.
 *
 * `nsaGate` mixes the branches with sigmoid gates. The selection has no gradient; every other op has a backward.
 */
import type { Tensor } from './tensor.ts';

export interface NsaSpec {
  batch: number;
  seqLen: number;
  heads: number;
  /** Key/value heads (GQA): query head h reads key/value head floor(h / (heads / kvHeads)). */
  kvHeads: number;
  /** Head dim D of q, k and v. */
  headDim: number;
  /** Softmax scale of every branch. */
  scale: number;
  cmpLen: number;
  cmpStride: number;
  slcBlock: number;
  /** Blocks each token selects: block 0 and the two before its own, then the best-scored. */
  topkBlocks: number;
}

/** Compressed blocks per sequence: floor((seqLen - cmpLen) / cmpStride) + 1, or 0 when seqLen < cmpLen. */
export function nsaCompressedBlocks(s: NsaSpec): number {
  return s.seqLen < s.cmpLen ? 0 : Math.floor((s.seqLen - s.cmpLen) / s.cmpStride) + 1;
}

/** Selection blocks that can be scored per sequence: floor(seqLen / slcBlock) (the reference's Ns). */
export function nsaScoredBlocks(s: NsaSpec): number {
  return Math.floor(s.seqLen / s.slcBlock);
}

export interface NsaOps {
  /** Exact GELU, x * Phi(x) with the normal CDF through erf (PyTorch's nn.GELU default), elementwise. */
  gelu(x: Tensor): Tensor;
  geluBackward(dy: Tensor, x: Tensor): Tensor;
  /**
   * The compressor's input: x [T, KV*D] (keys or values) -> blocks [batch*Tc*KV, cmpLen*D], row (b, c, g) holding
   * tokens c*cmpStride .. + cmpLen - 1 of head g, each plus its intra-block position embedding pos [cmpLen, D].
   */
  nsaCompressBlocks(x: Tensor, pos: Tensor, spec: NsaSpec): Tensor;
  /** Returns dx [T, KV*D]; accumulates dPos. */
  nsaCompressBlocksBackward(dBlocks: Tensor, spec: NsaSpec, dPos: Tensor): Tensor;
  /**
   * Compressed attention: per key/value head g the mean of its query heads attends to the ended compressed keys
   * kc, values vc [batch*Tc, KV*D] (a token with none gets zeros). Returns out [T, H*D] (each query head carries its
   * group's output), lse f32 [T, KV] (-Infinity where no block has ended), and scores f32 [T, Ns]: the
   * probabilities summed over key/value heads and, per selection block j, over the compressed blocks whose centre
   * c*cmpStride + floor(cmpLen/2) lies in block j (the last scored block also takes the ones beyond).
   */
  nsaCompressedAttention(
    q: Tensor,
    kc: Tensor,
    vc: Tensor,
    spec: NsaSpec,
  ): { out: Tensor; lse: Tensor; scores: Tensor };
  /** Returns dq [T, H*D], dkc, dvc [batch*Tc, KV*D] (the scores pass no gradient). */
  nsaCompressedAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    kc: Tensor,
    vc: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: NsaSpec,
  ): { dq: Tensor; dkc: Tensor; dvc: Tensor };
  /**
   * The selection (no gradient): i32 [T, topkBlocks] block ids per token, [0, cur-2, cur-1] (clamped to 0, cur the
   * token's own block) then the top (topkBlocks - 3) of scores f32 [T, Ns] with blocks >= cur ranked last; ties go
   * to the lower block; fewer than topkBlocks scored blocks pad with 0.
   */
  nsaSelectBlocks(scores: Tensor, spec: NsaSpec): Tensor;
  /**
   * Selected attention: query i sees keys j <= i whose block is its own or one of sel [T, topkBlocks] (duplicates
   * count once). q [T, H*D], k, v [T, KV*D]. Returns out [T, H*D] and lse f32 [T, H].
   */
  nsaSelectedAttention(q: Tensor, k: Tensor, v: Tensor, sel: Tensor, spec: NsaSpec): { out: Tensor; lse: Tensor };
  /** Returns dq, and dk, dv summed over each key/value head's query heads. */
  nsaSelectedAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sel: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: NsaSpec,
  ): { dq: Tensor; dk: Tensor; dv: Tensor };
  /**
   * o = sigmoid(g0) * cmp + sigmoid(g1) * slc + sigmoid(g2) * swa per token, gates [T, 3] the gate MLP's logits,
   * branches [T, H*D]; a null swa (no window) adds nothing.
   */
  nsaGate(gates: Tensor, cmp: Tensor, slc: Tensor, swa: Tensor | null): Tensor;
  nsaGateBackward(
    dOut: Tensor,
    gates: Tensor,
    cmp: Tensor,
    slc: Tensor,
    swa: Tensor | null,
  ): { dGates: Tensor; dCmp: Tensor; dSlc: Tensor; dSwa: Tensor | null };
}
