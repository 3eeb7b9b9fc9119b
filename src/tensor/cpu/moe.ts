/**
 * CPU kernels for the router and the grouped experts. The grouped layout is built with a stable counting sort, so
 * rows within an expert's segment are in (token, slot) order: deterministic, as the GPU path must also be.
 */
import type { ExpertFormat, MoePlan } from '../backend.ts';
import { fakeQuantizeFp8 } from '../fp8.ts';
import { gemm } from './gemm.ts';
import { CpuTensor, allocate, settle } from './storage.ts';

export function routerTopK(
  logits: CpuTensor,
  bias: CpuTensor,
  topK: number,
  routeScale: number,
): { gates: CpuTensor; idx: CpuTensor } {
  const [tokens, experts] = logits.shape as [number, number];
  const gates = allocate([tokens, topK], 'f32');
  const idx = allocate([tokens, topK], 'i32');
  const scores = new Float64Array(experts);
  const taken = new Uint8Array(experts);
  for (let t = 0; t < tokens; t++) {
    for (let e = 0; e < experts; e++) scores[e] = 1 / (1 + Math.exp(-routeScale * logits.f[t * experts + e]!));
    taken.fill(0);
    let sum = 0;
    for (let k = 0; k < topK; k++) {
      let best = -1;
      let bestKey = -Infinity;
      for (let e = 0; e < experts; e++) {
        const key = scores[e]! + bias.f[e]!;
        if (!taken[e] && (best < 0 || key > bestKey)) {
          best = e;
          bestKey = key;
        }
      }
      taken[best] = 1;
      idx.i[t * topK + k] = best;
      gates.f[t * topK + k] = scores[best]!;
      sum += scores[best]!;
    }
    const inv = 1 / Math.max(sum, 1e-12);
    for (let k = 0; k < topK; k++) gates.f[t * topK + k] *= inv;
  }
  return { gates, idx };
}

/** gates_j = s_j / S with S the sum of chosen scores: ds_j = (dg_j - sum_k dg_k g_k) / S; dlogit = rs * s (1 - s) ds. */
export function routerTopKBackward(
  dGates: CpuTensor,
  logits: CpuTensor,
  idx: CpuTensor,
  routeScale: number,
): CpuTensor {
  const [tokens, experts] = logits.shape as [number, number];
  const topK = idx.shape[1]!;
  const dLogits = allocate([tokens, experts], 'f32');
  const s = new Float64Array(topK);
  for (let t = 0; t < tokens; t++) {
    let sum = 0;
    for (let k = 0; k < topK; k++) {
      s[k] = 1 / (1 + Math.exp(-routeScale * logits.f[t * experts + idx.i[t * topK + k]!]!));
      sum += s[k]!;
    }
    sum = Math.max(sum, 1e-12);
    let dot = 0;
    for (let k = 0; k < topK; k++) dot += dGates.f[t * topK + k]! * (s[k]! / sum);
    for (let k = 0; k < topK; k++) {
      const ds = (dGates.f[t * topK + k]! - dot) / sum;
      dLogits.f[t * experts + idx.i[t * topK + k]!] += routeScale * s[k]! * (1 - s[k]!) * ds;
    }
  }
  return dLogits;
}

export class CpuMoePlan implements MoePlan {
  constructor(
    readonly numTokens: number,
    readonly topK: number,
    readonly numExperts: number,
    readonly counts: CpuTensor,
    readonly offsets: CpuTensor,
    readonly slotOfRow: CpuTensor,
    readonly rowOfSlot: CpuTensor,
  ) {}

  free(): void {
    for (const t of [this.counts, this.offsets, this.slotOfRow, this.rowOfSlot]) t.free();
  }
}

export function moePlan(idx: CpuTensor, numExperts: number): CpuMoePlan {
  const [tokens, topK] = idx.shape as [number, number];
  const n = tokens * topK;
  const counts = allocate([numExperts], 'i32');
  const offsets = allocate([numExperts + 1], 'i32');
  const slotOfRow = allocate([n], 'i32');
  const rowOfSlot = allocate([n], 'i32');
  for (let s = 0; s < n; s++) {
    const e = idx.i[s]!;
    if (e < 0 || e >= numExperts) throw new Error(`moePlan: expert id ${e} outside [0, ${numExperts})`);
    counts.i[e]++;
  }
  for (let e = 0; e < numExperts; e++) offsets.i[e + 1] = offsets.i[e]! + counts.i[e]!;
  const cursor = Int32Array.from(offsets.i.subarray(0, numExperts));
  for (let s = 0; s < n; s++) {
    const r = cursor[idx.i[s]!]!++;
    slotOfRow.i[r] = s;
    rowOfSlot.i[s] = r;
  }
  return new CpuMoePlan(tokens, topK, numExperts, counts, offsets, slotOfRow, rowOfSlot);
}

