/**
 * CPU cross-entropy fused with the lm_head: logits are formed CHUNK tokens at a time, so [T, V] never exists, the
 * same memory contract as the GPU kernel.
 */
import type { CrossEntropySpec } from '../backend.ts';
import { gemm } from './gemm.ts';
import { type CpuTensor, allocate, settle, type FloatArray, newFloats } from './storage.ts';

const CHUNK = 256;

function chunkLogits(x: CpuTensor, w: CpuTensor, t0: number, rows: number, scale: number, out: FloatArray): void {
  const [vocab, dim] = w.shape as [number, number];
  gemm({ m: rows, n: vocab, k: dim, a: x.f, aOffset: t0 * dim, transA: false, b: w.f, transB: true, c: out, alpha: scale, accumulate: false });
}

export function crossEntropy(x: CpuTensor, w: CpuTensor, targets: CpuTensor, spec: CrossEntropySpec): { loss: CpuTensor; lse: CpuTensor; count: CpuTensor } {
  const tokens = x.shape[0]!;
  const vocab = w.shape[0]!;
  const lse = allocate([tokens], 'f32');
  const logits = newFloats(CHUNK * vocab);
  let total = 0;
  let counted = 0;
  for (let t0 = 0; t0 < tokens; t0 += CHUNK) {
    const rows = Math.min(CHUNK, tokens - t0);
    chunkLogits(x, w, t0, rows, spec.logitScale, logits);
    for (let r = 0; r < rows; r++) {
      const row = logits.subarray(r * vocab, (r + 1) * vocab);
      let m = -Infinity;
      for (let v = 0; v < vocab; v++) if (row[v]! > m) m = row[v]!;
      let s = 0;
      for (let v = 0; v < vocab; v++) s += Math.exp(row[v]! - m);
      const l = m + Math.log(s);
      lse.f[t0 + r] = l;
      const target = targets.i[t0 + r]!;
      if (target === spec.ignoreIndex) continue;
      if (target < 0 || target >= vocab) throw new Error(`crossEntropy: target ${target} at position ${t0 + r} is outside [0, ${vocab})`);
      total += l - row[target]!;
      counted++;
    }
  }
  const loss = allocate([1], 'f32');
  loss.f[0] = total / Math.max(counted, 1);
  const count = allocate([1], 'f32');
  count.f[0] = counted;
  return { loss, lse, count };
}

export function crossEntropyBackward(
  x: CpuTensor, w: CpuTensor, targets: CpuTensor, lse: CpuTensor, count: CpuTensor, spec: CrossEntropySpec, dw: CpuTensor,
): CpuTensor {
  const tokens = x.shape[0]!;
  const [vocab, dim] = w.shape as [number, number];
  const dx = allocate(x.shape, x.dtype);
  const logits = newFloats(CHUNK * vocab);
  const norm = spec.logitScale / Math.max(count.f[0]!, 1);
  for (let t0 = 0; t0 < tokens; t0 += CHUNK) {
    const rows = Math.min(CHUNK, tokens - t0);
    chunkLogits(x, w, t0, rows, spec.logitScale, logits);
    // logits -> d(loss)/d(x w^T) in place: (softmax - onehot) * scale / count, zero for uncounted rows.
    for (let r = 0; r < rows; r++) {
      const row = logits.subarray(r * vocab, (r + 1) * vocab);
      const target = targets.i[t0 + r]!;
      if (target === spec.ignoreIndex) { row.fill(0); continue; }
      const l = lse.f[t0 + r]!;
      for (let v = 0; v < vocab; v++) row[v] = Math.exp(row[v]! - l) * norm;
      row[target] -= norm;
    }
    gemm({ m: rows, n: dim, k: vocab, a: logits, transA: false, b: w.f, transB: false, c: dx.f, cOffset: t0 * dim, alpha: 1, accumulate: false });
    gemm({ m: vocab, n: dim, k: rows, a: logits, transA: true, b: x.f, bOffset: t0 * dim, transB: false, c: dw.f, alpha: 1, accumulate: true });
  }
  settle(dw);
  return settle(dx);
}
