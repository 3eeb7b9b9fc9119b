/**
 * The Backend interface: every op the model, the optimizer and the trainer use, each a coarse fused kernel with an
 * explicit backward. Model code talks only to this interface, so the CPU backend (the reference oracle, plain
 * TypeScript) and the CUDA backend are interchangeable.
 *
 * Contract (what lets a GPU backend plug in unchanged):
 * - Ops are asynchronous with respect to the host. They enqueue work and return handles; only `read` brings values
 *   back into JS. Nothing in the hot path reads a tensor.
 * - Every returned tensor is owned by the caller, who frees it. Inputs are never freed by an op.
 * - Gradient rule (as in llm.c): parameter gradients are ACCUMULATED into caller-provided tensors; activation
 *   gradients are returned fresh.
 * - Shapes use the legend T tokens (B*S), D model dim, E experts, K top-k, N = T*K routed rows, F expert hidden,
 *   V vocab, H heads.
 */
import type { NsaOps } from './nsa.ts';
import type { DType, DeviceKind, Tensor } from './tensor.ts';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  /** Write into this tensor instead of allocating. */
  out?: Tensor;
  /** dtype of a freshly allocated output (default: a's); e.g. fp32 router logits from bf16 operands. */
  outDtype?: DType;
  /** out = alpha * op(A) op(B) + (accumulate ? out : 0). */
  accumulate?: boolean;
  alpha?: number;
}

/** Where RoPE applies inside each row of a [T, C] tensor: `heads` segments of `headStride` columns starting at
 *  `base`, rotating columns [offset, offset + dim) of each segment (NeoX half split). Positions are t % seqLen. */
export interface RopeSpec {
  heads: number;
  headStride: number;
  base: number;
  offset: number;
  dim: number;
  seqLen: number;
}

export interface AttentionSpec {
  batch: number;
  seqLen: number;
  heads: number;
  /** Softmax scale applied to q.k. */
  scale: number;
  /**
   * Which kernels a GPU backend uses (the `attn_kernel` key): cuDNN's fused flash attention where cuDNN is found and
   * takes the shape (the default), or nmoe's own flash kernels. The CPU backend has one implementation.
   */
  kernel?: 'nmoe' | 'cudnn';
  /** A bit-reproducible backward (the `deterministic` key, default true). */
  deterministic?: boolean;
}

/** Sliding-window attention with sinks (the reference's SWA, gpt-oss style). */
export interface SlidingAttentionSpec {
  batch: number;
  seqLen: number;
  heads: number;
  /** Key/value heads (GQA): query head h reads key/value head floor(h / (heads / kvHeads)). */
  kvHeads: number;
  /** Softmax scale applied to q.k. */
  scale: number;
  /** Key j is visible from query i (same sequence) iff i - window < j <= i; 0 sees every earlier key. */
  window: number;
}

/** Kimi Delta Attention (the reference's KDA): a gated delta-rule linear attention, per sequence and head. */
export interface DeltaAttentionSpec {
  batch: number;
  seqLen: number;
  heads: number;
  /** Multiplies S_t^T q_t, q and k being L2-normalised (the reference: qk_head_dim^-1/2). */
  scale: number;
}

/** DSA's lightning indexer (the reference's DSA): per sequence, causal, one key head shared by its query heads. */
export interface IndexerSpec {
  batch: number;
  seqLen: number;
  /** Indexer query heads (attn_dsa.n_idx_heads). */
  heads: number;
  /** Keys kept per query (attn_dsa.top_k); every visible key when fewer are visible. */
  topK: number;
}

/** DSA's indexer alignment loss (attn_dsa.indexer_loss_weight). */
export interface IndexerAlignmentSpec {
  batch: number;
  seqLen: number;
  /** Attention heads (their probabilities are summed). */
  heads: number;
  /** Indexer query heads. */
  idxHeads: number;
  /** The attention's softmax scale (with lse, recomputes its probabilities). */
  scale: number;
  /** Multiplies the mean over queries. */
  weight: number;
}

