/**
 * CPU kernels of NSA's ops (contracts in ../nsa.ts). Scores and sums run in doubles; every backward recomputes
 * probabilities from the saved log-sum-exp, as attention.ts does. dk and dv of a key/value head sum its query heads
 * in head order.
 */
import { type NsaSpec, nsaCompressedBlocks, nsaScoredBlocks } from '../nsa.ts';
import { type CpuTensor, allocate, settle } from './storage.ts';

/** erf(x) to double precision: 2/sqrt(pi) exp(-x^2) sum_n 2^n x^(2n+1) / (1*3*...*(2n+1)), all terms positive. */
export function erf(x: number): number {
  if (Math.abs(x) >= 6) return Math.sign(x);
  const x2 = x * x;
  let term = x,
    sum = x;
  for (let n = 1; Math.abs(term) > 1e-17 * Math.abs(sum); n++) {
    term *= (2 * x2) / (2 * n + 1);
    sum += term;
  }
  return Math.max(-1, Math.min(1, (2 / Math.sqrt(Math.PI)) * Math.exp(-x2) * sum));
}

const normalCdf = (x: number): number => 0.5 * (1 + erf(x / Math.SQRT2));
const normalPdf = (x: number): number => Math.exp(-0.5 * x * x) / Math.sqrt(2 * Math.PI);
const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

function fresh(like: CpuTensor, values: ArrayLike<number>, shape: readonly number[] = like.shape): CpuTensor {
  const t = allocate(shape, like.dtype);
  t.f.set(values);
  return settle(t);
}

export function gelu(x: CpuTensor): CpuTensor {
  const y = allocate(x.shape, x.dtype);
  for (let i = 0; i < x.numel; i++) y.f[i] = x.f[i]! * normalCdf(x.f[i]!);
  return settle(y);
}

export function geluBackward(dy: CpuTensor, x: CpuTensor): CpuTensor {
  const dx = allocate(x.shape, x.dtype);
  for (let i = 0; i < x.numel; i++) {
    const v = x.f[i]!;
    dx.f[i] = dy.f[i]! * (normalCdf(v) + v * normalPdf(v));
  }
  return settle(dx);
}

interface Geometry {
  B: number;
  S: number;
  H: number;
  KV: number;
  D: number;
  /** Query heads per key/value head. */
  G: number;
  Tc: number;
  Ns: number;
}

/** Checks q [B*S, H*D] and, by width, keys or values [rows, KV*D] (raw or compressed) against the spec. */
function geometry(spec: NsaSpec, q: CpuTensor | null, k: CpuTensor | null, op: string): Geometry {
  const { batch: B, seqLen: S, heads: H, kvHeads: KV, headDim: D } = spec;
  const okQ = q === null || (q.shape[0] === B * S && q.shape[1] === H * D);
  const okK = k === null || k.shape[1] === KV * D;
  if (H % KV !== 0 || !okQ || !okK)
    throw new Error(
      `${op}: q [${q?.shape}] k [${k?.shape}] do not fit ${B} x ${S} tokens, ${H} heads, ${KV} kv heads of ${D}`,
    );
  return { B, S, H, KV, D, G: H / KV, Tc: nsaCompressedBlocks(spec), Ns: nsaScoredBlocks(spec) };
}

// --- compression --------------------------------------------------------------------------------------------

export function compressBlocks(x: CpuTensor, pos: CpuTensor, spec: NsaSpec): CpuTensor {
  const { B, S, KV, D, Tc } = geometry(spec, null, x, 'nsaCompressBlocks');
  const { cmpLen: l, cmpStride: d } = spec;
  const width = l * D;
  const out = allocate([B * Tc * KV, width], x.dtype);
  for (let b = 0; b < B; b++)
    for (let c = 0; c < Tc; c++)
      for (let g = 0; g < KV; g++) {
        const row = ((b * Tc + c) * KV + g) * width;
        for (let j = 0; j < l; j++) {
          const src = (b * S + c * d + j) * KV * D + g * D;
          for (let e = 0; e < D; e++) out.f[row + j * D + e] = x.f[src + e]! + pos.f[j * D + e]!;
        }
      }
  return settle(out);
}

