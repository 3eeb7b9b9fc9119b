/**
 * DSA (DeepSeek Sparse Attention) on the CPU: configs/tiny-dsa.toml's layers and parameters, what the selection
 * changes, training with the loss falling, exact resume, the Hugging Face export and import, and parity with the
 * independent PyTorch model (tools/torch_ref.py) for the loss and every gradient.
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
import { asCpu, setDoubleStorage } from '../src/tensor/cpu/storage.ts';
import { expectNoKvCache, presetTraining, torchParity } from './helpers/attention-preset.ts';
import { haveTorch, requireTorch } from './helpers/torch.ts';

requireTorch('DSA parity with PyTorch', 'test/dsa.test.ts');

const PRESET = 'configs/tiny-dsa.toml';
const root = mkdtempSync(join(tmpdir(), 'nmoe-dsa-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Mean loss of one forward of the preset's model (seed-initialised) on fixed tokens. */
function presetLoss(overrides: string[]): number {
  const cfg = modelConfig(loadConfig(PRESET, { env: {}, overrides: ['--seq_len=40', ...overrides] }).config);
  const backend = new CpuBackend();
  const model = new Transformer(backend, cfg);
  model.params.initialize(cfg.seed);
  const tokens = Array.from({ length: 41 }, (_, i) => (i * 37 + 11) % 255);
  const ids = backend.upload(Int32Array.from(tokens.slice(0, 40)), [40], 'i32');
  const targets = backend.upload(Int32Array.from(tokens.slice(1)), [40], 'i32');
  const loss = asCpu(model.forward(ids, targets, 1, { grad: false }).loss).f[0]!;
  model.free();
  return loss;
}

describe('configs/tiny-dsa.toml', () => {
  it('puts DSA on every layer, with MLA parameters plus the indexer under the reference names and inits', () => {
    const cfg = modelConfig(loadConfig(PRESET, { env: {} }).config);
    expect([0, 1, 2, 3].map((i) => layerAttention(cfg, i).kind)).toEqual(['dsa', 'dsa', 'dsa', 'dsa']);
    const specs = new Map(modelParamSpecs(cfg).map((s) => [s.name, s]));
    const input = { kind: 'normal', std: 0.02 };
    expect(specs.get('blocks.0.attn.wq_idx.weight')).toMatchObject({ shape: [64, 64], init: input });
    expect(specs.get('blocks.1.attn.wk_idx.weight')).toMatchObject({ shape: [16, 64], init: input });
    expect(specs.get('blocks.2.attn.w_idx.weight')).toMatchObject({ shape: [4, 64], init: input });
    expect(specs.get('blocks.2.attn.wo.weight')).toMatchObject({ init: { kind: 'normal', std: 0.02 / Math.sqrt(6) } });
    expect(specs.has('blocks.3.attn.wq_a.weight') && specs.has('blocks.3.attn.kv_norm.weight')).toBe(true);
  });

  it('the selection matters once a query sees more than top_k keys, and top_k >= seq_len is dense MLA', () => {
    const sparse = presetLoss(['--attn_dsa.top_k=8']);
    const allKeys = presetLoss(['--attn_dsa.top_k=40']);
    const mla = presetLoss(['--attn=mla']);
    const warmup = presetLoss(['--attn_dsa.training_mode=dense_warmup']);
    // The indexer's weights are extra parameters: the MLA weights they share with attn = "mla" initialise the same.
    expect(allKeys).toBeCloseTo(mla, 5);
    expect(warmup).toBeCloseTo(mla, 5);
    expect(Math.abs(sparse - mla)).toBeGreaterThan(1e-4);
  });

  it('cached decoding refuses a model with DSA layers in one line; full forwards run', () => {
    expectNoKvCache(PRESET, 'DSA', 8);
  });

  // Top 16 of up to 48 keys, so the indexer's choice matters.
  const { straightDir, steps: N } = presetTraining(PRESET, root, { extra: ['--attn_dsa.top_k=16'] });

  it('the Hugging Face export names the indexer tensors and records DSA, and import-hf reads them back', () => {
    const step = listSteps(straightDir).find((s) => s.step === N)!;
    const out = join(root, 'hf');
    exportHf(step, out);
    const json = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8'));
    expect(json.nmoe.layer_attention).toEqual(['dsa', 'dsa', 'dsa', 'dsa']);
    expect(json.nmoe.differences.some((d: string) => d.includes('"dsa" are MLA over the top 16 keys'))).toBe(true);
    const hf = readSafetensors(join(out, 'model.safetensors')).tensors;
    const dense = readSafetensors(join(step.dir, DENSE_FILE)).tensors;
    expect(hf.get('model.layers.0.self_attn.indexer.wq.weight')!.data).toEqual(
      dense.get('blocks.0.attn.wq_idx.weight')!.data,
    );
    expect(hf.get('model.layers.1.self_attn.indexer.wk.weight')!.shape).toEqual([16, 64]);
    expect(hf.get('model.layers.2.self_attn.indexer.weights_proj.weight')!.shape).toEqual([4, 64]);
    const back = importHf(out);
    expect(back.config.attn).toBe('dsa');
    expect(back.config.attn_dsa.top_k).toBe(16);
    for (const name of ['blocks.0.attn.w_idx.weight', 'blocks.3.attn.wk_idx.weight', 'blocks.1.attn.wq_b.weight']) {
      expect(back.tensors.get(name)!.data, name).toEqual(dense.get(name)!.data);
    }
  });
});

