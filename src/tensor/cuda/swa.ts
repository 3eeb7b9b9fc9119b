/**
 * Host side of sliding-window attention with sinks (kernels/swa.cu): argument checks, working buffers and the
 * launches. bf16 at head dim 128 runs on the tensor-core flash kernels with a band (CTAs of 64 query rows or 64
 * keys); other dtypes and head dims on the one-warp-per-row kernels. The forward is one kernel; the backward is the
 * per-row terms (delta and the sink's), dq, dk/dv by key rows, and the sinks' gradient reduced per head, all
 * deterministic.
 */
import type { SlidingAttentionSpec } from '../backend.ts';
import { type DType, type Tensor, describe } from '../tensor.ts';
import type { KernelArg } from './kernel-args.ts';
import { asCuda, ctype } from './tensor.ts';

/** What the backend lends: launching a swa.cu kernel, and allocating. */
export interface SwaKernels {
  launch(name: string, grid: [number, number?], block: number, args: KernelArg[], smem?: number): void;
  empty(shape: readonly number[], dtype: DType): Tensor;
}

/** swa.cu's per-lane registers hold head dims up to 32 * 8. */
const MAX_HEAD_DIM = 256;
const WARPS_PER_BLOCK = 4;
/** The head dim swa.cu builds its flash kernels for (bf16 only). */
const FLASH_HEAD_DIM = 128;
/** Shared memory of flash.cuh's CTAs at head dims (D, D): Q then two stages of K and V (forward); the row block's two
 *  operands then two stages of 32 rows of the other two (dq and dk/dv). */
const FWD_SMEM = (64 * (FLASH_HEAD_DIM + 8) + 2 * 64 * 2 * (FLASH_HEAD_DIM + 8)) * 2;
const BWD_SMEM = (2 * 64 * (FLASH_HEAD_DIM + 8) + 2 * 32 * 2 * (FLASH_HEAD_DIM + 8)) * 2;

const flash = (q: Tensor, d: number): boolean => q.dtype === 'bf16' && d === FLASH_HEAD_DIM;
/** Flash grids: CTAs of 64 query rows (or keys) for each of `heads` heads of every sequence. */
const flashGrid = (s: SlidingAttentionSpec, heads: number): [number, number] => [
  Math.ceil(s.seqLen / 64),
  s.batch * heads,
];

const ptr = (t: Tensor): KernelArg => ({ ptr: asCuda(t).ptr });

/** swa.cu's SwaDims {batch, seq, heads, kv_heads, d, window; scale}, passed by value. */
function dims(s: SlidingAttentionSpec, d: number): KernelArg {
  const v = new DataView(new ArrayBuffer(28));
  [s.batch, s.seqLen, s.heads, s.kvHeads, d, s.window].forEach((x, i) => v.setInt32(4 * i, x, true));
  v.setFloat32(24, s.scale, true);
  return { bytes: new Uint8Array(v.buffer), align: 4 };
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
  if (!Number.isInteger(d) || d > MAX_HEAD_DIM)
    throw new Error(`slidingAttention: head dim ${d} exceeds ${MAX_HEAD_DIM}`);
  for (const t of [k, v, sinks])
    if (t.dtype !== q.dtype) throw new Error(`slidingAttention: ${describe(t)} is not ${q.dtype} like q`);
  return d;
}

const warpGrid = (warps: number): [number] => [Math.ceil(warps / WARPS_PER_BLOCK)];

export function swaForward(
  kern: SwaKernels,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  sinks: Tensor,
  s: SlidingAttentionSpec,
): { out: Tensor; lse: Tensor } {
  const d = headDim(q, k, v, sinks, s);
  const rows = s.batch * s.seqLen;
  const out = kern.empty(q.shape, q.dtype),
    lse = kern.empty([rows, s.heads], 'f32');
  const args = [ptr(q), ptr(k), ptr(v), ptr(sinks), ptr(out), ptr(lse), dims(s, d)];
  if (flash(q, d)) kern.launch(`swa_flash_fwd<${d}>`, flashGrid(s, s.heads), 128, args, FWD_SMEM);
  else kern.launch(`swa_fwd<${ctype(q)}>`, warpGrid(rows * s.heads), 32 * WARPS_PER_BLOCK, args);
  return { out, lse };
}

export function swaBackward(
  kern: SwaKernels,
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
  const d = headDim(q, k, v, sinks, s);
  if (dSinks.dtype !== sinks.dtype || dSinks.numel !== s.heads)
    throw new Error(`slidingAttentionBackward: dSinks ${describe(dSinks)} does not match sinks ${describe(sinks)}`);
  const rows = s.batch * s.seqLen;
  const T = ctype(q);
  const delta = kern.empty([rows, s.heads], 'f32'),
    sinkTerms = kern.empty([rows, s.heads], 'f32');
  const dq = kern.empty(q.shape, q.dtype),
    dk = kern.empty(k.shape, k.dtype),
    dv = kern.empty(v.shape, v.dtype);
  const block = 32 * WARPS_PER_BLOCK;
  kern.launch(`swa_row_terms<${T}>`, warpGrid(rows * s.heads), block, [
    ptr(dOut),
    ptr(out),
    ptr(sinks),
    ptr(lse),
    ptr(delta),
    ptr(sinkTerms),
    { i64: rows * s.heads },
    { i32: s.heads },
    { i32: d },
  ]);
  const inputs = [ptr(dOut), ptr(q), ptr(k), ptr(v), ptr(lse), ptr(delta)];
  if (flash(q, d)) {
    kern.launch(`swa_flash_bwd_dq<${d}>`, flashGrid(s, s.heads), 128, [...inputs, ptr(dq), dims(s, d)], BWD_SMEM);
    const dkdv = [...inputs, ptr(dk), ptr(dv), dims(s, d)];
    kern.launch(`swa_flash_bwd_dkdv<${d}>`, flashGrid(s, s.kvHeads), 128, dkdv, BWD_SMEM);
  } else {
    kern.launch(`swa_bwd_dq<${T}>`, warpGrid(rows * s.heads), block, [...inputs, ptr(dq), dims(s, d)]);
    kern.launch(`swa_bwd_dkdv<${T}>`, warpGrid(rows * s.kvHeads), block, [...inputs, ptr(dk), ptr(dv), dims(s, d)]);
  }
  kern.launch(`swa_sink_grad<${T}>`, [s.heads], 256, [ptr(sinkTerms), ptr(dSinks), { i32: rows }, { i32: s.heads }]);
  delta.free();
  sinkTerms.free();
  return { dq, dk, dv };
}