export function compressBlocksBackward(dBlocks: CpuTensor, spec: NsaSpec, dPos: CpuTensor): CpuTensor {
  const { B, S, KV, D, Tc } = geometry(spec, null, null, 'nsaCompressBlocksBackward');
  const { cmpLen: l, cmpStride: d } = spec;
  const width = l * D;
  const dx = new Float64Array(B * S * KV * D);
  const dp = new Float64Array(width);
  for (let b = 0; b < B; b++)
    for (let c = 0; c < Tc; c++)
      for (let g = 0; g < KV; g++) {
        const row = ((b * Tc + c) * KV + g) * width;
        for (let j = 0; j < l; j++) {
          const dst = (b * S + c * d + j) * KV * D + g * D;
          for (let e = 0; e < D; e++) {
            const v = dBlocks.f[row + j * D + e]!;
            dx[dst + e] += v;
            dp[j * D + e] += v;
          }
        }
      }
  for (let i = 0; i < width; i++) dPos.f[i] += dp[i]!;
  settle(dPos);
  return fresh(dBlocks, dx, [B * S, KV * D]);
}

// --- compressed attention -----------------------------------------------------------------------------------

/** Compressed blocks that have ended at position t: c * stride + len - 1 <= t. */
function endedBlocks(t: number, spec: NsaSpec, Tc: number): number {
  return t < spec.cmpLen - 1 ? 0 : Math.min(Tc, Math.floor((t - spec.cmpLen + 1) / spec.cmpStride) + 1);
}

/** The group-mean query of key/value head g at row r. */
function meanQuery(q: CpuTensor, r: number, g: number, geo: Geometry, into: Float64Array): void {
  const { H, D, G } = geo;
  into.fill(0);
  for (let h = g * G; h < (g + 1) * G; h++) for (let e = 0; e < D; e++) into[e] += q.f[(r * H + h) * D + e]! / G;
}

export function compressedAttention(
  q: CpuTensor,
  kc: CpuTensor,
  vc: CpuTensor,
  spec: NsaSpec,
): { out: CpuTensor; lse: CpuTensor; scores: CpuTensor } {
  const geo = geometry(spec, q, kc, 'nsaCompressedAttention');
  const { B, S, H, KV, D, G, Tc, Ns } = geo;
  const out = allocate(q.shape, q.dtype);
  const lse = allocate([B * S, KV], 'f32');
  const scores = allocate([B * S, Ns], 'f32');
  const qh = new Float64Array(D),
    acc = new Float64Array(D),
    s = new Float64Array(Tc);
  const primary = Array.from({ length: Tc }, (_, c) =>
    Math.min(Math.floor((c * spec.cmpStride + Math.floor(spec.cmpLen / 2)) / spec.slcBlock), Ns - 1),
  );
  for (let b = 0; b < B; b++)
    for (let t = 0; t < S; t++) {
      const r = b * S + t;
      const n = endedBlocks(t, spec, Tc);
      for (let g = 0; g < KV; g++) {
        if (n === 0) {
          lse.f[r * KV + g] = -Infinity;
          continue;
        }
        meanQuery(q, r, g, geo, qh);
        let m = -Infinity;
        for (let c = 0; c < n; c++) {
          const kRow = ((b * Tc + c) * KV + g) * D;
          let dot = 0;
          for (let e = 0; e < D; e++) dot += qh[e]! * kc.f[kRow + e]!;
          s[c] = dot * spec.scale;
          if (s[c]! > m) m = s[c]!;
        }
        let sum = 0;
        acc.fill(0);
        for (let c = 0; c < n; c++) {
          s[c] = Math.exp(s[c]! - m);
          sum += s[c]!;
          const vRow = ((b * Tc + c) * KV + g) * D;
          for (let e = 0; e < D; e++) acc[e] += s[c]! * vc.f[vRow + e]!;
        }
        if (Ns > 0) for (let c = 0; c < n; c++) scores.f[r * Ns + primary[c]!] += s[c]! / sum;
        for (let h = g * G; h < (g + 1) * G; h++)
          for (let e = 0; e < D; e++) out.f[(r * H + h) * D + e] = acc[e]! / sum;
        lse.f[r * KV + g] = m + Math.log(sum);
      }
    }
  return { out: settle(out), lse, scores };
}

