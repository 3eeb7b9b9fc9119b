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

function blockScale(amax: number): { scale: number; inv: number } {
  const a = Math.max(amax, AMAX_FLOOR);
  return { scale: Math.fround(a / E4M3_MAX), inv: Math.fround(E4M3_MAX / a) };
}

/**
 * Quantises one tile of row-major `x` (row width `cols`), rows [r0, r1) x columns [c0, c1), with one scale: writes
 * the codes at the values' own indices (and, with `values`, what they stand for) and returns the scale.
 */
function quantizeTile(
  x: ArrayLike<number>,
  cols: number,
  r0: number,
  r1: number,
  c0: number,
  c1: number,
  codes: Uint8Array,
  values?: Float32Array,
): number {
  let amax = 0;
  for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) amax = Math.max(amax, Math.abs(x[r * cols + c]!));
  const { scale, inv } = blockScale(amax);
  for (let r = r0; r < r1; r++)
    for (let c = c0; c < c1; c++) {
      const i = r * cols + c;
      codes[i] = encodeE4m3(Math.fround(x[i]! * inv));
      if (values) values[i] = E4M3_VALUES[codes[i]!]! * scale;
    }
  return scale;
}

/**
 * How a matrix is tiled for its scales. `rows`: 1 x 128 tiles along each row, for a GEMM operand whose rows are
 * reduced over their columns (activations and output gradients in the forward and input gradient); scales
 * [rows, ceil(cols / 128)]. `blocks`: 128 x 128 blocks (weights); scales [ceil(rows / 128), ceil(cols / 128)].
 * `columns`: 128 x 1 tiles down each column within each segment of rows (`segments`: the E + 1 row offsets of the
 * grouped layout), for the weight gradient, which reduces over the rows of one expert's segment; scales
 * [chunks, cols], a chunk being 128 rows of one segment (its last chunk may be short). Edge tiles may be short.
 */
export type Fp8Tiling = { kind: 'rows' } | { kind: 'blocks' } | { kind: 'columns'; segments: Int32Array };

/** Codes and their scales: value ≈ E4M3_VALUES[codes[i]] · the scale of i's tile (laid out as Fp8Tiling says). */
export interface Fp8Blocks {
  codes: Uint8Array;
  scales: Float32Array;
}

function eachTile(
  rows: number,
  cols: number,
  tiling: Fp8Tiling,
  visit: (r0: number, r1: number, c0: number, c1: number) => void,
): void {
  const up = (n: number) => Math.ceil(n / FP8_BLOCK);
  if (tiling.kind === 'rows') {
    for (let r = 0; r < rows; r++)
      for (let t = 0; t < up(cols); t++) visit(r, r + 1, t * FP8_BLOCK, Math.min(cols, (t + 1) * FP8_BLOCK));
  } else if (tiling.kind === 'blocks') {
    for (let i = 0; i < up(rows); i++)
      for (let j = 0; j < up(cols); j++)
        visit(i * FP8_BLOCK, Math.min(rows, (i + 1) * FP8_BLOCK), j * FP8_BLOCK, Math.min(cols, (j + 1) * FP8_BLOCK));
  } else {
    const seg = tiling.segments;
    if (seg[seg.length - 1] !== rows) throw new Error(`fp8 column tiles: segments end at ${seg.at(-1)}, not ${rows}`);
    for (let e = 0; e + 1 < seg.length; e++)
      for (let r0 = seg[e]!; r0 < seg[e + 1]!; r0 += FP8_BLOCK)
        for (let c = 0; c < cols; c++) visit(r0, Math.min(seg[e + 1]!, r0 + FP8_BLOCK), c, c + 1);
  }
}

/** Quantises a row-major [rows, cols] matrix tile by tile; scales in the order eachTile visits the tiles. */
export function quantizeFp8(x: ArrayLike<number>, rows: number, cols: number, tiling: Fp8Tiling): Fp8Blocks {
  const codes = new Uint8Array(rows * cols);
  const scales: number[] = [];
  eachTile(rows, cols, tiling, (r0, r1, c0, c1) => scales.push(quantizeTile(x, cols, r0, r1, c0, c1, codes)));
  return { codes, scales: Float32Array.from(scales) };
}

/**
 * What a matrix stands for after quantisation to FP8 (each value E4M3 · its tile's scale, in fp32): the operand an
 * fp8 GEMM multiplies, for the CPU backend's emulation.
 */
export function fakeQuantizeFp8(x: ArrayLike<number>, rows: number, cols: number, tiling: Fp8Tiling): Float32Array {
  const codes = new Uint8Array(rows * cols);
  const values = new Float32Array(rows * cols);
  eachTile(rows, cols, tiling, (r0, r1, c0, c1) => quantizeTile(x, cols, r0, r1, c0, c1, codes, values));
  return values;
}
