/**
 * Feed-forward blocks, forward and backward: the dense SwiGLU MLP w2(silu(w1 x) * w3 x), and the MoE layer
 * (inventory §3.6-3.7): sigmoid router with route_scale applied before the sigmoid, top-K on score + bias,
 * renormalised gates; routed experts as SwiGLU over tokens grouped by expert; shared experts as one fused MLP added
 * to the routed output. Legend: T tokens, D dim, E experts, K top-k, N = T*K rows, F expert hidden.
 */
import type { MoePlan } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, freeAll, linear, linearBackward } from './context.ts';

export interface MlpSaved {
  x: Tensor;
  g: Tensor;
  u: Tensor;
  a: Tensor;
}

export function mlpForward(ctx: LayerContext, prefix: string, x: Tensor): { out: Tensor; saved: MlpSaved } {
  const g = linear(ctx, x, `${prefix}.w1.weight`);
  const u = linear(ctx, x, `${prefix}.w3.weight`);
  const a = ctx.b.swiglu(g, u);
  return { out: linear(ctx, a, `${prefix}.w2.weight`), saved: { x, g, u, a } };
}

/** Returns dx; frees the saved activations except x (owned by the caller). */
export function mlpBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: MlpSaved): Tensor {
  const da = linearBackward(ctx, dOut, s.a, `${prefix}.w2.weight`);
  const { dg, du } = ctx.b.swigluBackward(da, s.g, s.u);
  const dx = linearBackward(ctx, dg, s.x, `${prefix}.w1.weight`);
  const dxu = linearBackward(ctx, du, s.x, `${prefix}.w3.weight`);
  ctx.b.addInPlace(dx, dxu);
  freeAll({ da, dg, du, dxu, g: s.g, u: s.u, a: s.a });
  return dx;
}

export interface MoeSaved {
  x: Tensor;
  /** f32 [T, E] router logits (before route_scale). */
  logits: Tensor;
  gates: Tensor;
  idx: Tensor;
  plan: MoePlan;
  xe: Tensor;
  h1: Tensor;
  h3: Tensor;
  a: Tensor;
  ye: Tensor;
  shared: MlpSaved | null;
}

/** x [T, D] -> out [T, D], plus a copy of the per-expert token counts i32 [E] (for stats and the bias update). */
export function moeForward(ctx: LayerContext, prefix: string, x: Tensor): { out: Tensor; counts: Tensor; saved: MoeSaved } {
  const { b, cfg } = ctx;
  // The router runs in fp32 whatever the activation dtype, as the reference's gate(x).float().
  const logits = b.matmul(x, ctx.p.get(`${prefix}.router.gate.weight`), { transB: true, outDtype: 'f32' });
  const { gates, idx } = b.routerTopK(logits, ctx.p.get(`${prefix}.router.bias`), cfg.n_activated_experts, cfg.route_scale);
  const plan = b.moePlan(idx, cfg.n_routed_experts);
  const counts = b.empty([cfg.n_routed_experts], 'i32');
  b.copy(plan.counts, counts);
  const xe = b.moeGather(x, plan);
  const h1 = b.groupedMatmul(xe, ctx.p.get(`${prefix}.W1`), plan.offsets);
  const h3 = b.groupedMatmul(xe, ctx.p.get(`${prefix}.W3`), plan.offsets);
  const a = b.swiglu(h1, h3);
  const ye = b.groupedMatmul(a, ctx.p.get(`${prefix}.W2`), plan.offsets);
  const out = b.moeCombine(ye, gates, plan);
  let shared: MlpSaved | null = null;
  if (cfg.n_shared_experts > 0) {
    const s = mlpForward(ctx, `${prefix}.shared`, x);
    b.addInPlace(out, s.out);
    s.out.free();
    shared = s.saved;
  }
  return { out, counts, saved: { x, logits, gates, idx, plan, xe, h1, h3, a, ye, shared } };
}

export function moeBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: MoeSaved): Tensor {
  const { b, cfg } = ctx;
  const { dye, dGates } = b.moeCombineBackward(dOut, s.ye, s.gates, s.plan);
  b.groupedMatmulWeightGrad(s.a, dye, s.plan.offsets, ctx.p.grad(`${prefix}.W2`));
  const da = b.groupedMatmul(dye, ctx.p.get(`${prefix}.W2`), s.plan.offsets, true);
  const { dg: dh1, du: dh3 } = b.swigluBackward(da, s.h1, s.h3);
  b.groupedMatmulWeightGrad(s.xe, dh1, s.plan.offsets, ctx.p.grad(`${prefix}.W1`));
  b.groupedMatmulWeightGrad(s.xe, dh3, s.plan.offsets, ctx.p.grad(`${prefix}.W3`));
  const dxe = b.groupedMatmul(dh1, ctx.p.get(`${prefix}.W1`), s.plan.offsets, true);
  const dxe3 = b.groupedMatmul(dh3, ctx.p.get(`${prefix}.W3`), s.plan.offsets, true);
  b.addInPlace(dxe, dxe3);
  const dx = b.moeGatherBackward(dxe, s.plan);
  const dLogits = b.routerTopKBackward(dGates, s.logits, s.idx, cfg.route_scale);
  const dxRouter = linearBackward(ctx, dLogits, s.x, `${prefix}.router.gate.weight`);
  b.addInPlace(dx, dxRouter);
  if (s.shared) {
    const dxShared = mlpBackward(ctx, `${prefix}.shared`, dOut, s.shared);
    b.addInPlace(dx, dxShared);
    dxShared.free();
  }
  freeAll({ dye, dGates, da, dh1, dh3, dxe, dxe3, dLogits, dxRouter });
  freeAll({ logits: s.logits, gates: s.gates, idx: s.idx, xe: s.xe, h1: s.h1, h3: s.h3, a: s.a, ye: s.ye });
  s.plan.free();
  return dx;
}