export interface CrossEntropySpec {
  /** Multiplies the logits (the reference's 0.125). */
  logitScale: number;
  /** Targets equal to this id do not count (the reference masks EOS); -1 masks nothing. */
  ignoreIndex: number;
}

/**
 * Routing of T tokens x K slots to E experts, grouped by expert. Rows of the grouped layout are ordered by expert,
 * then by (token, slot): the order is a function of the routing alone, never of arrival order.
 */
export interface MoePlan {
  readonly numTokens: number;
  readonly topK: number;
  readonly numExperts: number;
  /** i32 [E]: rows routed to each expert. */
  readonly counts: Tensor;
  /** i32 [E+1]: start row of each expert's segment in the grouped layout. */
  readonly offsets: Tensor;
  /** i32 [N]: for grouped row r, the flat slot t*K+k it came from. */
  readonly slotOfRow: Tensor;
  /** i32 [N]: for flat slot t*K+k, its grouped row. */
  readonly rowOfSlot: Tensor;
  free(): void;
}

export interface AdamWGroup {
  params: Tensor[];
  grads: Tensor[];
  expAvg: Tensor[];
  expAvgSq: Tensor[];
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** 1-based step used for bias correction. */
  step: number;
  /** fp32 master copies of bf16 params: the update runs on them and params get their rounding. */
  master?: Tensor[];
}

export interface AdamWOptions {
  /** Round updated bf16 params (without masters) stochastically, seeded by (seed, step); else to nearest. */
  stochasticRounding?: { seed: number };
  /** Global gradient norm (f32 [1]) from `globalNorm`. A non-finite norm skips the whole update on the device. */
  gradNorm: Tensor;
  /** Clip gradients to this global norm; 0 disables clipping. */
  maxNorm: number;
}

/**
 * How the grouped (routed-expert) GEMMs read their operands: as stored, or, for dtype = "fp8", quantised to FP8
 * E4M3 by DeepSeek-V3's block scales (src/tensor/fp8.ts): the row operand (activations, output gradients) in 1 x 128
 * tiles along the reduced dimension, the expert weights in 128 x 128 blocks, and both operands of the weight
 * gradient in 128 x 1 tiles down each expert's rows. Products accumulate in fp32; outputs keep their usual dtype.
 */
export type ExpertFormat = 'stored' | 'fp8';

/** Muon's momentum step for one matrix (src/optim/muon.ts). */
export interface MuonMomentumSpec {
  /** mu in m = mu*m + g. */
  momentum: number;
  /** Nesterov: the update is g + mu*m (with the new m); else m. */
  nesterov: boolean;
  /** Global gradient norm (f32 [1]); gradients are clipped by it as in `adamw`, and a non-finite one skips the step. */
  gradNorm: Tensor;
  maxNorm: number;
}

/** Muon's weight update for one matrix: p = p * (1 - lr*weightDecay) - alpha * delta. */
export interface MuonUpdateSpec {
  lr: number;
  weightDecay: number;
  /** Multiplies delta: lr times Muon's shape scale times the scale the orthogonalised matrix carries. */
  alpha: number;
  /** f32 [1]: a non-finite norm leaves the weight (and master) untouched, as in `adamw`. */
  gradNorm: Tensor;
  /** fp32 master copy of a bf16 param: the update runs on it and the param gets its rounding. */
  master?: Tensor;
  /** Stochastic rounding of a bf16 param without a master, Philox-keyed by (seed, step) as in `adamw`. */
  stochasticRounding?: { seed: number; step: number };
}

export interface NormalInit {
  std: number;
  seed: number;
  stream: number;
  /** Element offset into the stream (even): a rank's slice of a larger tensor draws what the whole would. */
  offset?: number;
  clamp?: number;
}

