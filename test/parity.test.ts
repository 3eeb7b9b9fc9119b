/**
 * tools/parity.ts without PyTorch (CI has none): nmoe on the CPU against itself through the parity files. The
 * gradients computed from weights.safetensors and batch.safetensors must equal, bit for bit, those of the same model
 * built in memory; and the comparison must catch a perturbed, missing or mis-shaped gradient and a wrong loss.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import {
  type ReadTensor,
  readSafetensors,
  readSafetensorsHeader,
  writeSafetensors,
} from '../src/checkpoint/safetensors.ts';
import { Transformer } from '../src/model/transformer.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import {
  TOLERANCES,
  compareFiles,
  compareResults,
  formatComparison,
  main,
  nmoeGrads,
  prepareParity,
  randomBatch,
  readParityConfig,
  relativeError,
} from '../tools/parity.ts';

const dir = mkdtempSync(join(tmpdir(), 'nmoe-parity-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SMALL = ['--seq_len=16', '--batch_size=2', '--dim=32', '--n_layers=3', '--inter_dim=48', '--moe_inter_dim=16'];

describe('nmoe against itself through the parity files', () => {
  it('gradients from the files equal those of the model built in memory', async () => {
    const out = join(dir, 'a');
    const { files, cfg } = await prepareParity({
      overrides: SMALL,
      device: 'cpu',
      precision: 'fp32',
      outDir: out,
      biasStd: 0,
    });
    await nmoeGrads(files, { device: 'cpu', precision: 'fp32' });

    // The same model and batch without any file in between.
    const cpu = new CpuBackend();
    const model = new Transformer(cpu, readParityConfig(files.config));
    model.params.initialize(cfg.seed);
    const { inputs, targets } = randomBatch(cfg, cfg.seed);
    const fwd = model.forward(
      cpu.upload(inputs, [inputs.length], 'i32'),
      cpu.upload(targets, [targets.length], 'i32'),
      cfg.batch_size,
    );
    const loss = (await cpu.read(fwd.loss))[0]!;
    model.backward(fwd.saved);
    const direct = new Map<string, ReadTensor>([['loss', { dtype: 'F32', shape: [1], data: Float32Array.of(loss) }]]);
    for (const p of model.params.trainable()) {
      direct.set(`grad.${p.name}`, {
        dtype: 'F32',
        shape: [...p.shape],
        data: (await cpu.read(p.grad!)) as Float32Array,
      });
    }

    const c = compareResults(readSafetensors(files.grads), { tensors: direct, metadata: {} }, TOLERANCES.fp32);
    expect(c.problems).toEqual([]);
    expect(c.rows.length).toBe(model.params.trainable().length);
    expect(c.loss.err).toBe(0);
    expect(Math.max(...c.rows.map((r) => r.err))).toBe(0);
    expect(
      c.rows.every((r) => r.normRef > 0),
      'every parameter gets a gradient',
    ).toBe(true);
    expect(c.ok).toBe(true);
    expect(formatComparison(c).at(-1)).toMatch(
      /^PASS: loss 0\.00e\+0 \(tol 1\.00e-4\), \d+\/\d+ gradients within 1\.00e-3/,
    );

    // The routing of every MoE layer travels with the gradients, for torch_ref.py --routing.
    const route = readSafetensors(files.grads).tensors.get('route.blocks.2.ffn.idx')!;
    expect(route.shape).toEqual([cfg.batch_size * cfg.seq_len, cfg.n_activated_experts]);
  });

  it('catches a perturbed, missing or mis-shaped gradient and a wrong loss', async () => {
    const out = join(dir, 'b');
    const { files } = await prepareParity({ overrides: SMALL, device: 'cpu', precision: 'fp32', outDir: out });
    await nmoeGrads(files, { device: 'cpu', precision: 'fp32' });
    const good = readSafetensors(files.grads);
    const variant = (
      edit: (m: Map<string, { dtype: 'F32' | 'I32'; shape: number[]; data: Float32Array | Int32Array }>) => void,
    ) => {
      const m = new Map(
        [...good.tensors].map(([k, v]) => [
          k,
          { dtype: v.dtype as 'F32' | 'I32', shape: [...v.shape], data: v.data.slice() },
        ]),
      );
      edit(m);
      const path = join(out, `variant-${Math.random().toString(36).slice(2)}.safetensors`);
      writeSafetensors(
        path,
        [...m].map(([name, t]) => ({ name, ...t })),
      );
      return compareFiles(path, files.grads, TOLERANCES.fp32);
    };

    const name = 'grad.blocks.1.attn.wkv_b.weight';
    const bumped = variant((m) => {
      const g = m.get(name)!.data as Float32Array;
      for (let i = 0; i < g.length; i++) g[i]! *= 1.01;
    });
    expect(bumped.ok).toBe(false);
    const row = bumped.rows.find((r) => r.name === 'blocks.1.attn.wkv_b.weight')!;
    expect(row.ok).toBe(false);
    expect(row.err).toBeCloseTo(0.01, 5);
    expect(bumped.rows.filter((r) => !r.ok).length).toBe(1);
    expect(formatComparison(bumped).at(-1)).toMatch(
      /^FAIL: .*gradients within 1\.00e-3 \(worst 1\.00e-2: blocks\.1\.attn\.wkv_b\.weight\)/,
    );

    const missing = variant((m) => m.delete(name));
    expect(missing.ok).toBe(false);
    expect(missing.problems).toEqual(['blocks.1.attn.wkv_b.weight: the reference has a gradient, nmoe has none']);

    const reshaped = variant((m) => {
      m.get(name)!.shape.reverse();
    });
    expect(reshaped.problems[0]).toMatch(
      /blocks\.1\.attn\.wkv_b\.weight: nmoe's gradient is \[\d+, \d+\], the reference's/,
    );

    const loss = variant((m) => {
      (m.get('loss')!.data as Float32Array)[0]! *= 1.001;
    });
    expect(loss.ok).toBe(false);
    expect(loss.loss.ok).toBe(false);
    expect(loss.rows.every((r) => r.ok)).toBe(true);

    // The command line's --compare: exit code 0 on a match, 1 on a mismatch.
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    expect(await main(['--compare', files.grads, files.grads])).toBe(0);
    const bad = join(out, 'bad.safetensors');
    writeSafetensors(
      bad,
      [...good.tensors]
        .filter(([n]) => n !== name)
        .map(([n, t]) => ({ name: n, dtype: t.dtype as 'F32', shape: t.shape, data: t.data })),
    );
    expect(await main(['--compare', bad, files.grads])).toBe(1);
    expect(log.mock.calls.at(-1)![0]).toMatch(/^FAIL: /);
    log.mockRestore();
  });

  it('bf16: weights travel as BF16 and the run matches itself', async () => {
    const out = join(dir, 'c');
    const { files } = await prepareParity({
      overrides: [...SMALL, '--attn=mha'],
      device: 'cpu',
      precision: 'bf16',
      outDir: out,
    });
    expect(readSafetensorsHeader(files.weights).tensors.get('blocks.0.attn.wq.weight')!.dtype).toBe('BF16');
    expect(readSafetensorsHeader(files.weights).tensors.get('blocks.1.ffn.router.bias')!.dtype).toBe('F32');
    const a = await nmoeGrads(files, { device: 'cpu', precision: 'bf16' });
    const b = await nmoeGrads(files, { device: 'cpu', precision: 'bf16', out: join(out, 'again.safetensors') });
    expect(b.loss).toBe(a.loss);
    const c = compareFiles(a.out, b.out, TOLERANCES.bf16);
    expect(c.ok).toBe(true);
    expect(Math.max(...c.rows.map((r) => r.err))).toBe(0);
  });

  it('relative error against a zero reference is the absolute error', () => {
    expect(relativeError([0, 0], [0, 0]).err).toBe(0);
    expect(relativeError([3, 4], [0, 0]).err).toBe(5);
    expect(relativeError([1, 1], [1, 0]).err).toBe(1);
    expect(relativeError([NaN], [1]).err).toBe(Infinity);
  });
});
