/**
 * CPU kernels for Kimi Delta Attention (the reference's KDA: fla's `chunk_kda` with use_qk_l2norm_in_kernel). Per
 * sequence and head, with q and k L2-normalised over their K dims, alpha_t = sigmoid(gate_t) (= exp(logsigmoid))
 * per key dim and beta_t = sigmoid(betaLogit_t):
 *
 *   S'_t = diag(alpha_t) S_{t-1}                  decay, S_0 = 0, S [K, V]
 *   u_t  = v_t - S'_t^T k_t                       what the decayed state fails to recall for k_t
 *   S_t  = S'_t + beta_t k_t u_t^T                delta-rule correction: S_t = (I - beta k k^T) S'_t + beta k v^T
 *   o_t  = scale S_t^T q_t, then nan_to_num(o, nan 0, +-inf +-1e4)
 *
 * This is the KDA paper's recurrence (Kimi Linear, arXiv 2510.26692) and fla's naive_recurrent_kda: the decay
 * applies before the correction, so the correction sees the decayed state. `deltaAttentionRecurrent` runs it step by
 * step, the oracle. `deltaAttention` (the op) runs the same math a chunk of C = 64 steps at a time, as chunk_kda
 * does: with Gamma_r the cumulative log decay inside the chunk and D_ri = exp(Gamma_r - Gamma_i) (never above 1),
 *
 *   w_r = beta_r (v_r - (D_r0 . k_r)^T S_0 - sum_{i<r} (k_r . D_ri k_i) w_i)    a forward substitution (w = beta u)
 *   o_r = scale ((D_r0 . q_r)^T S_0 + sum_{i<=r} (q_r . D_ri k_i) w_i)
 *   S_C = diag(D_C0) S_0 + sum_i diag(D_Ci) k_i w_i^T                              with D_r0 = exp(Gamma_r)
 *
 * Both accumulate in doubles, so they agree to the output's rounding. The backward runs the recurrence in reverse:
 * a forward pass keeps the state at every chunk start, and each chunk's states are recomputed from there, so memory
 * is (T / C + C) K V per head, not T K V.
 *
 * nan_to_num changes nothing for finite inputs: with unit keys, decays <= 1 and beta < 1, each step's
 * (I - beta k k^T) diag(alpha) has norm <= 1, so |S_t| <= sum |v_i| and o stays finite. A non-finite input makes the
 * state non-finite, and then the gradients are NaN, as through the reference's kernel; the backward passes dOut
 * through unchanged.
 */
import type { DeltaAttentionSpec } from '../backend.ts';
import { type CpuTensor, allocate, settle } from './storage.ts';

/** chunk_kda's chunk length. */
export const KDA_CHUNK = 64;
/** fla's l2norm: x / sqrt(sum x^2 + eps). */
const L2_EPS = 1e-6;
const OUT_LIMIT = 1e4;

interface Geometry {
  S: number;
  H: number;
  K: number;
  V: number;
}

function geometry(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  gate: CpuTensor,
  beta: CpuTensor,
  spec: DeltaAttentionSpec,
): Geometry {
  const { batch, seqLen: S, heads: H } = spec;
  const rows = batch * S;
  const K = q.shape[1]! / H,
    V = v.shape[1]! / H;
  const ok =
    Number.isInteger(K) &&
    Number.isInteger(V) &&
    [q, k, v, gate, beta].every((t) => t.shape[0] === rows) &&
    k.shape[1] === H * K &&
    gate.shape[1] === H * K &&
    beta.shape[1] === H;
  if (!ok)
    throw new Error(
      `deltaAttention: q [${q.shape}] k [${k.shape}] v [${v.shape}] gate [${gate.shape}] beta [${beta.shape}] ` +
        `do not fit ${batch} x ${S} tokens, ${H} heads`,
    );
  return { S, H, K, V };
}

const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));
/** log(sigmoid(x)) without overflow for large |x|. */
const logSigmoid = (x: number): number => (x < 0 ? x - Math.log1p(Math.exp(x)) : -Math.log1p(Math.exp(-x)));

/** One head of one sequence, gathered into doubles: unit q and k with their 1/norms, decays, betas and values. */
interface HeadInputs {
  q: Float64Array;
  k: Float64Array;
  qInvNorm: Float64Array;
  kInvNorm: Float64Array;
  /** logsigmoid(gate) [S, K] */
  logDecay: Float64Array;
  /** sigmoid(gate) [S, K] */
  decay: Float64Array;
  beta: Float64Array;
  v: Float64Array;
}

