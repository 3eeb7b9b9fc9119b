/**
 * dtype = "fp8" (issue 18) on the CPU backend: the routed experts' grouped GEMMs multiply operands quantised by
 * DeepSeek-V3's block scales. Each op is checked against products the test forms itself from the quantiser's codes
 * and scales (decoded here, multiplied in float64), and against the plain op to show the quantisation is there;
 * then tiny trains in fp8, close to its bf16 run, and the dtypes no backend computes stop with their fix.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { unimplementedWarnings } from '../src/config/unimplemented.ts';
import { checkExpertDtype } from '../src/model/expert-format.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { FP8_BLOCK, E4M3_VALUES, type Fp8Tiling, quantizeFp8 } from '../src/tensor/fp8.ts';
import { train } from '../src/train/trainer.ts';
import { modelConfig } from '../src/config/sections.ts';
import { logTags } from '../src/metrics/tags.ts';
import type { LogRecord } from '../src/metrics/records.ts';
import { flopsPerToken, routedExpertFlopsPerToken } from '../src/model/flops.ts';
import { SINGLE, modelParamSpecs } from '../src/model/spec.ts';
import { data } from './helpers/gradcheck.ts';

const b = new CpuBackend();
const OFFSETS = [0, 150, 150, 200]; // three experts, one with no rows; 150 rows span two 128-row chunks

function values(n: number, seed: number): Float32Array {
  return new Float32Array(n).map((_, i) => Math.fround(Math.sin(seed + i * 0.731) * (1 + ((i * seed) % 5))));
}

/** What the quantiser's codes and scales stand for, decoded here: one scale per tile, in the quantiser's order. */
function decoded(x: Float32Array, rows: number, cols: number, tiling: Fp8Tiling): Float64Array {
  const q = quantizeFp8(x, rows, cols, tiling);
  const out = new Float64Array(rows * cols);
  let tile = 0;
  const fill = (r0: number, r1: number, c0: number, c1: number) => {
    for (let r = r0; r < r1; r++)
      for (let c = c0; c < c1; c++) out[r * cols + c] = E4M3_VALUES[q.codes[r * cols + c]!]! * q.scales[tile]!;
    tile++;
  };
  const up = (n: number) => Math.ceil(n / FP8_BLOCK);
  if (tiling.kind === 'rows')
    for (let r = 0; r < rows; r++)
      for (let t = 0; t < up(cols); t++) fill(r, r + 1, t * 128, Math.min(cols, t * 128 + 128));
  else if (tiling.kind === 'blocks')
    for (let i = 0; i < up(rows); i++)
      for (let j = 0; j < up(cols); j++)
        fill(i * 128, Math.min(rows, i * 128 + 128), j * 128, Math.min(cols, j * 128 + 128));
  else
    for (let e = 0; e + 1 < tiling.segments.length; e++)
      for (let r0 = tiling.segments[e]!; r0 < tiling.segments[e + 1]!; r0 += 128)
        for (let c = 0; c < cols; c++) fill(r0, Math.min(tiling.segments[e + 1]!, r0 + 128), c, c + 1);
  expect(tile).toBe(q.scales.length);
  return out;
}

/** Each expert's [rows, cols] slice of a stacked weight, decoded from its 128 x 128 blocks. */
function decodedExperts(w: Float32Array, experts: number, rows: number, cols: number): Float64Array[] {
  return Array.from({ length: experts }, (_, e) =>
    decoded(w.subarray(e * rows * cols, (e + 1) * rows * cols), rows, cols, { kind: 'blocks' }),
  );
}

/** y[seg_e] = x[seg_e] @ op(w_e) in float64. */
function segmentProducts(x: Float64Array, k: number, w: Float64Array[], wRows: number, wCols: number, transB: boolean) {
  const n = transB ? wRows : wCols;
  const y = new Float64Array(OFFSETS.at(-1)! * n);
  for (let e = 0; e + 1 < OFFSETS.length; e++)
    for (let r = OFFSETS[e]!; r < OFFSETS[e + 1]!; r++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let i = 0; i < k; i++) s += x[r * k + i]! * w[e]![transB ? j * wCols + i : i * wCols + j]!;
        y[r * n + j] = s;
      }
  return y;
}

function maxRelative(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let err = 0,
    scale = 0;
  for (let i = 0; i < want.length; i++) {
    err = Math.max(err, Math.abs(got[i]! - want[i]!));
    scale = Math.max(scale, Math.abs(want[i]!));
  }
  return err / scale;
}

