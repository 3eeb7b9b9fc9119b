/**
 * The kernel parameter block (src/tensor/cuda/kernel-args.ts) as nvcc lays it out for the Hopper grouped GEMMs
 * (grouped_sm90.cu): four 128-byte TMA maps at multiples of 128, then pointers at 8 and ints at 4 (the PTX of
 * grouped_gemm_sm90 declares `.param .align 128 .b8 [128]` x 4, 6 x .u64, 4 x .u32, .u64).
 */
import { describe, expect, it } from 'vitest';
import { type KernelArg, packKernelArgs } from '../src/tensor/cuda/kernel-args.ts';

const map = (fill: number): KernelArg => ({ bytes: new Uint8Array(128).fill(fill), align: 128 });

describe('kernel parameter packing', () => {
  it('places TMA maps at multiples of 128 and the scalars after them at their own alignment', () => {
    const v = new DataView(new ArrayBuffer(4096));
    const args: KernelArg[] = [map(1), map(2), map(3), map(4), ...[5, 6, 7, 8, 9, 10].map((p) => ({ ptr: BigInt(p) })), { i32: 11 }, { i32: 12 }, { i32: 13 }, { i32: 14 }, { ptr: 15n }];
    expect(packKernelArgs(v, args)).toBe(584);
    for (let m = 0; m < 4; m++) expect([v.getUint8(128 * m), v.getUint8(128 * m + 127)]).toEqual([m + 1, m + 1]);
    expect([512, 520, 528, 536, 544, 552].map((o) => Number(v.getBigUint64(o, true)))).toEqual([5, 6, 7, 8, 9, 10]);
    expect([560, 564, 568, 572].map((o) => v.getInt32(o, true))).toEqual([11, 12, 13, 14]);
    expect(v.getBigUint64(576, true)).toBe(15n);
  });

  it('pads before an aligned struct that follows a scalar', () => {
    const v = new DataView(new ArrayBuffer(4096));
    expect(packKernelArgs(v, [{ i32: 1 }, map(9), { f32: 2 }])).toBe(260);
    expect(v.getUint8(128)).toBe(9);
    expect(v.getFloat32(256, true)).toBe(2);
  });

  it('refuses an alignment past the block start and a block past its buffer', () => {
    expect(() => packKernelArgs(new DataView(new ArrayBuffer(4096)), [{ bytes: new Uint8Array(16), align: 256 }])).toThrow(/alignment 256/);
    expect(() => packKernelArgs(new DataView(new ArrayBuffer(64)), [map(1)])).toThrow(/exceed 64 bytes/);
  });
});
