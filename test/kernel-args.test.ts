/**
 * The kernel parameter block (src/tensor/cuda/kernel-args.ts): every value at a multiple of its alignment in host
 * memory, and the offset of each returned, from which the launcher builds cuLaunchKernel's pointer array (the driver
 * then copies each value to the offset the kernel gives it, which for a TMA map is not the host block's).
 */
import { describe, expect, it } from 'vitest';
import { type KernelArg, packKernelArgs } from '../src/tensor/cuda/kernel-args.ts';

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
