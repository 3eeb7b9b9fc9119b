/**
 * SWA and the global/local interleave end to end on the CPU: configs/tiny-swa.toml's layers, training with the loss
 * falling, exact resume, the Hugging Face export and import, and parity with the independent PyTorch model
 * (tools/torch_ref.py) for the loss and every gradient.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
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
import { expectNoKvCache, presetTraining, torchParity } from './helpers/attention-preset.ts';
import { haveTorch, requireTorch } from './helpers/torch.ts';

requireTorch('SWA parity with PyTorch', 'test/swa.test.ts');

const PRESET = 'configs/tiny-swa.toml';
const root = mkdtempSync(join(tmpdir(), 'nmoe-swa-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('configs/tiny-swa.toml', () => {
  it('interleaves SWA and MLA by the reference rule, with the reference parameter names and inits', () => {
    const cfg = modelConfig(loadConfig(PRESET, { env: {} }).config);
    expect([0, 1, 2, 3].map((i) => layerAttention(cfg, i))).toEqual([
      { kind: 'swa', window: 32 },
      { kind: 'mla', window: 0 },
      { kind: 'swa', window: 32 },
      { kind: 'mla', window: 0 },
    ]);
    // attn_global_every = 3 over 4 layers: layer 2 is global by (2+1) % 3, layer 3 because it is the last.
    const every3 = { ...cfg, attn_global_every: 3 };
    expect([0, 1, 2, 3].map((i) => layerAttention(every3, i).kind)).toEqual(['swa', 'swa', 'mla', 'mla']);
    const specs = new Map(modelParamSpecs(cfg).map((s) => [s.name, s]));
    // (4 query + 2 * 2 key/value heads) * 16 dims.
    expect(specs.get('blocks.0.attn.qkv.weight')).toMatchObject({
      shape: [128, 64],
      init: { kind: 'normal', std: 0.02 },
    });
    expect(specs.get('blocks.0.attn.qkv.bias')).toMatchObject({ shape: [128], init: { kind: 'zeros' } });
    expect(specs.get('blocks.2.attn.out.weight')).toMatchObject({
      shape: [64, 64],
      init: { kind: 'normal', std: 0.02 / Math.sqrt(6) },
    });
    expect(specs.get('blocks.2.attn.out.bias')!.init.kind).toBe('zeros');
    expect(specs.get('blocks.2.attn.sinks')).toMatchObject({ shape: [4], init: { kind: 'zeros' } });
    expect(specs.has('blocks.1.attn.wkv_a.weight') && !specs.has('blocks.1.attn.sinks')).toBe(true);
  });

  it('cached decoding refuses a model with SWA layers in one line; full forwards (likelihood scoring) run', () => {
    expectNoKvCache(PRESET, 'SWA', 8);
  });

  const { straightDir, steps: N } = presetTraining(PRESET, root);

  it('the Hugging Face export records each layer kind, and import-hf reads the SWA tensors back', () => {
    const step = listSteps(straightDir).find((s) => s.step === N)!;
    const out = join(root, 'hf');
    exportHf(step, out);
    const json = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(json.layer_types).toEqual(['sliding_attention', 'full_attention', 'sliding_attention', 'full_attention']);
    expect(json.sliding_window).toBe(32);
    expect(json.nmoe.layer_attention).toEqual(['swa', 'mla', 'swa', 'mla']);
    const hf = readSafetensors(join(out, 'model.safetensors')).tensors;
    const dense = readSafetensors(join(step.dir, DENSE_FILE)).tensors;
    expect(hf.get('model.layers.0.self_attn.sinks')!.data).toEqual(dense.get('blocks.0.attn.sinks')!.data);
    expect(hf.get('model.layers.2.self_attn.qkv_proj.bias')!.shape).toEqual([128]);
    expect(hf.get('model.layers.2.self_attn.o_proj.bias')!.shape).toEqual([64]);

    const back = importHf(out);
    expect(back.config.attn_local).toBe('swa');
    for (const name of ['blocks.0.attn.qkv.weight', 'blocks.0.attn.sinks', 'blocks.2.attn.out.bias']) {
      expect(back.tensors.get(name)!.data, name).toEqual(dense.get(name)!.data);
    }

    json.nmoe.layer_attention = ['mla', 'mla', 'mla', 'mla'];
    writeFileSync(join(out, 'config.json'), JSON.stringify(json));
    expect(() => importHf(out)).toThrow(
      /records layer attention \[mla, mla, mla, mla\], but its nmoe\.config gives \[swa, mla, swa, mla\]/,
    );
  });
});

describe.skipIf(!haveTorch)('SWA parity with PyTorch', () => {
  /** tools/torch_ref.py on a prepared folder: the reference's loss and gradients. */
  it.each([
    ['local SWA between MLA (GQA, window 5)', ['--attn_local_window=5']],
    ['global SWA everywhere (MHA heads, no window)', ['--attn=swa', '--attn_global_every=1', '--attn_swa.kv_heads=4']],
  ])(
    '%s: fp32 loss and every gradient agree',
    async (_label, extra) => {
      const outDir = join(root, `parity-${extra.length}`);
      const c = await torchParity(PRESET, outDir, ['--seq_len=16', '--batch_size=2', ...extra]);
      expect(c.rows.some((r) => r.name.endsWith('.attn.sinks') && r.normRef > 0)).toBe(true);
    },
    120_000,
  );
});
