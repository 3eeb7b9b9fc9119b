/**
 * NSA: the reference's Native Sparse Attention (arXiv 2502.11089), forward and backward. Experimental, as in the
 * reference; the backend ops are described in src/tensor/nsa.ts.
 *
 *   [q | k | v] = qkv(h)        Linear(dim, (H + 2 KV) D) with bias, D = v_head_dim, KV = attn_nsa.kv_heads
 *   RoPE on the whole head of every q and k head (qk_rope_head_dim = D)
 *   compressed:  kc = phi(blocks of k + cmp_pos), vc = phi(blocks of v + cmp_pos),
 *                phi = cmp_mlp: Linear(cmpLen D, cmp_hidden) -> GELU -> Linear(cmp_hidden, D), shared by k and v;
 *                o_cmp = attention of each key/value head's mean query over the ended blocks, which also scores
 *                the selection blocks
 *   selected:    o_slc = attention over the topk_blocks chosen blocks of slc_block tokens and the own block
 *   sliding:     o_swa = SWA with sinks over `window` keys (only when window > 0: a local layer)
 *   o = sigmoid(g0) o_cmp + sigmoid(g1) o_slc + sigmoid(g2) o_swa,  g = gate_mlp(h): Linear(dim, gate_hidden) ->
 *       GELU -> Linear(gate_hidden, 3)
 *   out = out(o)                Linear(H D, dim) with bias
 *
 * Every branch scales by D^-1/2. The selection is not differentiable: gradients reach q and k through the selected
 * attention and the compressed branch, never through which blocks were chosen.
 */
import type { SlidingAttentionSpec } from '../tensor/backend.ts';
import type { NsaSpec } from '../tensor/nsa.ts';
import { nsaCompressedBlocks, nsaScoredBlocks } from '../tensor/nsa.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, addBias, biasBackward, freeAll, linear, linearBackward, rope } from './context.ts';
import type { ParamSpec } from './params.ts';
import type { ModelConfig } from './spec.ts';

/** The [attn_nsa] table with the reference's defaults filled in. */
export interface NsaOptions {
  heads: number;
  kvHeads: number;
  headDim: number;
  cmpLen: number;
  cmpStride: number;
  slcBlock: number;
  topkBlocks: number;
  cmpHidden: number;
  gateHidden: number;
}

/** kv_heads falls back to [attn_swa]'s, then to n_heads, as the reference reads them. */
export function nsaOptions(cfg: ModelConfig): NsaOptions {
  const o = cfg.attn_nsa;
  const headDim = cfg.v_head_dim;
  return {
    heads: cfg.n_heads,
    kvHeads: o.kv_heads ?? cfg.attn_swa.kv_heads ?? cfg.n_heads,
    headDim,
    cmpLen: o.cmp_len ?? 32,
    cmpStride: o.cmp_stride ?? 16,
    slcBlock: o.slc_block ?? 64,
    topkBlocks: o.topk_blocks ?? 16,
    cmpHidden: o.cmp_hidden ?? 2 * headDim,
    gateHidden: o.gate_hidden ?? Math.floor(cfg.dim / 4),
  };
}

/** The gate MLP's output bias: sigmoid of it is about [0.1, 0.1, 0.8], favouring the sliding branch. */
export const NSA_GATE_BIAS = [-2.2, -2.2, 1.4];