/** NSA's ops (src/tensor/nsa.ts) are part of every backend. */
export interface Backend extends NsaOps {
  readonly device: DeviceKind;
  /** Human-readable device name for logs ("CPU (2 threads)", "NVIDIA H100 80GB HBM3"). */
  readonly name: string;

  // --- memory ---------------------------------------------------------------------------------------------
  empty(shape: readonly number[], dtype: DType): Tensor;
  zeros(shape: readonly number[], dtype: DType): Tensor;
  upload(data: Float32Array | Int32Array, shape: readonly number[], dtype: DType): Tensor;
  /** Copies a tensor back to the host (f32 for f32/bf16, i32 for i32). The only way values reach JS. */
  read(t: Tensor): Promise<Float32Array | Int32Array>;
  /**
   * Same storage, new shape: elements [offset, offset + numel(shape)) of `t` (default: all of it, reshaped). The
   * view must not outlive `t`; freeing a view is a no-op.
   */
  view(t: Tensor, shape: readonly number[], offset?: number): Tensor;
  zero(t: Tensor): void;
  copy(src: Tensor, dst: Tensor): void;
  /** t[i] = normal(0, std) from Philox keyed by (seed, stream) at counter offset + i, clamped to [-clamp, clamp]. */
  fillNormal(t: Tensor, init: NormalInit): void;
  fill(t: Tensor, value: number): void;
  /** dst = src converted to dst's float dtype (same number of elements). */
  convert(src: Tensor, dst: Tensor): void;
  /** Waits until all queued work is done. */
  synchronize(): Promise<void>;
  /**
   * Device memory in bytes: held by live tensors now and at its peak, obtained from the driver (live or cached),
   * and how many driver allocations made it; null where it is not tracked (CPU).
   */
  memory(): { current: number; peak: number; reserved: number; driverAllocs: number } | null;

