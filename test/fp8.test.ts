/**
 * FP8 E4M3 and block-scaled quantisation (src/tensor/fp8.ts) against rules written out here: every code decodes as
 * the format defines it and encodes back to itself, every midpoint between neighbours rounds to the even one and
 * the values beside it round to the nearer one, saturation at ±448, and the scales of DeepSeek-V3's recipe.
 */
import { describe, expect, it } from 'vitest';
import { fp8Codes, fp8FwdSmem, maxSegmentChunks } from '../src/tensor/cuda/fp8-plan.ts';
import { E4M3_VALUES, decodeE4m3, encodeE4m3, fakeQuantizeFp8, quantizeFp8 } from '../src/tensor/fp8.ts';

const f = new Float32Array(1);
const u = new Uint32Array(f.buffer);
/** The fp32 neighbour of a positive fp32 value, one ulp up or down. */
function ulpStep(x: number, dir: 1 | -1): number {
  f[0] = x;
  u[0] = u[0]! + dir;
  return f[0];
}

describe('E4M3', () => {
  it('decodes the codes as the format defines them', () => {
    expect(decodeE4m3(0x38)).toBe(1);
    expect(decodeE4m3(0x7e)).toBe(448);
    expect(decodeE4m3(0xfe)).toBe(-448);
    expect(decodeE4m3(0x08)).toBe(2 ** -6);
    expect(decodeE4m3(0x01)).toBe(2 ** -9);
    expect(decodeE4m3(0x07)).toBe(7 * 2 ** -9);
    expect(decodeE4m3(0x3b)).toBe(1.375);
    expect(Object.is(decodeE4m3(0x80), -0)).toBe(true);
    expect(decodeE4m3(0x7f)).toBeNaN();
    expect(decodeE4m3(0xff)).toBeNaN();
    expect([...E4M3_VALUES].filter(Number.isNaN)).toHaveLength(2);
  });

  it('encodes every finite code back to itself', () => {
    for (let c = 0; c < 256; c++) if (!Number.isNaN(E4M3_VALUES[c])) expect(encodeE4m3(E4M3_VALUES[c]!)).toBe(c);
  });

  it('rounds each midpoint to the even neighbour and the values beside it to the nearer one', () => {
    for (let c = 0; c < 0x7e; c++) {
      const lo = E4M3_VALUES[c]!,
        hi = E4M3_VALUES[c + 1]!;
      const mid = (lo + hi) / 2; // exact in fp32: both have at most 4 significant bits
      const even = c % 2 === 0 ? c : c + 1;
      expect(encodeE4m3(mid)).toBe(even);
      expect(encodeE4m3(-mid)).toBe(even | 0x80);
      expect(encodeE4m3(ulpStep(mid, -1))).toBe(c);
      expect(encodeE4m3(ulpStep(mid, 1))).toBe(c + 1);
    }
  });

  it('saturates at ±448 and keeps NaN', () => {
    for (const x of [448.5, 464, 480, 1e6, Infinity]) {
      expect(encodeE4m3(x)).toBe(0x7e);
      expect(encodeE4m3(-x)).toBe(0xfe);
    }
    expect(encodeE4m3(NaN)).toBe(0x7f);
    expect(encodeE4m3(2 ** -11)).toBe(0); // a quarter of the smallest subnormal
    expect(encodeE4m3(-0)).toBe(0x80);
  });
});