export function compressedAttentionBackward(
  dOut: CpuTensor,
  q: CpuTensor,
  kc: CpuTensor,
  vc: CpuTensor,
  out: CpuTensor,
  lse: CpuTensor,
  spec: NsaSpec,
): { dq: CpuTensor; dkc: CpuTensor; dvc: CpuTensor } {
  const geo = geometry(spec, q, kc, 'nsaCompressedAttentionBackward');
  const { B, S, H, KV, D, G, Tc } = geo;
  const dQ = new Float64Array(q.numel),
    dKc = new Float64Array(kc.numel),
    dVc = new Float64Array(vc.numel);
  const qh = new Float64Array(D),
    dO = new Float64Array(D),
    dqh = new Float64Array(D);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < S; t++) {
      const r = b * S + t;
      const n = endedBlocks(t, spec, Tc);
      if (n === 0) continue;
      for (let g = 0; g < KV; g++) {
        meanQuery(q, r, g, geo, qh);
        dO.fill(0);
        for (let h = g * G; h < (g + 1) * G; h++) for (let e = 0; e < D; e++) dO[e] += dOut.f[(r * H + h) * D + e]!;
        let delta = 0; // sum_c p_c dp_c = dO . out of the group (every head of it carries the same out)
        for (let e = 0; e < D; e++) delta += dO[e]! * out.f[(r * H + g * G) * D + e]!;
        const l = lse.f[r * KV + g]!;
        dqh.fill(0);
        for (let c = 0; c < n; c++) {
          const row = ((b * Tc + c) * KV + g) * D;
          let dot = 0,
            dp = 0;
          for (let e = 0; e < D; e++) {
            dot += qh[e]! * kc.f[row + e]!;
            dp += dO[e]! * vc.f[row + e]!;
          }
          const p = Math.exp(dot * spec.scale - l);
          const ds = p * (dp - delta) * spec.scale;
          for (let e = 0; e < D; e++) {
            dVc[row + e] += p * dO[e]!;
            dqh[e] += ds * kc.f[row + e]!;
            dKc[row + e] += ds * qh[e]!;
          }
        }
        for (let h = g * G; h < (g + 1) * G; h++) for (let e = 0; e < D; e++) dQ[(r * H + h) * D + e] = dqh[e]! / G;
      }
    }
  return { dq: fresh(q, dQ), dkc: fresh(kc, dKc), dvc: fresh(vc, dVc) };
}

// --- selection ----------------------------------------------------------------------------------------------

export function selectBlocks(scores: CpuTensor, spec: NsaSpec): CpuTensor {
  const { B, S, Ns } = geometry(spec, null, null, 'nsaSelectBlocks');
  const n = spec.topkBlocks;
  const dynamic = Math.min(Math.max(n - 3, 0), Ns);
  const sel = allocate([B * S, n], 'i32');
  const order = Array.from({ length: Ns }, (_, j) => j);
  const key = new Float64Array(Ns);
  for (let r = 0; r < B * S; r++) {
    const cur = Math.floor((r % S) / spec.slcBlock);
    for (let j = 0; j < Ns; j++) key[j] = j < cur ? scores.f[r * Ns + j]! : -Infinity;
    order.sort((a, b) => (key[a] === key[b] ? a - b : key[b]! > key[a]! ? 1 : -1));
    const picks = [0, Math.max(cur - 2, 0), Math.max(cur - 1, 0), ...order.slice(0, dynamic)];
    for (let i = 0; i < n; i++) sel.i[r * n + i] = picks[i] ?? 0;
  }
  return sel;
}

// --- selected attention -------------------------------------------------------------------------------------

/** Blocks query row r sees, ascending, clipped to its own: its selection and its own block, each once. */
function visibleBlocks(sel: CpuTensor, r: number, cur: number, n: number): number[] {
  const blocks = new Set([cur]);
  for (let i = 0; i < n; i++) {
    const blk = sel.i[r * n + i]!;
    if (blk <= cur) blocks.add(blk);
  }
  return [...blocks].sort((a, b) => a - b);
}

export function selectedAttention(
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  sel: CpuTensor,
  spec: NsaSpec,
): { out: CpuTensor; lse: CpuTensor } {
  const { B, S, H, KV, D, G } = geometry(spec, q, k, 'nsaSelectedAttention');
  const L = spec.slcBlock,
    n = spec.topkBlocks;
  const out = allocate(q.shape, q.dtype);
  const lse = allocate([B * S, H], 'f32');
  const s = new Float64Array(S),
    acc = new Float64Array(D);
  for (let b = 0; b < B; b++)
    for (let t = 0; t < S; t++) {
      const r = b * S + t;
      const blocks = visibleBlocks(sel, r, Math.floor(t / L), n);
      for (let h = 0; h < H; h++) {
        const g = Math.floor(h / G);
        const qRow = (r * H + h) * D;
        let m = -Infinity;
        for (const blk of blocks)
          for (let j = blk * L; j < Math.min((blk + 1) * L, t + 1); j++) {
            const kRow = ((b * S + j) * KV + g) * D;
            let dot = 0;
            for (let e = 0; e < D; e++) dot += q.f[qRow + e]! * k.f[kRow + e]!;
            s[j] = dot * spec.scale;
            if (s[j]! > m) m = s[j]!;
          }
        let sum = 0;
        acc.fill(0);
        for (const blk of blocks)
          for (let j = blk * L; j < Math.min((blk + 1) * L, t + 1); j++) {
            const p = Math.exp(s[j]! - m);
            sum += p;
            const vRow = ((b * S + j) * KV + g) * D;
            for (let e = 0; e < D; e++) acc[e] += p * v.f[vRow + e]!;
          }
        for (let e = 0; e < D; e++) out.f[qRow + e] = acc[e]! / sum;
        lse.f[r * H + h] = m + Math.log(sum);
      }
    }
  return { out: settle(out), lse };
}

