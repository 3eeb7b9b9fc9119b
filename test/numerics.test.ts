/** Philox known-answer vectors, normal draws, bf16 rounding, RoPE tables. */
import { describe, expect, it } from 'vitest';
import { ropeTables } from '../src/model/rope.ts';
import { fromBf16Bits, roundToBf16, toBf16Bits } from '../src/tensor/bf16.ts';
import { philox4x32, philoxNormal } from '../src/util/philox.ts';

describe('Philox4x32-10', () => {
  it('matches the Random123 known-answer vectors', () => {
    expect(Array.from(philox4x32(0, 0, 0, 0, 0, 0)).map((x) => x.toString(16))).toEqual([
      '6627e8d5',
      'e169c58d',
      'bc57ac4c',
      '9b00dbd8',
    ]);
    expect(
      Array.from(philox4x32(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0)).map((x) =>
        x.toString(16),
      ),
    ).toEqual(['d16cfe09', '94fdcceb', '5001e420', '24126ea1']);
  });

  it('draws N(0, std) and a slice at an offset equals the same part of the whole', () => {
    const whole = new Float32Array(20000);
    philoxNormal(whole, { std: 2, seed: 42, stream: 7 });
    const mean = whole.reduce((a, b) => a + b, 0) / whole.length;
    const std = Math.sqrt(whole.reduce((a, b) => a + (b - mean) ** 2, 0) / whole.length);
    expect(Math.abs(mean)).toBeLessThan(0.05);
    expect(std).toBeGreaterThan(1.95);
    expect(std).toBeLessThan(2.05);
    const part = new Float32Array(100);
    philoxNormal(part, { std: 2, seed: 42, stream: 7, offset: 5000 });
    expect(Array.from(part)).toEqual(Array.from(whole.subarray(5000, 5100)));
  });
});

describe('bf16', () => {
  it('rounds to nearest even and round-trips bit patterns', () => {
    expect(roundToBf16(1 + 2 ** -8)).toBe(1); // tie -> even
    expect(roundToBf16(1 + 3 * 2 ** -8)).toBe(1 + 2 ** -6);
    const v = Float32Array.of(0, -2.5, 3.140625, 65280);
    expect(Array.from(fromBf16Bits(toBf16Bits(v)))).toEqual(Array.from(v));
  });
});

describe('RoPE tables', () => {
  it('plain RoPE: cos/sin of t * theta^(-2i/d)', () => {
    const t = ropeTables({ dim: 8, theta: 10000, maxPositions: 16, scalingFactor: 1, ntkAlpha: 1, ntkBeta: 32 });
    expect(t.positions).toBe(32);
    expect(t.cos[5 * 4 + 1]).toBeCloseTo(Math.cos(5 * 10000 ** (-2 / 8)), 6);
    expect(t.sin[5 * 4 + 3]).toBeCloseTo(Math.sin(5 * 10000 ** (-6 / 8)), 6);
  });

  it('YaRN: low frequencies are interpolated by the factor, high ones kept, all scaled by the concentration', () => {
    const s = 4;
    const t = ropeTables({ dim: 64, theta: 50000, maxPositions: 8192, scalingFactor: s, ntkAlpha: 1, ntkBeta: 32 });
    const conc = 0.1 * Math.log(s) + 1;
    expect(t.cos[1 * 32 + 0]).toBeCloseTo(Math.cos(1) * conc, 6); // i = 0: fastest, untouched
    expect(t.sin[1 * 32 + 31]).toBeCloseTo(Math.sin(50000 ** (-62 / 64) / s) * conc, 6); // slowest: divided by s
  });
});
