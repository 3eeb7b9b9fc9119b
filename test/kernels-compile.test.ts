/**
 * The kernel boundary, checked without a GPU. Every kernel table (src/tensor/cuda/kernels/*.ts) must match its .cu
 * file's `__global__` signatures: names, parameter names and types in order, template parameters. Where nvcc is
 * installed, each file compiles for Hopper (sm_90a) with the kernel constants' -D options and every template
 * instance the host can launch, as NVRTC builds it at run time, and ptxas must report no register spills; without
 * the -D options a file stops with #error.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KERNEL_CONSTANTS, KERNEL_DEFINES } from '../src/tensor/cuda/kernel-constants.ts';
import { type KernelFile, declaredNames, kernelFile } from '../src/tensor/cuda/kernel-table.ts';
import { ATTENTION } from '../src/tensor/cuda/kernels/attention.ts';
import { ELEMENTWISE } from '../src/tensor/cuda/kernels/elementwise.ts';
import { FLASH } from '../src/tensor/cuda/kernels/flash.ts';
import { FP8 } from '../src/tensor/cuda/kernels/fp8.ts';
import { GROUPED } from '../src/tensor/cuda/kernels/grouped.ts';
import { GROUPED_FP8_SM90 } from '../src/tensor/cuda/kernels/grouped_fp8_sm90.ts';
import { GROUPED_SM90 } from '../src/tensor/cuda/kernels/grouped_sm90.ts';
import { GROUPED_WGRAD_PINGPONG_SM90 } from '../src/tensor/cuda/kernels/grouped_wgrad_pingpong_sm90.ts';
import { LOSS } from '../src/tensor/cuda/kernels/loss.ts';
import { LOSS_SM90 } from '../src/tensor/cuda/kernels/loss_sm90.ts';
import { MOE } from '../src/tensor/cuda/kernels/moe.ts';
import { OPTIM } from '../src/tensor/cuda/kernels/optim.ts';
import { RDEP } from '../src/tensor/cuda/kernels/rdep.ts';
import { SWA } from '../src/tensor/cuda/kernels/swa.ts';
import { KERNEL_DIR } from '../src/tensor/cuda/nvrtc.ts';
import { parseKernels, tableProblems } from './helpers/cuda-signatures.ts';

const KERNEL_FILES: readonly KernelFile[] = [
  ATTENTION,
  ELEMENTWISE,
  FLASH,
  FP8,
  GROUPED,
  GROUPED_FP8_SM90,
  GROUPED_SM90,
  GROUPED_WGRAD_PINGPONG_SM90,
  LOSS,
  LOSS_SM90,
  MOE,
  OPTIM,
  RDEP,
  SWA,
];
const nvcc = spawnSync('nvcc', ['--version'], { encoding: 'utf8' }).status === 0;
const files = readdirSync(KERNEL_DIR).filter((f) => f.endsWith('.cu'));
const source = (file: string) => readFileSync(join(KERNEL_DIR, file), 'utf8');

/** Every template instance a launch can name: the declared ones, and the reachable ones of on-demand kernels. */
function instances(table: KernelFile): string[] {
  const onDemand = Object.entries(table.kernels).flatMap(([name, spec]) =>
    spec.template && !spec.instances ? (spec.reachable ?? []).map((t) => `${name}<${t}>`) : [],
  );
  return [...declaredNames(table).filter((n) => n.includes('<')), ...onDemand];
}

