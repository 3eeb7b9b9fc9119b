/**
 * The RoPE parameters and YaRN's correction band: the dimensions below `low` keep their frequency, those above
 * `high` are scaled by rope_scaling_factor, and the ramp between blends the two. It lives in config/ because
 * validation checks the band against the head size before any model exists; the tables themselves are built in
 * model/rope.ts.
 */
export interface RopeParams {
  dim: number;
  theta: number;
  maxPositions: number;
  scalingFactor: number;
  ntkAlpha: number;
  ntkBeta: number;
}

export function yarnBand(p: RopeParams): { low: number; high: number } {
  const half = p.dim / 2;
  const low = (half * Math.log(p.maxPositions / (p.ntkBeta * 2 * Math.PI))) / Math.log(p.theta);
  const high = (half * Math.log(p.maxPositions / (p.ntkAlpha * 2 * Math.PI))) / Math.log(p.theta);
  return { low, high };
}
