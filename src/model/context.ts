/**
 * What every layer's forward and backward needs: the backend, the parameters, the config, the batch geometry and
 * the RoPE tables; plus the Linear helpers (weights are [out, in] as in PyTorch, so y = x W^T).
 */
import type { ExpertExchange } from '../tensor/expert-exchange.ts';
import type { Backend, RopeSpec } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import type { ParamStore } from './params.ts';
import type { ModelConfig } from './spec.ts';

export interface LayerContext {
  b: Backend;
  p: ParamStore;
  cfg: ModelConfig;
  batch: number;
  seqLen: number;
  /** f32 [positions, qk_rope_head_dim / 2] */
  ropeCos: Tensor;
  ropeSin: Tensor;
  /** Expert parallelism (RDEP) when the experts are split over ranks; null on one rank. */
  ep: ExpertExchange | null;
}

/** y [T, out] = x [T, in] @ W^T, W [out, in]; with `into`, y is added to it in the GEMM (one rounding, no extra pass). */
export function linear(ctx: LayerContext, x: Tensor, weight: string, into?: Tensor): Tensor {
  return ctx.b.matmul(x, ctx.p.get(weight), { transB: true, ...(into ? { out: into, accumulate: true } : {}) });
}

/**
 * Accumulates dW += dy^T x and returns dx = dy W (in x's dtype: fp32 router gradients meet bf16 activations); with
 * `into`, dx is added to it in the GEMM and `into` is returned.
 */
export function linearBackward(ctx: LayerContext, dy: Tensor, x: Tensor, weight: string, into?: Tensor): Tensor {
  ctx.b.matmul(dy, x, { transA: true, out: ctx.p.grad(weight), accumulate: true });
  return ctx.b.matmul(dy, ctx.p.get(weight), into ? { out: into, accumulate: true } : { outDtype: x.dtype });
}

/**
 * Adds a Linear's bias to y [T, out] in place: y += ones[T, 1] @ bias[1, out], a rank-1 GEMM, so a bias needs no
 * op of its own.
 */
export function addBias(ctx: LayerContext, y: Tensor, bias: string): void {
  const ones = onesColumn(ctx, y);
  const b = ctx.p.get(bias);
  ctx.b.matmul(ones, ctx.b.view(b, [1, b.numel]), { out: y, accumulate: true });
  ones.free();
}

/** dBias += sum over rows of dy [T, out], as ones[T, 1]^T @ dy. */
export function biasBackward(ctx: LayerContext, dy: Tensor, bias: string): void {
  const ones = onesColumn(ctx, dy);
  const g = ctx.p.grad(bias);
  ctx.b.matmul(ones, dy, { transA: true, out: ctx.b.view(g, [1, g.numel]), accumulate: true });
  ones.free();
}

function onesColumn(ctx: LayerContext, like: Tensor): Tensor {
  const ones = ctx.b.empty([like.shape[0]!, 1], like.dtype);
  ctx.b.fill(ones, 1);
  return ones;
}

/**
 * Rotates (or, `inverse`, un-rotates) in place the rope part of each of `heads` segments of width `stride` in the
 * rows of x: columns [offset, offset + qk_rope_head_dim) of each segment.
 */
export function rope(
  ctx: LayerContext,
  x: Tensor,
  heads: number,
  stride: number,
  offset: number,
  inverse: boolean,
): void {
  const spec: RopeSpec = {
    heads,
    headStride: stride,
    base: 0,
    offset,
    dim: ctx.cfg.qk_rope_head_dim,
    seqLen: ctx.seqLen,
  };
  ctx.b.ropeInPlace(x, ctx.ropeCos, ctx.ropeSin, spec, inverse);
}

/** Frees every tensor in a saved-activation record. */
export function freeAll(saved: Record<string, Tensor | null | undefined>): void {
  for (const t of Object.values(saved)) t?.free();
}
