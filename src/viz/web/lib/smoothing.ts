/**
 * TensorBoard's smoothing: an exponential moving average with debiasing, so the first points are not pulled
 * towards 0. `weight` is in [0, 1): 0 returns the values unchanged. Non-finite values pass through and do not
 * enter the average.
 */
export function emaSmooth(values: readonly number[], weight: number): number[] {
  if (weight <= 0) return values.slice();
  let last = 0;
  let n = 0;
  return values.map((v) => {
    if (!Number.isFinite(v)) return v;
    last = last * weight + (1 - weight) * v;
    n++;
    return last / (1 - weight ** n);
  });
}
