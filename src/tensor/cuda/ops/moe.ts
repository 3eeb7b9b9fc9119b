/**
 * The router and expert grouping (kernels/moe.cu): top-k routing, the deterministic grouped layout (counts,
 * offsets, the permutation, the grouped GEMMs' tile list), gather and combine, and the router-bias update.
 */
import type { MoePlan } from '../../backend.ts';
import { type Tensor, describe } from '../../tensor.ts';
import { KERNEL_CONSTANTS as K } from '../kernel-constants.ts';
import { MOE } from '../kernels/moe.ts';
import { ctype } from '../tensor.ts';
import { type CudaContext, gridFor } from './context.ts';

/** i32 [maxTiles, 2] (expert, first row) tiles for the grouped GEMMs, and their count i32 [1]. */
export interface GroupedTiles {
  tiles: Tensor;
  numTiles: Tensor;
}

/** The grouped GEMMs take segment offsets (a plan's, or moeSegments'); their tile list is found through them. */
export type TileRegistry = WeakMap<Tensor, GroupedTiles>;

class CudaMoePlan implements MoePlan, GroupedTiles {
  constructor(
    readonly numTokens: number,
    readonly topK: number,
    readonly numExperts: number,
    readonly counts: Tensor,
    readonly offsets: Tensor,
    readonly slotOfRow: Tensor,
    readonly rowOfSlot: Tensor,
    readonly tiles: Tensor,
    readonly numTiles: Tensor,
  ) {}

  free(): void {
    for (const t of [this.counts, this.offsets, this.slotOfRow, this.rowOfSlot, this.tiles, this.numTiles]) t.free();
  }
}

export function routerTopK(
  c: CudaContext,
  logits: Tensor,
  bias: Tensor,
  topK: number,
  routeScale: number,
): { gates: Tensor; idx: Tensor } {
  const [tokens, experts] = logits.shape as [number, number];
  if (logits.dtype !== 'f32') throw new Error(`routerTopK: logits must be f32, got ${describe(logits)}`);
  const gates = c.empty([tokens, topK], 'f32'),
    idx = c.empty([tokens, topK], 'i32');
  c.dev.run(
    MOE,
    'router_topk',
    { grid: [Math.ceil(tokens / 128)], block: 128 },
    { logits, bias, gates, idx, tokens, experts, top_k: topK, route_scale: routeScale },
  );
  return { gates, idx };
}

export function routerTopKBackward(
  c: CudaContext,
  dGates: Tensor,
  logits: Tensor,
  idx: Tensor,
  routeScale: number,
): Tensor {
  const [tokens, experts] = logits.shape as [number, number];
  const dLogits = c.empty([tokens, experts], 'f32');
  c.dev.run(
    MOE,
    'router_topk_bwd',
    { grid: [Math.ceil(tokens / 128)], block: 128 },
    {
      dgates: dGates,
      logits,
      idx,
      dlogits: dLogits,
      tokens,
      experts,
      top_k: idx.shape[1]!,
      route_scale: routeScale,
    },
  );
  return dLogits;
}

export function moePlan(c: CudaContext, registry: TileRegistry, idx: Tensor, numExperts: number): MoePlan {
  const [tokens, topK] = idx.shape as [number, number];
  const slots = tokens * topK;
  const counts = c.zeros([numExperts], 'i32');
  const slotOfRow = c.empty([slots], 'i32'),
    rowOfSlot = c.empty([slots], 'i32');
  c.dev.run(
    MOE,
    'moe_count',
    { grid: [gridFor(slots)], block: 256 },
    { idx, slots, experts: numExperts, counts, bad: c.bad },
  );
  const { offsets, tiles, numTiles } = segments(c, counts, slots);
  c.dev.run(
    MOE,
    'moe_place',
    { grid: [numExperts], block: 256 },
    { idx, slots, offsets, slot_of_row: slotOfRow, row_of_slot: rowOfSlot },
  );
  const plan = new CudaMoePlan(tokens, topK, numExperts, counts, offsets, slotOfRow, rowOfSlot, tiles, numTiles);
  registry.set(offsets, plan);
  return plan;
}

