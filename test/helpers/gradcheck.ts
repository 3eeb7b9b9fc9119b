/**
 * Central finite differences against the analytic backward, in fp32 (the storage precision) with double
 * accumulation. Errors are norm-wise over sampled coordinates: |a - n| / max(|a|, |n|), which stays meaningful
 * when single entries are near zero.
 */
import { CpuBackend } from '../../src/tensor/cpu/backend.ts';
import { type FloatArray, asCpu } from '../../src/tensor/cpu/storage.ts';
import type { Tensor } from '../../src/tensor/tensor.ts';
import { philoxNormal } from '../../src/util/philox.ts';

export const cpu = new CpuBackend();

let stream = 1;
/** A deterministic N(0, std) tensor. */
export function randn(shape: number[], std = 1): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  philoxNormal(data, { std, seed: 1234, stream: stream++ });
  return cpu.upload(data, shape, 'f32');
}

export function ints(values: number[], shape: number[] = [values.length]): Tensor {
  return cpu.upload(Int32Array.from(values), shape, 'i32');
}

export function data(t: Tensor): FloatArray {
  return asCpu(t).f;
}

/** sum(out * r) in double: the scalar whose gradient with respect to out is r. */
export function project(out: Tensor, r: Tensor): number {
  const o = data(out),
    w = data(r);
  let s = 0;
  for (let i = 0; i < o.length; i++) s += o[i]! * w[i]!;
  return s;
}

export interface Checked {
  name: string;
  input: Tensor;
  analytic: Tensor;
}

/** Relative error of the analytic gradient of `loss` for each input, over up to `samples` coordinates. */
export function gradError(loss: () => number, checks: Checked[], eps = 1e-2, samples = 40): Record<string, number> {
  const errors: Record<string, number> = {};
  for (const c of checks) {
    const x = data(c.input),
      a = data(c.analytic);
    const step = Math.max(1, Math.floor(x.length / samples));
    let diff = 0,
      norm = 0;
    for (let i = 0; i < x.length; i += step) {
      const orig = x[i]!;
      x[i] = orig + eps;
      const up = loss();
      x[i] = orig - eps;
      const down = loss();
      x[i] = orig;
      const numeric = (up - down) / (2 * eps);
      diff += (numeric - a[i]!) ** 2;
      norm += Math.max(numeric ** 2, a[i]! ** 2);
    }
    errors[c.name] = norm === 0 ? 0 : Math.sqrt(diff / norm);
  }
  return errors;
}