/** An NSA layer's parameters under the reference's module names; `outStd` is the block's output-projection std. */
export function nsaParamSpecs(cfg: ModelConfig, prefix: string, outStd: number): ParamSpec[] {
  const { heads, kvHeads, headDim: D, cmpLen, cmpHidden, gateHidden } = nsaOptions(cfg);
  const qkv = (heads + 2 * kvHeads) * D;
  const input = { kind: 'normal', std: 0.02 } as const;
  const zeros = { kind: 'zeros' } as const;
  const mlp = (name: string, inDim: number, hidden: number, outDim: number, outBias: ParamSpec['init']) => [
    { name: `${prefix}.${name}.0.weight`, shape: [hidden, inDim], init: input },
    { name: `${prefix}.${name}.0.bias`, shape: [hidden], init: zeros },
    { name: `${prefix}.${name}.2.weight`, shape: [outDim, hidden], init: input },
    { name: `${prefix}.${name}.2.bias`, shape: [outDim], init: outBias },
  ];
  return [
    { name: `${prefix}.qkv.weight`, shape: [qkv, cfg.dim], init: input },
    { name: `${prefix}.qkv.bias`, shape: [qkv], init: zeros },
    { name: `${prefix}.out.weight`, shape: [cfg.dim, heads * D], init: { kind: 'normal', std: outStd } },
    { name: `${prefix}.out.bias`, shape: [cfg.dim], init: zeros },
    { name: `${prefix}.sinks`, shape: [heads], init: zeros },
    { name: `${prefix}.cmp_pos`, shape: [cmpLen, D], init: input },
    ...mlp('cmp_mlp', cmpLen * D, cmpHidden, D, zeros),
    ...mlp('gate_mlp', cfg.dim, gateHidden, 3, { kind: 'values', values: NSA_GATE_BIAS }),
  ];
}

export function nsaSpec(ctx: LayerContext): NsaSpec {
  const o = nsaOptions(ctx.cfg);
  return {
    batch: ctx.batch,
    seqLen: ctx.seqLen,
    heads: o.heads,
    kvHeads: o.kvHeads,
    headDim: o.headDim,
    scale: o.headDim ** -0.5,
    cmpLen: o.cmpLen,
    cmpStride: o.cmpStride,
    slcBlock: o.slcBlock,
    topkBlocks: o.topkBlocks,
  };
}

/** Linear -> GELU -> Linear with biases (`${name}.0`, `${name}.2`), and what its backward needs. */
interface GeluMlp {
  pre: Tensor;
  act: Tensor;
  y: Tensor;
}

function geluMlp(ctx: LayerContext, x: Tensor, name: string): GeluMlp {
  const pre = linear(ctx, x, `${name}.0.weight`);
  addBias(ctx, pre, `${name}.0.bias`);
  const act = ctx.b.gelu(pre);
  const y = linear(ctx, act, `${name}.2.weight`);
  addBias(ctx, y, `${name}.2.bias`);
  return { pre, act, y };
}

/** Returns dx; accumulates the MLP's gradients; frees `m`. */
function geluMlpBackward(ctx: LayerContext, dy: Tensor, x: Tensor, name: string, m: GeluMlp): Tensor {
  biasBackward(ctx, dy, `${name}.2.bias`);
  const dAct = linearBackward(ctx, dy, m.act, `${name}.2.weight`);
  const dPre = ctx.b.geluBackward(dAct, m.pre);
  biasBackward(ctx, dPre, `${name}.0.bias`);
  const dx = linearBackward(ctx, dPre, x, `${name}.0.weight`);
  freeAll({ dAct, dPre, ...m });
  return dx;
}

/** One compressed stream (keys or values): its blocks and phi's activations; phi's output is mlp.y. */
interface Compressed {
  blocks: Tensor;
  mlp: GeluMlp;
}

interface CompressedBranch {
  k: Compressed;
  v: Compressed;
  out: Tensor;
  lse: Tensor;
}

export interface NsaSaved {
  kind: 'nsa';
  window: number;
  h: Tensor;
  q: Tensor;
  k: Tensor;
  v: Tensor;
  /** null when no compressed block or no selection block fits the sequence (the branch then adds zeros). */
  cmp: CompressedBranch | null;
  /** i32 [T, topk_blocks]: the blocks each token chose, fixed for the backward. */
  sel: Tensor;
  slc: { out: Tensor; lse: Tensor };
  swa: { out: Tensor; lse: Tensor } | null;
  gate: GeluMlp;
  o: Tensor;
}

