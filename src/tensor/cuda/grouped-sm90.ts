/**
 * Host side of the Hopper grouped GEMMs (kernels/grouped_sm90.cu, and the ping-pong weight gradient,
 * kernels/grouped_wgrad_pingpong_sm90.cu): which kernel and tile a call gets, the shared memory it needs (the files'
 * FwdPlan / WgradPlan / PingpongPlan, whose numbers they static_assert), the TMA maps and the arguments.
 * Persistent grids of at most one CTA per SM; the kernels take their work from the device-built tile list (forward,
 * input gradient) or the segment offsets (weight gradient), so nothing here depends on the routing.
 */
import { KERNEL_CONSTANTS } from './kernel-constants.ts';
import type { KernelArgs } from './kernel-table.ts';
import type { GROUPED_SM90 } from './kernels/grouped_sm90.ts';
import type { GROUPED_WGRAD_PINGPONG_SM90 } from './kernels/grouped_wgrad_pingpong_sm90.ts';
import { encodeTensorMap } from './tensor-map.ts';

const { SM90_SMEM_LIMIT: SMEM_LIMIT, SM90_BK: BK } = KERNEL_CONSTANTS;
/** Rows per entry of the device-built tile list that the forward kernels take (moe.cu `moe_offsets`). */
const ROW_TILE = KERNEL_CONSTANTS.GROUPED_TM;

export type FwdTileN = 128 | 256;
export type WgradTile = '128x256' | '256x128';

/** Debugging aid for tools/gemm-check.ts: the kernels swap the two strides of their M/N-major operand descriptors. */
export const FLAG_SWAP_MN_STRIDES = KERNEL_CONSTANTS.SM90_FLAG_SWAP_MN_STRIDES;

function stages(stageBytes: number, cBytes: number): number {
  return Math.min(8, Math.floor((SMEM_LIMIT - 1024 - cBytes - 256) / stageBytes));
}

/** Dynamic shared memory of grouped_gemm_sm90<bn, *, 0> (FwdPlan): alignment slack, stages of a 128-row A and a
 *  bn-wide B tile, 32 KB of epilogue staging, the mbarriers. The fused SwiGLU (two 128-wide B tiles) is fwdSmem(256). */
export function fwdSmem(bn: FwdTileN): number {
  const stage = (128 + bn) * BK * 2,
    c = 32768,
    n = stages(stage, c);
  return 1024 + n * stage + c + 16 * n;
}

/** Dynamic shared memory of grouped_wgrad_sm90<bm, bn> (WgradPlan): stages, the dw tile, the mbarriers. */
export function wgradSmem(tile: WgradTile): number {
  const [bm, bn] = tileDims(tile),
    stage = (bm + bn) * BK * 2,
    c = bm * bn * 2,
    n = stages(stage, c);
  return 1024 + n * stage + c + 16 * n + 16;
}

/** The ping-pong weight gradient's tile (PingpongPlan::TILE): each math warpgroup owns 128 x 128 of dw. */
const PINGPONG_TILE = 128;

/** Dynamic shared memory of grouped_wgrad_pingpong_sm90 (PingpongPlan): stages of x's and dy's 128 columns, one dw
 *  tile per math warpgroup, the mbarriers (the ring's, then c_full, c_empty and turn, two each). */
export function pingpongSmem(): number {
  const stage = 2 * PINGPONG_TILE * BK * 2,
    c = 2 * PINGPONG_TILE * PINGPONG_TILE * 2,
    n = stages(stage, c);
  return 1024 + n * stage + c + 16 * n + 48;
}

// The device files static_assert the same numbers.
if (
  fwdSmem(256) !== 230464 ||
  fwdSmem(128) !== 230496 ||
  wgradSmem('128x256') !== 214080 ||
  wgradSmem('256x128') !== 214080 ||
  pingpongSmem() !== 230528
) {
  throw new Error(
    'grouped-sm90.ts: shared-memory plans disagree with grouped_sm90.cu / grouped_wgrad_pingpong_sm90.cu',
  );
}

function tileDims(tile: WgradTile): [number, number] {
  return tile === '128x256' ? [128, 256] : [256, 128];
}

/** The weight-gradient tile with the fewest padded outputs: 128 x 256 when dout tiles by 256, 256 x 128 when din does. */
export function chooseWgradTile(din: number, dout: number): WgradTile {
  const padded = ([bm, bn]: [number, number]) => Math.ceil(din / bm) * bm * Math.ceil(dout / bn) * bn;
  return padded([256, 128]) < padded([128, 256]) ? '256x128' : '128x256';
}

