/**
 * tools/gpu-multi.ts runs only on a node with several GPUs; its verdicts are tested here, on the CPU, with the
 * data a failed run leaves: none, too little, or from a single GPU. The tool itself is run once, where there is
 * no nvidia-smi: it must stop with one line, not crash.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { bitIdentical, gpuCount, gradsAgree, lossesAgree, resumeExact } from '../tools/gpu-multi-checks.ts';

const losses = (n: number, shift = 0) => Array.from({ length: n }, (_, i) => 5 - i / 10 + shift);

describe('gpu-multi verdicts', () => {
  it('count the GPUs, refusing one GPU and a machine without nvidia-smi', () => {
    const smi = (stdout: string) => () => ({ status: 0, stdout });
    expect(gpuCount(undefined, smi('GPU 0: NVIDIA H100 (UUID: a)\nGPU 1: NVIDIA H100 (UUID: b)\n'))).toBe(2);
    expect(gpuCount(undefined, smi('GPU 0: NVIDIA H100 (UUID: a)\n'))).toMatch(
      /1 GPU\(s\) were found\. Fix: run on a node with 2 or more GPUs/,
    );
    expect(
      gpuCount(undefined, () => ({ status: null, stdout: null, error: new Error('spawnSync nvidia-smi ENOENT') })),
    ).toMatch(/^nvidia-smi -L did not run \(spawnSync nvidia-smi ENOENT\)/);
    expect(gpuCount('1', smi(''))).toMatch(/1 GPU\(s\)/);
    expect(gpuCount('4', smi(''))).toBe(4);
  });

  it('never call two empty or short loss lists bit-identical or in agreement', () => {
    expect(bitIdentical([], [], 50)).toEqual({ ok: false, detail: 'expected 50 losses from each run, got 0 and 0' });
    expect(bitIdentical(losses(50), losses(50), 50).ok).toBe(true);
    expect(bitIdentical(losses(50), losses(50, 1e-9), 50).ok).toBe(false);
    expect(lossesAgree([], [], 50, 5e-2).ok).toBe(false);
    expect(lossesAgree(losses(50), losses(49), 50, 5e-2).ok).toBe(false);
    expect(lossesAgree(losses(50), losses(50, 1e-3), 50, 5e-2).ok).toBe(true);
    expect(
      lossesAgree(
        losses(50),
        losses(50).map(() => NaN),
        50,
        5e-2,
      ).ok,
    ).toBe(false);
  });

  it('compare the summed loss of the ranks, not only the gradients', () => {
    const single = { grads: { 'blocks.1.ffn.W1': [1, 2, 3, 4] }, loss: 5.5 };
    const half = (r: number, loss: number) => ({
      grads: { 'blocks.1.ffn.W1': [1, 2, 3, 4].slice(2 * r, 2 * r + 2) },
      loss,
    });
    expect(gradsAgree(single, [half(0, 2.75), half(1, 2.75)], 2).ok).toBe(true);
    expect(gradsAgree(single, [half(0, 2.75), half(1, 3.75)], 2)).toMatchObject({
      ok: false,
      detail: expect.stringContaining('summed loss 6.50000 vs 5.50000'),
    });
    expect(gradsAgree(single, [half(0, 2.75), null], 2).ok).toBe(false);
    expect(
      gradsAgree(
        { grads: {}, loss: 5.5 },
        [
          { grads: {}, loss: 2.75 },
          { grads: {}, loss: 2.75 },
        ],
        2,
      ).ok,
    ).toBe(false);
    expect(gradsAgree(single, [half(0, 2.75), { grads: {}, loss: 2.75 }], 2).detail).toBe(
      'rank 1 has no values of blocks.1.ffn.W1, expected 2',
    );
  });

  it('need every checkpoint file and every loss for exact resume', () => {
    const ok = {
      said: true,
      straight: losses(6),
      resumed: losses(6),
      steps: 6,
      files: ['dense', 'r0', 'r1'],
      identical: ['dense', 'r0', 'r1'],
      gpus: 2,
    };
    expect(resumeExact(ok).ok).toBe(true);
    expect(resumeExact({ ...ok, straight: [], resumed: [] }).ok).toBe(false);
    expect(resumeExact({ ...ok, files: [], identical: [] }).ok).toBe(false);
    expect(resumeExact({ ...ok, said: false }).ok).toBe(false);
  });
});

describe('tools/gpu-multi.ts', () => {
  it.skipIf(spawnSync('nvidia-smi', ['-L']).status === 0)(
    'stops with one line where nvidia-smi is missing, before any run',
    () => {
      const tool = fileURLToPath(new URL('../tools/gpu-multi.ts', import.meta.url));
      const r = spawnSync(process.execPath, ['--import', 'tsx', tool], {
        encoding: 'utf8',
        env: { ...process.env, PATH: '/nonexistent' },
        timeout: 60_000,
      });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr.trim()).toMatch(
        /^gpu-multi: nvidia-smi -L did not run \(.*ENOENT\), so the GPUs cannot be counted\. Fix: /,
      );
    },
  );
});
