/**
 * FP8 E4M3 (the OCP "FN" variant Hopper's tensor cores take: bias 7, no infinities, one NaN pattern per sign,
 * largest finite 448) and the block-scaled quantisation of DeepSeek-V3's recipe: activations scaled per 1 x 128 tile
 * along the reduction dimension, weights per 128 x 128 block. The CPU backend uses these to emulate the GPU's fp8
 * expert GEMMs bit for bit up to the accumulation, so every rule here is the one a kernel must follow:
 *
 * - encoding rounds to nearest, ties to even, and saturates: anything above 448 in magnitude (infinity included)
 *   becomes ±448, as `cvt.rn.satfinite.e4m3x2.f32` does; NaN stays NaN;
 * - a block's scale is amax / 448 with amax clamped below at 1e-4 (an all-zero block keeps a finite scale), and
 *   its values are encoded from x · (448 / amax), both factors rounded to fp32, as DeepSeek-V3's quantiser does.
 */
export const E4M3_MAX = 448;
/** Values per scale along a row (activations) and the side of a weight block. */
export const FP8_BLOCK = 128;
const AMAX_FLOOR = 1e-4;

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** Every code's value (code 0x7f and 0xff are NaN). */
export const E4M3_VALUES: Float32Array = (() => {
  const t = new Float32Array(256);
  for (let c = 0; c < 256; c++) {
    const e = (c >> 3) & 15,
      m = c & 7;
    const v = e === 15 && m === 7 ? NaN : e === 0 ? (m / 8) * 2 ** -6 : (1 + m / 8) * 2 ** (e - 7);
    t[c] = c & 0x80 ? -v : v;
  }
  return t;
})();

/** fp32 -> E4M3 code, round to nearest even, saturating at ±448. */
export function encodeE4m3(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 24) & 0x80;
  const abs = bits & 0x7fffffff;
  if (abs > 0x7f800000) return sign | 0x7f; // NaN
  if (abs >= 0x43e00000) return sign | 0x7e; // ≥ 448 (and infinity): the largest finite value
  if (abs < 0x3c800000) {
    // below 2^-6: subnormal codes, a uniform grid of 2^-9 (code 8 is 2^-6, the first normal, so it still fits)
    const t = f32[0]! < 0 ? -f32[0]! * 512 : f32[0]! * 512;
    let q = Math.round(t);
    if (q - t === 0.5 && q & 1) q -= 1;
    return sign | q;
  }
  // normal: keep 3 of fp32's 23 mantissa bits, rounding the 20 dropped ones to nearest even (a carry bumps the exponent)
  const r = abs + 0x7ffff + ((abs >>> 20) & 1);
  // (below 448 the largest result is 448 itself, exponent 15 and mantissa 6, so nothing reaches the NaN code)
  return sign | (((r >>> 23) - 127 + 7) << 3) | ((r >>> 20) & 7);
}

export function decodeE4m3(code: number): number {
  return E4M3_VALUES[code & 0xff]!;
}

/** Codes and their scales: value ≈ E4M3_VALUES[codes[i]] · scales[block of i]. */
export interface Fp8Blocks {
  codes: Uint8Array;
  scales: Float32Array;
}

function blockScale(amax: number): { scale: number; inv: number } {
  const a = Math.max(amax, AMAX_FLOOR);
  return { scale: Math.fround(a / E4M3_MAX), inv: Math.fround(E4M3_MAX / a) };
}

/**
 * Quantises a row-major [rows, cols] matrix in 1 x 128 tiles along each row (the last tile may be short): scales
 * are [rows, ceil(cols / 128)].
 */
export function quantizeRowTiles(x: Float32Array, rows: number, cols: number): Fp8Blocks {
  const tiles = Math.ceil(cols / FP8_BLOCK);
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * tiles);
  for (let r = 0; r < rows; r++) {
    for (let t = 0; t < tiles; t++) {
      const lo = r * cols + t * FP8_BLOCK,
        hi = r * cols + Math.min(cols, (t + 1) * FP8_BLOCK);
      let amax = 0;
      for (let i = lo; i < hi; i++) amax = Math.max(amax, Math.abs(x[i]!));
      const { scale, inv } = blockScale(amax);
      scales[r * tiles + t] = scale;
      for (let i = lo; i < hi; i++) codes[i] = encodeE4m3(Math.fround(x[i]! * inv));
    }
  }
  return { codes, scales };
}

/**
 * Quantises a row-major [rows, cols] matrix in 128 x 128 blocks (edge blocks may be short): scales are
 * [ceil(rows / 128), ceil(cols / 128)].
 */
export function quantizeSquareBlocks(x: Float32Array, rows: number, cols: number): Fp8Blocks {
  const br = Math.ceil(rows / FP8_BLOCK),
    bc = Math.ceil(cols / FP8_BLOCK);
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(br * bc);
  for (let i = 0; i < br; i++) {
    for (let j = 0; j < bc; j++) {
      const r1 = Math.min(rows, (i + 1) * FP8_BLOCK),
        c0 = j * FP8_BLOCK,
        c1 = Math.min(cols, c0 + FP8_BLOCK);
      let amax = 0;
      for (let r = i * FP8_BLOCK; r < r1; r++)
        for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(x[r * cols + c]!));
      const { scale, inv } = blockScale(amax);
      scales[i * bc + j] = scale;
      for (let r = i * FP8_BLOCK; r < r1; r++)
        for (let c = c0; c < c1; c++) codes[r * cols + c] = encodeE4m3(Math.fround(x[r * cols + c]! * inv));
    }
  }
  return { codes, scales };
}

/** The values 1 x 128 row tiles stand for, in fp32. */
export function dequantizeRowTiles(q: Fp8Blocks, rows: number, cols: number): Float32Array {
  const tiles = Math.ceil(cols / FP8_BLOCK);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++)
      out[r * cols + c] = E4M3_VALUES[q.codes[r * cols + c]!]! * q.scales[r * tiles + Math.floor(c / FP8_BLOCK)]!;
  return out;
}

/** The values 128 x 128 blocks stand for, in fp32. */
export function dequantizeSquareBlocks(q: Fp8Blocks, rows: number, cols: number): Float32Array {
  const bc = Math.ceil(cols / FP8_BLOCK);
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++)
      out[r * cols + c] =
        E4M3_VALUES[q.codes[r * cols + c]!]! * q.scales[Math.floor(r / FP8_BLOCK) * bc + Math.floor(c / FP8_BLOCK)]!;
  return out;
}
