/**
 * The causal-attention graphs handed to cuDNN, as plain data (no library calls, so they are testable anywhere).
 *
 * cuDNN 9.14 has no single forward operation with a causal mask and no single backward operation at all (those
 * come in 9.13 without causal masking and in 9.17), so attention is described as the composite graph of matmuls,
 * pointwise ops and reductions that cudnn-frontend's SDPA nodes expand to; cuDNN's fused flash-attention engines
 * recognise exactly that pattern. Node order, dtypes (fp32 intermediates, bf16 where the frontend narrows to the
 * io type), virtual flags and by-value scalars follow cudnn-frontend's CompositeSDPANode and
 * CompositeSDPABackwardNode (with its composite softmax and diagonal-band mask, the forms it uses before 9.21).
 *
 * Dims are cuDNN's (batch, head, sequence, feature). nmoe keeps q, k, v, out and their gradients token-major,
 * [T, H*D] with T = batch*seq, which is (B, H, S, D) with strides (S*H*D, D, H*D, 1): cuDNN reads and writes them
 * in place. The softmax statistics are a dense (B, H, S, 1) f32 buffer: the backward engines of cuDNN before 9.26
 * address them as packed BHS whatever strides are declared, so nmoe's lse [T, H] is transposed to and from that.
 */
import type { DType } from '../tensor.ts';
import {
  DataType,
  type DataTypeId,
  type GraphSpec,
  type OpSpec,
  PointwiseMode,
  type PointwiseModeId,
  ReductionMode,
  type ReductionModeId,
  type TensorSpec,
} from './cudnn.ts';

export interface SdpaShape {
  batch: number;
  seqLen: number;
  heads: number;
  /** Head dim of q and k. */
  dQK: number;
  /** Head dim of v and the output. */
  dV: number;
}

/**
 * 'frontend': cudnn-frontend's dtypes (index generation computed in fp32 into int32, the comparison in bool, the
 * K view of the dQ matmul in fp32). 'int-index': CUDA.jl's spelling of the same graph (index generation and the
 * comparison computed in int32, the K view in bf16), tried when cuDNN takes no engine for the first.
 */
export type GraphStyle = 'frontend' | 'int-index';
export const GRAPH_STYLES: readonly GraphStyle[] = ['frontend', 'int-index'];

/** UIDs of the tensors bound at execution; virtual tensors are numbered from 100. */
export const UID = {
  Q: 1,
  K: 2,
  V: 3,
  O: 4,
  STATS: 5,
  SCALE: 6,
  MASK_VALUE: 7,
  DO: 8,
  DQ: 9,
  DK: 10,
  DV: 11,
  SOFTMAX_SUM: 12,
  DQ_ACCUM: 13,
  ONE: 14,
} as const;

const { FLOAT, BFLOAT16: BF16, INT32, BOOLEAN } = DataType;

/** Row-major strides of `dims`. */
export function denseStrides(dims: readonly number[]): number[] {
  const s = new Array<number>(dims.length);
  let acc = 1;
  for (let i = dims.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= dims[i]!;
  }
  return s;
}

/** (B, H, S, D) over nmoe's token-major [T, H*D]. */
export function tokenMajorStrides(seq: number, heads: number, d: number): number[] {
  return [seq * heads * d, d, heads * d, 1];
}

/** The transpose (B, H, D, S) of the same memory: how a matmul takes K^T and V^T. */
function transposedTokenMajorStrides(seq: number, heads: number, d: number): number[] {
  return [seq * heads * d, d, 1, heads * d];
}

interface PointwiseOpts {
  b?: TensorSpec;
  t?: TensorSpec;
  /** An existing output; otherwise a new virtual one shaped like x. */
  y?: TensorSpec;
  /** dtype of a new virtual output (default fp32). */
  dtype?: DataTypeId;
  dims?: readonly number[];
  strides?: readonly number[];
  compute?: DataTypeId;
  axis?: number;
}

class GraphBuilder {
  readonly ops: OpSpec[] = [];
  #uid = 100;

