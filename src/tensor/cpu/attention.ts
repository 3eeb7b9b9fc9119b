/**
 * CPU kernels for RoPE, MLA key assembly and causal attention. Attention works one query row at a time (scores
 * for one row, never the [S,S] matrix) and the backward recomputes probabilities from the saved log-sum-exp, the
 * same scheme a flash kernel uses.
 */
import type { AttentionSpec, RopeSpec } from '../backend.ts';
import { type CpuTensor, allocate, settle, type FloatArray, newFloats } from './storage.ts';

export function ropeInPlace(x: CpuTensor, cos: CpuTensor, sin: CpuTensor, spec: RopeSpec, inverse: boolean): void {
  const cols = x.shape[x.shape.length - 1]!;
  const rows = x.numel / cols;
  const half = spec.dim / 2;
  const xs = x.f,
    cs = cos.f,
    sn = sin.f;
  const sign = inverse ? -1 : 1;
  for (let r = 0; r < rows; r++) {
    const pos = r % spec.seqLen;
    for (let h = 0; h < spec.heads; h++) {
      const base = r * cols + spec.base + h * spec.headStride + spec.offset;
      for (let i = 0; i < half; i++) {
        const c = cs[pos * half + i]!,
          s = sign * sn[pos * half + i]!;
        const x1 = xs[base + i]!,
          x2 = xs[base + half + i]!;
        xs[base + i] = x1 * c - x2 * s;
        xs[base + half + i] = x2 * c + x1 * s;
      }
    }
  }
  settle(x);
}

export function mlaAssembleKV(
  kvb: CpuTensor,
  kpe: CpuTensor,
  heads: number,
  dNope: number,
  dV: number,
): { k: CpuTensor; v: CpuTensor } {
  const rows = kvb.shape[0]!;
  const dRope = kpe.shape[1]!;
  const dK = dNope + dRope;
  const k = allocate([rows, heads * dK], kvb.dtype);
  const v = allocate([rows, heads * dV], kvb.dtype);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < heads; h++) {
      const src = r * heads * (dNope + dV) + h * (dNope + dV);
      k.f.set(kvb.f.subarray(src, src + dNope), r * heads * dK + h * dK);
      k.f.set(kpe.f.subarray(r * dRope, (r + 1) * dRope), r * heads * dK + h * dK + dNope);
      v.f.set(kvb.f.subarray(src + dNope, src + dNope + dV), r * heads * dV + h * dV);
    }
  }
  return { k: settle(k), v: settle(v) };
}

export function mlaAssembleKVBackward(
  dk: CpuTensor,
  dv: CpuTensor,
  heads: number,
  dNope: number,
  dV: number,
): { dkvb: CpuTensor; dkpe: CpuTensor } {
  const rows = dk.shape[0]!;
  const dK = dk.shape[1]! / heads;
  const dRope = dK - dNope;
  const dkvb = allocate([rows, heads * (dNope + dV)], dk.dtype);
  const dkpe = allocate([rows, dRope], dk.dtype);
  for (let r = 0; r < rows; r++) {
    for (let h = 0; h < heads; h++) {
      const dst = r * heads * (dNope + dV) + h * (dNope + dV);
      const kRow = r * heads * dK + h * dK;
      dkvb.f.set(dk.f.subarray(kRow, kRow + dNope), dst);
      dkvb.f.set(dv.f.subarray(r * heads * dV + h * dV, r * heads * dV + (h + 1) * dV), dst + dNope);
      for (let i = 0; i < dRope; i++) dkpe.f[r * dRope + i] += dk.f[kRow + dNope + i]!;
    }
  }
  return { dkvb: settle(dkvb), dkpe: settle(dkpe) };
}

function headDims(q: CpuTensor, v: CpuTensor, spec: AttentionSpec): { dQK: number; dV: number } {
  const rows = spec.batch * spec.seqLen;
  if (q.shape[0] !== rows || v.shape[0] !== rows)
    throw new Error(`attention: expected ${rows} rows, got q [${q.shape}] v [${v.shape}]`);
  return { dQK: q.shape[1]! / spec.heads, dV: v.shape[1]! / spec.heads };
}

/** Copies head h of sequence b out of a [T, H*d] tensor into a contiguous [S, d] block (and back). */
function packHead(src: FloatArray, dst: FloatArray, b: number, h: number, S: number, H: number, d: number): void {
  for (let i = 0; i < S; i++) {
    const from = ((b * S + i) * H + h) * d;
    dst.set(src.subarray(from, from + d), i * d);
  }
}