function gatherHead(
  g: Geometry,
  b: number,
  h: number,
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  gate: CpuTensor,
  beta: CpuTensor,
): HeadInputs {
  const { S, H, K, V } = g;
  const x: HeadInputs = {
    q: new Float64Array(S * K),
    k: new Float64Array(S * K),
    qInvNorm: new Float64Array(S),
    kInvNorm: new Float64Array(S),
    logDecay: new Float64Array(S * K),
    decay: new Float64Array(S * K),
    beta: new Float64Array(S),
    v: new Float64Array(S * V),
  };
  for (let t = 0; t < S; t++) {
    const row = b * S + t;
    const src = (row * H + h) * K;
    for (const [from, to, inv] of [
      [q.f, x.q, x.qInvNorm],
      [k.f, x.k, x.kInvNorm],
    ] as const) {
      let ss = 0;
      for (let a = 0; a < K; a++) ss += from[src + a]! ** 2;
      const r = 1 / Math.sqrt(ss + L2_EPS);
      inv[t] = r;
      for (let a = 0; a < K; a++) to[t * K + a] = from[src + a]! * r;
    }
    for (let a = 0; a < K; a++) {
      const z = gate.f[src + a]!;
      x.logDecay[t * K + a] = logSigmoid(z);
      x.decay[t * K + a] = sigmoid(z);
    }
    x.beta[t] = sigmoid(beta.f[row * H + h]!);
    for (let c = 0; c < V; c++) x.v[t * V + c] = v.f[(row * H + h) * V + c]!;
  }
  return x;
}

/** Step t of the recurrence on state st [K, V] in place; writes u_t into `u`. */
function step(x: HeadInputs, t: number, K: number, V: number, st: Float64Array, u: Float64Array): void {
  for (let a = 0; a < K; a++) {
    const alpha = x.decay[t * K + a]!;
    for (let c = 0; c < V; c++) st[a * V + c] *= alpha;
  }
  for (let c = 0; c < V; c++) {
    let recalled = 0;
    for (let a = 0; a < K; a++) recalled += st[a * V + c]! * x.k[t * K + a]!;
    u[c] = x.v[t * V + c]! - recalled;
  }
  const beta = x.beta[t]!;
  for (let a = 0; a < K; a++) {
    const bk = beta * x.k[t * K + a]!;
    for (let c = 0; c < V; c++) st[a * V + c] += bk * u[c]!;
  }
}

/** nan_to_num(o, nan 0, posinf 1e4, neginf -1e4), as the reference applies to the kernel's output. */
function finite(o: number): number {
  if (Number.isNaN(o)) return 0;
  if (o === Infinity) return OUT_LIMIT;
  if (o === -Infinity) return -OUT_LIMIT;
  return o;
}

type HeadForward = (x: HeadInputs, g: Geometry, o: Float64Array) => void;

function run(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  gate: CpuTensor,
  beta: CpuTensor,
  spec: DeltaAttentionSpec,
  head: HeadForward,
): CpuTensor {
  const g = geometry(q, k, v, gate, beta, spec);
  const { S, H, V } = g;
  const out = allocate(v.shape, v.dtype);
  const o = new Float64Array(S * V);
  for (let b = 0; b < spec.batch; b++) {
    for (let h = 0; h < H; h++) {
      head(gatherHead(g, b, h, q, k, v, gate, beta), g, o);
      for (let t = 0; t < S; t++)
        for (let c = 0; c < V; c++) out.f[((b * S + t) * H + h) * V + c] = finite(spec.scale * o[t * V + c]!);
    }
  }
  return settle(out);
}

/** o [S, V] (unscaled) of one head, step by step. */
const recurrentHead: HeadForward = (x, { S, K, V }, o) => {
  const st = new Float64Array(K * V);
  const u = new Float64Array(V);
  for (let t = 0; t < S; t++) {
    step(x, t, K, V, st, u);
    for (let c = 0; c < V; c++) {
      let s = 0;
      for (let a = 0; a < K; a++) s += x.q[t * K + a]! * st[a * V + c]!;
      o[t * V + c] = s;
    }
  }
};

