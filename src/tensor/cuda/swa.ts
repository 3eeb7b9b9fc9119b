/**
 * Host side of sliding-window attention with sinks (kernels/swa.cu): argument checks, working buffers and the
 * launches, one warp per row. The forward is one kernel; the backward is dq (which also writes each row's softmax
 * term delta and its sink term), dk/dv by key rows, and the sinks' gradient reduced per head, all deterministic.
 */
import type { SlidingAttentionSpec } from '../backend.ts';
import { type DType, type Tensor, describe } from '../tensor.ts';
import type { KernelArg } from './kernel-args.ts';
import { asCuda, ctype } from './tensor.ts';

/** What the backend lends: launching a swa.cu kernel, and allocating. */
export interface SwaKernels {
  launch(name: string, grid: [number], block: number, args: KernelArg[]): void;
  empty(shape: readonly number[], dtype: DType): Tensor;
}

/** swa.cu's per-lane registers hold head dims up to 32 * 8. */
const MAX_HEAD_DIM = 256;
const WARPS_PER_BLOCK = 4;

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
  kern.launch(`swa_fwd<${ctype(q)}>`, warpGrid(rows * s.heads), 32 * WARPS_PER_BLOCK, [
    ptr(q),
    ptr(k),
    ptr(v),
    ptr(sinks),
    ptr(out),
    ptr(lse),
    dims(s, d),
  ]);
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
  kern.launch(`swa_bwd_dq<${T}>`, warpGrid(rows * s.heads), block, [
    ptr(dOut),
    ptr(q),
    ptr(k),
    ptr(v),
    ptr(sinks),
    ptr(out),
    ptr(lse),
    ptr(delta),
    ptr(sinkTerms),
    ptr(dq),
    dims(s, d),
  ]);
  kern.launch(`swa_bwd_dkdv<${T}>`, warpGrid(rows * s.kvHeads), block, [
    ptr(dOut),
    ptr(q),
    ptr(k),
    ptr(v),
    ptr(lse),
    ptr(delta),
    ptr(dk),
    ptr(dv),
    dims(s, d),
  ]);
  kern.launch(`swa_sink_grad<${T}>`, [s.heads], 256, [ptr(sinkTerms), ptr(dSinks), { i32: rows }, { i32: s.heads }]);
  delta.free();
  sinkTerms.free();
  return { dq, dk, dv };
}
