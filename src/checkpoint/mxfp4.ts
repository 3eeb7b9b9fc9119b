/**
 * MXFP4 (OCP Microscaling FP4), the format of gpt-oss's expert weights in its safetensors checkpoints: each block of
 * 32 values is 32 FP4 E2M1 codes sharing one E8M0 scale. A weight W of shape [..., cols] is stored as two tensors:
 *
 *   W_blocks  uint8 [..., cols / 32, 16]   two codes per byte, the low nibble first (element 2i low, 2i + 1 high)
 *   W_scales  uint8 [..., cols / 32]       the block's exponent e, biased by 127: scale = 2^(e - 127)
 *
 * An E2M1 code is sign (bit 3), two exponent bits and one mantissa bit: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.
 * E8M0's 255 encodes NaN (OCP MX v1.0); every other byte is a power of two from 2^-127 to 2^127. Values past fp32's
 * range (6 * 2^127) come out as Infinity, as in the float formats a dequantised weight is stored in.
 */

/** The value of each E2M1 code 0..15. */
export const E2M1_VALUES: readonly number[] = [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0, -0.5, -1, -1.5, -2, -3, -4, -6];

export const MXFP4_BLOCK = 32;
const BYTES_PER_BLOCK = MXFP4_BLOCK / 2;
const E8M0_NAN = 255;

/** The dequantised shape of a `*_blocks` tensor of shape [..., n, 16]: [..., n * 32]. */
export function mxfp4Shape(blocksShape: readonly number[]): number[] {
  const prefix = blocksShape.slice(0, -2);
  const [n, bytes] = blocksShape.slice(-2);
  if (blocksShape.length < 2 || bytes !== BYTES_PER_BLOCK)
    throw new Error(`MXFP4 blocks of shape [${blocksShape.join(', ')}]: the last dimension must be ${BYTES_PER_BLOCK}`);
  return [...prefix, n! * MXFP4_BLOCK];
}

/**
 * fp32 values of MXFP4 `blocks` (16 bytes per block) and their `scales` (one byte per block), in the blocks' order:
 * block k's 32 values are out[32k .. 32k + 31].
 */
export function dequantizeMxfp4(blocks: Uint8Array, scales: Uint8Array): Float32Array {
  if (blocks.length !== scales.length * BYTES_PER_BLOCK)
    throw new Error(
      `MXFP4: ${blocks.length} block bytes for ${scales.length} scales (expected ${BYTES_PER_BLOCK} bytes per scale)`,
    );
  const out = new Float32Array(scales.length * MXFP4_BLOCK);
  for (let k = 0; k < scales.length; k++) {
    const e = scales[k]!;
    const scale = e === E8M0_NAN ? NaN : 2 ** (e - 127);
    for (let j = 0; j < BYTES_PER_BLOCK; j++) {
      const byte = blocks[k * BYTES_PER_BLOCK + j]!;
      out[k * MXFP4_BLOCK + 2 * j] = E2M1_VALUES[byte & 0xf]! * scale;
      out[k * MXFP4_BLOCK + 2 * j + 1] = E2M1_VALUES[byte >> 4]! * scale;
    }
  }
  return out;
}
