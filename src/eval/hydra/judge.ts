/**
 * HYDRA's judge head, the reference's JudgeEncoder: over the backbone's hidden states h [S, H] of one document at
 * the judge layer,
 *
 *   u  = LayerNorm_H(nan_to_num(h))                     in_norm
 *   z0 = [q_token; u W_p^T + b_p]        [S + 1, d]     a learned query token before the projected sequence
 *   z1 = norm1(z0 + SelfAttention(z0))                  one torch.nn.TransformerEncoderLayer: post-norm, ReLU,
 *   z2 = norm2(z1 + W2 relu(W1 z1 + b1) + b2)           eps 1e-5, no dropout at inference
 *   scores = rubric_head(z2[0])          [5]            clamped to [0, 4] when grading
 *
 * Only the query token's output is read, and every step after the attention is per position, so the forward
 * computes the attention's queries, the feed-forward and both norms for row 0 alone: the same numbers as the full
 * layer's row 0, at O(S d) instead of O(S^2 d). Keys and values come from every row. The feed-forward width is
 * `ff` (default 4 d: 2048 at the reference's d = 512, torch's default dim_feedforward). Training skips dropout.
 *
 * What remains costs O(S H d) in two wide linears, the projector and the keys and values; they are a JudgeLinears,
 * on the host for training and on the backbone's backend for grading (judge-device.ts).
 */
import { HeadParams } from './head-params.ts';
import { type NormSaved, layerNorm, layerNormBackward, linear, linearBackward, nanToNum } from './host-ops.ts';

export const RUBRIC_DIMS = 5;
export const NORM_EPS = 1e-5;

export interface JudgeShape {
  /** The backbone's hidden size. */
  hidden: number;
  d: number;
  heads: number;
  ff: number;
}

export function judgeParams(s: JudgeShape, seed: number): HeadParams {
  const { hidden: h, d, ff } = s;
  return new HeadParams(
    [
      { name: 'in_norm.weight', shape: [h], init: { kind: 'ones' } },
      { name: 'in_norm.bias', shape: [h], init: { kind: 'zeros' } },
      { name: 'projector.weight', shape: [d, h], init: { kind: 'fan-in' } },
      { name: 'projector.bias', shape: [d], init: { kind: 'zeros' } },
      { name: 'q_token', shape: [1, d], init: { kind: 'normal', std: 0.02 } },
      { name: 'encoder.self_attn.in_proj_weight', shape: [3 * d, d], init: { kind: 'fan-in' } },
      { name: 'encoder.self_attn.in_proj_bias', shape: [3 * d], init: { kind: 'zeros' } },
      { name: 'encoder.self_attn.out_proj.weight', shape: [d, d], init: { kind: 'fan-in' } },
      { name: 'encoder.self_attn.out_proj.bias', shape: [d], init: { kind: 'zeros' } },
      { name: 'encoder.linear1.weight', shape: [ff, d], init: { kind: 'fan-in' } },
      { name: 'encoder.linear1.bias', shape: [ff], init: { kind: 'zeros' } },
      { name: 'encoder.linear2.weight', shape: [d, ff], init: { kind: 'fan-in' } },
      { name: 'encoder.linear2.bias', shape: [d], init: { kind: 'zeros' } },
      { name: 'encoder.norm1.weight', shape: [d], init: { kind: 'ones' } },
      { name: 'encoder.norm1.bias', shape: [d], init: { kind: 'zeros' } },
      { name: 'encoder.norm2.weight', shape: [d], init: { kind: 'ones' } },
      { name: 'encoder.norm2.bias', shape: [d], init: { kind: 'zeros' } },
      { name: 'rubric_head.weight', shape: [RUBRIC_DIMS, d], init: { kind: 'fan-in' } },
      { name: 'rubric_head.bias', shape: [RUBRIC_DIMS], init: { kind: 'zeros' } },
    ],
    seed,
  );
}

/** What the backward needs of one forward. */
export interface JudgeSaved {
  rows: number;
  inNorm: NormSaved;
  u: Float32Array;
  z0: Float32Array;
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  /** Attention weights [heads, rows]. */
  probs: Float32Array;
  attn: Float32Array;
  norm1: NormSaved;
  z1: Float32Array;
  hidden1: Float32Array;
  norm2: NormSaved;
  z2: Float32Array;
}

const slice = (a: Float32Array, from: number, count: number) => a.subarray(from, from + count);

