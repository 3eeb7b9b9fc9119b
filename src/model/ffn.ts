/**
 * Feed-forward blocks, forward and backward: the dense SwiGLU MLP w2(silu(w1 x) * w3 x), and the MoE layer as the
 * reference's Router and MoE: sigmoid router with route_scale applied before the sigmoid, top-K on score + bias,
 * renormalised gates; routed experts as SwiGLU over tokens grouped by expert; shared experts as one fused MLP added to
 * the routed output. Legend: T tokens, D dim, E experts, K top-k, N = T*K rows, F expert hidden.
 */
import type { ExpertRoute } from '../tensor/expert-exchange.ts';
import type { MoePlan } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { type LayerContext, freeAll, linear, linearBackward } from './context.ts';
import { expertFormat } from './expert-format.ts';

export interface MlpSaved {
  x: Tensor;
  g: Tensor;
  u: Tensor;
  a: Tensor;
}

/** With `into`, the output is added to it (the shared experts' into the routed output) and `into` is returned. */
export function mlpForward(
  ctx: LayerContext,
  prefix: string,
  x: Tensor,
  into?: Tensor,
): { out: Tensor; saved: MlpSaved } {
  const g = linear(ctx, x, `${prefix}.w1.weight`);
  const u = linear(ctx, x, `${prefix}.w3.weight`);
  const a = ctx.b.swiglu(g, u);
  return { out: linear(ctx, a, `${prefix}.w2.weight`, into), saved: { x, g, u, a } };
}

/** Returns dx (added to `into` when given); frees the saved activations except x (owned by the caller). */
export function mlpBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: MlpSaved, into?: Tensor): Tensor {
  const da = linearBackward(ctx, dOut, s.a, `${prefix}.w2.weight`);
  const { dg, du } = ctx.b.swigluBackward(da, s.g, s.u);
  const dx = linearBackward(ctx, dg, s.x, `${prefix}.w1.weight`, into);
  linearBackward(ctx, du, s.x, `${prefix}.w3.weight`, dx);
  freeAll({ da, dg, du });
  releaseMlpSaved(s);
  return dx;
}

/** Frees a saved record except x (the caller's). */
export function releaseMlpSaved(s: MlpSaved): void {
  freeAll({ g: s.g, u: s.u, a: s.a });
}

export interface MoeSaved {
  x: Tensor;
  /** f32 [T, E] router logits (before route_scale). */
  logits: Tensor;
  gates: Tensor;
  idx: Tensor;
  plan: MoePlan;
  /** Expert parallel: where this rank's rows went and where its experts' rows came from (null on one rank). */
  route: ExpertRoute | null;
  /** The rows this rank's experts ran on (grouped by local expert), and their segment offsets. */
  xr: Tensor;
  offsets: Tensor;
  h1: Tensor;
  h3: Tensor;
  a: Tensor;
  /** Expert outputs back in this rank's grouped layout. */
  ye: Tensor;
  shared: MlpSaved | null;
}

/**
 * x [T, D] -> out [T, D], plus a copy of the per-expert token counts i32 [E] (for stats and the bias update).
 * With expert parallelism (`ctx.ep`) the grouped rows are dispatched to their experts' owners, which run their
 * local experts on the rows of every rank, and the outputs are returned before the gate-weighted combine.
 */
export function moeForward(
  ctx: LayerContext,
  prefix: string,
  x: Tensor,
): { out: Tensor; counts: Tensor; saved: MoeSaved } {
  const { b, cfg, ep } = ctx;
  // The router runs in fp32 whatever the activation dtype, as the reference's gate(x).float().
  const logits = b.matmul(x, ctx.p.get(`${prefix}.router.gate.weight`), { transB: true, outDtype: 'f32' });
  const { gates, idx } = b.routerTopK(
    logits,
    ctx.p.get(`${prefix}.router.bias`),
    cfg.n_activated_experts,
    cfg.route_scale,
  );
  const plan = b.moePlan(idx, cfg.n_routed_experts);
  const counts = b.empty([cfg.n_routed_experts], 'i32');
  b.copy(plan.counts, counts);
  const xe = b.moeGather(x, plan);
  const route = ep ? ep.route(plan) : null;
  const xr = route ? ep!.dispatch(xe, route) : xe;
  if (route) xe.free();
  const offsets = route ? route.offsets : plan.offsets;
  const format = expertFormat(cfg.dtype);
  const { h1, h3, a } = b.groupedSwiglu(xr, ctx.p.get(`${prefix}.W1`), ctx.p.get(`${prefix}.W3`), offsets, format);
  const yr = b.groupedMatmul(a, ctx.p.get(`${prefix}.W2`), offsets, false, format);
  const ye = route ? ep!.combine(yr, route) : yr;
  if (route) yr.free();
  const out = b.moeCombine(ye, gates, plan);
  let shared: MlpSaved | null = null;
  if (cfg.n_shared_experts > 0) shared = mlpForward(ctx, `${prefix}.shared`, x, out).saved;
  return { out, counts, saved: { x, logits, gates, idx, plan, route, xr, offsets, h1, h3, a, ye, shared } };
}

/** The reverse of moeForward; with expert parallelism, output gradients are dispatched and input gradients returned. */
export function moeBackward(ctx: LayerContext, prefix: string, dOut: Tensor, s: MoeSaved): Tensor {
  const { b, cfg, ep } = ctx;
  const format = expertFormat(cfg.dtype);
  const { dye, dGates } = b.moeCombineBackward(dOut, s.ye, s.gates, s.plan);
  const dyr = s.route ? ep!.dispatch(dye, s.route) : dye;
  const weightGrad = (x: Tensor, dy: Tensor, weight: string) => {
    const { grad, write } = ctx.p.gradTarget(`${prefix}.${weight}`);
    b.groupedMatmulWeightGrad(x, dy, s.offsets, grad, !write, format);
  };
  weightGrad(s.a, dyr, 'W2');
  const da = b.groupedMatmul(dyr, ctx.p.get(`${prefix}.W2`), s.offsets, true, format);
  const { dg: dh1, du: dh3 } = b.swigluBackward(da, s.h1, s.h3);
  weightGrad(s.xr, dh1, 'W1');
  weightGrad(s.xr, dh3, 'W3');
  const dxr = b.groupedMatmulSum(
    dh1,
    ctx.p.get(`${prefix}.W1`),
    dh3,
    ctx.p.get(`${prefix}.W3`),
    s.offsets,
    true,
    format,
  );
  const dxe = s.route ? ep!.combine(dxr, s.route) : dxr;
  const dx = b.moeGatherBackward(dxe, s.plan);
  const dLogits = b.routerTopKBackward(dGates, s.logits, s.idx, cfg.route_scale);
  linearBackward(ctx, dLogits, s.x, `${prefix}.router.gate.weight`, dx);
  if (s.shared) mlpBackward(ctx, `${prefix}.shared`, dOut, s.shared, dx);
  if (s.route) freeAll({ dyr, dxr });
  freeAll({ dye, dGates, da, dh1, dh3, dxe, dLogits });
  releaseMoeSaved(s);
  return dx;
}

/** Frees a saved record except x (the caller's) and the shared experts' (mlpBackward or releaseMlpSaved frees those). */
export function releaseMoeSaved(s: MoeSaved): void {
  freeAll({ logits: s.logits, gates: s.gates, idx: s.idx, xr: s.xr, h1: s.h1, h3: s.h3, a: s.a, ye: s.ye });
  s.route?.free();
  s.plan.free();
}