export function moeSegments(
  c: CudaContext,
  registry: TileRegistry,
  counts: Tensor,
  maxRows: number,
): { offsets: Tensor; free(): void } {
  const { offsets, tiles, numTiles } = segments(c, counts, maxRows);
  registry.set(offsets, { tiles, numTiles });
  return { offsets, free: () => [offsets, tiles, numTiles].forEach((t) => t.free()) };
}

/** Segment offsets [E + 1] from per-expert row counts, and the grouped GEMMs' tile list for at most `maxRows` rows
 *  (GROUPED_TM rows a tile: the tensor-core tile; the fp32 kernels split it, the sm_90a kernels' row tile). */
function segments(c: CudaContext, counts: Tensor, maxRows: number): { offsets: Tensor } & GroupedTiles {
  const experts = counts.numel;
  const offsets = c.empty([experts + 1], 'i32');
  const tiles = c.empty([Math.ceil(maxRows / K.GROUPED_TM) + experts, 2], 'i32'),
    numTiles = c.empty([1], 'i32');
  c.dev.run(
    MOE,
    'moe_offsets',
    { grid: [1], block: 32 },
    { counts, experts, offsets, tile_rows: K.GROUPED_TM, tiles, num_tiles: numTiles },
  );
  return { offsets, tiles, numTiles };
}

export function moeGather(c: CudaContext, x: Tensor, plan: MoePlan): Tensor {
  const dim = x.shape[1]!,
    rows = plan.numTokens * plan.topK;
  const xe = c.empty([rows, dim], x.dtype);
  c.dev.run(
    MOE,
    'moe_gather',
    { template: ctype(x), grid: [rows], block: 128 },
    { x, slot_of_row: plan.slotOfRow, xe, rows, dim, top_k: plan.topK },
  );
  return xe;
}

export function moeGatherBackward(c: CudaContext, dxe: Tensor, plan: MoePlan): Tensor {
  const dim = dxe.shape[1]!;
  const dx = c.empty([plan.numTokens, dim], dxe.dtype);
  c.dev.run(
    MOE,
    'moe_gather_bwd',
    { template: ctype(dxe), grid: [plan.numTokens], block: 128 },
    { dxe, row_of_slot: plan.rowOfSlot, dx, dim, top_k: plan.topK },
  );
  return dx;
}

export function moeCombine(c: CudaContext, ye: Tensor, gates: Tensor, plan: MoePlan): Tensor {
  const dim = ye.shape[1]!;
  const out = c.empty([plan.numTokens, dim], ye.dtype);
  c.dev.run(
    MOE,
    'moe_combine',
    { template: ctype(ye), grid: [plan.numTokens], block: 128 },
    { ye, gates, row_of_slot: plan.rowOfSlot, out, dim, top_k: plan.topK },
  );
  return out;
}

export function moeCombineBackward(
  c: CudaContext,
  dOut: Tensor,
  ye: Tensor,
  gates: Tensor,
  plan: MoePlan,
): { dye: Tensor; dGates: Tensor } {
  const dim = ye.shape[1]!;
  const dye = c.empty(ye.shape, ye.dtype),
    dGates = c.empty([plan.numTokens, plan.topK], 'f32');
  c.dev.run(
    MOE,
    'moe_combine_bwd',
    { template: ctype(ye), grid: [plan.numTokens * plan.topK], block: 128 },
    { dout: dOut, ye, gates, row_of_slot: plan.rowOfSlot, dye, dgates: dGates, dim, top_k: plan.topK },
  );
  return { dye, dGates };
}

export function routerBiasUpdate(c: CudaContext, bias: Tensor, counts: Tensor, rate: number, gradNorm: Tensor): void {
  c.dev.run(
    MOE,
    'router_bias_update',
    { grid: [1], block: 256 },
    { bias, counts, experts: bias.numel, rate, grad_norm: gradNorm },
  );
}
