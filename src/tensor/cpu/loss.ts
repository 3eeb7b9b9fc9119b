/**
 * CPU cross-entropy fused with the lm_head: logits are formed CHUNK tokens at a time, so [T, V] never exists, the
 * same memory contract as the GPU kernel. With `dw` the gradient comes out of the same pass: each chunk's logits
 * turn into d(loss)/d(logits) in place, giving dx and accumulating dw, so the logits are never recomputed.
 */
import type { CrossEntropySpec } from '../backend.ts';
import { gemm } from './gemm.ts';
import { type CpuTensor, allocate, settle, newFloats } from './storage.ts';

const CHUNK = 256;

export function crossEntropy(
  x: CpuTensor,
  w: CpuTensor,
  targets: CpuTensor,
  spec: CrossEntropySpec,
  dw?: CpuTensor,
  normalizer?: CpuTensor,
): {
  loss: CpuTensor;
  count: CpuTensor;
  dx: CpuTensor | null;
} {
  const tokens = x.shape[0]!;
  const [vocab, dim] = w.shape as [number, number];
  let counted = 0;
  for (let t = 0; t < tokens; t++) {
    const target = targets.i[t]!;
    if (target === spec.ignoreIndex) continue;
    if (target < 0 || target >= vocab)
      throw new Error(`crossEntropy: target ${target} at position ${t} is outside [0, ${vocab})`);
    counted++;
  }
  const divisor = Math.max(normalizer ? normalizer.f[0]! : counted, 1);
  const norm = spec.logitScale / divisor;
  const dx = dw ? allocate(x.shape, x.dtype) : null;
  const logits = newFloats(CHUNK * vocab);
  let total = 0;
  for (let t0 = 0; t0 < tokens; t0 += CHUNK) {
    const rows = Math.min(CHUNK, tokens - t0);
    gemm({
      m: rows,
      n: vocab,
      k: dim,
      a: x.f,
      aOffset: t0 * dim,
      transA: false,
      b: w.f,
      transB: true,
      c: logits,
      alpha: spec.logitScale,
      accumulate: false,
    });
    for (let r = 0; r < rows; r++) {
      const row = logits.subarray(r * vocab, (r + 1) * vocab);
      const target = targets.i[t0 + r]!;
      if (target === spec.ignoreIndex) {
        row.fill(0);
        continue;
      }
      let m = -Infinity;
      for (let v = 0; v < vocab; v++) if (row[v]! > m) m = row[v]!;
      let s = 0;
      for (let v = 0; v < vocab; v++) s += Math.exp(row[v]! - m);
      const lse = m + Math.log(s);
      total += lse - row[target]!;
      if (!dx) continue;
      // logits -> (softmax - onehot) * scale / count
      for (let v = 0; v < vocab; v++) row[v] = Math.exp(row[v]! - lse) * norm;
      row[target] -= norm;
    }
    if (dx && dw) {
      gemm({
        m: rows,
        n: dim,
        k: vocab,
        a: logits,
        transA: false,
        b: w.f,
        transB: false,
        c: dx.f,
        cOffset: t0 * dim,
        alpha: 1,
        accumulate: false,
      });
      gemm({
        m: vocab,
        n: dim,
        k: rows,
        a: logits,
        transA: true,
        b: x.f,
        bOffset: t0 * dim,
        transB: false,
        c: dw.f,
        alpha: 1,
        accumulate: true,
      });
    }
  }
  const loss = allocate([1], 'f32');
  loss.f[0] = total / divisor;
  const count = allocate([1], 'f32');
  count.f[0] = counted;
  if (dw) settle(dw);
  return { loss, count, dx: dx ? settle(dx) : null };
}
