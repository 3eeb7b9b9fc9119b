/**
 * CPU kernels for sliding-window attention with sinks (the reference's SWA). Each query row visits only the keys of
 * its band, i - window < j <= i, so the work is T * window per head, and the sink is one more logit of the row's
 * softmax that adds nothing to the output. The backward recomputes probabilities from the saved log-sum-exp (which
 * includes the sink), as attention.ts does; dk and dv of a key/value head sum its query heads in head order.
 */
import type { SlidingAttentionSpec } from '../backend.ts';
import { type CpuTensor, allocate, settle } from './storage.ts';

interface Geometry {
  S: number;
  H: number;
  KV: number;
  d: number;
  /** Query heads per key/value head. */
  groups: number;
}

function geometry(q: CpuTensor, k: CpuTensor, v: CpuTensor, sinks: CpuTensor, spec: SlidingAttentionSpec): Geometry {
  const { batch, seqLen: S, heads: H, kvHeads: KV } = spec;
  const rows = batch * S;
  const d = q.shape[1]! / H;
  const ok =
    H % KV === 0 &&
    q.shape[0] === rows &&
    k.shape[0] === rows &&
    v.shape[0] === rows &&
    k.shape[1] === KV * d &&
    v.shape[1] === KV * d &&
    sinks.numel === H;
  if (!ok)
    throw new Error(
      `slidingAttention: q [${q.shape}] k [${k.shape}] v [${v.shape}] sinks [${sinks.shape}] do not fit ` +
        `${batch} x ${S} tokens, ${H} heads, ${KV} kv heads`,
    );
  return { S, H, KV, d, groups: H / KV };
}

/** The first key row query row `i` of its sequence sees. */
function bandStart(i: number, window: number): number {
  return window > 0 ? Math.max(0, i - window + 1) : 0;
}

export function slidingAttention(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  sinks: CpuTensor,
  spec: SlidingAttentionSpec,
): { out: CpuTensor; lse: CpuTensor } {
  const { S, H, KV, d, groups } = geometry(q, k, v, sinks, spec);
  const { scale, window } = spec;
  const out = allocate(q.shape, q.dtype);
  const lse = allocate([spec.batch * S, H], 'f32');
  const Q = q.f,
    K = k.f,
    V = v.f,
    O = out.f;
  const scores = new Float64Array(S);
  const acc = new Float64Array(d);
  for (let b = 0; b < spec.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / groups);
      const sink = sinks.f[h]!;
      for (let i = 0; i < S; i++) {
        const qRow = ((b * S + i) * H + h) * d;
        const j0 = bandStart(i, window);
        let m = sink;
        for (let j = j0; j <= i; j++) {
          const kRow = ((b * S + j) * KV + g) * d;
          let s = 0;
          for (let x = 0; x < d; x++) s += Q[qRow + x]! * K[kRow + x]!;
          scores[j] = s * scale;
          if (scores[j]! > m) m = scores[j]!;
        }
        let l = Math.exp(sink - m);
        acc.fill(0);
        for (let j = j0; j <= i; j++) {
          const e = Math.exp(scores[j]! - m);
          l += e;
          const vRow = ((b * S + j) * KV + g) * d;
          for (let x = 0; x < d; x++) acc[x] += e * V[vRow + x]!;
        }
        for (let x = 0; x < d; x++) O[qRow + x] = acc[x]! / l;
        lse.f[(b * S + i) * H + h] = m + Math.log(l);
      }
    }
  }
  return { out: settle(out), lse };
}

export function slidingAttentionBackward(
  dOut: CpuTensor,
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  sinks: CpuTensor,
  out: CpuTensor,
  lse: CpuTensor,
  spec: SlidingAttentionSpec,
  dSinks: CpuTensor,
): { dq: CpuTensor; dk: CpuTensor; dv: CpuTensor } {
  const { S, H, KV, d, groups } = geometry(q, k, v, sinks, spec);
  const { scale, window } = spec;
  const Q = q.f,
    K = k.f,
    V = v.f,
    O = out.f,
    G = dOut.f;
  const dQ = new Float64Array(q.numel),
    dK = new Float64Array(k.numel),
    dV = new Float64Array(v.numel);
  for (let b = 0; b < spec.batch; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / groups);
      const sink = sinks.f[h]!;
      let dSink = 0;
      for (let i = 0; i < S; i++) {
        const qRow = ((b * S + i) * H + h) * d;
        const l = lse.f[(b * S + i) * H + h]!;
        let delta = 0; // sum_j p_j dp_j = dOut_i . out_i (the sink's value is zero)
        for (let x = 0; x < d; x++) delta += G[qRow + x]! * O[qRow + x]!;
        dSink -= Math.exp(sink - l) * delta;
        for (let j = bandStart(i, window); j <= i; j++) {
          const kRow = ((b * S + j) * KV + g) * d;
          let s = 0,
            dp = 0;
          for (let x = 0; x < d; x++) {
            s += Q[qRow + x]! * K[kRow + x]!;
            dp += G[qRow + x]! * V[kRow + x]!;
          }
          const p = Math.exp(s * scale - l);
          const ds = p * (dp - delta) * scale;
          for (let x = 0; x < d; x++) {
            dV[kRow + x] += p * G[qRow + x]!;
            dQ[qRow + x] += ds * K[kRow + x]!;
            dK[kRow + x] += ds * Q[qRow + x]!;
          }
        }
      }
      dSinks.f[h] += dSink;
    }
  }
  settle(dSinks);
  const fresh = (like: CpuTensor, values: Float64Array) => {
    const t = allocate(like.shape, like.dtype);
    t.f.set(values);
    return settle(t);
  };
  return { dq: fresh(q, dQ), dk: fresh(k, dK), dv: fresh(v, dV) };
}