/** The judge's two wide linears, with their biases: u [rows, H] -> [rows, d], and z0 [rows, d] -> keys, values. */
export interface JudgeLinears {
  project(u: Float32Array, rows: number): Promise<Float32Array>;
  keysValues(z0: Float32Array, rows: number): Promise<{ k: Float32Array; v: Float32Array }>;
}

/** The linears on the host, in fp32: what training differentiates. */
export function hostLinears(p: HeadParams, s: JudgeShape): JudgeLinears {
  const { hidden, d } = s;
  const wIn = p.value('encoder.self_attn.in_proj_weight'),
    bIn = p.value('encoder.self_attn.in_proj_bias');
  return {
    project: async (u, rows) => linear(u, rows, p.value('projector.weight'), p.value('projector.bias'), hidden),
    keysValues: async (z0, rows) => ({
      k: linear(z0, rows, slice(wIn, d * d, d * d), slice(bIn, d, d), d),
      v: linear(z0, rows, slice(wIn, 2 * d * d, d * d), slice(bIn, 2 * d, d), d),
    }),
  };
}

/** The five raw (unclamped) rubric scores of one document's hidden states h [S, H], and what backward needs. */
export async function judgeForward(
  p: HeadParams,
  s: JudgeShape,
  h: Float32Array,
  linears: JudgeLinears = hostLinears(p, s),
): Promise<{ scores: Float32Array; saved: JudgeSaved }> {
  const { hidden, d, heads, ff } = s;
  const S = h.length / hidden,
    rows = S + 1,
    dh = d / heads;
  const inNorm = layerNorm(nanToNum(h), S, p.value('in_norm.weight'), p.value('in_norm.bias'), NORM_EPS);
  const u = inNorm.y;
  const proj = await linears.project(u, S);
  const z0 = new Float32Array(rows * d);
  z0.set(p.value('q_token'));
  z0.set(proj, d);
  const wIn = p.value('encoder.self_attn.in_proj_weight'),
    bIn = p.value('encoder.self_attn.in_proj_bias');
  const q = linear(slice(z0, 0, d), 1, slice(wIn, 0, d * d), slice(bIn, 0, d), d);
  const { k, v } = await linears.keysValues(z0, rows);
  const probs = new Float32Array(heads * rows),
    attn = new Float32Array(d);
  const scale = 1 / Math.sqrt(dh);
  for (let hd = 0; hd < heads; hd++) {
    const o = hd * dh,
      pr = slice(probs, hd * rows, rows);
    let max = -Infinity;
    for (let j = 0; j < rows; j++) {
      let dot = 0;
      for (let i = 0; i < dh; i++) dot += q[o + i]! * k[j * d + o + i]!;
      pr[j] = dot * scale;
      if (pr[j]! > max) max = pr[j]!;
    }
    let sum = 0;
    for (let j = 0; j < rows; j++) sum += pr[j] = Math.exp(pr[j]! - max);
    for (let j = 0; j < rows; j++) {
      pr[j]! /= sum;
      for (let i = 0; i < dh; i++) attn[o + i]! += pr[j]! * v[j * d + o + i]!;
    }
  }
  const a = linear(
    attn,
    1,
    p.value('encoder.self_attn.out_proj.weight'),
    p.value('encoder.self_attn.out_proj.bias'),
    d,
  );
  for (let i = 0; i < d; i++) a[i]! += z0[i]!;
  const norm1 = layerNorm(a, 1, p.value('encoder.norm1.weight'), p.value('encoder.norm1.bias'), NORM_EPS);
  const z1 = norm1.y;
  const hidden1 = linear(z1, 1, p.value('encoder.linear1.weight'), p.value('encoder.linear1.bias'), d);
  for (let i = 0; i < ff; i++) if (hidden1[i]! < 0) hidden1[i] = 0;
  const f = linear(hidden1, 1, p.value('encoder.linear2.weight'), p.value('encoder.linear2.bias'), ff);
  for (let i = 0; i < d; i++) f[i]! += z1[i]!;
  const norm2 = layerNorm(f, 1, p.value('encoder.norm2.weight'), p.value('encoder.norm2.bias'), NORM_EPS);
  const z2 = norm2.y;
  const scores = linear(z2, 1, p.value('rubric_head.weight'), p.value('rubric_head.bias'), d);
  return {
    scores,
    saved: {
      rows,
      inNorm: inNorm.saved,
      u,
      z0,
      q,
      k,
      v,
      probs,
      attn,
      norm1: norm1.saved,
      z1,
      hidden1,
      norm2: norm2.saved,
      z2,
    },
  };
}

