/** The quantile every benchmark reports (src/util/quantile.ts): the same definition as the PyTorch baselines'. */
import { describe, expect, it } from 'vitest';
import { ascending, quantile } from '../src/util/quantile.ts';

describe('quantile', () => {
  it('takes sorted[floor(q x n)], so the median is sorted[n / 2] (Python: sorted(t)[len(t) // 2]) and q = 1 the maximum', () => {
    const s = ascending([5, 1, 4, 2, 3, 6]);
    expect(s).toEqual([1, 2, 3, 4, 5, 6]);
    expect([0, 0.5, 0.9, 0.99, 1].map((q) => quantile(s, q))).toEqual([1, 4, 6, 6, 6]);
    expect(quantile(ascending([3, 1, 2]), 0.5)).toBe(2);
    expect(
      quantile(
        Float64Array.from({ length: 100 }, (_, i) => i),
        0.9,
      ),
    ).toBe(90);
  });

  it('refuses an empty sample instead of returning undefined', () => {
    expect(() => quantile([], 0.5)).toThrow('quantile of no samples');
  });
});