type Sm90Kernels = (typeof GROUPED_SM90)['kernels'];

/** A launch of one of grouped_sm90.cu's kernels (SM90_THREADS threads a block). */
export interface Sm90Launch<N extends keyof Sm90Kernels> {
  kernel: N;
  template: string;
  grid: number;
  smem: number;
  args: KernelArgs<Sm90Kernels[N]>;
}

/** One product of a forward call: x [rows, din] bf16 and W [E, din, dout] (transB false) or [E, dout, din]. */
export interface Product {
  x: bigint;
  w: bigint;
  din: number;
}

export interface FwdCall {
  rows: number;
  experts: number;
  dout: number;
  transB: boolean;
  /** y [rows, dout] bf16 = first @ W (+ second @ W2). */
  first: Product;
  second?: Product;
  /** The fused SwiGLU (transB false): y = h1 = x @ W, h3 = x @ w3, a = silu(h1) * h3 (rounded h1 and h3). */
  swiglu?: { w3: bigint; h3: bigint; a: bigint };
  y: bigint;
  offsets: bigint;
  tiles: bigint;
  numTiles: bigint;
  /** Capacity of the tile list (entries). */
  maxTiles: number;
  multiprocessors: number;
  bn: FwdTileN;
  flags: number;
  watchdog: bigint;
}

/** y[seg_e] = x[seg_e] @ W[e] (or W[e]^T), with a second product or the SwiGLU: grouped_gemm_sm90<bn, transB, swiglu>. */
export function fwdLaunch(c: FwdCall): Sm90Launch<'grouped_gemm_sm90'> {
  const swiglu = c.swiglu !== undefined;
  if (swiglu && (c.transB || c.second)) throw new Error('grouped SwiGLU: N-major weights and one product only');
  const bn: FwdTileN = swiglu ? 128 : c.bn;
  const xMap = (p: Product) =>
    encodeTensorMap('grouped GEMM x', {
      address: p.x,
      dims: [p.din, c.rows],
      strides: [p.din * 2],
      box: [BK, ROW_TILE],
    });
  // W as [E][rows][cols]: a box never reaches into the next expert's matrix (k or n past the edge reads zeros).
  const wMap = (w: bigint, din: number) =>
    c.transB
      ? encodeTensorMap('grouped GEMM W (transB)', {
          address: w,
          dims: [din, c.dout, c.experts],
          strides: [din * 2, din * c.dout * 2],
          box: [BK, bn, 1],
        })
      : encodeTensorMap('grouped GEMM W', {
          address: w,
          dims: [c.dout, din, c.experts],
          strides: [c.dout * 2, din * c.dout * 2],
          box: [64, BK, 1],
        });
  const mx = xMap(c.first),
    mw = wMap(c.first.w, c.first.din);
  // Unused second maps are copies of the first (the kernel takes four either way).
  const mx2 = c.second ? xMap(c.second) : mx;
  const mw2 = c.second ? wMap(c.second.w, c.second.din) : swiglu ? wMap(c.swiglu!.w3, c.first.din) : mw;
  const colTiles = Math.ceil(c.dout / bn);
  return {
    kernel: 'grouped_gemm_sm90',
    template: `${bn}, ${c.transB ? 1 : 0}, ${swiglu ? 1 : 0}`,
    grid: Math.max(1, Math.min(c.multiprocessors, c.maxTiles * colTiles)),
    smem: swiglu ? fwdSmem(256) : fwdSmem(bn),
    args: {
      map_x: mx,
      map_w: mw,
      map_x2: mx2,
      map_w2: mw2,
      y: c.y,
      y2: c.swiglu?.h3 ?? 0n,
      y3: c.swiglu?.a ?? 0n,
      offsets: c.offsets,
      tiles: c.tiles,
      num_tiles: c.numTiles,
      din: c.first.din,
      din2: c.second?.din ?? 0,
      dout: c.dout,
      flags: c.flags,
      wd: c.watchdog,
    },
  };
}

export interface WgradCall {
  /** x [rows, din] and dy [rows, dout], bf16. */
  x: bigint;
  dy: bigint;
  rows: number;
  /** dw [E, din, dout] bf16, accumulated into, or written when `accumulate` is false. */
  dw: bigint;
  accumulate: boolean;
  experts: number;
  din: number;
  dout: number;
  offsets: bigint;
  multiprocessors: number;
  flags: number;
  watchdog: bigint;
}

