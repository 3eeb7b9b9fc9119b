/**
 * Elementwise and row ops (kernels/elementwise.cu): fills, conversion, add, embedding, RMSNorm, SwiGLU and column
 * copies.
 */
import type { NormalInit } from '../../backend.ts';
import { type Tensor, describe } from '../../tensor.ts';
import { check, cu } from '../driver.ts';
import { ELEMENTWISE } from '../kernels/elementwise.ts';
import { asCuda, ctype } from '../tensor.ts';
import { type CudaContext, gridFor } from './context.ts';

export function fillNormal(c: CudaContext, t: Tensor, init: NormalInit): void {
  const offset = init.offset ?? 0;
  if (offset % 2 !== 0) throw new Error(`fillNormal: offset ${offset} must be even`);
  c.dev.run(
    ELEMENTWISE,
    'fill_normal',
    { template: ctype(t), grid: [gridFor(t.numel / 2)], block: 256 },
    {
      out: t,
      n: t.numel,
      std: init.std,
      seed: init.seed,
      stream: init.stream,
      offset,
      clamp: init.clamp ?? 3.4e38,
    },
  );
}

export function fill(c: CudaContext, t: Tensor, value: number): void {
  if (t.dtype === 'i32') {
    check('cuMemsetD32Async', cu.memsetD32Async(asCuda(t).ptr, value | 0, t.numel, c.dev.stream));
    return;
  }
  c.dev.run(
    ELEMENTWISE,
    'fill_value',
    { template: ctype(t), grid: [gridFor(t.numel)], block: 256 },
    { out: t, n: t.numel, value },
  );
}

/** src into dst of another float type (the caller copies when the types are the same). */
export function convert(c: CudaContext, src: Tensor, dst: Tensor): void {
  c.dev.run(
    ELEMENTWISE,
    'convert',
    { template: `${ctype(src)}, ${ctype(dst)}`, grid: [gridFor(src.numel)], block: 256 },
    { src, dst, n: src.numel },
  );
}

export function add(c: CudaContext, a: Tensor, b: Tensor, out: Tensor): void {
  if (a.numel !== b.numel || a.dtype !== b.dtype) throw new Error(`add: ${describe(a)} and ${describe(b)}`);
  c.dev.run(
    ELEMENTWISE,
    'add',
    { template: ctype(a), grid: [gridFor(a.numel)], block: 256 },
    { a, b, out, n: a.numel },
  );
}

export function embedding(c: CudaContext, ids: Tensor, table: Tensor, scale: number): Tensor {
  const [vocab, dim] = table.shape as [number, number];
  const out = c.empty([ids.numel, dim], table.dtype);
  c.dev.run(
    ELEMENTWISE,
    'embedding_fwd',
    { template: ctype(table), grid: [ids.numel], block: 256 },
    { ids, table, out, tokens: ids.numel, dim, vocab, scale, bad: c.bad },
  );
  return out;
}

export function embeddingBackward(c: CudaContext, ids: Tensor, dOut: Tensor, dTable: Tensor, scale: number): void {
  const [vocab, dim] = dTable.shape as [number, number];
  const tokens = ids.numel,
    order = c.empty([tokens], 'i32');
  c.dev.run(ELEMENTWISE, 'embedding_sort', { grid: [Math.ceil(tokens / 256)], block: 256 }, { ids, tokens, order });
  c.dev.run(
    ELEMENTWISE,
    'embedding_bwd',
    { template: ctype(dTable), grid: [tokens], block: 256 },
    { ids, order, dout: dOut, dtable: dTable, tokens, dim, vocab, scale },
  );
  order.free();
}

export function rmsnorm(c: CudaContext, x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
  const dim = w.numel,
    rows = x.numel / dim;
  const y = c.empty(x.shape, x.dtype),
    rstd = c.empty([rows], 'f32');
  c.dev.run(ELEMENTWISE, 'rmsnorm_fwd', { template: ctype(x), grid: [rows], block: 256 }, { x, w, y, rstd, dim, eps });
  return { y, rstd };
}

export function rmsnormBackward(c: CudaContext, dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dw: Tensor): Tensor {
  const dim = w.numel,
    rows = x.numel / dim;
  const rowsPerBlock = Math.max(1, Math.ceil(rows / 512));
  const blocks = Math.ceil(rows / rowsPerBlock);
  const dx = c.empty(x.shape, x.dtype),
    partial = c.empty([blocks, dim], 'f32');
  c.dev.run(
    ELEMENTWISE,
    'rmsnorm_bwd',
    { template: ctype(x), grid: [blocks], block: 256 },
    { dy, x, w, rstd, dx, dw_partial: partial, rows, dim, rows_per_block: rowsPerBlock },
  );
  sumPartials(c, partial, blocks, dim, dw, true);
  partial.free();
  return dx;
}

/** out (n elements) = the sum of `parts` fp32 partials [parts, n], added to what out holds with `accumulate`. */
export function sumPartials(
  c: CudaContext,
  partial: Tensor,
  parts: number,
  n: number,
  out: Tensor,
  accumulate: boolean,
): void {
  c.dev.run(
    ELEMENTWISE,
    'sum_partials',
    { template: ctype(out), grid: [gridFor(n)], block: 256 },
    { partial, parts, n, out, accumulate: accumulate ? 1 : 0 },
  );
}

/** a = silu(g) * u into `a`. */
export function swiglu(c: CudaContext, g: Tensor, u: Tensor, a: Tensor): void {
  c.dev.run(
    ELEMENTWISE,
    'swiglu_fwd',
    { template: ctype(g), grid: [gridFor(g.numel)], block: 256 },
    { g, u, a, n: g.numel },
  );
}

export function swigluBackward(c: CudaContext, da: Tensor, g: Tensor, u: Tensor): { dg: Tensor; du: Tensor } {
  const dg = c.empty(g.shape, g.dtype),
    du = c.empty(u.shape, u.dtype);
  c.dev.run(
    ELEMENTWISE,
    'swiglu_bwd',
    { template: ctype(g), grid: [gridFor(g.numel)], block: 256 },
    { da, g, u, dg, du, n: g.numel },
  );
  return { dg, du };
}

/** Columns [srcOff, srcOff + width) of each of `rows` rows of src into columns [dstOff, ...) of dst. */
function copyCols(
  c: CudaContext,
  src: Tensor,
  srcCols: number,
  srcOff: number,
  dst: Tensor,
  dstCols: number,
  dstOff: number,
  rows: number,
  width: number,
): void {
  c.dev.run(
    ELEMENTWISE,
    'copy_cols',
    { template: ctype(src), grid: [rows], block: 128 },
    { src, src_cols: srcCols, src_off: srcOff, dst, dst_cols: dstCols, dst_off: dstOff, rows, width },
  );
}

export function splitCols(c: CudaContext, x: Tensor, widths: readonly number[]): Tensor[] {
  const cols = x.shape[x.shape.length - 1]!,
    rows = x.numel / cols;
  let off = 0;
  return widths.map((w) => {
    const part = c.empty([rows, w], x.dtype);
    copyCols(c, x, cols, off, part, w, 0, rows, w);
    off += w;
    return part;
  });
}

export function concatCols(c: CudaContext, parts: readonly Tensor[]): Tensor {
  const rows = parts[0]!.shape[0]!;
  const cols = parts.reduce((n, p) => n + p.shape[1]!, 0);
  const out = c.empty([rows, cols], parts[0]!.dtype);
  let off = 0;
  for (const p of parts) {
    const w = p.shape[1]!;
    copyCols(c, p, w, 0, out, cols, off, rows, w);
    off += w;
  }
  return out;
}