/** o [S, V] (unscaled) of one head, KDA_CHUNK steps at a time (see the header for the algebra). */
const chunkedHead: HeadForward = (x, { S, K, V }, o) => {
  const C = KDA_CHUNK;
  const st = new Float64Array(K * V);
  const cum = new Float64Array(C * K); // Gamma_r
  const w = new Float64Array(C * V);
  const decayedKey = new Float64Array(K); // D_ri k_i for one (r, i)
  for (let t0 = 0; t0 < S; t0 += C) {
    const n = Math.min(C, S - t0);
    for (let r = 0; r < n; r++)
      for (let a = 0; a < K; a++) cum[r * K + a] = (r > 0 ? cum[(r - 1) * K + a]! : 0) + x.logDecay[(t0 + r) * K + a]!;
    for (let r = 0; r < n; r++) {
      const t = t0 + r;
      // Contributions of the chunk-start state: the recalled value and the output.
      for (let c = 0; c < V; c++) {
        let recalled = 0,
          read = 0;
        for (let a = 0; a < K; a++) {
          const sD = st[a * V + c]! * Math.exp(cum[r * K + a]!);
          recalled += sD * x.k[t * K + a]!;
          read += sD * x.q[t * K + a]!;
        }
        w[r * V + c] = x.v[t * V + c]! - recalled;
        o[t * V + c] = read;
      }
      // Earlier steps of the chunk: w_r -= A_ri w_i for i < r, then scale by beta; o_r += (q_r . D_ri k_i) w_i.
      for (let i = 0; i <= r; i++) {
        let kk = 0,
          qk = 0;
        for (let a = 0; a < K; a++) {
          decayedKey[a] = Math.exp(cum[r * K + a]! - cum[i * K + a]!) * x.k[(t0 + i) * K + a]!;
          kk += x.k[t * K + a]! * decayedKey[a]!;
          qk += x.q[t * K + a]! * decayedKey[a]!;
        }
        if (i === r) {
          const beta = x.beta[t]!;
          for (let c = 0; c < V; c++) w[r * V + c] *= beta;
        } else {
          for (let c = 0; c < V; c++) w[r * V + c] -= kk * w[i * V + c]!;
        }
        for (let c = 0; c < V; c++) o[t * V + c] += qk * w[i * V + c]!;
      }
    }
    // The state after the chunk.
    const last = n - 1;
    for (let a = 0; a < K; a++) {
      const d = Math.exp(cum[last * K + a]!);
      for (let c = 0; c < V; c++) st[a * V + c] *= d;
      for (let i = 0; i < n; i++) {
        const dki = Math.exp(cum[last * K + a]! - cum[i * K + a]!) * x.k[(t0 + i) * K + a]!;
        for (let c = 0; c < V; c++) st[a * V + c] += dki * w[i * V + c]!;
      }
    }
  }
};

/** The op: out [T, H*V], chunked. q, k, gate [T, H*K]; v [T, H*V]; beta [T, H] (logits, before sigmoid). */
export function deltaAttention(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  gate: CpuTensor,
  beta: CpuTensor,
  spec: DeltaAttentionSpec,
): CpuTensor {
  return run(q, k, v, gate, beta, spec, chunkedHead);
}

/** The same output step by step: the oracle the chunked form is tested against. */
export function deltaAttentionRecurrent(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  gate: CpuTensor,
  beta: CpuTensor,
  spec: DeltaAttentionSpec,
): CpuTensor {
  return run(q, k, v, gate, beta, spec, recurrentHead);
}

/** d of the L2 norm y = x r, r = 1/sqrt(|x|^2 + eps): dx = r (dy - y (y . dy)), into `to` at `base`. */
function l2normBackward(
  y: Float64Array,
  dy: Float64Array,
  r: number,
  t: number,
  K: number,
  to: CpuTensor,
  base: number,
) {
  let dot = 0;
  for (let a = 0; a < K; a++) dot += y[t * K + a]! * dy[a]!;
  for (let a = 0; a < K; a++) to.f[base + a] = r * (dy[a]! - y[t * K + a]! * dot);
}

