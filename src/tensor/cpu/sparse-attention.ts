/**
 * CPU kernels for DSA (DeepSeek Sparse Attention): the lightning indexer's top-k key selection and attention
 * restricted to the selected keys. The indexer scores I[i, j] = sum_h w[i, h] * ReLU(q[i, h] . k[j]) over the keys
 * j <= i of query i's sequence and keeps the top_k best (higher score first, the lower position on ties), so a
 * query with at most top_k visible keys keeps all of them; unused slots hold -1. The selection has no derivative.
 * Attention is then MLA's softmax over the selected keys only, one query row at a time, and its backward recomputes
 * probabilities from the saved log-sum-exp as attention.ts does.
 */
import type { AttentionSpec, IndexerAlignmentSpec, IndexerSpec } from '../backend.ts';
import { type CpuTensor, allocate, settle } from './storage.ts';

/** Slots per query: top_k, or the sequence length when that is smaller (every key is then kept). */
export function selectedSlots(spec: IndexerSpec): number {
  return Math.min(spec.topK, spec.seqLen);
}

export function indexerTopK(qIdx: CpuTensor, kIdx: CpuTensor, wIdx: CpuTensor, spec: IndexerSpec): CpuTensor {
  const { batch, seqLen: S, heads: H } = spec;
  const rows = batch * S;
  const d = kIdx.shape[1]!;
  if (qIdx.shape[0] !== rows || kIdx.shape[0] !== rows || wIdx.shape[0] !== rows || qIdx.shape[1] !== H * d)
    throw new Error(
      `indexerTopK: q [${qIdx.shape}] k [${kIdx.shape}] w [${wIdx.shape}] do not fit ${batch} x ${S} tokens, ` +
        `${H} indexer heads`,
    );
  const K = selectedSlots(spec);
  const selected = allocate([rows, K], 'i32');
  const out = selected.i,
    Q = qIdx.f,
    Kx = kIdx.f,
    W = wIdx.f;
  out.fill(-1);
  const scores = new Float64Array(S);
  const order: number[] = [];
  const byScore = (a: number, b: number) => scores[b]! - scores[a]! || a - b;
  for (let b = 0; b < batch; b++) {
    for (let i = 0; i < S; i++) {
      const t = b * S + i;
      for (let j = 0; j <= i; j++) {
        let s = 0;
        for (let h = 0; h < H; h++) {
          let dot = 0;
          for (let x = 0; x < d; x++) dot += Q[(t * H + h) * d + x]! * Kx[(b * S + j) * d + x]!;
          s += W[t * H + h]! * Math.max(dot, 0);
        }
        scores[j] = s;
      }
      order.push(i);
      order.sort(byScore);
      for (let slot = 0; slot < Math.min(K, i + 1); slot++) out[t * K + slot] = order[slot]!;
    }
    order.length = 0;
  }
  return selected;
}

function check(q: CpuTensor, v: CpuTensor, selected: CpuTensor, spec: AttentionSpec): { dQK: number; dV: number } {
  const rows = spec.batch * spec.seqLen;
  if (q.shape[0] !== rows || v.shape[0] !== rows || selected.shape[0] !== rows)
    throw new Error(`selectedAttention: expected ${rows} rows, got q [${q.shape}] v [${v.shape}] [${selected.shape}]`);
  return { dQK: q.shape[1]! / spec.heads, dV: v.shape[1]! / spec.heads };
}

