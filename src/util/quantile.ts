/**
 * The one quantile every benchmark and summary reports: the sample at index floor(q x n) of the sorted samples
 * (clamped to the last), so the median of n samples is sorted[floor(n / 2)], as the PyTorch baselines in tools/
 * take it, and q = 1 is the maximum.
 */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) throw new Error('quantile of no samples');
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

/** The samples in ascending order (a copy). */
export const ascending = (xs: Iterable<number>): number[] => [...xs].sort((a, b) => a - b);
