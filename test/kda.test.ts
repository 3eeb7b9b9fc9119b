/**
 * KDA (Kimi Delta Attention) on the CPU: the chunked op against the step-by-step recurrence, what the recurrence
 * computes on cases solvable by hand, configs/tiny-kda.toml's layers, training with the loss falling, exact resume,
 * the Hugging Face export and import, and parity with the independent PyTorch model (tools/torch_ref.py) for the
 * loss and every gradient.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { exportHf } from '../src/checkpoint/export-hf.ts';
import { importHf } from '../src/checkpoint/import-hf.ts';
import { DENSE_FILE, listSteps } from '../src/checkpoint/layout.ts';
import { readSafetensors } from '../src/checkpoint/safetensors.ts';
import { loadConfig } from '../src/config/load.ts';
import { modelConfig } from '../src/config/sections.ts';
import { layerAttention, modelParamSpecs } from '../src/model/spec.ts';
import { KDA_CHUNK, deltaAttention, deltaAttentionRecurrent } from '../src/tensor/cpu/delta-attention.ts';
import { type CpuTensor, asCpu } from '../src/tensor/cpu/storage.ts';
import { cpu, data, randn } from './helpers/gradcheck.ts';
import { expectNoKvCache, presetTraining, torchParity } from './helpers/attention-preset.ts';
import { haveTorch, requireTorch } from './helpers/torch.ts';

requireTorch('KDA parity with PyTorch', 'test/kda.test.ts');

const PRESET = 'configs/tiny-kda.toml';
const root = mkdtempSync(join(tmpdir(), 'nmoe-kda-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('the delta-attention op', () => {
  it('the chunked form (chunk 64) equals the recurrence to fp32 rounding over 3 chunks, the last partial', () => {
    const S = 2 * KDA_CHUNK + 22,
      spec = { batch: 2, seqLen: S, heads: 3, scale: 6 ** -0.5 };
    const T = 2 * S;
    const [q, k, v, gate, beta] = [
      [T, 18],
      [T, 18],
      [T, 15],
      [T, 18],
      [T, 3],
    ].map((s, i) => asCpu(randn(s, i === 3 ? 3 : 1))) as [CpuTensor, CpuTensor, CpuTensor, CpuTensor, CpuTensor];
    const chunked = data(deltaAttention(q, k, v, gate, beta, spec));
    const recurrent = data(deltaAttentionRecurrent(q, k, v, gate, beta, spec));
    let worst = 0,
      peak = 0;
    for (let i = 0; i < chunked.length; i++) {
      worst = Math.max(worst, Math.abs(chunked[i]! - recurrent[i]!));
      peak = Math.max(peak, Math.abs(recurrent[i]!));
    }
    expect(peak).toBeGreaterThan(0.1);
    expect(worst / peak).toBeLessThan(2e-7);
  });

  it('recalls a stored value exactly (beta 1, no decay), forgets by the decay, and never crosses sequences', () => {
    // One head, K = 2, V = 1. Step 0 stores v0 = 3 at key e0 (beta = sigmoid(40) = 1 to fp32); step 1 reads it.
    const spec = { batch: 2, seqLen: 2, heads: 1, scale: 1 };
    const up = (a: number[], cols: number) => cpu.upload(Float32Array.from(a), [a.length / cols, cols], 'f32');
    const q = up([1, 0, 1, 0, 1, 0, 1, 0], 2);
    const k = up([2, 0, 0, 5, 2, 0, 0, 5], 2); // unit keys after the L2 norm: e0, e1
    const v = up([3, 7, 3, 7], 1);
    const beta = up([40, 40, 40, 40], 1);
    const noDecay = up(Array(8).fill(40), 2); // sigmoid(40) = 1 to fp32
    const out = Array.from(data(cpu.deltaAttention(q, k, v, noDecay, beta, spec)));
    // o_0 = q0 . (v0 e0) = 3; at step 1 the key e1 is orthogonal: the state keeps v0 at e0, and q = e0 reads 3.
    for (const o of out) expect(o).toBeCloseTo(3, 5);
    // Decay alpha = sigmoid(0) = 1/2 on key dim 0 at step 1 halves the stored value before it is read.
    const halve = up([40, 40, 0, 40, 40, 40, 0, 40], 2);
    const halved = Array.from(data(cpu.deltaAttention(q, k, v, halve, beta, spec)));
    expect(halved[1]).toBeCloseTo(1.5, 5);
    // Sequence 1's outputs do not depend on sequence 0's values.
    const v2 = up([100, 7, 3, 7], 1);
    const other = Array.from(data(cpu.deltaAttention(q, k, v2, noDecay, beta, spec)));
    expect(other.slice(2)).toEqual(out.slice(2));
    expect(other[0]).toBeCloseTo(100, 3); // the L2 norm's eps keeps unit vectors 1e-6 short
  });

  it('nan_to_num: a non-finite output becomes +-1e4 (inf) or 0 (NaN)', () => {
    // K = V = 1: S_0 = beta v_0 is infinite, o_0 = +-inf; at step 1, u = v_1 - S' is -+inf and S_1 = inf - inf = NaN.
    const spec = { batch: 1, seqLen: 2, heads: 1, scale: 1 };
    const col = (...a: number[]) => cpu.upload(Float32Array.from(a), [a.length, 1], 'f32');
    const out = (v0: number) =>
      Array.from(data(cpu.deltaAttention(col(1, 1), col(1, 1), col(v0, 1), col(0, 0), col(0, 0), spec)));
    expect(out(Infinity)).toEqual([1e4, 0]);
    expect(out(-Infinity)).toEqual([-1e4, 0]);
  });
});

describe('configs/tiny-kda.toml', () => {
  it('puts KDA on layers 0-2 and MLA on the last, with the reference parameter names and inits', () => {
    const cfg = modelConfig(loadConfig(PRESET, { env: {} }).config);
    expect([0, 1, 2, 3].map((i) => layerAttention(cfg, i))).toEqual([
      { kind: 'kda', window: 0 },
      { kind: 'kda', window: 0 },
      { kind: 'kda', window: 0 },
      { kind: 'mla', window: 0 },
    ]);
    const specs = new Map(modelParamSpecs(cfg).map((s) => [s.name, s]));
    // 4 heads * (16 + 8) key dims.
    expect(specs.get('blocks.0.attn.wg.weight')).toMatchObject({
      shape: [96, 64],
      init: { kind: 'normal', std: 0.02 },
    });
    expect(specs.get('blocks.0.attn.wg.bias')).toMatchObject({ shape: [96], init: { kind: 'zeros' } });
    expect(specs.get('blocks.1.attn.wb.weight')).toMatchObject({ shape: [4, 64], init: { kind: 'normal', std: 0.02 } });
    expect(specs.has('blocks.1.attn.wb.bias')).toBe(false);
    expect(specs.get('blocks.2.attn.wo.weight')).toMatchObject({ init: { kind: 'normal', std: 0.02 / Math.sqrt(6) } });
    expect(specs.has('blocks.2.attn.wq_a.weight') && specs.has('blocks.2.attn.kv_norm.weight')).toBe(true);
    expect(specs.has('blocks.3.attn.wkv_a.weight') && !specs.has('blocks.3.attn.wg.weight')).toBe(true);
  });

  it('cached decoding refuses a model with KDA layers in one line; full forwards run', () => {
    expectNoKvCache(PRESET, 'KDA', 8);
  });

  const { straightDir, steps: N } = presetTraining(PRESET, root);

  it('the Hugging Face export names the KDA tensors and layer kinds, and import-hf reads them back', () => {
    const step = listSteps(straightDir).find((s) => s.step === N)!;
    const out = join(root, 'hf');
    exportHf(step, out);
    const json = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(json.layer_types).toEqual(['linear_attention', 'linear_attention', 'linear_attention', 'full_attention']);
    expect(json.nmoe.layer_attention).toEqual(['kda', 'kda', 'kda', 'mla']);
    expect(json.nmoe.differences.some((d: string) => d.includes('"kda" are Kimi Delta Attention'))).toBe(true);
    const hf = readSafetensors(join(out, 'model.safetensors')).tensors;
    const dense = readSafetensors(join(step.dir, DENSE_FILE)).tensors;
    expect(hf.get('model.layers.0.self_attn.f_proj.weight')!.data).toEqual(dense.get('blocks.0.attn.wg.weight')!.data);
    expect(hf.get('model.layers.1.self_attn.f_proj.bias')!.shape).toEqual([96]);
    expect(hf.get('model.layers.2.self_attn.b_proj.weight')!.shape).toEqual([4, 64]);
    const back = importHf(out);
    expect(back.config.attn_local).toBe('kda');
    for (const name of ['blocks.0.attn.wg.bias', 'blocks.2.attn.wb.weight', 'blocks.1.attn.wq_b.weight']) {
      expect(back.tensors.get(name)!.data, name).toEqual(dense.get(name)!.data);
    }
  });
});

describe.skipIf(!haveTorch)('KDA parity with PyTorch', () => {
  it.each([
    ['KDA local layers before MLA (two chunks: seq 80)', ['--seq_len=80']],
    ['KDA on every layer', ['--attn=kda', '--attn_global_every=1', '--seq_len=16']],
  ])(
    '%s: fp32 loss and every gradient agree',
    async (_label, extra) => {
      const outDir = join(root, `parity-${extra.length}`);
      const c = await torchParity(PRESET, outDir, ['--batch_size=2', ...extra]);
      expect(c.rows.some((row) => row.name.endsWith('.attn.wg.bias') && row.normRef > 0)).toBe(true);
    },
    120_000,
  );
});