/** Adds d(loss)/d(param) for d(loss)/d(scores) = `dScores` [5] to the gradients of `p`. */
export function judgeBackward(p: HeadParams, s: JudgeShape, saved: JudgeSaved, dScores: Float32Array): void {
  const { hidden, d, heads, ff } = s;
  const { rows } = saved,
    dh = d / heads,
    scale = 1 / Math.sqrt(dh);
  const back = (dy: Float32Array, x: Float32Array, n: number, name: string, inDim: number, needDx = true) =>
    linearBackward(
      dy,
      x,
      n,
      p.value(`${name}.weight`),
      inDim,
      p.grad(`${name}.weight`),
      p.grad(`${name}.bias`),
      needDx,
    );
  const norm = (dy: Float32Array, ns: NormSaved, name: string, needDx = true) =>
    layerNormBackward(dy, ns, p.value(`${name}.weight`), p.grad(`${name}.weight`), p.grad(`${name}.bias`), needDx);

  const dz2 = back(dScores, saved.z2, 1, 'rubric_head', d)!;
  const dF = norm(dz2, saved.norm2, 'encoder.norm2')!; // d(z1 + ff(z1))
  const dHidden = back(dF, saved.hidden1, 1, 'encoder.linear2', ff)!;
  for (let i = 0; i < ff; i++) if (saved.hidden1[i]! <= 0) dHidden[i] = 0;
  const dz1 = back(dHidden, saved.z1, 1, 'encoder.linear1', d)!;
  for (let i = 0; i < d; i++) dz1[i]! += dF[i]!;
  const dA = norm(dz1, saved.norm1, 'encoder.norm1')!; // d(z0[0] + attention)
  const dAttn = back(dA, saved.attn, 1, 'encoder.self_attn.out_proj', d)!;

  const dq = new Float32Array(d),
    dk = new Float32Array(rows * d),
    dv = new Float32Array(rows * d);
  for (let hd = 0; hd < heads; hd++) {
    const o = hd * dh,
      pr = slice(saved.probs, hd * rows, rows);
    const dp = new Float32Array(rows);
    let dot = 0;
    for (let j = 0; j < rows; j++) {
      let g = 0;
      for (let i = 0; i < dh; i++) {
        g += dAttn[o + i]! * saved.v[j * d + o + i]!;
        dv[j * d + o + i]! += pr[j]! * dAttn[o + i]!;
      }
      dp[j] = g;
      dot += g * pr[j]!;
    }
    for (let j = 0; j < rows; j++) {
      const ds = pr[j]! * (dp[j]! - dot) * scale;
      for (let i = 0; i < dh; i++) {
        dq[o + i]! += ds * saved.k[j * d + o + i]!;
        dk[j * d + o + i]! += ds * saved.q[o + i]!;
      }
    }
  }
  const wIn = p.value('encoder.self_attn.in_proj_weight'),
    gIn = p.grad('encoder.self_attn.in_proj_weight'),
    gbIn = p.grad('encoder.self_attn.in_proj_bias');
  const dz0 = new Float32Array(rows * d);
  const part = (dy: Float32Array, x: Float32Array, n: number, which: number) =>
    linearBackward(
      dy,
      x,
      n,
      slice(wIn, which * d * d, d * d),
      d,
      slice(gIn, which * d * d, d * d),
      slice(gbIn, which * d, d),
    )!;
  const dz0q = part(dq, slice(saved.z0, 0, d), 1, 0);
  const dz0k = part(dk, saved.z0, rows, 1);
  const dz0v = part(dv, saved.z0, rows, 2);
  for (let i = 0; i < rows * d; i++) dz0[i] = dz0k[i]! + dz0v[i]!;
  for (let i = 0; i < d; i++) dz0[i]! += dz0q[i]! + dA[i]!;

  const dq0 = p.grad('q_token');
  for (let i = 0; i < d; i++) dq0[i]! += dz0[i]!;
  const S = rows - 1;
  const du = back(slice(dz0, d, S * d), saved.u, S, 'projector', hidden)!;
  norm(du, saved.inNorm, 'in_norm', false);
}