describe('the indexer alignment loss (attn_dsa.indexer_loss_weight)', () => {
  afterAll(() => setDoubleStorage(false));

  /** The preset's model at toy length; the loss and a copy of every gradient after one forward and backward. */
  function lossAndGrads(extra: string[]) {
    const cfg = modelConfig(
      loadConfig(PRESET, { env: {}, overrides: ['--seq_len=10', '--attn_dsa.top_k=4', ...extra] }).config,
    );
    const backend = new CpuBackend();
    const model = new Transformer(backend, cfg);
    model.params.initialize(cfg.seed);
    const tokens = Array.from({ length: 21 }, (_, i) => (i * 53 + 7) % 255);
    const ids = backend.upload(Int32Array.from(tokens.slice(0, 20)), [20], 'i32');
    const targets = backend.upload(Int32Array.from(tokens.slice(1)), [20], 'i32');
    const lossAt = () => asCpu(model.forward(ids, targets, 2, { grad: false }).loss).f[0]!;
    model.params.zeroGrads();
    const fwd = model.forward(ids, targets, 2);
    const loss = asCpu(fwd.loss).f[0]!;
    model.backward(fwd.saved);
    const grads = new Map(model.params.trainable().map((p) => [p.name, Float64Array.from(asCpu(p.grad!).f)]));
    return { model, loss, grads, lossAt };
  }

  it.each([['sparse'], ['dense_warmup']])(
    '%s: trains the indexer by finite differences of the loss, and leaves every other gradient as without it',
    (mode) => {
      setDoubleStorage(true);
      const base = lossAndGrads([`--attn_dsa.training_mode=${mode}`]);
      const withLoss = lossAndGrads([`--attn_dsa.training_mode=${mode}`, '--attn_dsa.indexer_loss_weight=0.5']);
      expect(withLoss.loss).toBeGreaterThan(base.loss);
      for (const [name, g] of base.grads) {
        if (/_idx\.weight$/.test(name)) continue;
        expect(Array.from(withLoss.grads.get(name)!), name).toEqual(Array.from(g));
      }
      // The loss does not depend on the indexer while the selection holds, so its gradient is the alignment's.
      for (const name of ['blocks.0.attn.wq_idx.weight', 'blocks.2.attn.wk_idx.weight', 'blocks.3.attn.w_idx.weight']) {
        expect(
          base.grads.get(name)!.every((x) => x === 0),
          name,
        ).toBe(true);
        const g = withLoss.grads.get(name)!;
        const theta = asCpu(withLoss.model.params.get(name)).f;
        const norm = Math.hypot(...g);
        expect(norm).toBeGreaterThan(0);
        const orig = Float64Array.from(theta);
        const eps = 1e-4;
        const at = (sign: number) => {
          for (let j = 0; j < theta.length; j++) theta[j] = orig[j]! + (sign * eps * g[j]!) / norm;
          return withLoss.lossAt();
        };
        const numeric = (at(1) - at(-1)) / (2 * eps);
        theta.set(orig);
        expect(Math.abs(numeric - norm) / norm, name).toBeLessThan(1e-6);
      }
      base.model.free();
      withLoss.model.free();
    },
  );
});

describe.skipIf(!haveTorch)('DSA parity with PyTorch', () => {
  it.each([
    ['DSA on every layer, top 6 of up to 16 keys', ['--seq_len=16', '--attn_dsa.top_k=6']],
    [
      'DSA local layers before MLA, no q_lora, top 5',
      ['--seq_len=12', '--attn_dsa.top_k=5', '--attn_global_every=2', '--attn_local=dsa', '--q_lora_rank=0'],
    ],
    ['DSA dense warm-up', ['--seq_len=12', '--attn_dsa.training_mode=dense_warmup']],
    [
      'DSA with the indexer alignment loss',
      ['--seq_len=16', '--attn_dsa.top_k=6', '--attn_dsa.indexer_loss_weight=0.5'],
    ],
    [
      'DSA dense warm-up with the indexer alignment loss',
      ['--seq_len=12', '--attn_dsa.training_mode=dense_warmup', '--attn_dsa.indexer_loss_weight=2'],
    ],
  ])(
    '%s: fp32 loss and every gradient agree',
    async (label, extra) => {
      const outDir = join(root, `parity-${label.length}`);
      const c = await torchParity(PRESET, outDir, ['--batch_size=2', ...extra]);
      expect(c.rows.some((row) => row.name.endsWith('.attn.wkv_b.weight') && row.normRef > 0)).toBe(true);
      const trained = c.rows.some((row) => row.name.endsWith('.attn.wq_idx.weight') && row.normRef > 0);
      expect(trained).toBe(extra.some((o) => o.startsWith('--attn_dsa.indexer_loss_weight')));
    },
    120_000,
  );
});
