/**
 * Kernel parameters packed as the kernel's parameter block lays them out (cuLaunchKernel's `extra` buffer): each at
 * a multiple of its alignment, structs passed by value at the alignment they declare (a `__grid_constant__` TMA map:
 * 128). No CUDA here, so the layout is testable anywhere (test/kernel-args.test.ts).
 */

/** A kernel parameter; `bytes` is a struct passed by value, placed at a multiple of `align` bytes (default 4). */
export type KernelArg = { ptr: bigint } | { i32: number } | { i64: number } | { f32: number } | { u32: number } | { bytes: Uint8Array; align?: number };

/** The parameter block starts at this alignment in memory, so `align` up to it holds in memory as well as in offsets. */
export const ARG_ALIGN = 128;

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Writes `args` into `v` (whose first byte is ARG_ALIGN-aligned) and returns the block's size in bytes. */
export function packKernelArgs(v: DataView, args: readonly KernelArg[]): number {
  let off = 0;
  const room = (n: number) => {
    if (off + n > v.byteLength) throw new Error(`kernel arguments exceed ${v.byteLength} bytes`);
  };
  for (const a of args) {
    if ('ptr' in a) { off = align(off, 8); room(8); v.setBigUint64(off, a.ptr, true); off += 8; }
    else if ('i64' in a) { off = align(off, 8); room(8); v.setBigInt64(off, BigInt(a.i64), true); off += 8; }
    else if ('i32' in a) { off = align(off, 4); room(4); v.setInt32(off, a.i32, true); off += 4; }
    else if ('u32' in a) { off = align(off, 4); room(4); v.setUint32(off, a.u32 >>> 0, true); off += 4; }
    else if ('bytes' in a) {
      const al = a.align ?? 4;
      if (al > ARG_ALIGN || ARG_ALIGN % al !== 0) throw new Error(`kernel argument alignment ${al} is not a divisor of ${ARG_ALIGN}`);
      off = align(off, al);
      room(a.bytes.length);
      new Uint8Array(v.buffer, v.byteOffset + off, a.bytes.length).set(a.bytes);
      off += a.bytes.length;
    }
    else { off = align(off, 4); room(4); v.setFloat32(off, a.f32, true); off += 4; }
  }
  return off;
}