function unpackHead(src: Float64Array, dst: FloatArray, b: number, h: number, S: number, H: number, d: number): void {
  for (let i = 0; i < S; i++) {
    const to = ((b * S + i) * H + h) * d;
    for (let x = 0; x < d; x++) dst[to + x] = src[i * d + x]!;
  }
}

export function attention(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  spec: AttentionSpec,
): { out: CpuTensor; lse: CpuTensor } {
  const { batch, seqLen: S, heads: H, scale } = spec;
  const { dQK, dV } = headDims(q, v, spec);
  const out = allocate([batch * S, H * dV], q.dtype);
  const lse = allocate([batch * S, H], 'f32');
  const Q = newFloats(S * dQK),
    K = newFloats(S * dQK),
    V = newFloats(S * dV);
  const O = new Float64Array(S * dV);
  const p = new Float64Array(S);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < H; h++) {
      packHead(q.f, Q, b, h, S, H, dQK);
      packHead(k.f, K, b, h, S, H, dQK);
      packHead(v.f, V, b, h, S, H, dV);
      O.fill(0);
      for (let i = 0; i < S; i++) {
        let m = -Infinity;
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let d = 0; d < dQK; d++) s += Q[i * dQK + d]! * K[j * dQK + d]!;
          p[j] = s * scale;
          if (p[j]! > m) m = p[j]!;
        }
        let l = 0;
        for (let j = 0; j <= i; j++) {
          const e = Math.exp(p[j]! - m);
          l += e;
          for (let d = 0; d < dV; d++) O[i * dV + d] += e * V[j * dV + d]!;
        }
        for (let d = 0; d < dV; d++) O[i * dV + d] /= l;
        lse.f[(b * S + i) * H + h] = m + Math.log(l);
      }
      unpackHead(O, out.f, b, h, S, H, dV);
    }
  }
  return { out: settle(out), lse };
}

export function attentionBackward(
  dOut: CpuTensor,
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  out: CpuTensor,
  lse: CpuTensor,
  spec: AttentionSpec,
): { dq: CpuTensor; dk: CpuTensor; dv: CpuTensor } {
  const { batch, seqLen: S, heads: H, scale } = spec;
  const { dQK, dV } = headDims(q, v, spec);
  const dq = allocate(q.shape, q.dtype),
    dk = allocate(k.shape, k.dtype),
    dv = allocate(v.shape, v.dtype);
  const Q = newFloats(S * dQK),
    K = newFloats(S * dQK),
    V = newFloats(S * dV);
  const O = newFloats(S * dV),
    G = newFloats(S * dV);
  const dQ = new Float64Array(S * dQK),
    dK = new Float64Array(S * dQK),
    dVh = new Float64Array(S * dV);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < H; h++) {
      packHead(q.f, Q, b, h, S, H, dQK);
      packHead(k.f, K, b, h, S, H, dQK);
      packHead(v.f, V, b, h, S, H, dV);
      packHead(out.f, O, b, h, S, H, dV);
      packHead(dOut.f, G, b, h, S, H, dV);
      dQ.fill(0);
      dK.fill(0);
      dVh.fill(0);
      for (let i = 0; i < S; i++) {
        const l = lse.f[(b * S + i) * H + h]!;
        let delta = 0; // sum_j p_j dp_j = dOut_i . out_i
        for (let d = 0; d < dV; d++) delta += G[i * dV + d]! * O[i * dV + d]!;
        for (let j = 0; j <= i; j++) {
          let s = 0;
          for (let d = 0; d < dQK; d++) s += Q[i * dQK + d]! * K[j * dQK + d]!;
          const pj = Math.exp(s * scale - l);
          let dp = 0;
          for (let d = 0; d < dV; d++) {
            dp += G[i * dV + d]! * V[j * dV + d]!;
            dVh[j * dV + d] += pj * G[i * dV + d]!;
          }
          const ds = pj * (dp - delta) * scale;
          for (let d = 0; d < dQK; d++) {
            dQ[i * dQK + d] += ds * K[j * dQK + d]!;
            dK[j * dQK + d] += ds * Q[i * dQK + d]!;
          }
        }
      }
      unpackHead(dQ, dq.f, b, h, S, H, dQK);
      unpackHead(dK, dk.f, b, h, S, H, dQK);
      unpackHead(dVh, dv.f, b, h, S, H, dV);
    }
  }
  return { dq: settle(dq), dk: settle(dk), dv: settle(dv) };
}
