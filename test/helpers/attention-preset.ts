/**
 * What every attention kind's tiny preset (configs/tiny-swa.toml, tiny-kda.toml, ...) shows on the CPU: it trains with
 * the loss falling, and k steps, a stop and a resume to N give the losses and checkpoint files of N straight steps,
 * bit for bit. `presetTraining` registers those two tests in the calling describe block and returns the folder of the
 * straight run, whose last step the caller's own tests (the Hugging Face export) read once they run after them.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { DENSE_FILE, iterName, rankFile } from '../../src/checkpoint/layout.ts';
import { loadConfig } from '../../src/config/load.ts';
import { CpuBackend } from '../../src/tensor/cpu/backend.ts';
import { train } from '../../src/train/trainer.ts';

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
