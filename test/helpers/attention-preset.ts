/**
 * What every attention kind's tiny preset (configs/tiny-swa.toml, tiny-kda.toml, ...) shows on the CPU: it trains with
 * the loss falling, and k steps, a stop and a resume to N give the losses and checkpoint files of N straight steps,
 * bit for bit. `presetTraining` registers those two tests in the calling describe block and returns the folder of the
 * straight run, whose last step the caller's own tests (the Hugging Face export) read once they run after them.
 * `torchParity` compares one step's loss and gradients with tools/torch_ref.py's independent implementation, and
 * `expectNoKvCache` checks that a kind cached decoding does not hold is refused in one line while full forwards run.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';
import { DENSE_FILE, iterName, rankFile } from '../../src/checkpoint/layout.ts';
import { loadConfig } from '../../src/config/load.ts';
import { modelConfig } from '../../src/config/sections.ts';
import { Decoder } from '../../src/model/decoder.ts';
import { Transformer } from '../../src/model/transformer.ts';
import { asCpu } from '../../src/tensor/cpu/storage.ts';
import { UserError } from '../../src/util/errors.ts';
import { CpuBackend } from '../../src/tensor/cpu/backend.ts';
import { train } from '../../src/train/trainer.ts';
import { TOLERANCES, compareFiles, formatComparison, nmoeGrads, prepareParity } from '../../tools/parity.ts';
import { TORCH_PYTHON } from './torch.ts';

const TORCH_REF = fileURLToPath(new URL('../../tools/torch_ref.py', import.meta.url));

const QUICK = ['--seq_len=48', '--batch_size=2', '--warmup_steps=2', '--log_every=100', '--checkpoint_every=2'];

/** Trains `preset` for `steps` on the CPU into `dir` (metrics and registry under `root`), quickly. */
export async function trainPreset(preset: string, root: string, dir: string, steps: number, extra: string[] = []) {
  const { config } = loadConfig(preset, {
    env: {},
    overrides: [
      ...QUICK,
      `--steps=${steps}`,
      `--checkpoint_dir=${dir}`,
      `--metrics_dir=${join(root, 'metrics')}`,
      `--experiments_db=${join(root, 'exp.db')}`,
      ...extra,
    ],
  });
  const losses: number[] = [];
  const summary = await train(config, new CpuBackend(), {
    start: () => {},
    step: (r) => losses.push(r.loss),
    log: () => {},
  });
  return { losses, summary };
}

/** SHA-256 of a step's dense and rank-0 files. */
export function stepBytes(dir: string, step: number): string[] {
  return [DENSE_FILE, rankFile(0)].map((f) =>
    createHash('sha256')
      .update(readFileSync(join(dir, iterName(step), f)))
      .digest('hex'),
  );
}

/** `extra`: overrides every run of the preset takes (e.g. a smaller top_k). */
export function presetTraining(
  preset: string,
  root: string,
  { extra = [], timeoutMs = 180_000 }: { extra?: string[]; timeoutMs?: number } = {},
): { straightDir: string; steps: number } {
  const straightDir = join(root, 'straight');
  const steps = 6;

  it(
    'trains on the CPU with the loss falling',
    async () => {
      const { losses } = await trainPreset(preset, root, join(root, 'learn'), 30, ['--checkpoint_every=0', ...extra]);
      expect(losses).toHaveLength(30);
      const tail = losses.slice(-5).reduce((a, b) => a + b, 0) / 5;
      expect(tail).toBeLessThan(losses[0]! - 1);
    },
    timeoutMs,
  );

  it(
    'k steps, stop, resume to N: bit-identical losses and final files',
    async () => {
      const straight = await trainPreset(preset, root, straightDir, steps, extra);
      const dir = join(root, 'resume');
      const first = await trainPreset(preset, root, dir, 3, extra);
      expect(first.losses).toEqual(straight.losses.slice(0, 3));
      const second = await trainPreset(preset, root, dir, steps, ['--resume', ...extra]);
      expect(second.summary.startStep).toBe(3);
      expect(second.losses).toEqual(straight.losses.slice(3));
      expect(stepBytes(dir, steps)).toEqual(stepBytes(straightDir, steps));
    },
    timeoutMs,
  );

  return { straightDir, steps };
}

/**
 * One fp32 forward and backward of `preset` (with `overrides`) by nmoe and by tools/torch_ref.py, from the same
 * weights and batch, on the CPU. Fails unless the loss and every gradient agree; returns the comparison for the
 * caller's own checks (that the kind's parameters took part).
 */
export async function torchParity(preset: string, outDir: string, overrides: string[]) {
  const { files } = await prepareParity({ configPath: preset, overrides, device: 'cpu', precision: 'fp32', outDir });
  await nmoeGrads(files, { device: 'cpu', precision: 'fp32' });
  const ref = join(outDir, 'torch_grads.safetensors');
  const args = ['--config', files.config, '--weights', files.weights, '--batch', files.batch, '--out', ref];
  const r = spawnSync(TORCH_PYTHON, [TORCH_REF, ...args, '--device', 'cpu'], { encoding: 'utf8' });
  expect(r.status, r.stderr).toBe(0);
  const c = compareFiles(files.grads, ref, TOLERANCES.fp32);
  expect(c.ok, formatComparison(c).join('\n')).toBe(true);
  return c;
}

/**
 * A model of `preset` refuses cached decoding in one line naming its `kind` layers and the fix (likelihood tasks),
 * and a full forward of `tokens` tokens (what likelihood scoring runs) gives finite hidden states.
 */
export function expectNoKvCache(preset: string, kind: string, tokens: number): void {
  const cfg = modelConfig(loadConfig(preset, { env: {}, overrides: ['--seq_len=8'] }).config);
  const cpu = new CpuBackend();
  const model = new Transformer(cpu, cfg);
  model.params.initialize(cfg.seed);
  const dec = new Decoder(model);
  expect(() => dec.newCache(16)).toThrow(UserError);
  expect(() => dec.newCache(16)).toThrow(
    new RegExp(`has ${kind} layers .* Fix: score it with \`nmoe eval\` likelihood tasks`),
  );
  const ids = Int32Array.from({ length: tokens }, (_, i) => i + 1);
  const h = dec.hidden(cpu.upload(ids, [tokens], 'i32'), 1, tokens);
  expect(h.shape).toEqual([tokens, cfg.dim]);
  expect(Array.from(asCpu(h).f).every(Number.isFinite)).toBe(true);
  model.free();
}
