/**
 * The grouped expert GEMMs: y[seg_e] = x[seg_e] @ W[e] over the segments of a plan's offsets, its fused SwiGLU and
 * summed forms, and the weight gradient. On sm_90a the wgmma kernels (kernels/grouped_sm90.cu, and
 * kernels/grouped_wgrad_pingpong_sm90.cu under NMOE_WGRAD=pingpong; host side in grouped-sm90.ts), elsewhere the
 * mma.sync ones (kernels/grouped.cu), and the fp32 ones (kernels/moe.cu) for anything else.
 */
import { type Tensor, describe } from '../../tensor.ts';
import { check, cu } from '../driver.ts';
import { type GroupedGemmOptions, WGMMA_MIN_MACS, groupedGemmOptionsFromEnv } from '../grouped-options.ts';
import {
  type PingpongLaunch,
  type Sm90Launch,
  type WgradCall,
  chooseWgradTile,
  describeWatchdog,
  fwdLaunch,
  wgradLaunch,
  wgradPingpongLaunch,
} from '../grouped-sm90.ts';
import { KERNEL_CONSTANTS as K } from '../kernel-constants.ts';
import { GROUPED } from '../kernels/grouped.ts';
import { GROUPED_SM90 } from '../kernels/grouped_sm90.ts';
import { GROUPED_WGRAD_PINGPONG_SM90 } from '../kernels/grouped_wgrad_pingpong_sm90.ts';
import { MOE } from '../kernels/moe.ts';
import { asCuda, ctype } from '../tensor.ts';
import type { CudaContext } from './context.ts';
import type { GroupedTiles, TileRegistry } from './moe.ts';
import { add, swiglu } from './nn.ts';

/** Dynamic shared memory of the tensor-core grouped GEMMs (grouped.cu): GROUPED_STAGES stages of a bf16 A and B
 *  tile, each TM x (TK + pad) when k is inner (layout 0) or TK x (TM + pad) when k is outer (layout 1). */
function groupedSmem(a: 0 | 1, b: 0 | 1): number {
  const tile = (l: 0 | 1) =>
    l === 0 ? K.GROUPED_TM * (K.GROUPED_TK + K.GROUPED_PAD) : K.GROUPED_TK * (K.GROUPED_TM + K.GROUPED_PAD);
  return K.GROUPED_STAGES * 2 * (tile(a) + tile(b));
}

/** (din, dout) of a grouped product x @ w[e] (w [E, din, dout]) or x @ w[e]^T (w [E, dout, din]), checked against x. */
export function groupedDims(x: Tensor, w: Tensor, transB: boolean): [number, number] {
  const [, w1, w2] = w.shape as [number, number, number];
  const [din, dout] = transB ? [w2, w1] : [w1, w2];
  if (w.shape.length !== 3 || x.shape.length !== 2 || x.shape[1] !== din)
    throw new Error(`groupedMatmul: ${describe(x)} does not match ${describe(w)} (transB=${transB})`);
  return [din, dout];
}

function checkGroupedOut(y: Tensor, x: Tensor, dout: number): void {
  if (y.shape[0] !== x.shape[0] || y.shape[1] !== dout || y.dtype !== x.dtype)
    throw new Error(`groupedMatmul: output ${describe(y)} is not [${x.shape[0]},${dout}] ${x.dtype}`);
}

export class CudaGrouped {
  /** NMOE_GROUPED_GEMM and NMOE_WGRAD, read once, at construction (grouped-options.ts). */
  readonly options: GroupedGemmOptions = groupedGemmOptionsFromEnv();
  /** The last launch of the sm_90a path (tools/gemm-check.ts prints it). */
  lastLaunch: { name: string; grid: number; block: number; smem: number } | null = null;

  constructor(
    private readonly c: CudaContext,
    private readonly registry: TileRegistry,
  ) {}