function compress(ctx: LayerContext, prefix: string, x: Tensor, spec: NsaSpec): Compressed {
  const blocks = ctx.b.nsaCompressBlocks(x, ctx.p.get(`${prefix}.cmp_pos`), spec);
  return { blocks, mlp: geluMlp(ctx, blocks, `${prefix}.cmp_mlp`) };
}

/** phi's output [batch*Tc*KV, D] as the compressed keys or values [batch*Tc, KV*D] (the same rows). */
function compressedRows(ctx: LayerContext, c: Compressed, spec: NsaSpec): Tensor {
  return ctx.b.view(c.mlp.y, [spec.batch * nsaCompressedBlocks(spec), spec.kvHeads * spec.headDim]);
}

function swaSpecOf(spec: NsaSpec, window: number): SlidingAttentionSpec {
  const { batch, seqLen, heads, kvHeads, scale } = spec;
  return { batch, seqLen, heads, kvHeads, scale, window };
}

/** Everything nsaBackward needs, up to the gated mix o before `out`. */
export function nsaCore(ctx: LayerContext, prefix: string, h: Tensor, window: number): NsaSaved {
  const { b } = ctx;
  const spec = nsaSpec(ctx);
  const { heads, kvHeads, headDim: D } = spec;
  const qkv = linear(ctx, h, `${prefix}.qkv.weight`);
  addBias(ctx, qkv, `${prefix}.qkv.bias`);
  const [q, k, v] = b.splitCols(qkv, [heads * D, kvHeads * D, kvHeads * D]) as [Tensor, Tensor, Tensor];
  qkv.free();
  rope(ctx, q, heads, D, 0, false);
  rope(ctx, k, kvHeads, D, 0, false);

  let cmp: CompressedBranch | null = null;
  let cmpOut: Tensor, scores: Tensor;
  // As the reference: with no compressed window or no scored block the branch is zeros and so is every score.
  if (nsaCompressedBlocks(spec) > 0 && nsaScoredBlocks(spec) > 0) {
    const kc = compress(ctx, prefix, k, spec),
      vc = compress(ctx, prefix, v, spec);
    const r = b.nsaCompressedAttention(q, compressedRows(ctx, kc, spec), compressedRows(ctx, vc, spec), spec);
    cmp = { k: kc, v: vc, out: r.out, lse: r.lse };
    cmpOut = r.out;
    scores = r.scores;
  } else {
    cmpOut = b.zeros(q.shape, q.dtype);
    scores = b.zeros([q.shape[0]!, nsaScoredBlocks(spec)], 'f32');
  }
  const sel = b.nsaSelectBlocks(scores, spec);
  scores.free();
  const slc = b.nsaSelectedAttention(q, k, v, sel, spec);
  const swa = window > 0 ? b.slidingAttention(q, k, v, ctx.p.get(`${prefix}.sinks`), swaSpecOf(spec, window)) : null;
  const gate = geluMlp(ctx, h, `${prefix}.gate_mlp`);
  const o = b.nsaGate(gate.y, cmpOut, slc.out, swa?.out ?? null);
  if (!cmp) cmpOut.free();
  return { kind: 'nsa', window, h, q, k, v, cmp, sel, slc, swa, gate, o };
}

/** The layer's output projection: out(o) [T, dim]. */
export function nsaOutput(ctx: LayerContext, prefix: string, s: NsaSaved): Tensor {
  const y = linear(ctx, s.o, `${prefix}.out.weight`);
  addBias(ctx, y, `${prefix}.out.bias`);
  return y;
}

/** Frees a saved record except h (the caller's). */
export function releaseNsaSaved(s: NsaSaved): void {
  if (s.cmp) {
    for (const c of [s.cmp.k, s.cmp.v]) freeAll({ blocks: c.blocks, ...c.mlp });
    freeAll({ out: s.cmp.out, lse: s.cmp.lse });
  }
  freeAll({ q: s.q, k: s.k, v: s.v, sel: s.sel, o: s.o, ...s.slc, ...s.gate });
  if (s.swa) freeAll(s.swa);
}