describe('fp8 grouped GEMMs on the CPU', () => {
  const [N, D, F, E] = [200, 130, 140, 3];
  const xv = values(N * D, 1),
    wv = values(E * D * F, 2),
    dyv = values(N * F, 3);
  const x = b.upload(xv, [N, D], 'f32'),
    w = b.upload(wv, [E, D, F], 'f32'),
    dy = b.upload(dyv, [N, F], 'f32');
  const offsets = b.upload(Int32Array.from(OFFSETS), [E + 1], 'i32');

  it('forward: x in 1 x 128 row tiles, the weights in 128 x 128 blocks', () => {
    const want = segmentProducts(decoded(xv, N, D, { kind: 'rows' }), D, decodedExperts(wv, E, D, F), D, F, false);
    expect(maxRelative(data(b.groupedMatmul(x, w, offsets, false, 'fp8')), want)).toBeLessThan(1e-6);
    // the plain op differs by the quantisation: about 2^-5 relative per operand
    expect(maxRelative(data(b.groupedMatmul(x, w, offsets)), want)).toBeGreaterThan(1e-3);
  });

  it('input gradient: dy in row tiles along its own width, the same weight blocks transposed', () => {
    const want = segmentProducts(decoded(dyv, N, F, { kind: 'rows' }), F, decodedExperts(wv, E, D, F), D, F, true);
    expect(maxRelative(data(b.groupedMatmul(dy, w, offsets, true, 'fp8')), want)).toBeLessThan(1e-6);
    const sum = b.groupedMatmulSum(dy, w, dy, w, offsets, true, 'fp8');
    expect(
      maxRelative(
        data(sum),
        want.map((v) => 2 * v),
      ),
    ).toBeLessThan(1e-6);
  });

  it('weight gradient: both operands in 128 x 1 tiles down each expert segment', () => {
    const segments = Int32Array.from(OFFSETS);
    const xq = decoded(xv, N, D, { kind: 'columns', segments }),
      gq = decoded(dyv, N, F, { kind: 'columns', segments });
    const want = new Float64Array(E * D * F);
    for (let e = 0; e < E; e++)
      for (let i = 0; i < D; i++)
        for (let j = 0; j < F; j++) {
          let s = 0;
          for (let r = OFFSETS[e]!; r < OFFSETS[e + 1]!; r++) s += xq[r * D + i]! * gq[r * F + j]!;
          want[(e * D + i) * F + j] = s;
        }
    const dw = b.zeros([E, D, F], 'f32');
    b.groupedMatmulWeightGrad(x, dy, offsets, dw, false, 'fp8');
    expect(maxRelative(data(dw), want)).toBeLessThan(1e-6);
    const plain = b.zeros([E, D, F], 'f32');
    b.groupedMatmulWeightGrad(x, dy, offsets, plain, false);
    expect(maxRelative(data(plain), want)).toBeGreaterThan(1e-3);
  });
});

describe('dtype = "fp8" in training', () => {
  const root = mkdtempSync(join(tmpdir(), 'nmoe-fp8-'));
  async function run(dtype: string, extra: string[] = []): Promise<{ losses: number[]; logs: LogRecord[] }> {
    const { config } = loadConfig(defaultConfigPath(), {
      env: {},
      overrides: [
        `--dtype=${dtype}`,
        '--steps=30',
        '--seq_len=32',
        '--batch_size=4',
        '--warmup_steps=2',
        '--log_every=100',
        `--checkpoint_dir=${join(root, dtype, 'ckpt')}`,
        `--metrics_dir=${join(root, dtype, 'metrics')}`,
        `--experiments_db=${join(root, 'exp.db')}`,
        ...extra,
      ],
    });
    const losses: number[] = [],
      logs: LogRecord[] = [];
    await train(config, new CpuBackend(), {
      start: () => {},
      step: (r) => losses.push(r.loss),
      log: (r) => logs.push(r),
    });
    return { losses, logs };
  }
  const losses = async (dtype: string) => (await run(dtype)).losses;

  it('tiny learns in fp8 and stays close to its bf16 run, without being the same run', async () => {
    const fp8 = await losses('fp8'),
      bf16 = await losses('bf16');
    const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;
    expect(mean(fp8.slice(-5))).toBeLessThan(mean(fp8.slice(0, 5)) - 0.3);
    expect(Math.abs(mean(fp8.slice(-10)) - mean(bf16.slice(-10))) / mean(bf16.slice(-10))).toBeLessThan(0.02);
    expect(fp8).not.toEqual(bf16);
  }, 120_000);

  it('config check no longer calls fp8 unimplemented, and the dtypes no backend computes stop with the fix', () => {
    const { config, origin } = loadConfig(defaultConfigPath(), { env: {}, overrides: ['--dtype=fp8'] });
    expect(unimplementedWarnings({ config, origin })).toEqual([]);
    expect(() => checkExpertDtype('fp8', 'cpu')).not.toThrow();
    expect(() => checkExpertDtype('fp8', 'cuda')).toThrow(
      /CUDA backend has no fp8 expert GEMMs.*Fix: set dtype = "bf16"/,
    );
    for (const device of ['cpu', 'cuda'] as const)
      expect(() => checkExpertDtype('nvfp4', device)).toThrow(
        /needs the FP4 tensor cores of Blackwell GPUs .*Fix: set dtype = "bf16"/,
      );
  });

  it("efficiency/fp8_tflops is the routed experts' share of the rate in fp8, and 0 in bf16", async () => {
    const cfg = modelConfig(loadConfig(defaultConfigPath(), { env: {}, overrides: ['--seq_len=32'] }).config);
    const share = routedExpertFlopsPerToken(cfg) / flopsPerToken(cfg, modelParamSpecs(cfg, SINGLE));
    expect(share).toBeGreaterThan(0.05);
    const fp8 = (await run('fp8', ['--steps=4', '--log_every=2', '--checkpoint_every=0'])).logs;
    expect(fp8.length).toBeGreaterThan(0);
    for (const r of fp8) {
      expect(r.fp8Tflops / r.tflops).toBeCloseTo(share, 12);
      expect(logTags(r, 0, null)['efficiency/fp8_tflops']).toBe(r.fp8Tflops);
    }
    const bf16 = (await run('bf16', ['--steps=2', '--log_every=2', '--checkpoint_every=0'])).logs;
    expect(bf16.length).toBeGreaterThan(0);
    for (const r of bf16) expect(logTags(r, 0, null)['efficiency/fp8_tflops']).toBe(0);
  }, 120_000);

  it('a model in nvfp4 is refused when it is built, before any step', async () => {
    await expect(losses('nvfp4')).rejects.toThrow(/dtype = "nvfp4" needs .*Blackwell/);
  });
});
