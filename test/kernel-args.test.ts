/**
 * The kernel parameter block (src/tensor/cuda/kernel-args.ts): every value at a multiple of its alignment in host
 * memory, and the offset of each returned, from which the launcher builds cuLaunchKernel's pointer array (the driver
 * then copies each value to the offset the kernel gives it, which for a TMA map is not the host block's); and the
 * kernel tables that put a launch's named values in the kernel's order (src/tensor/cuda/kernel-table.ts).
 */
import { describe, expect, it } from 'vitest';
import { type KernelArg, packKernelArgs } from '../src/tensor/cuda/kernel-args.ts';
import {
  type KernelArgs,
  type KernelSpec,
  STRUCTS,
  declaredNames,
  kernelArgs,
  kernelFile,
  moduleFor,
  nameExpression,
} from '../src/tensor/cuda/kernel-table.ts';
import { CudaTensor } from '../src/tensor/cuda/tensor.ts';

const map = (fill: number): KernelArg => ({ bytes: new Uint8Array(128).fill(fill), align: 128 });

describe('kernel parameter packing', () => {
  it('places TMA maps at multiples of 128 and the scalars after them at their own alignment', () => {
    const v = new DataView(new ArrayBuffer(4096));
    const args: KernelArg[] = [
      map(1),
      map(2),
      map(3),
      map(4),
      ...[5, 6, 7, 8, 9, 10].map((p) => ({ ptr: BigInt(p) })),
      { i32: 11 },
      { i32: 12 },
      { i32: 13 },
      { i32: 14 },
      { ptr: 15n },
    ];
    const offsets = packKernelArgs(v, args);
    expect(offsets).toEqual([0, 128, 256, 384, 512, 520, 528, 536, 544, 552, 560, 564, 568, 572, 576]);
    for (let m = 0; m < 4; m++) expect([v.getUint8(128 * m), v.getUint8(128 * m + 127)]).toEqual([m + 1, m + 1]);
    expect(offsets.slice(4, 10).map((o) => Number(v.getBigUint64(o, true)))).toEqual([5, 6, 7, 8, 9, 10]);
    expect(offsets.slice(10, 14).map((o) => v.getInt32(o, true))).toEqual([11, 12, 13, 14]);
    expect(v.getBigUint64(offsets[14]!, true)).toBe(15n);
  });

  it('pads before an aligned struct that follows a scalar, and writes every kind of scalar', () => {
    const v = new DataView(new ArrayBuffer(4096));
    const offsets = packKernelArgs(v, [{ i32: -1 }, map(9), { f32: 2.5 }, { u32: 0xffffffff }, { i64: -3 }]);
    expect(offsets).toEqual([0, 128, 256, 260, 264]);
    expect([
      v.getInt32(0, true),
      v.getUint8(128),
      v.getFloat32(256, true),
      v.getUint32(260, true),
      v.getBigInt64(264, true),
    ]).toEqual([-1, 9, 2.5, 0xffffffff, -3n]);
  });

  it('refuses an alignment past the block start and a block past its buffer', () => {
    expect(() =>
      packKernelArgs(new DataView(new ArrayBuffer(4096)), [{ bytes: new Uint8Array(16), align: 256 }]),
    ).toThrow(/alignment 256/);
    expect(() => packKernelArgs(new DataView(new ArrayBuffer(64)), [map(1)])).toThrow(/exceed 64 bytes/);
  });
});