export function moeGather(x: CpuTensor, plan: CpuMoePlan): CpuTensor {
  const dim = x.shape[1]!;
  const rows = plan.numTokens * plan.topK;
  const xe = allocate([rows, dim], x.dtype);
  for (let r = 0; r < rows; r++) {
    const t = Math.floor(plan.slotOfRow.i[r]! / plan.topK);
    xe.f.set(x.f.subarray(t * dim, (t + 1) * dim), r * dim);
  }
  return xe;
}

/** The gather's backward: each token's gradient is the sum of its expert rows' gradients. */
export function moeGatherBackward(dxe: CpuTensor, plan: CpuMoePlan): CpuTensor {
  return sumTokenRows(dxe, plan, null);
}

/** Each token's output is the gate-weighted sum of its experts' rows. */
export function moeCombine(ye: CpuTensor, gates: CpuTensor, plan: CpuMoePlan): CpuTensor {
  return sumTokenRows(ye, plan, gates);
}

/** out[t] = sum over t's top-k slots of gate(slot) * rows[row of slot], accumulated in doubles (gate 1 without gates). */
function sumTokenRows(rows: CpuTensor, plan: CpuMoePlan, gates: CpuTensor | null): CpuTensor {
  const dim = rows.shape[1]!;
  const { numTokens: T, topK: K } = plan;
  const out = allocate([T, dim], rows.dtype);
  const acc = new Float64Array(dim);
  for (let t = 0; t < T; t++) {
    acc.fill(0);
    for (let k = 0; k < K; k++) {
      const r = plan.rowOfSlot.i[t * K + k]!;
      const g = gates ? gates.f[t * K + k]! : 1;
      for (let d = 0; d < dim; d++) acc[d] += g * rows.f[r * dim + d]!;
    }
    out.f.set(acc, t * dim);
  }
  return settle(out);
}

export function moeCombineBackward(
  dOut: CpuTensor,
  ye: CpuTensor,
  gates: CpuTensor,
  plan: CpuMoePlan,
): { dye: CpuTensor; dGates: CpuTensor } {
  const dim = ye.shape[1]!;
  const { numTokens: T, topK: K } = plan;
  const dye = allocate(ye.shape, ye.dtype);
  const dGates = allocate([T, K], 'f32');
  for (let t = 0; t < T; t++) {
    for (let k = 0; k < K; k++) {
      const r = plan.rowOfSlot.i[t * K + k]!;
      const g = gates.f[t * K + k]!;
      let dot = 0;
      for (let d = 0; d < dim; d++) {
        const go = dOut.f[t * dim + d]!;
        dot += go * ye.f[r * dim + d]!;
        dye.f[r * dim + d] = g * go;
      }
      dGates.f[t * K + k] = dot;
    }
  }
  return { dye: settle(dye), dGates };
}

export function groupedMatmul(
  x: CpuTensor,
  w: CpuTensor,
  offsets: CpuTensor,
  transB: boolean,
  format: ExpertFormat,
): CpuTensor {
  const y = allocate([x.shape[0]!, groupedDims(x, w, transB)[1]], x.dtype);
  if (format === 'fp8') groupedInto(fp8Rows(x), fp8Experts(w), offsets, transB, y, false);
  else groupedInto(x, w, offsets, transB, y, false);
  return settle(y);
}

/** y = x1 @ op(w1) + x2 @ op(w2) per segment, summed before the one rounding. */
export function groupedMatmulSum(
  x1: CpuTensor,
  w1: CpuTensor,
  x2: CpuTensor,
  w2: CpuTensor,
  offsets: CpuTensor,
  transB: boolean,
  format: ExpertFormat,
): CpuTensor {
  const dout = groupedDims(x1, w1, transB)[1];
  if (groupedDims(x2, w2, transB)[1] !== dout || x2.shape[0] !== x1.shape[0])
    throw new Error(
      `groupedMatmulSum: x1 [${x1.shape}] @ w1 [${w1.shape}] and x2 [${x2.shape}] @ w2 [${w2.shape}] do not add up`,
    );
  const y = allocate([x1.shape[0]!, dout], x1.dtype);
  const fp8 = format === 'fp8';
  groupedInto(fp8 ? fp8Rows(x1) : x1, fp8 ? fp8Experts(w1) : w1, offsets, transB, y, false);
  groupedInto(fp8 ? fp8Rows(x2) : x2, fp8 ? fp8Experts(w2) : w2, offsets, transB, y, true);
  return settle(y);
}