export function selectedAttentionBackward(
  dOut: CpuTensor,
  q: CpuTensor,
  k: CpuTensor,
  v: CpuTensor,
  sel: CpuTensor,
  out: CpuTensor,
  lse: CpuTensor,
  spec: NsaSpec,
): { dq: CpuTensor; dk: CpuTensor; dv: CpuTensor } {
  const { B, S, H, KV, D, G } = geometry(spec, q, k, 'nsaSelectedAttentionBackward');
  const L = spec.slcBlock,
    n = spec.topkBlocks;
  const dQ = new Float64Array(q.numel),
    dK = new Float64Array(k.numel),
    dV = new Float64Array(v.numel);
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / G);
      for (let t = 0; t < S; t++) {
        const r = b * S + t;
        const qRow = (r * H + h) * D;
        const l = lse.f[r * H + h]!;
        let delta = 0;
        for (let e = 0; e < D; e++) delta += dOut.f[qRow + e]! * out.f[qRow + e]!;
        for (const blk of visibleBlocks(sel, r, Math.floor(t / L), n))
          for (let j = blk * L; j < Math.min((blk + 1) * L, t + 1); j++) {
            const kRow = ((b * S + j) * KV + g) * D;
            let dot = 0,
              dp = 0;
            for (let e = 0; e < D; e++) {
              dot += q.f[qRow + e]! * k.f[kRow + e]!;
              dp += dOut.f[qRow + e]! * v.f[kRow + e]!;
            }
            const p = Math.exp(dot * spec.scale - l);
            const ds = p * (dp - delta) * spec.scale;
            for (let e = 0; e < D; e++) {
              dV[kRow + e] += p * dOut.f[qRow + e]!;
              dQ[qRow + e] += ds * k.f[kRow + e]!;
              dK[kRow + e] += ds * q.f[qRow + e]!;
            }
          }
      }
    }
  return { dq: fresh(q, dQ), dk: fresh(k, dK), dv: fresh(v, dV) };
}

// --- gates --------------------------------------------------------------------------------------------------

export function gate(gates: CpuTensor, cmp: CpuTensor, slc: CpuTensor, swa: CpuTensor | null): CpuTensor {
  const [T, C] = cmp.shape as [number, number];
  const o = allocate(cmp.shape, cmp.dtype);
  for (let t = 0; t < T; t++) {
    const [a, s, w] = [0, 1, 2].map((i) => sigmoid(gates.f[t * 3 + i]!)) as [number, number, number];
    for (let x = t * C; x < (t + 1) * C; x++) o.f[x] = a * cmp.f[x]! + s * slc.f[x]! + (swa ? w * swa.f[x]! : 0);
  }
  return settle(o);
}

export function gateBackward(
  dOut: CpuTensor,
  gates: CpuTensor,
  cmp: CpuTensor,
  slc: CpuTensor,
  swa: CpuTensor | null,
): { dGates: CpuTensor; dCmp: CpuTensor; dSlc: CpuTensor; dSwa: CpuTensor | null } {
  const [T, C] = cmp.shape as [number, number];
  const dGates = allocate(gates.shape, gates.dtype);
  const branches = [cmp, slc, swa];
  const grads = branches.map((x) => (x ? allocate(x.shape, x.dtype) : null));
  for (let t = 0; t < T; t++)
    for (let i = 0; i < 3; i++) {
      const x = branches[i],
        dx = grads[i];
      if (!x || !dx) continue;
      const sg = sigmoid(gates.f[t * 3 + i]!);
      let dot = 0;
      for (let c = t * C; c < (t + 1) * C; c++) {
        dot += dOut.f[c]! * x.f[c]!;
        dx.f[c] = sg * dOut.f[c]!;
      }
      dGates.f[t * 3 + i] = sg * (1 - sg) * dot;
    }
  for (const g of grads) if (g) settle(g);
  return { dGates: settle(dGates), dCmp: grads[0]!, dSlc: grads[1]!, dSwa: grads[2] ?? null };
}
