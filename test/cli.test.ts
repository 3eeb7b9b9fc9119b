/** The nmoe CLI end to end, as a user runs it: a real child process, real output, real exit codes. */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { train } from '../src/train/trainer.ts';

const BIN = fileURLToPath(new URL('../bin/nmoe.js', import.meta.url));

function nmoe(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', env: { ...process.env, CI: '1', NO_COLOR: '1', ...env }, timeout: 120_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

const QUICK = ['--seq_len=32', '--batch_size=4', '--warmup_steps=2'];

describe('nmoe CLI', () => {
  it('has --help on every command', () => {
    const top = nmoe(['--help']);
    expect(top.code).toBe(0);
    expect(top.out).toMatch(/train/);
    expect(top.out).toMatch(/config/);
    for (const cmd of [['train'], ['config'], ['config', 'check'], ['config', 'show']]) {
      const r = nmoe([...cmd, '--help']);
      expect(r.code, cmd.join(' ')).toBe(0);
      expect(r.out).toMatch(/Usage: nmoe/);
    }
  });

  it('trains the embedded default with plain log lines off a TTY, and the loss falls', () => {
    const r = nmoe(['train', '--steps=8', '--log_every=4', ...QUICK]);
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/configs\/tiny\.toml/);
    expect(r.out).toMatch(/unigram entropy 3\.\d+ nats/);
    const losses = [...r.out.matchAll(/^step +(\d+)\/8 +loss (\d+\.\d+) +grad_norm [\d.]+ +lr [\d.e+-]+ +[\d.K]+ tok\/s +[\d.]+ TFLOPS +\d+ ms\/step$/gm)]
      .map((m) => [Number(m[1]), Number(m[2])]);
    expect(losses.map((l) => l[0])).toEqual([1, 4, 8]);
    expect(losses[2]![1]).toBeLessThan(losses[0]![1]!);
    expect(r.out).toMatch(/router: mean cv [\d.]+% +dead \d+ +L0\[cv \d+% max \d+% H [\d.]+ act \d bias [\d.]+\]/);
    expect(r.out).toMatch(/^done: 8 steps in \d+s \| loss 5\.\d+ -> \d\.\d+ \| /m);
    expect(r.out).not.toMatch(/\x1b\[2K/); // no progress-bar redraws in logs
  });

  it('applies NMOE_* environment overrides, then --key=value', () => {
    const r = nmoe(['train', '--log_every=1', ...QUICK], { NMOE_STEPS: '2' });
    expect(r.code, r.err).toBe(0);
    expect(r.out).toMatch(/^done: 2 steps/m);
  });

  it('rejects a bad override with a one-line error naming the key and the fix', () => {
    const r = nmoe(['train', '--n_layer=3']);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/n_layer.*did you mean n_layers/);
  });

  it('stops a diverging run with a clear message and exit code 2', () => {
    const r = nmoe(['train', '--steps=5', '--lr_dense=1e30', '--lr_expert=1e30', '--lr_router=1e30', '--grad_clip_norm=0', ...QUICK]);
    expect(r.code).toBe(2);
    expect(r.err).toMatch(/the loss became (NaN|-?Infinity) at step \d+; the update was skipped, so the weights hold step \d+\. Fix: lower the learning rates/);
  });

  it('says plainly why device = "cuda" cannot start on a machine without a GPU', () => {
    const r = nmoe(['train', '--device=cuda']);
    expect(r.code).toBe(2);
    expect(r.err.trim().split('\n')).toHaveLength(1);
    expect(r.err).toMatch(/device = "cuda" but the CUDA backend cannot start: cannot load the CUDA driver \(libcuda\.so\.1\)\. Looked in: .*; or set device = "cpu"\./);
  });

  it('checks every shipped config', () => {
    const r = nmoe(['config', 'check', 'configs/tiny.toml', 'configs/moonlet.toml', 'configs/moonlight.toml', 'configs/dsv2.toml', 'configs/dsv3.toml']);
    expect(r.code, r.out + r.err).toBe(0);
    expect(r.out.match(/^ok +configs/gm)).toHaveLength(5);
  });
});

describe('training loop', () => {
  it('stops cleanly after the step in flight when aborted (Ctrl-C)', async () => {
    const { config } = loadConfig(defaultConfigPath(), { env: {}, overrides: ['--steps=50', ...QUICK] });
    const abort = new AbortController();
    const seen: number[] = [];
    const summary = await train(config, new CpuBackend(), {
      start: () => {},
      step: (r) => {
        seen.push(r.step);
        if (r.step === 3) abort.abort();
      },
      log: () => {},
    }, abort.signal);
    expect(seen).toEqual([1, 2, 3]);
    expect(summary).toMatchObject({ steps: 3, stoppedEarly: true, tokensSeen: 3 * 4 * 32 });
  });

  it('is deterministic: the same seed gives bit-identical losses', async () => {
    const run = async () => {
      const { config } = loadConfig(defaultConfigPath(), { env: {}, overrides: ['--steps=3', ...QUICK] });
      const losses: number[] = [];
      await train(config, new CpuBackend(), { start: () => {}, step: (r) => losses.push(r.loss), log: () => {} });
      return losses;
    };
    expect(await run()).toEqual(await run());
  });
});
