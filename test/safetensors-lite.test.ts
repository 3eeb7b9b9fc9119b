/**
 * tools/safetensors_lite.py, the reader/writer the PyTorch parity tools fall back to where the `safetensors`
 * module is absent (Debian's torch 1.13): a file nmoe writes is read by it, and the file it writes back
 * (values changed on the Python side, metadata added) is read by nmoe.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { readSafetensors, writeSafetensors } from '../src/checkpoint/safetensors.ts';
import { TORCH_PYTHON as PYTHON, haveTorch, requireTorch } from './helpers/torch.ts';

const TOOLS = fileURLToPath(new URL('../tools/', import.meta.url));
requireTorch('safetensors_lite.py', 'test/safetensors-lite.test.ts');

/** Reads `src`, doubles every tensor, adds metadata seen=<names>, writes `dst`. */
const DOUBLE_AND_WRITE = `
import sys, safetensors_lite as st
tensors, meta = st.load(sys.argv[1])
st.save({k: t * 2 for k, t in tensors.items()}, sys.argv[2], {**meta, "seen": ",".join(sorted(tensors))})
`;

describe.skipIf(!haveTorch)('safetensors_lite.py', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nmoe-safetensors-lite-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('reads what nmoe writes and writes what nmoe reads (F32, BF16, I32, metadata)', () => {
    const src = join(dir, 'in.safetensors');
    const dst = join(dir, 'out.safetensors');
    writeSafetensors(
      src,
      [
        { name: 'w', dtype: 'F32', shape: [2, 3], data: Float32Array.from([1, -2, 3.5, 0.25, 1e-3, -7]) },
        { name: 'h', dtype: 'BF16', shape: [3], data: Float32Array.from([1, 1.5, -0.125]) },
        { name: 'ids', dtype: 'I32', shape: [4], data: Int32Array.from([0, 7, -3, 2 ** 30]) },
      ],
      { batch: '2' },
    );
    const r = spawnSync(PYTHON, ['-c', DOUBLE_AND_WRITE, src, dst], { cwd: TOOLS, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const { tensors, metadata } = readSafetensors(dst);
    expect(metadata).toEqual({ batch: '2', seen: 'h,ids,w' });
    expect(tensors.get('w')).toMatchObject({ dtype: 'F32', shape: [2, 3] });
    expect(Array.from(tensors.get('w')!.data)).toEqual(Array.from(Float32Array.from([2, -4, 7, 0.5, 2e-3, -14])));
    expect(tensors.get('h')).toMatchObject({ dtype: 'BF16', shape: [3] });
    expect(Array.from(tensors.get('h')!.data)).toEqual([2, 3, -0.25]);
    expect(tensors.get('ids')).toMatchObject({ dtype: 'I32', shape: [4] });
    expect(Array.from(tensors.get('ids')!.data)).toEqual([0, 14, -6, -(2 ** 31)]);
  });
});
