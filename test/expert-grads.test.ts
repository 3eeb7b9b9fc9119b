/**
 * Step-lived expert gradients written by their first product: ParamStore.gradTarget says `write` exactly when the
 * gradient does not exist yet this step, and groupedMatmulWeightGrad with accumulate = false writes every element
 * (zeros for an expert with no rows) whatever the memory held. The CUDA kernels are held to the same in the GPU
 * parity suite and tools/gemm-check.ts.
 */
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { ParamStore } from '../src/model/params.ts';
import { modelConfig } from '../src/config/sections.ts';
import { modelParamSpecs } from '../src/model/spec.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { philoxNormal } from '../src/util/philox.ts';

const cpu = new CpuBackend();

function randn(n: number, stream: number): Float32Array {
  const a = new Float32Array(n);
  philoxNormal(a, { std: 1, seed: 3, stream });
  return a;
}

describe('expert gradients written by their first product', () => {
  it('groupedMatmulWeightGrad with accumulate = false writes the product over NaN, zeros for empty experts', async () => {
    const E = 4,
      D = 6,
      F = 5,
      counts = [3, 0, 4, 0],
      rows = 7;
    const offsets = cpu.moeSegments(cpu.upload(Int32Array.from(counts), [E], 'i32'), rows).offsets;
    const x = cpu.upload(randn(rows * D, 1), [rows, D], 'f32'),
      dy = cpu.upload(randn(rows * F, 2), [rows, F], 'f32');
    const written = cpu.empty([E, D, F], 'f32'),
      added = cpu.zeros([E, D, F], 'f32');
    cpu.fill(written, Number.NaN);
    cpu.groupedMatmulWeightGrad(x, dy, offsets, written, false);
    cpu.groupedMatmulWeightGrad(x, dy, offsets, added);
    const [w, a] = [await cpu.read(written), await cpu.read(added)];
    expect(Array.from(w)).toEqual(Array.from(a));
    expect(Array.from(w.subarray(D * F, 2 * D * F)).every((v) => v === 0)).toBe(true);
    expect(Array.from(w.subarray(0, D * F)).some((v) => v !== 0)).toBe(true);
    // accumulate (the default) adds: a second product doubles it.
    cpu.groupedMatmulWeightGrad(x, dy, offsets, written);
    (await cpu.read(written)).forEach((v, i) => expect(v).toBeCloseTo(2 * a[i]!, 5));
  });

  it("ParamStore.gradTarget: write at an expert gradient's first use in a step, add after, never for dense ones", () => {
    const { config } = loadConfig(defaultConfigPath(), { env: {} });
    const store = new ParamStore(cpu, modelParamSpecs(modelConfig(config)));
    const expert = store.params.find((p) => p.firstExpert !== undefined)!.name;
    const dense = store.params.find((p) => p.firstExpert === undefined && !p.buffer)!.name;
    expect(store.gradTarget(expert).write).toBe(true);
    expect(store.gradTarget(expert).write).toBe(false);
    expect(store.gradTarget(expert).grad).toBe(store.grad(expert));
    expect(store.gradTarget(dense).write).toBe(false);
    store.releaseExpertGrads();
    expect(store.gradTarget(expert).write).toBe(true);
    store.zeroGrads();
    expect(store.grad(expert).numel).toBe(store.shapeOf(expert).reduce((n, d) => n * d, 1));
  });
});