/** phi's backward for one stream: adds the gradient of the raw keys or values to `into`, accumulating phi's. */
function compressBackward(
  ctx: LayerContext,
  prefix: string,
  dRows: Tensor,
  c: Compressed,
  spec: NsaSpec,
  into: Tensor,
): void {
  const dy = ctx.b.view(dRows, c.mlp.y.shape);
  const dBlocks = geluMlpBackward(ctx, dy, c.blocks, `${prefix}.cmp_mlp`, c.mlp);
  const dx = ctx.b.nsaCompressBlocksBackward(dBlocks, spec, ctx.p.grad(`${prefix}.cmp_pos`));
  ctx.b.addInPlace(into, dx);
  freeAll({ dBlocks, dx, blocks: c.blocks });
}

/** Returns dh; accumulates every gradient of the layer; frees `s` except h. */
export function nsaBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: NsaSaved): Tensor {
  const { b } = ctx;
  const spec = nsaSpec(ctx);
  biasBackward(ctx, dOut, `${prefix}.out.bias`);
  const dO = linearBackward(ctx, dOut, s.o, `${prefix}.out.weight`);
  const cmpOut = s.cmp?.out ?? b.zeros(s.q.shape, s.q.dtype);
  const g = b.nsaGateBackward(dO, s.gate.y, cmpOut, s.slc.out, s.swa?.out ?? null);
  if (!s.cmp) cmpOut.free();
  const dh = geluMlpBackward(ctx, g.dGates, s.h, `${prefix}.gate_mlp`, s.gate);

  const { dq, dk, dv } = b.nsaSelectedAttentionBackward(g.dSlc, s.q, s.k, s.v, s.sel, s.slc.out, s.slc.lse, spec);
  if (s.swa) {
    const sinks = `${prefix}.sinks`;
    const d = b.slidingAttentionBackward(
      g.dSwa!,
      s.q,
      s.k,
      s.v,
      ctx.p.get(sinks),
      s.swa.out,
      s.swa.lse,
      swaSpecOf(spec, s.window),
      ctx.p.grad(sinks),
    );
    for (const [into, x] of [
      [dq, d.dq],
      [dk, d.dk],
      [dv, d.dv],
    ] as const)
      b.addInPlace(into, x);
    freeAll(d);
  }
  if (s.cmp) {
    const { k: kc, v: vc } = s.cmp;
    const d = b.nsaCompressedAttentionBackward(
      g.dCmp,
      s.q,
      compressedRows(ctx, kc, spec),
      compressedRows(ctx, vc, spec),
      s.cmp.out,
      s.cmp.lse,
      spec,
    );
    b.addInPlace(dq, d.dq);
    compressBackward(ctx, prefix, d.dkc, kc, spec, dk);
    compressBackward(ctx, prefix, d.dvc, vc, spec, dv);
    freeAll({ ...d, out: s.cmp.out, lse: s.cmp.lse });
  }
  rope(ctx, dq, spec.heads, spec.headDim, 0, true);
  rope(ctx, dk, spec.kvHeads, spec.headDim, 0, true);
  const dqkv = b.concatCols([dq, dk, dv]);
  biasBackward(ctx, dqkv, `${prefix}.qkv.bias`);
  linearBackward(ctx, dqkv, s.h, `${prefix}.qkv.weight`, dh);
  freeAll({ dO, dq, dk, dv, dqkv, dCmp: g.dCmp, dSlc: g.dSlc, dSwa: g.dSwa, dGates: g.dGates });
  freeAll({ q: s.q, k: s.k, v: s.v, sel: s.sel, o: s.o, ...s.slc });
  if (s.swa) freeAll(s.swa);
  return dh;
}