  // --- dense math -------------------------------------------------------------------------------------------
  /** 2-D GEMM: out[M,N] = alpha * op(a) @ op(b) (+ out). */
  matmul(a: Tensor, b: Tensor, opts?: MatmulOptions): Tensor;
  /** out = a + b (same shape). */
  add(a: Tensor, b: Tensor): Tensor;
  /** dst += src. */
  addInPlace(dst: Tensor, src: Tensor): void;
  /** out[t,:] = table[ids[t],:] * scale. ids i32 [T], table [V,D]. */
  embedding(ids: Tensor, table: Tensor, scale: number): Tensor;
  /** dTable[ids[t],:] += dOut[t,:] * scale. */
  embeddingBackward(ids: Tensor, dOut: Tensor, dTable: Tensor, scale: number): void;
  /** y = x / rms(x) * w over the last dim. Returns y and rstd f32 [rows]. */
  rmsnorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor };
  /** Returns dx; accumulates dw. */
  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dw: Tensor): Tensor;
  /** a = silu(g) * u, elementwise. */
  swiglu(g: Tensor, u: Tensor): Tensor;
  swigluBackward(da: Tensor, g: Tensor, u: Tensor): { dg: Tensor; du: Tensor };
  /** Splits the columns of x [R, sum(widths)] into contiguous parts. */
  splitCols(x: Tensor, widths: readonly number[]): Tensor[];
  /** Inverse of splitCols. */
  concatCols(parts: readonly Tensor[]): Tensor;

  // --- attention --------------------------------------------------------------------------------------------
  /** Rotates in place. cos/sin are f32 [positions, spec.dim/2]; `inverse` rotates by -angle (the backward). */
  ropeInPlace(x: Tensor, cos: Tensor, sin: Tensor, spec: RopeSpec, inverse: boolean): void;
  /**
   * MLA key/value assembly. kvb [T, H*(dNope+dV)] holds per head [k_nope | v]; kpe [T, dRope] is the shared rope
   * key. Returns k [T, H*(dNope+dRope)] = per head [k_nope | kpe] and v [T, H*dV].
   */
  mlaAssembleKV(kvb: Tensor, kpe: Tensor, heads: number, dNope: number, dV: number): { k: Tensor; v: Tensor };
  /** Backward of mlaAssembleKV: dkpe sums over heads. */
  mlaAssembleKVBackward(
    dk: Tensor,
    dv: Tensor,
    heads: number,
    dNope: number,
    dV: number,
  ): { dkvb: Tensor; dkpe: Tensor };
  /**
   * Row softmax for decoding against a KV cache (inference only, no backward): out[r,:] = softmax(x[r,:]) over the
   * last dim, f32, of x [R, C] (f32 or bf16; the scores already carry the attention scale).
   */
  softmax(x: Tensor): Tensor;
  /**
   * Causal attention. q, k [T, H*dQK], v [T, H*dV], T = batch*seqLen, each sequence attends within itself.
   * Returns out [T, H*dV] and the log-sum-exp f32 [T, H] of the scaled scores. Never materialises [S, S].
   */
  attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec): { out: Tensor; lse: Tensor };
  attentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: AttentionSpec,
  ): {
    dq: Tensor;
    dk: Tensor;
    dv: Tensor;
  };

  /**
   * Sliding-window attention with a learned sink logit per head: each row's softmax has one more logit, sinks[h],
   * whose value vector is zero. q [T, H*d], k and v [T, KV*d], sinks [H]. Returns out [T, H*d] and the
   * log-sum-exp f32 [T, H] over the visible scaled scores and the sink. Work grows with the window, not seqLen.
   */
  slidingAttention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sinks: Tensor,
    spec: SlidingAttentionSpec,
  ): { out: Tensor; lse: Tensor };
  /** Returns dq, and dk, dv summed over each key/value head's query heads; accumulates the sinks' gradient. */
  slidingAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    sinks: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: SlidingAttentionSpec,
    dSinks: Tensor,
  ): { dq: Tensor; dk: Tensor; dv: Tensor };

  /**
   * Kimi Delta Attention (fla's chunk_kda with q and k L2-normalised in the op): per head, the state S [K, V] decays
   * by sigmoid(gate_t) per key dim, then is delta-rule corrected toward v_t at the unit key k_t with rate
   * sigmoid(beta_t); o_t = scale S_t^T q_t with non-finite values clamped as nan_to_num(o, 0, 1e4, -1e4). q, k and
   * gate [T, H*K] (gate: logits of the decay), v [T, H*V], beta [T, H] (logits). Returns out [T, H*V].
   */
  deltaAttention(q: Tensor, k: Tensor, v: Tensor, gate: Tensor, beta: Tensor, spec: DeltaAttentionSpec): Tensor;
  /** Gradients with respect to every input of deltaAttention (gate and beta as logits). */
  deltaAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gate: Tensor,
    beta: Tensor,
    spec: DeltaAttentionSpec,
  ): { dq: Tensor; dk: Tensor; dv: Tensor; dGate: Tensor; dBeta: Tensor };

  /**
   * DSA's lightning indexer: I[i, j] = sum_h w[i, h] ReLU(qIdx[i, h] . kIdx[j]) over the keys j <= i of query i's
   * sequence; returns i32 [T, min(topK, seqLen)], each row the positions of its top-k keys (best first, the lower
   * position on ties), -1 where fewer keys are visible. qIdx [T, heads*d], kIdx [T, d], wIdx [T, heads]. No gradient.
   */
  indexerTopK(qIdx: Tensor, kIdx: Tensor, wIdx: Tensor, spec: IndexerSpec): Tensor;
  /** Causal attention (as `attention`) over each query's selected keys only (indexerTopK's rows, shared by all heads). */
  selectedAttention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    selected: Tensor,
    spec: AttentionSpec,
  ): { out: Tensor; lse: Tensor };
  /** Gradients of selectedAttention with the selection held fixed. */
  selectedAttentionBackward(
    dOut: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    selected: Tensor,
    out: Tensor,
    lse: Tensor,
    spec: AttentionSpec,
  ): { dq: Tensor; dk: Tensor; dv: Tensor };

  /**
   * DSA's indexer alignment loss, f32 [1]: weight * mean over queries of KL(P || softmax(I)), P the attention's
   * probabilities (from q, k and lse, constant) summed over heads and L1-normalised, I the index scores, both over
   * the selected keys (or every causal key when `selected` is null). Returns the gradients of that loss for the
   * indexer's inputs along with it (the loss is a leaf: nothing flows back into it).
   */
  indexerAlignment(
    qIdx: Tensor,
    kIdx: Tensor,
    wIdx: Tensor,
    q: Tensor,
    k: Tensor,
    lse: Tensor,
    selected: Tensor | null,
    spec: IndexerAlignmentSpec,
  ): { loss: Tensor; dqIdx: Tensor; dkIdx: Tensor; dwIdx: Tensor };

  // --- router and experts -----------------------------------------------------------------------------------
  /**
   * Sigmoid router: scores = sigmoid(routeScale * logits); experts chosen by top-K of scores + bias (ties go to the
   * lower expert id); gates = chosen scores renormalised to sum 1. logits f32 [T,E], bias f32 [E].
   * Returns gates f32 [T,K] and idx i32 [T,K].
   */
  routerTopK(logits: Tensor, bias: Tensor, topK: number, routeScale: number): { gates: Tensor; idx: Tensor };
  /** dLogits f32 [T,E] from dGates [T,K] (selection itself has no gradient). */
  routerTopKBackward(dGates: Tensor, logits: Tensor, idx: Tensor, routeScale: number): Tensor;
  /** Builds the grouped layout for idx i32 [T,K] on the device (no host sync). */
  moePlan(idx: Tensor, numExperts: number): MoePlan;
  /**
   * Segment offsets i32 [E+1] for rows already grouped by expert with per-expert `counts` i32 [E] (at most
   * `maxRows` rows in all), usable by the grouped GEMMs like a plan's offsets: the layout RDEP's dispatch delivers.
   */
  moeSegments(counts: Tensor, maxRows: number): { offsets: Tensor; free(): void };
  /** xe[r,:] = x[slotOfRow[r] / K, :]: x [T,D] to grouped rows [N,D]. */
  moeGather(x: Tensor, plan: MoePlan): Tensor;
  /** dx[t,:] = sum over k (in slot order) of dxe[rowOfSlot[t*K+k], :]. */
  moeGatherBackward(dxe: Tensor, plan: MoePlan): Tensor;
  /** out[t,:] = sum over k (in slot order, fp32) of gates[t,k] * ye[rowOfSlot[t*K+k], :]. */
  moeCombine(ye: Tensor, gates: Tensor, plan: MoePlan): Tensor;
  moeCombineBackward(dOut: Tensor, ye: Tensor, gates: Tensor, plan: MoePlan): { dye: Tensor; dGates: Tensor };
  /**
   * Per-expert GEMM over grouped rows: y[seg_e] = x[seg_e] @ w[e] with w [E, Din, Dout], or @ w[e]^T with
   * `transB` and w [E, Dout, Din]. `offsets` i32 [E+1] (from a MoePlan).
   */
  groupedMatmul(x: Tensor, w: Tensor, offsets: Tensor, transB?: boolean, format?: ExpertFormat): Tensor;
  /**
   * The sum of two grouped products over the same segments, y[seg_e] = x1[seg_e] @ op(w1[e]) + x2[seg_e] @ op(w2[e])
   * (op as in groupedMatmul, the same for both; equal row counts and output widths): the MoE input gradient
   * dh1 @ W1^T + dh3 @ W3^T as one product. Accumulated in fp32 and rounded once (the CUDA backend off sm_90a adds
   * the two rounded products).
   */
  groupedMatmulSum(
    x1: Tensor,
    w1: Tensor,
    x2: Tensor,
    w2: Tensor,
    offsets: Tensor,
    transB?: boolean,
    format?: ExpertFormat,
  ): Tensor;
  /**
   * The experts' gate and up projections with the SwiGLU: h1 = x @ w1[e], h3 = x @ w3[e] per segment (w1, w3
   * [E, Din, F]), a = silu(h1) * h3 elementwise from the stored (rounded) h1 and h3, as swiglu(h1, h3) would give.
   */
  groupedSwiglu(
    x: Tensor,
    w1: Tensor,
    w3: Tensor,
    offsets: Tensor,
    format?: ExpertFormat,
  ): { h1: Tensor; h3: Tensor; a: Tensor };
  /**
   * dw[e] += x[seg_e]^T @ dy[seg_e], dw [E, Din, Dout]; with `accumulate` false, dw[e] = that product instead (zeros for
   * an expert with no rows), so a gradient's first product needs neither zeroed memory nor a read of it.
   */
  groupedMatmulWeightGrad(
    x: Tensor,
    dy: Tensor,
    offsets: Tensor,
    dw: Tensor,
    accumulate?: boolean,
    format?: ExpertFormat,
  ): void;
  /**
   * Aux-loss-free balancing after a step: l = counts/sum(counts); s = sign(l - 1/E);
   * bias -= rate * (s - mean(s)); clamp to [-16, 16]. counts i32 [E], bias f32 [E]. Skipped, like the AdamW
   * update, when `gradNorm` (f32 [1]) is not finite, so a diverged step leaves all state as it was.
   */
  routerBiasUpdate(bias: Tensor, counts: Tensor, rate: number, gradNorm: Tensor): void;

  // --- loss ------------------------------------------------------------------------------------------------
  /**
   * Cross-entropy of logits = (x @ w^T) * logitScale against targets, averaged over counted targets, computed in
   * chunks so [T, V] never exists. x [T,D], w [V,D], targets i32 [T]. Returns loss f32 [1] and the counted-target
   * number f32 [1]. With `dw` it is also the backward, in the same pass (no logits recomputed): returns
   * dx = d(mean loss)/dx and accumulates d(mean loss)/dw into dw; without, dx is null. `normalizer` (f32 [1])
   * replaces the counted-target number as the mean's divisor (data parallelism: the global batch's count).
   */
  crossEntropy(
    x: Tensor,
    w: Tensor,
    targets: Tensor,
    spec: CrossEntropySpec,
    dw?: Tensor,
    normalizer?: Tensor,
  ): { loss: Tensor; count: Tensor; dx: Tensor | null };

  // --- optimizer -------------------------------------------------------------------------------------------
  /** sqrt(sum of squares of every element of every tensor), f32 [1]. */
  globalNorm(tensors: readonly Tensor[]): Tensor;
  /**
   * Decoupled AdamW, PyTorch order: p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
   * p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). Gradients are scaled by min(1, maxNorm/(norm+1e-6)) first.
   */
  adamw(groups: readonly AdamWGroup[], opts: AdamWOptions): void;
  /**
   * Muon's first half for one matrix: g' = g * min(1, maxNorm/(norm+1e-6)); m = mu*m + g' (in place, m f32);
   * u = nesterov ? g' + mu*m : m. Returns u / (||u||_F + 1e-7), f32 of grad's shape: the Newton-Schulz input.
   * A non-finite gradNorm leaves m untouched and returns zeros.
   */
  muonMomentum(grad: Tensor, momentum: Tensor, spec: MuonMomentumSpec): Tensor;
  /** Muon's decoupled weight decay and step: p = p * (1 - lr*wd) - alpha * delta (delta of p's size and dtype). */
  muonUpdate(param: Tensor, delta: Tensor, spec: MuonUpdateSpec): void;
}