  virtual(
    name: string,
    dtype: DataTypeId,
    dims: readonly number[],
    strides: readonly number[] = denseStrides(dims),
  ): TensorSpec {
    return { uid: this.#uid++, name, dtype, dims, strides, virtual: true };
  }

  pointwise(name: string, mode: PointwiseModeId, x: TensorSpec, o: PointwiseOpts = {}): TensorSpec {
    const y = o.y ?? this.virtual(name, o.dtype ?? FLOAT, o.dims ?? x.dims, o.strides ?? x.strides);
    this.ops.push({ kind: 'pointwise', name, mode, compute: o.compute ?? FLOAT, x, b: o.b, t: o.t, y, axis: o.axis });
    return y;
  }

  matmul(name: string, a: TensorSpec, b: TensorSpec, c: TensorSpec): TensorSpec {
    this.ops.push({ kind: 'matmul', name, compute: FLOAT, a, b, c });
    return c;
  }

  reduction(name: string, mode: ReductionModeId, x: TensorSpec, y: TensorSpec): TensorSpec {
    this.ops.push({ kind: 'reduction', name, mode, compute: FLOAT, x, y });
    return y;
  }

  reshape(name: string, x: TensorSpec, y: TensorSpec): TensorSpec {
    this.ops.push({ kind: 'reshape', name, x, y });
    return y;
  }
}

function bound(
  uid: number,
  name: string,
  dtype: DataTypeId,
  dims: readonly number[],
  strides: readonly number[],
): TensorSpec {
  return { uid, name, dtype, dims, strides };
}

/** A host f32 scalar given at execution (the frontend's fused scalars: rank 4, all ones). */
function scalar(uid: number, name: string): TensorSpec {
  return { uid, name, dtype: FLOAT, dims: [1, 1, 1, 1], strides: [1, 1, 1, 1], byValue: true };
}

/** Top-left causal mask: scores where row >= col, the mask value (-inf) elsewhere. */
function causalMask(g: GraphBuilder, scores: TensorSpec, maskValue: TensorSpec, style: GraphStyle): TensorSpec {
  const indexCompute = style === 'frontend' ? FLOAT : INT32;
  const row = g.pointwise('gen_row_index', PointwiseMode.GEN_INDEX, scores, {
    axis: 2,
    dtype: INT32,
    compute: indexCompute,
  });
  const col = g.pointwise('gen_col_index', PointwiseMode.GEN_INDEX, scores, {
    axis: 3,
    dtype: INT32,
    compute: indexCompute,
  });
  const keep = g.pointwise('row>=col', PointwiseMode.CMP_GE, row, {
    b: col,
    dtype: BOOLEAN,
    compute: style === 'frontend' ? BOOLEAN : INT32,
  });
  // BINARY_SELECT: y = t ? x : b
  return g.pointwise('binary_select', PointwiseMode.BINARY_SELECT, scores, { b: maskValue, t: keep });
}

/** The bound tensors shared by both graphs. */
function inputs(s: SdpaShape) {
  const { batch: B, seqLen: S, heads: H, dQK, dV } = s;
  return {
    q: bound(UID.Q, 'Q', BF16, [B, H, S, dQK], tokenMajorStrides(S, H, dQK)),
    kT: bound(UID.K, 'K^T', BF16, [B, H, dQK, S], transposedTokenMajorStrides(S, H, dQK)),
    o: bound(UID.O, 'O', BF16, [B, H, S, dV], tokenMajorStrides(S, H, dV)),
    stats: bound(UID.STATS, 'Stats', FLOAT, [B, H, S, 1], denseStrides([B, H, S, 1])),
    scale: scalar(UID.SCALE, 'attn_scale'),
    maskValue: scalar(UID.MASK_VALUE, 'mask_value'),
  };
}

/**
 * Forward: O = softmax(scale * Q K^T, causal) V and Stats = log-sum-exp of each row of the scaled, masked scores
 * (natural log: exactly nmoe's lse). Bound: Q, K, V, O, Stats, attn_scale, mask_value.
 */
export function forwardGraph(s: SdpaShape, style: GraphStyle = 'frontend'): GraphSpec {
  const { batch: B, seqLen: S, heads: H, dV } = s;
  const { q, kT, o, stats, scale, maskValue } = inputs(s);
  const v = bound(UID.V, 'V', BF16, [B, H, S, dV], tokenMajorStrides(S, H, dV));
  const rows = [B, H, S, 1];
  const g = new GraphBuilder();
  const scores = g.matmul('bmm1', q, kT, g.virtual('S', FLOAT, [B, H, S, S]));
  const scaled = g.pointwise('attn_scale', PointwiseMode.MUL, scores, { b: scale });
  const masked = causalMask(g, scaled, maskValue, style);
  // softmax with stats, as the frontend's composite softmax: max, x - max, exp, sum, log(sum) + max, exp / sum
  const max = g.reduction('max', ReductionMode.MAX, masked, g.virtual('M', FLOAT, rows));
  const shifted = g.pointwise('sub', PointwiseMode.SUB, masked, { b: max });
  const exp = g.pointwise('exp', PointwiseMode.EXP, shifted);
  const sum = g.reduction('sum', ReductionMode.ADD, exp, g.virtual('SumExp', FLOAT, rows));
  const logSum = g.pointwise('log', PointwiseMode.LOG, sum);
  g.pointwise('add', PointwiseMode.ADD, max, { b: logSum, y: stats });
  // The probabilities enter the second matmul in the io type.
  const p = g.pointwise('div', PointwiseMode.DIV, exp, { b: sum, dtype: BF16 });
  g.matmul('bmm2', p, v, o);
  return { name: `sdpa_fwd B${B} S${S} H${H} d${s.dQK}/${dV}${style === 'frontend' ? '' : ` (${style})`}`, ops: g.ops };
}

/**
 * Backward from dO, recomputing the probabilities from Q, K and Stats. Bound: Q, K, V, O, dO, Stats, dQ, dK, dV,
 * attn_scale, mask_value, one, and two f32 scratch tensors the pattern requires: SoftmaxSum (B, H, S, 1) = rowsum
 * of dO * O, and — unless `deterministic` — dQAccum (B, H, S, dQK), where the engine accumulates dQ in fp32 (with
 * atomics: not bit-reproducible). `deterministic` is cudnn-frontend's deterministic algorithm on Hopper: the dQ
 * matmul writes dQ directly and the engine takes its dP-workspace path.
 */
export function backwardGraph(s: SdpaShape, opts: { deterministic: boolean; style?: GraphStyle }): GraphSpec {
  const style = opts.style ?? 'frontend';
  const { batch: B, seqLen: S, heads: H, dQK, dV } = s;
  const { q, kT, o, stats, scale, maskValue } = inputs(s);
  const vT = bound(UID.V, 'V^T', BF16, [B, H, dV, S], transposedTokenMajorStrides(S, H, dV));
  const dO = bound(UID.DO, 'dO', BF16, [B, H, S, dV], tokenMajorStrides(S, H, dV));
  const dq = bound(UID.DQ, 'dQ', BF16, [B, H, S, dQK], tokenMajorStrides(S, H, dQK));
  const dk = bound(UID.DK, 'dK', BF16, [B, H, S, dQK], tokenMajorStrides(S, H, dQK));
  const dv = bound(UID.DV, 'dV', BF16, [B, H, S, dV], tokenMajorStrides(S, H, dV));
  const one = scalar(UID.ONE, 'one');
  const rows = [B, H, S, 1];
  const softmaxSum = bound(UID.SOFTMAX_SUM, 'SoftmaxSum', FLOAT, rows, denseStrides(rows));
  const transposed = [H * S * S, S * S, 1, S]; // (B, H, S_kv, S_q) over the (B, H, S_q, S_kv) scores
  const g = new GraphBuilder();

  // softmax_sum = rowsum(dO * O) * 1 (the 1 stands where the dropout scale would)
  const dOO = g.pointwise('mul_dO_O', PointwiseMode.MUL, dO, {
    b: o,
    dims: [B, H, S, dV],
    strides: [H * S * dV, S * dV, H * dV, 1],
  });
  const rowSums = g.reduction('reduce_dO_o', ReductionMode.ADD, dOO, g.virtual('rowsum(dO*O)', FLOAT, rows));
  g.pointwise('scale_dropout_inv', PointwiseMode.MUL, rowSums, { b: one, y: softmaxSum });

  // P = exp(scale * Q K^T - Stats), causally masked; dV = P^T dO
  const scores = g.matmul('matmul_Q_KT', q, kT, g.virtual('S', FLOAT, [B, H, S, S]));
  const scaled = g.pointwise('mul_s_attn_scale', PointwiseMode.MUL, scores, { b: scale });
  const shifted = g.pointwise('sub_s_m', PointwiseMode.SUB, scaled, { b: stats });
  const masked = causalMask(g, shifted, maskValue, style);
  const p = g.pointwise('exp_s', PointwiseMode.EXP, masked);
  const pT = g.reshape('reshape_p', p, g.virtual('P^T', BF16, [B, H, S, S], transposed));
  g.matmul('matmul_pT_dO', pT, dO, dv);

  // dS = scale * P * (dO V^T - softmax_sum); dK = dS^T Q
  const dP = g.matmul('matmul_dO_VT', dO, vT, g.virtual('dP', FLOAT, [B, H, S, S]));
  const centred = g.pointwise('sub_dP_softmax_sum', PointwiseMode.SUB, dP, { b: softmaxSum });
  const dSUnscaled = g.pointwise('mul_dP_exp_s', PointwiseMode.MUL, centred, { b: p });
  const dS = g.pointwise('mul_dS_attn_scale', PointwiseMode.MUL, dSUnscaled, { b: scale });
  const dST = g.reshape('reshape_dS', dS, g.virtual('dS^T', BF16, [B, H, S, S], transposed));
  g.matmul('matmul_dST_Q', dST, q, dk);

  // dQ = dS K, K seen again untransposed
  const k = g.reshape(
    'reshape_k',
    kT,
    g.virtual('K', style === 'frontend' ? FLOAT : BF16, [B, H, S, dQK], tokenMajorStrides(S, H, dQK)),
  );
  if (opts.deterministic) {
    g.matmul('matmul_dS_K', dS, k, dq);
  } else {
    const dqAccum = bound(UID.DQ_ACCUM, 'dQAccum', FLOAT, [B, H, S, dQK], denseStrides([B, H, S, dQK]));
    g.matmul('matmul_dS_K', dS, k, dqAccum);
    g.pointwise('identity_dQ', PointwiseMode.IDENTITY, dqAccum, { y: dq });
  }
  const tags = [opts.deterministic ? 'deterministic' : '', style === 'frontend' ? '' : style]
    .filter(Boolean)
    .join(', ');
  return { name: `sdpa_bwd B${B} S${S} H${H} d${dQK}/${dV}${tags ? ` (${tags})` : ''}`, ops: g.ops };
}

/**
 * Limits known before asking cuDNN (null: none applies), from cudnn-frontend's checks for bf16 SDPA on cuDNN 9.
 */
export function staticLimits(s: SdpaShape, dtype: DType, version: number): string | null {
  if (dtype !== 'bf16') return `cuDNN attention takes bf16 (got ${dtype})`;
  if (s.dQK % 8 !== 0 || s.dV % 8 !== 0 || s.dQK > 256 || s.dV > 256)
    return `head dims ${s.dQK}/${s.dV}: cuDNN needs multiples of 8, at most 256`;
  if (s.seqLen < 2) return 'a sequence of one token (s_q = s_kv = 1 is not supported)';
  if (version === 91000 || version === 91001)
    return 'cuDNN 9.10.0 and 9.10.1 have known bugs in the bf16 attention backward';
  // cudnn-frontend pads these graphs with a padding mask on cuDNN <= 9.15.0 to work around the engines; nmoe does
  // not build that variant, so such shapes stay on nmoe's kernels.
  if (s.seqLen % 128 !== 0 && version <= 91500)
    return `sequence length ${s.seqLen} is not a multiple of 128, which cuDNN <= 9.15.0 needs without a padding mask`;
  return null;
}
