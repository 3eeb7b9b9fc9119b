/** CPU kernels for the row-wise ops: embedding, RMSNorm, SwiGLU, softmax and column split/concat. Loops accumulate in doubles. */
import { type CpuTensor, allocate, settle } from './storage.ts';

export function embedding(ids: CpuTensor, table: CpuTensor, scale: number): CpuTensor {
  const [vocab, dim] = table.shape as [number, number];
  const out = allocate([ids.numel, dim], table.dtype);
  const id = ids.i,
    w = table.f,
    o = out.f;
  for (let t = 0; t < id.length; t++) {
    const v = id[t]!;
    if (v < 0 || v >= vocab)
      throw new Error(`embedding: token id ${v} at position ${t} is outside the vocabulary [0, ${vocab})`);
    for (let d = 0; d < dim; d++) o[t * dim + d] = w[v * dim + d]! * scale;
  }
  return settle(out);
}

export function embeddingBackward(ids: CpuTensor, dOut: CpuTensor, dTable: CpuTensor, scale: number): void {
  const dim = dTable.shape[1]!;
  const id = ids.i,
    g = dOut.f,
    dw = dTable.f;
  for (let t = 0; t < id.length; t++) {
    const row = id[t]! * dim;
    for (let d = 0; d < dim; d++) dw[row + d] += g[t * dim + d]! * scale;
  }
  settle(dTable);
}

export function rmsnorm(x: CpuTensor, w: CpuTensor, eps: number): { y: CpuTensor; rstd: CpuTensor } {
  const dim = w.numel;
  const rows = x.numel / dim;
  const y = allocate(x.shape, x.dtype);
  const rstd = allocate([rows], 'f32');
  const xs = x.f,
    ws = w.f,
    ys = y.f;
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let d = 0; d < dim; d++) ss += xs[r * dim + d]! ** 2;
    const s = 1 / Math.sqrt(ss / dim + eps);
    rstd.f[r] = s;
    for (let d = 0; d < dim; d++) ys[r * dim + d] = xs[r * dim + d]! * s * ws[d]!;
  }
  return { y: settle(y), rstd };
}

/** dx = s * (w*dy - x_hat * mean(x_hat * w * dy)), x_hat = x*s; dw += sum over rows of dy * x_hat. */
export function rmsnormBackward(dy: CpuTensor, x: CpuTensor, w: CpuTensor, rstd: CpuTensor, dw: CpuTensor): CpuTensor {
  const dim = w.numel;
  const rows = x.numel / dim;
  const dx = allocate(x.shape, x.dtype);
  const xs = x.f,
    ws = w.f,
    g = dy.f,
    dws = dw.f,
    dxs = dx.f;
  for (let r = 0; r < rows; r++) {
    const s = rstd.f[r]!;
    let dot = 0;
    for (let d = 0; d < dim; d++) {
      const xh = xs[r * dim + d]! * s;
      dot += xh * ws[d]! * g[r * dim + d]!;
      dws[d] += g[r * dim + d]! * xh;
    }
    dot /= dim;
    for (let d = 0; d < dim; d++) dxs[r * dim + d] = s * (ws[d]! * g[r * dim + d]! - xs[r * dim + d]! * s * dot);
  }
  settle(dw);
  return settle(dx);
}

export function swiglu(g: CpuTensor, u: CpuTensor): CpuTensor {
  const a = allocate(g.shape, g.dtype);
  const gs = g.f,
    us = u.f,
    as = a.f;
  for (let i = 0; i < gs.length; i++) {
    const x = gs[i]!;
    as[i] = (x / (1 + Math.exp(-x))) * us[i]!;
  }
  return settle(a);
}

export function swigluBackward(da: CpuTensor, g: CpuTensor, u: CpuTensor): { dg: CpuTensor; du: CpuTensor } {
  const dg = allocate(g.shape, g.dtype),
    du = allocate(u.shape, u.dtype);
  const gs = g.f,
    us = u.f,
    das = da.f;
  for (let i = 0; i < gs.length; i++) {
    const x = gs[i]!;
    const sig = 1 / (1 + Math.exp(-x));
    du.f[i] = das[i]! * x * sig;
    dg.f[i] = das[i]! * us[i]! * sig * (1 + x * (1 - sig));
  }
  return { dg: settle(dg), du: settle(du) };
}

export function splitCols(x: CpuTensor, widths: readonly number[]): CpuTensor[] {
  const cols = x.shape[x.shape.length - 1]!;
  const rows = x.numel / cols;
  if (widths.reduce((a, b) => a + b, 0) !== cols) throw new Error(`splitCols: widths ${widths} do not sum to ${cols}`);
  let start = 0;
  return widths.map((w) => {
    const part = allocate([rows, w], x.dtype);
    for (let r = 0; r < rows; r++) part.f.set(x.f.subarray(r * cols + start, r * cols + start + w), r * w);
    start += w;
    return part;
  });
}

export function concatCols(parts: readonly CpuTensor[]): CpuTensor {
  const rows = parts[0]!.shape[0]!;
  const cols = parts.reduce((a, p) => a + p.shape[1]!, 0);
  const out = allocate([rows, cols], parts[0]!.dtype);
  let start = 0;
  for (const p of parts) {
    const w = p.shape[1]!;
    for (let r = 0; r < rows; r++) out.f.set(p.f.subarray(r * w, (r + 1) * w), r * cols + start);
    start += w;
  }
  return out;
}

export function softmax(x: CpuTensor): CpuTensor {
  const cols = x.shape[x.shape.length - 1]!,
    rows = x.numel / cols;
  const out = allocate(x.shape, 'f32');
  const xs = x.f,
    os = out.f;
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    let m = -Infinity;
    for (let c = 0; c < cols; c++) m = Math.max(m, xs[base + c]!);
    let s = 0;
    for (let c = 0; c < cols; c++) s += Math.exp(xs[base + c]! - m);
    for (let c = 0; c < cols; c++) os[base + c] = Math.exp(xs[base + c]! - m) / s;
  }
  return out;
}