// The operands an fp8 grouped GEMM multiplies (ExpertFormat), as fp32 tensors of the values the codes stand for.

function fp8Rows(x: CpuTensor): CpuTensor {
  const [rows, cols] = x.shape as [number, number];
  return new CpuTensor(x.shape, 'f32', fakeQuantizeFp8(x.f, rows, cols, { kind: 'rows' }));
}

function fp8Experts(w: CpuTensor): CpuTensor {
  const [experts, rows, cols] = w.shape as [number, number, number];
  const values = new Float32Array(w.numel);
  for (let e = 0; e < experts; e++) {
    const one = w.f.subarray(e * rows * cols, (e + 1) * rows * cols);
    values.set(fakeQuantizeFp8(one, rows, cols, { kind: 'blocks' }), e * rows * cols);
  }
  return new CpuTensor(w.shape, 'f32', values);
}

/** 128 x 1 tiles down each expert's segment; rows past the last segment (unused capacity) stay zero. */
function fp8Segments(x: CpuTensor, offsets: CpuTensor): CpuTensor {
  const cols = x.shape[1]!,
    used = offsets.i[offsets.numel - 1]!;
  const values = new Float32Array(x.numel);
  values.set(fakeQuantizeFp8(x.f.subarray(0, used * cols), used, cols, { kind: 'columns', segments: offsets.i }));
  return new CpuTensor(x.shape, 'f32', values);
}

function groupedDims(x: CpuTensor, w: CpuTensor, transB: boolean): [number, number] {
  const [, w1, w2] = w.shape as [number, number, number];
  const [din, dout] = transB ? [w2, w1] : [w1, w2];
  if (x.shape[1] !== din)
    throw new Error(`groupedMatmul: x [${x.shape}] does not match w [${w.shape}] (transB=${transB})`);
  return [din, dout];
}

/** y[seg_e] (+)= x[seg_e] @ op(w[e]) in full precision (not yet rounded). */
function groupedInto(
  x: CpuTensor,
  w: CpuTensor,
  offsets: CpuTensor,
  transB: boolean,
  y: CpuTensor,
  accumulate: boolean,
): void {
  const [experts, w1, w2] = w.shape as [number, number, number];
  const [din, dout] = groupedDims(x, w, transB);
  for (let e = 0; e < experts; e++) {
    const r0 = offsets.i[e]!,
      rows = offsets.i[e + 1]! - r0;
    if (rows === 0) continue;
    gemm({
      m: rows,
      n: dout,
      k: din,
      a: x.f,
      aOffset: r0 * din,
      transA: false,
      b: w.f,
      bOffset: e * w1 * w2,
      transB,
      c: y.f,
      cOffset: r0 * dout,
      alpha: 1,
      accumulate,
    });
  }
}

export function groupedMatmulWeightGrad(
  x: CpuTensor,
  dy: CpuTensor,
  offsets: CpuTensor,
  dw: CpuTensor,
  accumulate: boolean,
  format: ExpertFormat,
): void {
  const [experts, din, dout] = dw.shape as [number, number, number];
  if (!accumulate) dw.f.fill(0);
  const [a, g] = format === 'fp8' ? [fp8Segments(x, offsets), fp8Segments(dy, offsets)] : [x, dy];
  for (let e = 0; e < experts; e++) {
    const r0 = offsets.i[e]!,
      rows = offsets.i[e + 1]! - r0;
    if (rows === 0) continue;
    // dw[e] [din, dout] += x_e^T [din, rows] @ dy_e [rows, dout]
    gemm({
      m: din,
      n: dout,
      k: rows,
      a: a.f,
      aOffset: r0 * din,
      transA: true,
      b: g.f,
      bOffset: r0 * dout,
      transB: false,
      c: dw.f,
      cOffset: e * din * dout,
      alpha: 1,
      accumulate: true,
    });
  }
  settle(dw);
}

export function routerBiasUpdate(bias: CpuTensor, counts: CpuTensor, rate: number): void {
  const experts = bias.numel;
  let total = 0;
  for (let e = 0; e < experts; e++) total += counts.i[e]!;
  if (total === 0) return;
  const sign = new Float64Array(experts);
  let mean = 0;
  for (let e = 0; e < experts; e++) {
    sign[e] = Math.sign(counts.i[e]! / total - 1 / experts);
    mean += sign[e]! / experts;
  }
  for (let e = 0; e < experts; e++) bias.f[e] = Math.min(16, Math.max(-16, bias.f[e]! - rate * (sign[e]! - mean)));
}