export function selectedAttention(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  selected: CpuTensor,
  spec: AttentionSpec,
): { out: CpuTensor; lse: CpuTensor } {
  const { batch, seqLen: S, heads: H, scale } = spec;
  const { dQK, dV } = check(q, v, selected, spec);
  const K = selected.shape[1]!;
  const out = allocate(v.shape, v.dtype);
  const lse = allocate([batch * S, H], 'f32');
  const Q = q.f,
    Kx = k.f,
    V = v.f,
    O = out.f,
    L = lse.f,
    sel = selected.i;
  const p = new Float64Array(K);
  const acc = new Float64Array(dV);
  for (let t = 0; t < batch * S; t++) {
    const seqStart = t - (t % S);
    for (let h = 0; h < H; h++) {
      const qRow = (t * H + h) * dQK;
      let m = -Infinity;
      for (let slot = 0; slot < K; slot++) {
        const j = sel[t * K + slot]!;
        if (j < 0) break;
        const kRow = ((seqStart + j) * H + h) * dQK;
        let s = 0;
        for (let x = 0; x < dQK; x++) s += Q[qRow + x]! * Kx[kRow + x]!;
        p[slot] = s * scale;
        if (p[slot]! > m) m = p[slot]!;
      }
      let l = 0;
      acc.fill(0);
      for (let slot = 0; slot < K; slot++) {
        const j = sel[t * K + slot]!;
        if (j < 0) break;
        const e = Math.exp(p[slot]! - m);
        l += e;
        const vRow = ((seqStart + j) * H + h) * dV;
        for (let x = 0; x < dV; x++) acc[x] += e * V[vRow + x]!;
      }
      for (let x = 0; x < dV; x++) O[(t * H + h) * dV + x] = acc[x]! / l;
      L[t * H + h] = m + Math.log(l);
    }
  }
  return { out: settle(out), lse };
}

export function selectedAttentionBackward(
  dOut: CpuTensor,
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  selected: CpuTensor,
  out: CpuTensor,
  lse: CpuTensor,
  spec: AttentionSpec,
): { dq: CpuTensor; dk: CpuTensor; dv: CpuTensor } {
  const { batch, seqLen: S, heads: H, scale } = spec;
  const { dQK, dV } = check(q, v, selected, spec);
  const K = selected.shape[1]!;
  const Q = q.f,
    Kx = k.f,
    V = v.f,
    O = out.f,
    G = dOut.f,
    L = lse.f,
    sel = selected.i;
  const dQ = new Float64Array(q.numel),
    dK = new Float64Array(k.numel),
    dVs = new Float64Array(v.numel);
  for (let t = 0; t < batch * S; t++) {
    const seqStart = t - (t % S);
    for (let h = 0; h < H; h++) {
      const qRow = (t * H + h) * dQK,
        oRow = (t * H + h) * dV;
      const l = L[t * H + h]!;
      let delta = 0; // sum_j p_j dp_j = dOut_t . out_t
      for (let x = 0; x < dV; x++) delta += G[oRow + x]! * O[oRow + x]!;
      for (let slot = 0; slot < K; slot++) {
        const j = sel[t * K + slot]!;
        if (j < 0) break;
        const kRow = ((seqStart + j) * H + h) * dQK,
          vRow = ((seqStart + j) * H + h) * dV;
        let s = 0,
          dp = 0;
        for (let x = 0; x < dQK; x++) s += Q[qRow + x]! * Kx[kRow + x]!;
        const pj = Math.exp(s * scale - l);
        for (let x = 0; x < dV; x++) {
          dp += G[oRow + x]! * V[vRow + x]!;
          dVs[vRow + x] += pj * G[oRow + x]!;
        }
        const ds = pj * (dp - delta) * scale;
        for (let x = 0; x < dQK; x++) {
          dQ[qRow + x] += ds * Kx[kRow + x]!;
          dK[kRow + x] += ds * Q[qRow + x]!;
        }
      }
    }
  }
  const fresh = (like: CpuTensor, values: Float64Array) => {
    const t = allocate(like.shape, like.dtype);
    t.f.set(values);
    return settle(t);
  };
  return { dq: fresh(q, dQ), dk: fresh(k, dK), dv: fresh(v, dVs) };
}

/**
 * The DSA paper's indexer alignment loss (eq. 3 over every causal key, eq. 4 over the selected ones), weighted and
 * averaged over queries: weight / T * sum_t KL(P_t || softmax(I_t)), P_t the attention probabilities summed over
 * heads and L1-normalised (recomputed from q, k and the saved lse, held constant), I_t the index scores. Returns it
 * with its gradients for the indexer's inputs: dI = weight / T * (softmax(I_t) - P_t), through the ReLU to q_idx and
 * k_idx and to the head weights w.
 */
