/**
 * Kernel parameters written into one preallocated host block, each value at a multiple of its alignment, for
 * cuLaunchKernel's `kernelParams`: an array of pointers, one per parameter, from which the driver copies each value
 * to the offset the compiled kernel gives it. Handing the driver one verbatim block instead (`extra`) is correct only
 * while the block's offsets equal the kernel's, and they do not for a 128-byte aligned TMA map: on sm_90 the
 * parameters start 0x210 bytes into constant bank 0, so ptxas puts the first map at offset 112 (absolute 640), not 0.
 * No CUDA here, so the packing is testable anywhere (test/kernel-args.test.ts).
 */

/** A kernel parameter; `bytes` is a struct passed by value, placed at a multiple of `align` bytes (default 4). */
export type KernelArg =
  | { ptr: bigint }
  | { i32: number }
  | { i64: number }
  | { f32: number }
  | { u32: number }
  | { bytes: Uint8Array; align?: number };

/** The block starts at this alignment in memory, so every value is aligned in memory as well as in offsets. */
export const ARG_ALIGN = 128;

function align(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

/** Writes `args` into `v` (whose first byte is ARG_ALIGN-aligned) and returns each value's byte offset in it. */
export function packKernelArgs(v: DataView, args: readonly KernelArg[]): number[] {
  const offsets: number[] = [];
  let off = 0;
  const place = (n: number, a: number): number => {
    off = align(off, a);
    if (off + n > v.byteLength) throw new Error(`kernel arguments exceed ${v.byteLength} bytes`);
    offsets.push(off);
    const at = off;
    off += n;
    return at;
  };
  for (const a of args) {
    if ('ptr' in a) v.setBigUint64(place(8, 8), a.ptr, true);
    else if ('i64' in a) v.setBigInt64(place(8, 8), BigInt(a.i64), true);
    else if ('i32' in a) v.setInt32(place(4, 4), a.i32, true);
    else if ('u32' in a) v.setUint32(place(4, 4), a.u32 >>> 0, true);
    else if ('bytes' in a) {
      const al = a.align ?? 4;
      if (al > ARG_ALIGN || ARG_ALIGN % al !== 0)
        throw new Error(`kernel argument alignment ${al} is not a divisor of ${ARG_ALIGN}`);
      new Uint8Array(v.buffer, v.byteOffset + place(a.bytes.length, al), a.bytes.length).set(a.bytes);
    } else v.setFloat32(place(4, 4), a.f32, true);
  }
  return offsets;
}
