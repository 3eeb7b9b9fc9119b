/**
 * NSA end to end on the CPU: configs/tiny-nsa.toml's layers and parameters, training with the loss falling, exact
 * resume, the Hugging Face export and import, and parity with the independent PyTorch model (tools/torch_ref.py)
 * for the loss and every gradient.
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
import { Transformer } from '../src/model/transformer.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { asCpu } from '../src/tensor/cpu/storage.ts';
import { expectNoKvCache, presetTraining, torchParity } from './helpers/attention-preset.ts';
import { haveTorch, requireTorch } from './helpers/torch.ts';

requireTorch('NSA parity with PyTorch', 'test/nsa.test.ts');

const PRESET = 'configs/tiny-nsa.toml';
const root = mkdtempSync(join(tmpdir(), 'nmoe-nsa-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('configs/tiny-nsa.toml', () => {
  it('has NSA in every layer (local ones windowed), with the reference parameter names and inits', async () => {
    const cfg = modelConfig(loadConfig(PRESET, { env: {} }).config);
    expect([0, 1, 2, 3].map((i) => layerAttention(cfg, i))).toEqual([
      { kind: 'nsa', window: 32 },
      { kind: 'nsa', window: 0 },
      { kind: 'nsa', window: 32 },
      { kind: 'nsa', window: 0 },
    ]);
    const specs = new Map(modelParamSpecs(cfg).map((s) => [s.name, s]));
    const normal = (std: number) => ({ kind: 'normal', std });
    // (4 query + 2 * 2 key/value heads) * 16 dims; the compressor reads 8 tokens of 16 dims, hidden 2 * 16; the
    // gates read dim, hidden dim / 4.
    expect(specs.get('blocks.0.attn.qkv.weight')).toMatchObject({ shape: [128, 64], init: normal(0.02) });
    expect(specs.get('blocks.2.attn.out.weight')).toMatchObject({ shape: [64, 64], init: normal(0.02 / Math.sqrt(6)) });
    expect(specs.get('blocks.1.attn.sinks')).toMatchObject({ shape: [4], init: { kind: 'zeros' } });
    expect(specs.get('blocks.1.attn.cmp_pos')).toMatchObject({ shape: [8, 16], init: normal(0.02) });
    expect(specs.get('blocks.1.attn.cmp_mlp.0.weight')).toMatchObject({ shape: [32, 128], init: normal(0.02) });
    expect(specs.get('blocks.1.attn.cmp_mlp.2.weight')).toMatchObject({ shape: [16, 32], init: normal(0.02) });
    expect(specs.get('blocks.1.attn.cmp_mlp.2.bias')).toMatchObject({ shape: [16], init: { kind: 'zeros' } });
    expect(specs.get('blocks.3.attn.gate_mlp.0.weight')).toMatchObject({ shape: [16, 64], init: normal(0.02) });
    expect(specs.get('blocks.3.attn.gate_mlp.2.weight')).toMatchObject({ shape: [3, 16], init: normal(0.02) });
    const model = new Transformer(new CpuBackend(), cfg);
    model.params.initialize(cfg.seed);
    expect(Array.from(asCpu(model.params.get('blocks.3.attn.gate_mlp.2.bias')).f)).toEqual(
      Array.from(Float32Array.of(-2.2, -2.2, 1.4)),
    );
    model.free();
  });

  it('cached decoding refuses an NSA model in one line; full forwards (likelihood scoring) run', () => {
    // 6 tokens, fewer than cmp_len and slc_block: no compressed block ends and no selection block is scored, so
    // the compressed branch adds zeros and every token attends to its own block.
    expectNoKvCache(PRESET, 'NSA', 6);
  });

  const { straightDir, steps: N } = presetTraining(PRESET, root);

  it('the Hugging Face export keeps the NSA tensors under the reference names, and import-hf reads them back', () => {
    const step = listSteps(straightDir).find((s) => s.step === N)!;
    const out = join(root, 'hf');
    exportHf(step, out);
    const json = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(json.nmoe.layer_attention).toEqual(['nsa', 'nsa', 'nsa', 'nsa']);
    expect(json.attention_bias).toBe(true);
    expect(json.nmoe.differences.some((d: string) => d.includes('"nsa" are native sparse attention'))).toBe(true);
    const hf = readSafetensors(join(out, 'model.safetensors')).tensors;
    const dense = readSafetensors(join(step.dir, DENSE_FILE)).tensors;
    expect(hf.get('model.layers.0.self_attn.cmp_pos')!.data).toEqual(dense.get('blocks.0.attn.cmp_pos')!.data);
    expect(hf.get('model.layers.1.self_attn.cmp_mlp.0.weight')!.shape).toEqual([32, 128]);
    expect(hf.get('model.layers.3.self_attn.gate_mlp.2.bias')!.shape).toEqual([3]);
    const back = importHf(out);
    expect(back.config.attn).toBe('nsa');
    for (const name of ['blocks.0.attn.cmp_mlp.2.bias', 'blocks.2.attn.gate_mlp.0.weight', 'blocks.3.attn.sinks']) {
      expect(back.tensors.get(name)!.data, name).toEqual(dense.get(name)!.data);
    }
  });
});

describe.skipIf(!haveTorch)('NSA parity with PyTorch', () => {
  /** tools/torch_ref.py on a prepared folder: the reference's loss and gradients. */
  // Selection blocks of 4 over 32 tokens (8 blocks), so the scored choice matters from block 4 on.
  const SHAPE = ['--seq_len=32', '--batch_size=2', '--attn_nsa.slc_block=4'];

  it.each([
    ['local NSA (window 5) between global NSA, GQA', ['--attn_local_window=5']],
    [
      'global NSA everywhere (kv_heads = n_heads, no sliding branch)',
      ['--attn_global_every=1', '--attn_nsa.kv_heads=4'],
    ],
  ])(
    '%s: fp32 loss and every gradient agree',
    async (label, extra) => {
      const outDir = join(root, `parity-${extra.length}-${label.length}`);
      const c = await torchParity(PRESET, outDir, [...SHAPE, ...extra]);
      for (const name of ['cmp_pos', 'cmp_mlp.0.weight', 'gate_mlp.2.bias', 'qkv.weight'])
        expect(
          c.rows.some((r) => r.name.endsWith(`.attn.${name}`) && r.normRef > 0),
          name,
        ).toBe(true);
      const sinksUsed = c.rows.some((r) => r.name.endsWith('.attn.sinks') && r.normRef > 0);
      expect(sinksUsed).toBe(extra[0] === '--attn_local_window=5');
    },
    180_000,
  );
});
