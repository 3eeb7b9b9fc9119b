/**
 * The fused grouped-expert ops of the Backend against their unfused compositions on the CPU oracle:
 * groupedMatmulSum (two products over the same segments, rounded once) and groupedSwiglu (gate and up projections
 * with the SwiGLU). test/cuda-parity.test.ts compares the CUDA backend's (wgmma kernels on sm_90a) with these.
 */
import { describe, expect, it } from 'vitest';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { DType, Tensor } from '../src/tensor/tensor.ts';
import { philoxNormal } from '../src/util/philox.ts';

const cpu = new CpuBackend();
let stream = 1;
function randn(shape: number[], dtype: DType, std = 1): Tensor {
  const a = new Float32Array(shape.reduce((p, q) => p * q, 1));
  philoxNormal(a, { std, seed: 3, stream: stream++ });
  return cpu.upload(a, shape, dtype);
}

async function values(t: Tensor): Promise<Float32Array> {
  return (await cpu.read(t)) as Float32Array;
}

function relErr(a: Float32Array, b: Float32Array): number {
  let d = 0,
    n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i]! - b[i]!) ** 2;
    n += b[i]! ** 2;
  }
  return Math.sqrt(d / n);
}

describe('fused grouped expert ops (CPU oracle)', () => {
  // 9 rows past the segments stay zero; experts 1 and 4 are empty.
  const counts = [5, 0, 13, 1, 0, 9],
    E = counts.length,
    rows = counts.reduce((s, c) => s + c, 0) + 9,
    D = 12,
    F = 10;
  const { offsets } = cpu.moeSegments(cpu.upload(Int32Array.from(counts), [E], 'i32'), rows);

  for (const dtype of ['f32', 'bf16'] as const) {
    it(`groupedMatmulSum is the sum of the two products (${dtype}, both layouts)`, async () => {
      for (const transB of [false, true]) {
        const x1 = randn([rows, D], dtype),
          x2 = randn([rows, D], dtype);
        const w1 = randn(transB ? [E, F, D] : [E, D, F], dtype, 0.3),
          w2 = randn(transB ? [E, F, D] : [E, D, F], dtype, 0.3);
        const got = await values(cpu.groupedMatmulSum(x1, w1, x2, w2, offsets, transB));
        const want = await values(
          cpu.add(cpu.groupedMatmul(x1, w1, offsets, transB), cpu.groupedMatmul(x2, w2, offsets, transB)),
        );
        expect(relErr(got, want), `transB=${transB}`).toBeLessThan(dtype === 'f32' ? 1e-6 : 1e-2);
        expect(
          got.subarray((rows - 9) * F).every((v) => v === 0),
          'rows past the segments',
        ).toBe(true);
      }
    });

    it(`groupedSwiglu is the two projections and swiglu (${dtype})`, async () => {
      const x = randn([rows, D], dtype),
        w1 = randn([E, D, F], dtype, 0.3),
        w3 = randn([E, D, F], dtype, 0.3);
      const { h1, h3, a } = cpu.groupedSwiglu(x, w1, w3, offsets);
      const h1w = cpu.groupedMatmul(x, w1, offsets),
        h3w = cpu.groupedMatmul(x, w3, offsets);
      expect(Array.from(await values(h1))).toEqual(Array.from(await values(h1w)));
      expect(Array.from(await values(h3))).toEqual(Array.from(await values(h3w)));
      expect(Array.from(await values(a))).toEqual(Array.from(await values(cpu.swiglu(h1w, h3w))));
    });
  }

  it('rejects products that do not add up', () => {
    const x = randn([rows, D], 'f32'),
      w = randn([E, D, F], 'f32'),
      w2 = randn([E, D, F + 1], 'f32');
    expect(() => cpu.groupedMatmulSum(x, w, x, w2, offsets)).toThrow(/do not add up/);
  });
});
