/**
 * TMA tensor maps: the 128 opaque bytes (the driver's CUtensorMap) that a kernel takes by value as a
 * `const __grid_constant__ TmaMap` parameter (grouped_sm90.cu), encoded on the host by cuTensorMapEncodeTiled
 * for each call (a few microseconds). Only what nmoe uses: bf16 tensors or E4M3 codes (bytes), 128-byte swizzle,
 * out-of-range box elements filled with zeros.
 */
import koffi from 'koffi';
import { check, cu } from './driver.ts';
import { STRUCTS } from './kernel-table.ts';

export const TENSOR_MAP_BYTES = STRUCTS.TmaMap.bytes;
/** Kernels declare TmaMap with this alignment; the launcher places such parameters at multiples of it. */
export const TENSOR_MAP_ALIGN = STRUCTS.TmaMap.align;

const DATA_TYPE_UINT8 = 0;
const DATA_TYPE_BFLOAT16 = 9;
const INTERLEAVE_NONE = 0;
const SWIZZLE_128B = 3;
const L2_PROMOTION_256B = 3;
const OOB_FILL_ZERO = 0;

/** A tensor as TMA sees it: dims and box innermost first, in elements; strides of dims 1.. in bytes. */
export interface TiledBf16 {
  /** bf16 unless 'e4m3': one-byte codes (fp8.cu's), which TMA moves as uint8. */
  element?: 'bf16' | 'e4m3';
  address: bigint;
  dims: readonly number[];
  strides: readonly number[];
  box: readonly number[];
}

let scratch: bigint | null = null;

/** The driver writes the map to a 64-byte aligned host address: one such buffer, reused (the bytes are copied out). */
function scratchMap(): bigint {
  if (scratch === null) {
    const raw = koffi.alloc('uint8_t', TENSOR_MAP_BYTES + 128) as bigint;
    scratch = raw + ((64n - (raw % 64n)) % 64n);
  }
  return scratch;
}

/** Why the driver would refuse this map (its documented rules), or null. */
export function tensorMapProblem(t: TiledBf16): string | null {
  const rank = t.dims.length;
  if (rank < 1 || rank > 5 || t.box.length !== rank || t.strides.length !== rank - 1)
    return `rank ${rank} with box [${t.box}] and strides [${t.strides}]`;
  if (t.address % 16n !== 0n) return `address 0x${t.address.toString(16)} is not 16-byte aligned`;
  if (t.dims.some((d) => !Number.isInteger(d) || d < 1 || d > 2 ** 32)) return `dims [${t.dims}] must be in [1, 2^32]`;
  if (t.strides.some((s) => s % 16 !== 0 || s <= 0 || s >= 2 ** 40))
    return `strides [${t.strides}] must be positive multiples of 16 below 2^40`;
  if (t.box.some((b) => !Number.isInteger(b) || b < 1 || b > 256)) return `box [${t.box}] must be in [1, 256]`;
  const innerBytes = t.box[0]! * (t.element === 'e4m3' ? 1 : 2);
  if (innerBytes % 16 !== 0 || innerBytes > 128)
    return `inner box ${t.box[0]} elements: 16 to 128 bytes in multiples of 16 for the 128-byte swizzle`;
  return null;
}

/** The map's 128 bytes; throws (naming `what` and the geometry) when the driver refuses it. */
export function encodeTensorMap(what: string, t: TiledBf16): Uint8Array {
  const problem = tensorMapProblem(t);
  if (problem) throw new Error(`tensor map for ${what}: ${problem}`);
  const encode = cu.tensorMapEncodeTiled;
  if (!encode) throw new Error('this CUDA driver has no cuTensorMapEncodeTiled (CUDA 12 or newer needed)');
  const map = scratchMap();
  const code = encode(
    map,
    t.element === 'e4m3' ? DATA_TYPE_UINT8 : DATA_TYPE_BFLOAT16,
    t.dims.length,
    t.address,
    BigUint64Array.from(t.dims, BigInt),
    BigUint64Array.from(t.strides.length ? t.strides : [0], BigInt),
    Uint32Array.from(t.box),
    Uint32Array.from(t.dims, () => 1),
    INTERLEAVE_NONE,
    SWIZZLE_128B,
    L2_PROMOTION_256B,
    OOB_FILL_ZERO,
  ) as number;
  check(
    'cuTensorMapEncodeTiled',
    code,
    `${what}: dims [${t.dims}], strides [${t.strides}] B, box [${t.box}], address 0x${t.address.toString(16)}`,
  );
  return new Uint8Array(koffi.view(map, TENSOR_MAP_BYTES).slice(0));
}
