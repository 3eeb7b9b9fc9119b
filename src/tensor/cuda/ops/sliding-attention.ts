/**
 * Sliding-window attention with sinks (kernels/swa.cu), forward and backward: argument checks, working buffers and
 * the launches. bf16 at a head dim of SWA_FLASH_HEAD_DIMS runs on flash.cuh's tensor-core kernels with a band (CTAs
 * of FLASH_BQ query rows or FLASH_BK keys); other dtypes and head dims on the one-warp-per-row kernels. The forward
 * is one kernel; the backward is the per-row terms (delta and the sink's), dq, dk/dv by key rows, and the sinks'
 * gradient reduced per head, all deterministic.
 */
import type { SlidingAttentionSpec } from '../../backend.ts';
import { type Tensor, describe } from '../../tensor.ts';
import { KERNEL_CONSTANTS as K } from '../kernel-constants.ts';
import { STRUCTS } from '../kernel-table.ts';
import { SWA, SWA_FLASH_HEAD_DIMS } from '../kernels/swa.ts';
import { ctype } from '../tensor.ts';
import { flashBackwardSmem, flashForwardSmem } from './attention.ts';
import type { CudaContext } from './context.ts';

const WARPS_PER_BLOCK = 4;
const WARP_BLOCK = 32 * WARPS_PER_BLOCK;

const flash = (q: Tensor, d: number): boolean => q.dtype === 'bf16' && SWA_FLASH_HEAD_DIMS.includes(d);
/** Flash grids: CTAs of `rows` query rows (or keys) for each of `heads` heads of every sequence. */
const flashGrid = (s: SlidingAttentionSpec, rows: number, heads: number): [number, number] => [
  Math.ceil(s.seqLen / rows),
  s.batch * heads,
];
const warpGrid = (warps: number): [number] => [Math.ceil(warps / WARPS_PER_BLOCK)];

/** swa.cu's SwaDims {batch, seq, heads, kv_heads, d, window; scale}, passed by value. */
function swaDims(s: SlidingAttentionSpec, d: number): Uint8Array {
  const v = new DataView(new ArrayBuffer(STRUCTS.SwaDims.bytes));
  [s.batch, s.seqLen, s.heads, s.kvHeads, d, s.window].forEach((x, i) => v.setInt32(4 * i, x, true));
  v.setFloat32(24, s.scale, true);
  return new Uint8Array(v.buffer);
}

function headDim(q: Tensor, k: Tensor, v: Tensor, sinks: Tensor, s: SlidingAttentionSpec): number {
  const rows = s.batch * s.seqLen;
  const d = q.shape[1]! / s.heads;
  const fits =
    s.heads % s.kvHeads === 0 &&
    q.shape[0] === rows &&
    k.shape[0] === rows &&
    v.shape[0] === rows &&
    k.shape[1] === s.kvHeads * d &&
    v.shape[1] === s.kvHeads * d &&
    sinks.numel === s.heads;
  if (!fits)
    throw new Error(
      `slidingAttention: q [${q.shape}] k [${k.shape}] v [${v.shape}] sinks [${sinks.shape}] do not fit ` +
        `${s.batch} x ${s.seqLen} tokens, ${s.heads} heads, ${s.kvHeads} kv heads`,
    );
  const most = 32 * K.SWA_MAX_PER_LANE;
  if (!Number.isInteger(d) || d > most) throw new Error(`slidingAttention: head dim ${d} exceeds ${most}`);
  for (const t of [k, v, sinks])
    if (t.dtype !== q.dtype) throw new Error(`slidingAttention: ${describe(t)} is not ${q.dtype} like q`);
  return d;
}

export function slidingAttention(
  c: CudaContext,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  sinks: Tensor,
  s: SlidingAttentionSpec,
): { out: Tensor; lse: Tensor } {
  const d = headDim(q, k, v, sinks, s);
  const rows = s.batch * s.seqLen;
  const out = c.empty(q.shape, q.dtype),
    lse = c.empty([rows, s.heads], 'f32');
  const args = { q, k, v, sinks, out, lse, s: swaDims(s, d) };
  if (flash(q, d))
    c.dev.run(
      SWA,
      'swa_flash_fwd',
      {
        template: `${d}`,
        grid: flashGrid(s, K.FLASH_BQ, s.heads),
        block: K.FLASH_THREADS,
        smem: flashForwardSmem(d, d),
      },
      args,
    );
  else c.dev.run(SWA, 'swa_fwd', { template: ctype(q), grid: warpGrid(rows * s.heads), block: WARP_BLOCK }, args);
  return { out, lse };
}

export function slidingAttentionBackward(
  c: CudaContext,
  dOut: Tensor,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  sinks: Tensor,
  out: Tensor,
  lse: Tensor,
  s: SlidingAttentionSpec,
  dSinks: Tensor,
): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const { dev } = c;
  const d = headDim(q, k, v, sinks, s);
  if (dSinks.dtype !== sinks.dtype || dSinks.numel !== s.heads)
    throw new Error(`slidingAttentionBackward: dSinks ${describe(dSinks)} does not match sinks ${describe(sinks)}`);
  const rows = s.batch * s.seqLen;
  const T = ctype(q);
  const delta = c.empty([rows, s.heads], 'f32'),
    sinkTerms = c.empty([rows, s.heads], 'f32');
  const dq = c.empty(q.shape, q.dtype),
    dk = c.empty(k.shape, k.dtype),
    dv = c.empty(v.shape, v.dtype);
  dev.run(
    SWA,
    'swa_row_terms',
    { template: T, grid: warpGrid(rows * s.heads), block: WARP_BLOCK },
    { dout: dOut, out, sinks, lse, delta, sink_terms: sinkTerms, rows_heads: rows * s.heads, heads: s.heads, d },
  );
  const inputs = { dout: dOut, q, k, v, lse, delta, s: swaDims(s, d) };
  if (flash(q, d)) {
    const template = `${d}`,
      smem = flashBackwardSmem(d, d);
    // dq by query blocks, dk/dv by key blocks of each key/value head.
    dev.run(
      SWA,
      'swa_flash_bwd_dq',
      { template, grid: flashGrid(s, K.FLASH_BQ, s.heads), block: K.FLASH_THREADS, smem: smem.dq },
      { ...inputs, dq },
    );
    dev.run(
      SWA,
      'swa_flash_bwd_dkdv',
      { template, grid: flashGrid(s, K.FLASH_BK, s.kvHeads), block: K.FLASH_THREADS, smem: smem.dkdv },
      { ...inputs, dk, dv },
    );
  } else {
    dev.run(SWA, 'swa_bwd_dq', { template: T, grid: warpGrid(rows * s.heads), block: WARP_BLOCK }, { ...inputs, dq });
    dev.run(
      SWA,
      'swa_bwd_dkdv',
      { template: T, grid: warpGrid(rows * s.kvHeads), block: WARP_BLOCK },
      { ...inputs, dk, dv },
    );
  }
  dev.run(
    SWA,
    'swa_sink_grad',
    { template: T, grid: [s.heads], block: 256 },
    { sink_terms: sinkTerms, dsinks: dSinks, rows, heads: s.heads },
  );
  delta.free();
  sinkTerms.free();
  return { dq, dk, dv };
}