/** Gradients of out = deltaAttention(...) given dOut: dq, dk, dGate [T, H*K], dv [T, H*V], dBeta [T, H]. */
export function deltaAttentionBackward(
  dOut: CpuTensor,
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  gate: CpuTensor,
  beta: CpuTensor,
  spec: DeltaAttentionSpec,
): { dq: CpuTensor; dk: CpuTensor; dv: CpuTensor; dGate: CpuTensor; dBeta: CpuTensor } {
  const g = geometry(q, k, v, gate, beta, spec);
  const { S, H, K, V } = g;
  const C = KDA_CHUNK,
    KV = K * V;
  const scale = spec.scale;
  const dq = allocate(q.shape, q.dtype),
    dk = allocate(k.shape, k.dtype),
    dv = allocate(v.shape, v.dtype),
    dGate = allocate(gate.shape, gate.dtype),
    dBeta = allocate(beta.shape, beta.dtype);
  const chunks = Math.ceil(S / C);
  const starts = new Float64Array(chunks * KV); // the state before each chunk
  const states = new Float64Array(C * KV); // S_t for the steps of one chunk
  const st = new Float64Array(KV),
    dS = new Float64Array(KV),
    u = new Float64Array(V),
    du = new Float64Array(V),
    dqUnit = new Float64Array(K),
    dkUnit = new Float64Array(K);
  for (let b = 0; b < spec.batch; b++) {
    for (let h = 0; h < H; h++) {
      const x = gatherHead(g, b, h, q, k, v, gate, beta);
      st.fill(0);
      for (let t = 0; t < S; t++) {
        if (t % C === 0) starts.set(st, (t / C) * KV);
        step(x, t, K, V, st, u);
      }
      dS.fill(0);
      for (let c0 = (chunks - 1) * C; c0 >= 0; c0 -= C) {
        const n = Math.min(C, S - c0);
        st.set(starts.subarray((c0 / C) * KV, (c0 / C + 1) * KV));
        for (let r = 0; r < n; r++) {
          step(x, c0 + r, K, V, st, u);
          states.set(st, r * KV);
        }
        for (let r = n - 1; r >= 0; r--) {
          const t = c0 + r;
          const row = b * S + t;
          const cur = states.subarray(r * KV, (r + 1) * KV);
          const prev =
            r > 0 ? states.subarray((r - 1) * KV, r * KV) : starts.subarray((c0 / C) * KV, (c0 / C + 1) * KV);
          // o_t = scale S_t^T q_t: dq_t = scale S_t dO_t; dS += scale q_t dO_t^T.
          const dO = dOut.f.subarray((row * H + h) * V, (row * H + h + 1) * V);
          for (let a = 0; a < K; a++) {
            let s = 0;
            for (let c = 0; c < V; c++) {
              s += cur[a * V + c]! * dO[c]!;
              dS[a * V + c] += scale * x.q[t * K + a]! * dO[c]!;
            }
            dqUnit[a] = scale * s;
          }
          // u_t = v_t - (diag(alpha) S_{t-1})^T k_t, recomputed from the previous state.
          for (let c = 0; c < V; c++) {
            let recalled = 0;
            for (let a = 0; a < K; a++) recalled += x.decay[t * K + a]! * prev[a * V + c]! * x.k[t * K + a]!;
            u[c] = x.v[t * V + c]! - recalled;
          }
          // S_t = S' + beta k u^T: dbeta = k^T dS u, du = beta dS^T k, dk = beta dS u.
          const bt = x.beta[t]!;
          let dBt = 0;
          du.fill(0);
          for (let a = 0; a < K; a++) {
            let dSu = 0;
            for (let c = 0; c < V; c++) {
              dSu += dS[a * V + c]! * u[c]!;
              du[c] += bt * dS[a * V + c]! * x.k[t * K + a]!;
            }
            dBt += x.k[t * K + a]! * dSu;
            dkUnit[a] = bt * dSu;
          }
          // u = v - S'^T k: dv = du, dk -= S' du, dS' = dS - k du^T; S' = diag(alpha) S_{t-1}.
          for (let c = 0; c < V; c++) dv.f[(row * H + h) * V + c] = du[c]!;
          for (let a = 0; a < K; a++) {
            const alpha = x.decay[t * K + a]!;
            const ka = x.k[t * K + a]!;
            let sDu = 0,
              dAlpha = 0;
            for (let c = 0; c < V; c++) {
              const i = a * V + c;
              sDu += alpha * prev[i]! * du[c]!;
              const dSPrime = dS[i]! - ka * du[c]!;
              dAlpha += dSPrime * prev[i]!;
              dS[i] = alpha * dSPrime;
            }
            dkUnit[a] -= sDu;
            // alpha = sigmoid(z): dz = dalpha alpha (1 - alpha).
            dGate.f[(row * H + h) * K + a] = dAlpha * alpha * (1 - alpha);
          }
          dBeta.f[row * H + h] = dBt * bt * (1 - bt);
          const base = (row * H + h) * K;
          l2normBackward(x.q, dqUnit, x.qInvNorm[t]!, t, K, dq, base);
          l2normBackward(x.k, dkUnit, x.kInvNorm[t]!, t, K, dk, base);
        }
      }
    }
  }
  return { dq: settle(dq), dk: settle(dk), dv: settle(dv), dGate: settle(dGate), dBeta: settle(dBeta) };
}