type PingpongKernels = (typeof GROUPED_WGRAD_PINGPONG_SM90)['kernels'];

/** A launch of grouped_wgrad_pingpong_sm90 (SM90_THREADS threads a block). */
export interface PingpongLaunch {
  grid: number;
  smem: number;
  args: KernelArgs<PingpongKernels['grouped_wgrad_pingpong_sm90']>;
}

/** The weight-gradient kernels' arguments, both kernels taking the same: dw's map has boxes of 64 x `bm`. */
function wgradArgs(c: WgradCall, bm: number): KernelArgs<Sm90Kernels['grouped_wgrad_sm90']> {
  return {
    map_x: encodeTensorMap('grouped weight grad x', {
      address: c.x,
      dims: [c.din, c.rows],
      strides: [c.din * 2],
      box: [64, BK],
    }),
    map_dy: encodeTensorMap('grouped weight grad dy', {
      address: c.dy,
      dims: [c.dout, c.rows],
      strides: [c.dout * 2],
      box: [64, BK],
    }),
    map_dw: encodeTensorMap('grouped weight grad dw', {
      address: c.dw,
      dims: [c.dout, c.din, c.experts],
      strides: [c.dout * 2, c.din * c.dout * 2],
      box: [64, bm, 1],
    }),
    offsets: c.offsets,
    experts: c.experts,
    din: c.din,
    dout: c.dout,
    accumulate: c.accumulate ? 1 : 0,
    flags: c.flags,
    wd: c.watchdog,
  };
}

/** Persistent grid: one CTA per SM at most, none idle for want of work items. */
function wgradGrid(c: WgradCall, bm: number, bn: number): number {
  return Math.max(1, Math.min(c.multiprocessors, c.experts * Math.ceil(c.din / bm) * Math.ceil(c.dout / bn)));
}

/** dw[e] += x[seg_e]^T @ dy[seg_e] (or = it) with both math warpgroups on one tile: grouped_wgrad_sm90<bm, bn>. */
export function wgradLaunch(c: WgradCall, tile: WgradTile): Sm90Launch<'grouped_wgrad_sm90'> {
  const [bm, bn] = tileDims(tile);
  return {
    kernel: 'grouped_wgrad_sm90',
    template: `${bm}, ${bn}`,
    grid: wgradGrid(c, bm, bn),
    smem: wgradSmem(tile),
    args: wgradArgs(c, bm),
  };
}

/** The same product on the ping-pong schedule, a 128 x 128 tile per math warpgroup: grouped_wgrad_pingpong_sm90. A
 *  CTA with a single work item leaves one warpgroup idle, but more CTAs beat fewer where items are few. */
export function wgradPingpongLaunch(c: WgradCall): PingpongLaunch {
  return {
    grid: wgradGrid(c, PINGPONG_TILE, PINGPONG_TILE),
    smem: pingpongSmem(),
    args: wgradArgs(c, PINGPONG_TILE),
  };
}

/** What a pipeline watchdog record {code, block, item, detail} (kernels/sm90.cuh `wait_bar`) says. */
export function describeWatchdog(rec: ArrayLike<number>): string {
  const [code, block, item, detail] = [rec[0]!, rec[1]!, rec[2]!, rec[3]!];
  const what: Record<number, string> = {
    1: 'the math warps waited for a stage of operands (full barrier)',
    2: 'the producer waited for a free stage (empty barrier)',
    3: 'the math warps waited for the prefetched dw tile',
    4: 'the producer waited for the dw tile buffer',
    5: 'a math warpgroup waited for its turn (the ping-pong weight gradient)',
  };
  if (code === 9)
    return `a grouped GEMM kernel (sm_90a) was launched with ${item} bytes of dynamic shared memory, it needs ${detail}`;
  const where =
    code === 3 || code === 4
      ? `dw tile ${detail}`
      : code === 5
        ? `turn ${detail}`
        : `k block ${detail >> 8}, stage ${(detail >> 1) & 127}, parity ${detail & 1}`;
  return `a grouped GEMM kernel (sm_90a) stalled for over 1 s: ${what[code] ?? `code ${code}`} in block ${block}, work item ${item}, ${where}; that kernel's results are wrong (NMOE_GROUPED_GEMM=mma selects the mma.sync kernels)`;
}