describe('kernel tables (src/tensor/cuda/kernel-table.ts)', () => {
  const table = kernelFile('t.cu', {
    plain: {
      params: [
        ['x', 'ptr'],
        ['n', 'i64'],
        ['groups', 'AdamGroups'],
        ['seed', 'u32'],
      ],
    },
    typed: { template: ['T'], instances: ['float', 'bf16'], params: [['scale', 'f32']] },
    tiled: { template: ['BM', 'BN'], params: [['map', 'TmaMap']] },
  });

  it('packs a launch record in the kernel parameter order, a tensor as its device pointer', () => {
    const x = new CudaTensor([4], 'f32', 0x1000n, 16, null);
    const groups = new Uint8Array(STRUCTS.AdamGroups.bytes);
    expect(kernelArgs('plain', table.kernels.plain, { seed: 7, groups, n: 4, x })).toEqual([
      { ptr: 0x1000n },
      { i64: 4 },
      { bytes: groups, align: 4 },
      { u32: 7 },
    ]);
    expect(kernelArgs('plain', table.kernels.plain, { x: 0x2000n, n: 0, groups, seed: 0 })[0]).toEqual({
      ptr: 0x2000n,
    });
  });

  it('refuses a record that is not the kernel parameters, and a struct of the wrong size', () => {
    const spec: KernelSpec = table.kernels.plain;
    const groups = new Uint8Array(STRUCTS.AdamGroups.bytes);
    expect(() => kernelArgs('plain', spec, { x: 0n, n: 0, groups })).toThrow(/takes 4 arguments, 3 were given/);
    expect(() => kernelArgs('plain', spec, { x: 0n, n: 0, groups, step: 1 })).toThrow(/no value for parameter seed/);
    expect(() => kernelArgs('plain', spec, { x: 0n, n: 0, groups: new Uint8Array(8), seed: 0 })).toThrow(
      /groups \(AdamGroups\) is 8 bytes, the kernel takes 112/,
    );
  });

  it('types a launch record from the table: a missing, unknown or mistyped parameter does not compile', () => {
    type Plain = KernelArgs<typeof table.kernels.plain>;
    const groups = new Uint8Array(STRUCTS.AdamGroups.bytes);
    const ok: Plain = { x: 0n, n: 1, groups, seed: 2 };
    // @ts-expect-error seed is missing
    const missing: Plain = { x: 0n, n: 1, groups };
    // @ts-expect-error step is no parameter of the kernel
    const unknown: Plain = { x: 0n, n: 1, groups, seed: 2, step: 3 };
    // @ts-expect-error n is an i64 (a number), not a pointer
    const mistyped: Plain = { x: 0n, n: 1n, groups, seed: 2 };
    expect([ok, missing, unknown, mistyped]).toHaveLength(4);
  });

  it('names instances: declared ones built with the file, the others on demand with the right arity', () => {
    expect(declaredNames(table)).toEqual(['plain', 'typed<float>', 'typed<bf16>']);
    expect(nameExpression(table, 'plain', null)).toBe('plain');
    expect(nameExpression(table, 'typed', 'bf16')).toBe('typed<bf16>');
    expect(nameExpression(table, 'tiled', '128, 256')).toBe('tiled<128, 256>');
    expect(() => nameExpression(table, 'typed', 'half')).toThrow(/typed<half> is not declared for t.cu/);
    expect(() => nameExpression(table, 'tiled', '128')).toThrow(/tiled<128> is not declared/);
    expect(() => nameExpression(table, 'plain', 'float')).toThrow(/not a template/);
    expect(() => nameExpression(table, 'typed', null)).toThrow(/needs template arguments/);
    expect(() => nameExpression(table, 'gone', null)).toThrow(/gone is not declared for t.cu/);
  });

  it("builds a file's plain kernels and declared instances as one module, each on-demand instance as its own", () => {
    const file = { key: 't.cu', names: ['plain', 'typed<float>', 'typed<bf16>'] };
    expect(moduleFor(table, 'plain', null)).toEqual({ expression: 'plain', ...file });
    expect(moduleFor(table, 'typed', 'float')).toEqual({ expression: 'typed<float>', ...file });
    expect(moduleFor(table, 'tiled', '128, 256')).toEqual({
      expression: 'tiled<128, 256>',
      key: 't.cu:tiled<128, 256>',
      names: ['tiled<128, 256>'],
    });
  });
});
