/**
 * CI compile check of every CUDA kernel file: nvcc builds each for Hopper (sm_90a) exactly as NVRTC will at run
 * time, with every template instantiation the backend launches, and ptxas must report no register spills. The
 * kernel-name registry must list exactly the kernels the files instantiate.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KERNEL_NAMES } from '../src/tensor/cuda/kernel-names.ts';
import { KERNEL_DIR } from '../src/tensor/cuda/nvrtc.ts';

const nvcc = spawnSync('nvcc', ['--version'], { encoding: 'utf8' }).status === 0;
const files = readdirSync(KERNEL_DIR).filter((f) => f.endsWith('.cu'));

describe.skipIf(!nvcc)('CUDA kernels compile for sm_90a with no spills', () => {
  it('covers every .cu file in the registry', () => {
    expect(Object.keys(KERNEL_NAMES).sort()).toEqual([...files].sort());
  });

  for (const file of files) {
    it(
      file,
      () => {
        const report = spawnSync(
          'nvcc',
          [
            '-cubin',
            '-gencode=arch=compute_90a,code=sm_90a',
            '-std=c++17',
            '-Xptxas',
            '-v',
            '-o',
            '/dev/null',
            join(KERNEL_DIR, file),
          ],
          { encoding: 'utf8' },
        );
        expect(report.status, report.stderr).toBe(0);
        const spills = [...report.stderr.matchAll(/(\d+) bytes spill stores, (\d+) bytes spill loads/g)];
        expect(spills.length, 'ptxas printed no resource report').toBeGreaterThan(0);
        for (const m of spills) expect(Number(m[1]) + Number(m[2]), `spills in ${file}`).toBe(0);
        // Each templated registry entry must be explicitly instantiated in the file (NVRTC looks them up by name).
        const source = readFileSync(join(KERNEL_DIR, file), 'utf8');
        for (const name of KERNEL_NAMES[file]!) {
          const base = name.replace(/<.*$/, '');
          expect(source, `${name} in ${file}`).toMatch(
            new RegExp(`__global__ void (__launch_bounds__\\([^)]*\\) )?${base}\\b`),
          );
        }
      },
      60_000,
    );
  }
});