describe('kernel tables', () => {
  it('cover every .cu file, once', () => {
    expect(KERNEL_FILES.map((t) => t.file).sort()).toEqual([...files].sort());
  });

  for (const table of KERNEL_FILES) {
    it(`${table.file} matches its table`, () => {
      expect(tableProblems(table, source(table.file))).toEqual([]);
      for (const [name, spec] of Object.entries(table.kernels))
        if (spec.template && !spec.instances) expect(spec.reachable, `${name}: reachable instances`).toBeDefined();
    });
  }

  const fixture = `
    template <typename T>
    __global__ void __launch_bounds__(256, 4) scale(const T* __restrict__ x, T* y, long n, float s) { }
    struct AdamGroups { float lr[4]; };
    extern "C" __global__ void take(const __grid_constant__ AdamGroups p, unsigned seed, long long t, int* out) { }
  `;
  const good = kernelFile('fixture.cu', {
    scale: {
      template: ['T'],
      instances: ['float'],
      params: [
        ['x', 'ptr'],
        ['y', 'ptr'],
        ['n', 'i64'],
        ['s', 'f32'],
      ],
    },
    take: {
      params: [
        ['p', 'AdamGroups'],
        ['seed', 'u32'],
        ['t', 'i64'],
        ['out', 'ptr'],
      ],
    },
  });

  it('reads signatures: pointers, scalars, structs by value, template parameters, attributes', () => {
    expect(parseKernels(fixture)).toEqual([
      {
        name: 'scale',
        template: ['T'],
        params: [
          { name: 'x', type: 'ptr' },
          { name: 'y', type: 'ptr' },
          { name: 'n', type: 'i64' },
          { name: 's', type: 'f32' },
        ],
      },
      {
        name: 'take',
        template: null,
        params: [
          { name: 'p', type: 'AdamGroups' },
          { name: 'seed', type: 'u32' },
          { name: 't', type: 'i64' },
          { name: 'out', type: 'ptr' },
        ],
      },
    ]);
    expect(tableProblems(good, fixture)).toEqual([]);
  });

  it('fails a table that drifts from its kernels', () => {
    type Spec = { params: [string, string][]; instances?: string[] };
    const drift = (change: (k: Record<string, Spec>) => void): string[] => {
      const kernels = structuredClone(good.kernels) as unknown as Record<string, Spec>;
      change(kernels);
      return tableProblems(kernelFile('fixture.cu', kernels as unknown as typeof good.kernels), fixture);
    };
    // A parameter's type, two parameters swapped, one missing, a template arity, a kernel missing or unknown.
    expect(drift((k) => (k.scale!.params[2]![1] = 'i32'))).toEqual([
      'scale: fixture.cu takes (ptr x, ptr y, i64 n, f32 s), the table says (ptr x, ptr y, i32 n, f32 s)',
    ]);
    expect(drift((k) => k.scale!.params.reverse())).toHaveLength(1);
    expect(drift((k) => k.take!.params.pop())).toHaveLength(1);
    expect(drift((k) => (k.scale!.instances = ['float, float']))).toEqual([
      'scale<float, float>: 1 template parameters in fixture.cu',
    ]);
    expect(drift((k) => delete k.take)).toEqual(['take: defined in fixture.cu, missing from its table']);
    expect(drift((k) => (k.gone = { params: [] }))).toEqual(['gone: in the table, not defined in fixture.cu']);
  });
});

describe.skipIf(!nvcc)('CUDA kernels compile for sm_90a with no spills', () => {
  const dir = mkdtempSync(join(tmpdir(), 'nmoe-kernels-'));
  const nvccArgs = ['-cubin', '-gencode=arch=compute_90a,code=sm_90a', '-std=c++17', `-I${KERNEL_DIR}`];

  for (const table of KERNEL_FILES) {
    it(
      table.file,
      () => {
        // The instances, referenced from host code, are what NVRTC's name expressions instantiate at run time.
        const names = instances(table);
        const unit = join(dir, table.file);
        const refs = names.length
          ? `[[maybe_unused]] static void* const nmoe_instances[] = {${names.map((n) => `(void*)&${n}`).join(', ')}};\n`
          : '';
        writeFileSync(unit, `#include "${join(KERNEL_DIR, table.file)}"\n${refs}`);
        const report = spawnSync('nvcc', [...nvccArgs, ...KERNEL_DEFINES, '-Xptxas', '-v', '-o', '/dev/null', unit], {
          encoding: 'utf8',
        });
        expect(report.status, report.stderr).toBe(0);
        const entries = [...report.stderr.matchAll(/Compiling entry function '(\w+)'/g)];
        const plain = Object.values(table.kernels).filter((k) => !k.template).length;
        expect(entries.length, 'one entry per plain kernel and instance').toBe(plain + names.length);
        const spills = [...report.stderr.matchAll(/(\d+) bytes spill stores, (\d+) bytes spill loads/g)];
        expect(spills.length, 'ptxas printed no resource report').toBeGreaterThan(0);
        for (const m of spills) expect(Number(m[1]) + Number(m[2]), `spills in ${table.file}`).toBe(0);
      },
      120_000,
    );
  }

  it('stops with #error where a file is built without the constants it uses', () => {
    for (const file of files.filter((f) => Object.keys(KERNEL_CONSTANTS).some((c) => source(f).includes(c)))) {
      const report = spawnSync('nvcc', ['-E', '-x', 'cu', '-std=c++17', '-o', '/dev/null', join(KERNEL_DIR, file)], {
        encoding: 'utf8',
      });
      expect(report.status, file).not.toBe(0);
      expect(report.stderr, file).toContain('kernel-constants.ts');
    }
  });
});