  #tilesOf(offsets: Tensor): GroupedTiles {
    const tiles = this.registry.get(offsets);
    if (!tiles) throw new Error('groupedMatmul: offsets must come from moePlan or moeSegments on this backend');
    return tiles;
  }

  /** groupedMatmul into `y` [rows, dout]: rows outside every segment keep what they held (tools/gemm-check.ts). */
  matmulInto(x: Tensor, w: Tensor, offsets: Tensor, transB: boolean, y: Tensor): void {
    const plan = this.#tilesOf(offsets);
    const [din, dout] = groupedDims(x, w, transB);
    checkGroupedOut(y, x, dout);
    if (this.#sm90Applies([x, w, y], din, dout, x.shape[0]!)) {
      this.#sm90(
        fwdLaunch({
          ...this.#fwdCommon(x, w, y, plan, offsets, dout, transB),
          first: { x: asCuda(x).ptr, w: asCuda(w).ptr, din },
        }),
      );
      return;
    }
    const args = {
      x,
      w,
      y,
      offsets,
      tiles: plan.tiles,
      num_tiles: plan.numTiles,
      din,
      dout,
      trans_b: transB ? 1 : 0,
    };
    if (this.#tensorCores(x, din, dout))
      this.c.dev.run(
        GROUPED,
        'grouped_gemm_tc',
        {
          grid: [Math.ceil(dout / K.GROUPED_TN), plan.tiles.shape[0]!],
          block: K.GROUPED_THREADS,
          smem: groupedSmem(0, transB ? 0 : 1),
        },
        args,
      );
    else
      this.c.dev.run(
        MOE,
        'grouped_gemm',
        {
          template: ctype(x),
          grid: [plan.tiles.shape[0]!, Math.ceil(dout / K.MOE_TILE), K.GROUPED_TM / K.MOE_TILE],
          block: 256,
        },
        args,
      );
  }

  /** groupedMatmulSum into `y` (see matmulInto). */
  matmulSumInto(x1: Tensor, w1: Tensor, x2: Tensor, w2: Tensor, offsets: Tensor, transB: boolean, y: Tensor): void {
    const [din1, dout] = groupedDims(x1, w1, transB),
      [din2, dout2] = groupedDims(x2, w2, transB);
    if (dout2 !== dout || x2.shape[0] !== x1.shape[0] || w2.shape[0] !== w1.shape[0])
      throw new Error(
        `groupedMatmulSum: ${describe(x1)} @ ${describe(w1)} and ${describe(x2)} @ ${describe(w2)} do not add up`,
      );
    checkGroupedOut(y, x1, dout);
    const rows = x1.shape[0]!;
    if (this.#sm90Applies([x1, w1, y], din1, dout, rows) && this.#sm90Applies([x2, w2], din2, dout, rows)) {
      const plan = this.#tilesOf(offsets);
      this.#sm90(
        fwdLaunch({
          ...this.#fwdCommon(x1, w1, y, plan, offsets, dout, transB),
          first: { x: asCuda(x1).ptr, w: asCuda(w1).ptr, din: din1 },
          second: { x: asCuda(x2).ptr, w: asCuda(w2).ptr, din: din2 },
        }),
      );
      return;
    }
    // Elsewhere: the two products, each rounded, then their rounded sum.
    this.matmulInto(x1, w1, offsets, transB, y);
    const y2 = this.c.empty([x2.shape[0]!, dout], x2.dtype);
    this.matmulInto(x2, w2, offsets, transB, y2);
    add(this.c, y, y2, y);
    y2.free();
  }

  /** groupedSwiglu into given outputs (see matmulInto). */
  swigluInto(x: Tensor, w1: Tensor, w3: Tensor, offsets: Tensor, out: { h1: Tensor; h3: Tensor; a: Tensor }): void {
    const [din, dout] = groupedDims(x, w1, false);
    if (w3.shape.join() !== w1.shape.join())
      throw new Error(`groupedSwiglu: ${describe(w1)} and ${describe(w3)} differ`);
    for (const t of [out.h1, out.h3, out.a]) checkGroupedOut(t, x, dout);
    if (this.#sm90Applies([x, w1, w3, out.h1, out.h3, out.a], din, dout, x.shape[0]!)) {
      const plan = this.#tilesOf(offsets);
      this.#sm90(
        fwdLaunch({
          ...this.#fwdCommon(x, w1, out.h1, plan, offsets, dout, false),
          first: { x: asCuda(x).ptr, w: asCuda(w1).ptr, din },
          swiglu: { w3: asCuda(w3).ptr, h3: asCuda(out.h3).ptr, a: asCuda(out.a).ptr },
        }),
      );
      return;
    }
    this.matmulInto(x, w1, offsets, false, out.h1);
    this.matmulInto(x, w3, offsets, false, out.h3);
    swiglu(this.c, out.h1, out.h3, out.a);
  }

  /** The fields of an sm_90a forward call that do not depend on its products. */
  #fwdCommon(x: Tensor, w: Tensor, y: Tensor, plan: GroupedTiles, offsets: Tensor, dout: number, transB: boolean) {
    return {
      rows: x.shape[0]!,
      experts: w.shape[0]!,
      dout,
      transB,
      y: asCuda(y).ptr,
      offsets: asCuda(offsets).ptr,
      tiles: asCuda(plan.tiles).ptr,
      numTiles: asCuda(plan.numTiles).ptr,
      maxTiles: plan.tiles.shape[0]!,
      multiprocessors: this.c.dev.info.multiprocessors,
      bn: this.options.fwdTileN,
      flags: this.options.flags,
      watchdog: asCuda(this.c.watchdog).ptr,
    };
  }

  weightGrad(x: Tensor, dy: Tensor, offsets: Tensor, dw: Tensor, accumulate: boolean): void {
    const [experts, din, dout] = dw.shape as [number, number, number];
    const rows = x.shape[0]!;
    if (this.#sm90Applies([x, dy, dw], din, dout, rows) && dy.shape[0] === rows) {
      const call: WgradCall = {
        x: asCuda(x).ptr,
        dy: asCuda(dy).ptr,
        rows,
        dw: asCuda(dw).ptr,
        accumulate,
        experts,
        din,
        dout,
        offsets: asCuda(offsets).ptr,
        multiprocessors: this.c.dev.info.multiprocessors,
        flags: this.options.flags,
        watchdog: asCuda(this.c.watchdog).ptr,
      };
      if (this.options.wgrad === 'pingpong') this.#pingpong(wgradPingpongLaunch(call));
      else {
        const { wgradTile } = this.options;
        this.#sm90(wgradLaunch(call, wgradTile === 'auto' ? chooseWgradTile(din, dout) : wgradTile));
      }
      return;
    }
    const args = { x, dy, offsets, dw, din, dout, accumulate: accumulate ? 1 : 0 };
    if (this.#tensorCores(x, din, dout))
      this.c.dev.run(
        GROUPED,
        'grouped_wgrad_tc',
        {
          grid: [Math.ceil(din / K.GROUPED_TM), Math.ceil(dout / K.GROUPED_TN), experts],
          block: K.GROUPED_THREADS,
          smem: groupedSmem(1, 1),
        },
        args,
      );
    else
      this.c.dev.run(
        MOE,
        'grouped_wgrad',
        { template: ctype(x), grid: [Math.ceil(din / K.MOE_TILE), Math.ceil(dout / K.MOE_TILE), experts], block: 256 },
        args,
      );
  }

  /** bf16 with dims in multiples of 8 (16-byte operand loads) runs on tensor cores; anything else on the fp32 kernels. */
  #tensorCores(x: Tensor, din: number, dout: number): boolean {
    return x.dtype === 'bf16' && din % 8 === 0 && dout % 8 === 0;
  }

  /** The Hopper kernels apply: sm_90a, not forced off (nor too small under 'auto'), bf16 throughout, dims in multiples
   *  of 8 (TMA strides of 16 bytes), 16-byte aligned tensors and at least one row (a tensor map has no empty dims). */
  #sm90Applies(tensors: readonly Tensor[], din: number, dout: number, rows: number): boolean {
    const { path } = this.options;
    return (
      this.c.dev.info.arch === 'sm_90a' &&
      (path === 'wgmma' || (path === 'auto' && rows * din * dout >= WGMMA_MIN_MACS)) &&
      rows > 0 &&
      din % 8 === 0 &&
      dout % 8 === 0 &&
      tensors.every((t) => t.dtype === 'bf16' && asCuda(t).ptr % 16n === 0n)
    );
  }

  #sm90<N extends 'grouped_gemm_sm90' | 'grouped_wgrad_sm90'>(l: Sm90Launch<N>): void {
    this.lastLaunch = { name: `${l.kernel}<${l.template}>`, grid: l.grid, block: K.SM90_THREADS, smem: l.smem };
    this.c.dev.run(
      GROUPED_SM90,
      l.kernel,
      { template: l.template, grid: [l.grid], block: K.SM90_THREADS, smem: l.smem },
      l.args,
    );
  }

  #pingpong(l: PingpongLaunch): void {
    const name = 'grouped_wgrad_pingpong_sm90';
    this.lastLaunch = { name, grid: l.grid, block: K.SM90_THREADS, smem: l.smem };
    this.c.dev.run(GROUPED_WGRAD_PINGPONG_SM90, name, { grid: [l.grid], block: K.SM90_THREADS, smem: l.smem }, l.args);
  }

  /** The grouped GEMM watchdog's record (see describeWatchdog) if one was set since the last call, which clears it. */
  async takeWatchdog(): Promise<string | null> {
    const { dev, watchdog } = this.c;
    dev.synchronize();
    const staging = dev.staging(16);
    check('cuMemcpyDtoHAsync', cu.memcpyDtoHAsync(staging.ptr, asCuda(watchdog).ptr, 16, dev.stream));
    dev.synchronize();
    const rec = new Int32Array(staging.view.slice(0, 16));
    if (rec[0] === 0) return null;
    check('cuMemsetD8Async', cu.memsetD8Async(asCuda(watchdog).ptr, 0, 16, dev.stream));
    return describeWatchdog(rec);
  }
}
