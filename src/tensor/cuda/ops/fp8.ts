/**
 * Host side of the fp8 expert kernels (kernels/fp8.cu, kernels/grouped_fp8_sm90.cu): the three quantisers, which
 * write src/tensor/fp8.ts's codes and scales bit for bit, and the grouped GEMM on their output (the forward, and the
 * input gradient's product through W^T). Nothing in training calls these (expert-format.ts refuses dtype = "fp8"
 * on CUDA); tools/fp8-check.ts checks them against the CPU emulation and times the GEMM beside the bf16 one.
 *
 * Codes live in i32 tensors, four E4M3 bytes a word in memory order (the Tensor dtypes have no byte type);
 * fp8-plan.ts's fp8Codes unpacks a download.
 */
import { FP8_BLOCK } from '../../fp8.ts';
import type { Tensor } from '../../tensor.ts';
import { fp8FwdSmem, maxSegmentChunks } from '../fp8-plan.ts';
import { KERNEL_CONSTANTS as K } from '../kernel-constants.ts';
import { FP8 } from '../kernels/fp8.ts';
import { GROUPED_FP8_SM90 } from '../kernels/grouped_fp8_sm90.ts';
import { encodeTensorMap } from '../tensor-map.ts';
import { asCuda, ctype } from '../tensor.ts';
import type { CudaContext } from './context.ts';
import type { GroupedTiles } from './moe.ts';

/** E4M3 codes of a [rows, cols] matrix (row-major, packed into i32 words) and their scales (fp8.ts's Fp8Tiling). */
export interface Fp8Device {
  codes: Tensor;
  scales: Tensor;
}

/** An expert weight [E, rows, cols] quantised in 128 x 128 blocks, with the transposed codes [E, cols, rows]. */
export interface Fp8Weights extends Fp8Device {
  transposed: Tensor;
}

const up = (n: number) => Math.ceil(n / FP8_BLOCK);

/** An i32 tensor of at least `n` bytes, for codes. */
function codeWords(c: CudaContext, n: number): Tensor {
  return c.empty([Math.max(1, Math.ceil(n / 4))], 'i32');
}

function matrix(x: Tensor, what: string): [number, number] {
  if (x.shape.length !== 2 || x.dtype === 'i32') throw new Error(`${what}: expected a float [rows, cols] matrix`);
  return x.shape as [number, number];
}

/** 1 x 128 tiles along each row: scales [rows, ceil(cols / 128)]. */
export function quantizeRows(c: CudaContext, x: Tensor): Fp8Device {
  const [rows, cols] = matrix(x, 'fp8 row tiles');
  const codes = codeWords(c, rows * cols),
    scales = c.empty([rows, up(cols)], 'f32');
  const block = 256,
    tilesPerBlock = block / 32;
  c.dev.run(
    FP8,
    'fp8_quant_rows',
    { template: ctype(x), grid: [Math.max(1, Math.ceil((rows * up(cols)) / tilesPerBlock))], block },
    { x, codes, scales, rows, cols },
  );
  return { codes, scales };
}

/** 128 x 128 blocks of each expert's matrix: scales [E, ceil(rows / 128), ceil(cols / 128)], and codes_t. */
export function quantizeExperts(c: CudaContext, w: Tensor): Fp8Weights {
  if (w.shape.length !== 3 || w.dtype === 'i32') throw new Error('fp8 weight blocks: expected a float [E, rows, cols]');
  const [experts, rows, cols] = w.shape as [number, number, number];
  const codes = codeWords(c, w.numel),
    transposed = codeWords(c, w.numel),
    scales = c.empty([experts, up(rows), up(cols)], 'f32');
  c.dev.run(
    FP8,
    'fp8_quant_blocks',
    { template: ctype(w), grid: [up(cols), up(rows), experts], block: 256 },
    { w, codes, codes_t: transposed, scales, rows, cols },
  );
  return { codes, scales, transposed };
}

/**
 * 128 x 1 tiles down each column within each segment of `offsets` (E + 1 row offsets): scales [chunks, cols] for the
 * most chunks any routing of x's rows can make; only the routing's own chunks are written.
 */
export function quantizeSegments(c: CudaContext, x: Tensor, offsets: Tensor): Fp8Device {
  const [rows, cols] = matrix(x, 'fp8 column tiles');
  const experts = offsets.numel - 1,
    chunks = maxSegmentChunks(rows, experts);
  const codes = codeWords(c, rows * cols),
    scales = c.zeros([chunks, cols], 'f32');
  c.dev.run(
    FP8,
    'fp8_quant_columns',
    { template: ctype(x), grid: [up(cols), chunks], block: FP8_BLOCK },
    { x, offsets, codes, scales, experts, cols },
  );
  return { codes, scales };
}

/**
 * y[seg_e] = x[seg_e] @ W[e] (or W[e]^T with transB) in fp8: x's row tiles (quantizeRows of x [rows, din]) times W's
 * blocks (quantizeExperts of W [E, din, dout], whose transposed codes are the K-major B operand; with transB of
 * W [E, dout, din], whose codes are), into y [rows, dout] bf16. `plan` is the tile list of `offsets` (moeSegments or
 * a MoE plan). din must be a multiple of 16 (TMA's stride rule), dout of 8 (the 16-byte stores).
 */
export function fp8GroupedMatmul(
  c: CudaContext,
  x: Fp8Device,
  w: Fp8Weights,
  shape: { rows: number; din: number; dout: number; experts: number },
  offsets: Tensor,
  plan: GroupedTiles,
  y: Tensor,
  transB = false,
): void {
  const { rows, din, dout, experts } = shape;
  if (y.dtype !== 'bf16' || y.shape[0] !== rows || y.shape[1] !== dout)
    throw new Error(`fp8 grouped GEMM: y must be [${rows}, ${dout}] bf16`);
  const mapX = encodeTensorMap('fp8 grouped GEMM x', {
    element: 'e4m3',
    address: asCuda(x.codes).ptr,
    dims: [din, rows],
    strides: [din],
    box: [FP8_BLOCK, K.GROUPED_TM],
  });
  // Either way B's codes are [E][dout][din], K-major.
  const mapW = encodeTensorMap(transB ? 'fp8 grouped GEMM W' : 'fp8 grouped GEMM W^T', {
    element: 'e4m3',
    address: asCuda(transB ? w.codes : w.transposed).ptr,
    dims: [din, dout, experts],
    strides: [din, din * dout],
    box: [FP8_BLOCK, 128, 1],
  });
  const items = plan.tiles.shape[0]! * Math.ceil(dout / 128);
  c.dev.run(
    GROUPED_FP8_SM90,
    'grouped_fp8_gemm_sm90',
    {
      template: transB ? '1' : '0',
      grid: [Math.max(1, Math.min(c.dev.info.multiprocessors, items))],
      block: K.SM90_THREADS,
      smem: fp8FwdSmem(),
    },
    {
      map_x: mapX,
      map_w: mapW,
      sa: x.scales,
      sb: w.scales,
      y,
      offsets,
      tiles: plan.tiles,
      num_tiles: plan.numTiles,
      din,
      dout,
      wd: c.watchdog,
    },
  );
}