describe('block scales', () => {
  it('scales 1 x 128 row tiles by amax / 448 and encodes x · (448 / amax)', () => {
    const rows = 2,
      cols = 200; // a full tile and a short one per row
    const x = new Float32Array(rows * cols).map((_, i) => Math.fround(Math.sin(i * 0.37) * (1 + (i % 7))));
    x[5] = -20; // the first tile of row 0 has amax 20
    const q = quantizeFp8(x, rows, cols, { kind: 'rows' });
    expect(q.scales).toHaveLength(4);
    expect(q.scales[0]).toBe(Math.fround(20 / 448));
    const inv = Math.fround(448 / 20);
    for (let i = 0; i < 128; i++) expect(q.codes[i]).toBe(encodeE4m3(Math.fround(x[i]! * inv)));
    expect(q.codes[5]).toBe(0xfe); // amax lands on -448 exactly
    const back = fakeQuantizeFp8(x, rows, cols, { kind: 'rows' });
    for (let i = 0; i < x.length; i++) {
      const scale = q.scales[Math.floor(i / cols) * 2 + Math.floor((i % cols) / 128)]!;
      expect(back[i]).toBe(Math.fround(E4M3_VALUES[q.codes[i]!]! * scale));
      // half an ulp of E4M3 relative (2^-4), or half the subnormal grid, in the tile's scale
      expect(Math.abs(back[i]! - x[i]!)).toBeLessThanOrEqual(
        Math.max(Math.abs(x[i]!) * 2 ** -4, 2 ** -10 * scale) * 1.0001,
      );
    }
  });

  it('scales 128 x 128 weight blocks, edges included, and keeps an all-zero block finite', () => {
    const rows = 130,
      cols = 129;
    const x = new Float32Array(rows * cols).map((_, i) => (i % 3) - 1);
    for (let r = 128; r < rows; r++) for (let c = 128; c < cols; c++) x[r * cols + c] = 0; // corner block all zero
    x[0] = 3;
    const q = quantizeFp8(x, rows, cols, { kind: 'blocks' });
    expect(q.scales).toHaveLength(4);
    expect(q.scales[0]).toBe(Math.fround(3 / 448));
    expect(q.scales[1]).toBe(Math.fround(1 / 448));
    expect(q.scales[3]).toBe(Math.fround(1e-4 / 448));
    const back = fakeQuantizeFp8(x, rows, cols, { kind: 'blocks' });
    expect(back[rows * cols - 1]).toBe(0);
    for (let r = 0; r < rows; r++)
      for (let c = 0; c < cols; c++) {
        const i = r * cols + c;
        if (r >= 128 || c >= 128)
          expect(back[i]).toBe(x[i]); // amax-1 blocks hold ±1 and 0 exactly
        else expect(Math.abs(back[i]! - x[i]!)).toBeLessThanOrEqual(Math.abs(x[i]!) * 2 ** -4);
      }
    expect(back[0]).toBe(3);
  });

  it('scales 128 x 1 column tiles within each segment of rows, for the weight gradient', () => {
    // segments of 130, 0 and 3 rows: chunks [0,128), [128,130), [130,133); two columns
    const rows = 133,
      cols = 2;
    const x = new Float32Array(rows * cols).map((_, i) => (i % 2 === 0 ? 1 : -2));
    x[2 * 129] = 8; // column 0 of the second chunk
    x[2 * 131 + 1] = 0.5; // column 1 of the third chunk: its amax is |-2| still
    const segments = Int32Array.from([0, 130, 130, 133]);
    const q = quantizeFp8(x, rows, cols, { kind: 'columns', segments });
    expect([...q.scales]).toEqual([1, 2, 8, 2, 1, 2].map((a) => Math.fround(a / 448)));
    const back = fakeQuantizeFp8(x, rows, cols, { kind: 'columns', segments });
    for (let i = 0; i < x.length; i++)
      expect(Math.abs(back[i]! - x[i]!)).toBeLessThanOrEqual(Math.abs(x[i]!) * 2 ** -4);
    expect(back[2 * 128]).toBe(1); // 1 at amax 8 is 56, exact
    expect(() => quantizeFp8(x, rows, cols, { kind: 'columns', segments: Int32Array.from([0, 100]) })).toThrow(
      /segments end at 100, not 133/,
    );
  });
});

describe("the CUDA kernels' host arithmetic (src/tensor/cuda/fp8-plan.ts)", () => {
  it('gives the column quantiser a chunk slot for every chunk of any routing, the worst case included', () => {
    const chunksOf = (counts: number[]) => {
      const segments = Int32Array.from([0, ...counts.map((_, e) => counts.slice(0, e + 1).reduce((s, v) => s + v, 0))]);
      const rows = segments.at(-1)!;
      return {
        rows,
        chunks: quantizeFp8(new Float32Array(rows), rows, 1, { kind: 'columns', segments }).scales.length,
      };
    };
    // One row over the 128-row boundary per expert: each expert adds a short chunk, the bound is reached.
    for (const counts of [
      [129, 129, 129, 129],
      [1, 1, 1],
      [0, 256, 0, 5],
      [128, 128],
      [700, 1, 0, 63, 336],
    ]) {
      const { rows, chunks } = chunksOf(counts);
      expect(maxSegmentChunks(rows, counts.length)).toBeGreaterThanOrEqual(chunks);
    }
    const worst = [129, 129, 129, 129];
    expect(chunksOf(worst).chunks).toBe(8);
    expect(maxSegmentChunks(516, 4)).toBe(9);
  });

  it('unpacks downloaded code words in memory order and refuses more codes than bytes', () => {
    const words = new Int32Array(new Uint8Array([0x38, 0x7e, 0xfe, 0x00, 0x80, 0x01, 0x02, 0x03]).buffer);
    expect([...fp8Codes(words, 6)]).toEqual([0x38, 0x7e, 0xfe, 0x00, 0x80, 0x01]);
    expect(() => fp8Codes(words, 9)).toThrow(/9 codes asked of 8 bytes/);
  });

  it("plans the fp8 GEMM's shared memory as grouped_fp8_sm90.cu's static_assert: six 32 KB stages under 227 KB", () => {
    expect(fp8FwdSmem()).toBe(1024 + 6 * 32768 + 32768 + 96);
  });
});