export function indexerAlignment(
  qIdx: CpuTensor,
  kIdx: CpuTensor,
  wIdx: CpuTensor,
  q: CpuTensor,
  k: CpuTensor,
  lse: CpuTensor,
  selected: CpuTensor | null,
  spec: IndexerAlignmentSpec,
): { loss: CpuTensor; dqIdx: CpuTensor; dkIdx: CpuTensor; dwIdx: CpuTensor } {
  const { batch, seqLen: S, heads: H, idxHeads: Hi, scale, weight } = spec;
  const rows = batch * S;
  const d = kIdx.shape[1]!,
    dQK = q.shape[1]! / H;
  const [Qi, Ki, Wi, Q, Kx, L] = [qIdx.f, kIdx.f, wIdx.f, q.f, k.f, lse.f];
  const dQi = new Float64Array(qIdx.numel),
    dKi = new Float64Array(kIdx.numel),
    dWi = new Float64Array(wIdx.numel);
  const keys: number[] = [];
  const dots = new Float64Array(S * Hi),
    index = new Float64Array(S),
    target = new Float64Array(S);
  const g = weight / rows;
  let loss = 0;
  for (let t = 0; t < rows; t++) {
    const seqStart = t - (t % S),
      i = t - seqStart;
    keys.length = 0;
    if (selected) {
      const K = selected.shape[1]!;
      for (let slot = 0; slot < K && selected.i[t * K + slot]! >= 0; slot++) keys.push(selected.i[t * K + slot]!);
    } else for (let j = 0; j <= i; j++) keys.push(j);
    let mI = -Infinity,
      total = 0;
    for (const [n, j] of keys.entries()) {
      let s = 0,
        p = 0;
      for (let h = 0; h < Hi; h++) {
        let dot = 0;
        for (let x = 0; x < d; x++) dot += Qi[(t * Hi + h) * d + x]! * Ki[(seqStart + j) * d + x]!;
        dots[n * Hi + h] = dot;
        s += Wi[t * Hi + h]! * Math.max(dot, 0);
      }
      for (let h = 0; h < H; h++) {
        let dot = 0;
        for (let x = 0; x < dQK; x++) dot += Q[(t * H + h) * dQK + x]! * Kx[((seqStart + j) * H + h) * dQK + x]!;
        p += Math.exp(dot * scale - L[t * H + h]!);
      }
      index[n] = s;
      target[n] = p;
      total += p;
      if (s > mI) mI = s;
    }
    let z = 0;
    for (let n = 0; n < keys.length; n++) z += Math.exp(index[n]! - mI);
    const logZ = mI + Math.log(z);
    for (const [n, j] of keys.entries()) {
      const P = target[n]! / total,
        logQ = index[n]! - logZ;
      if (P > 0) loss += P * (Math.log(P) - logQ);
      const dI = g * (Math.exp(logQ) - P);
      for (let h = 0; h < Hi; h++) {
        const dot = dots[n * Hi + h]!;
        dWi[t * Hi + h] += dI * Math.max(dot, 0);
        if (dot <= 0) continue;
        const dDot = dI * Wi[t * Hi + h]!;
        for (let x = 0; x < d; x++) {
          dQi[(t * Hi + h) * d + x] += dDot * Ki[(seqStart + j) * d + x]!;
          dKi[(seqStart + j) * d + x] += dDot * Qi[(t * Hi + h) * d + x]!;
        }
      }
    }
  }
  const fresh = (like: CpuTensor, values: Float64Array) => {
    const out = allocate(like.shape, like.dtype);
    out.f.set(values);
    return settle(out);
  };
  const lossT = allocate([1], 'f32');
  lossT.f[0] = g * loss;
  return { loss: lossT, dqIdx: fresh(qIdx, dQi), dkIdx: fresh(kIdx, dKi), dwIdx: fresh(wIdx, dWi) };
}
