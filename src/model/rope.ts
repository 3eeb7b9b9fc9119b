/**
 * RoPE tables, computed on the host exactly as the reference's RotaryEmbedding does: NeoX half split,
 * freq_i = theta^(2i/d), and for rope_scaling_factor s > 1 the YaRN / NTK-by-parts blend with concentration
 * 0.1 ln(s) + 1 folded into cos and sin. Tables cover 2 * max_position_embeddings positions.
 */
import { type RopeParams, yarnBand } from '../config/yarn.ts';

export interface RopeTables {
  /** f32 [positions, dim/2] */
  cos: Float32Array;
  sin: Float32Array;
  positions: number;
}

export function ropeTables(p: RopeParams): RopeTables {
  const half = p.dim / 2;
  const positions = 2 * p.maxPositions;
  // The reference builds its tables with int(theta).
  const base = Math.trunc(p.theta);
  const invFreq = new Float64Array(half);
  let concentration = 1;
  if (p.scalingFactor > 1) {
    concentration = 0.1 * Math.log(p.scalingFactor) + 1;
    const { low, high } = yarnBand({ ...p, theta: base });
    for (let i = 0; i < half; i++) {
      const freq = base ** ((2 * i) / p.dim);
      const ramp = (i - low) / (high - low);
      const mask = 1 - Math.min(1, Math.max(0, ramp));
      invFreq[i] = (1 / (p.scalingFactor * freq)) * (1 - mask) + (1 / freq) * mask;
    }
  } else {
    for (let i = 0; i < half; i++) invFreq[i] = 1 / base ** ((2 * i) / p.dim);
  }
  const cos = new Float32Array(positions * half);
  const sin = new Float32Array(positions * half);
  for (let t = 0; t < positions; t++) {
    for (let i = 0; i < half; i++) {
      const angle = t * invFreq[i]!;
      cos[t * half + i] = Math.cos(angle) * concentration;
      sin[t * half + i] = Math.sin(angle) * concentration;
    }
  }
  return { cos, sin, positions };
}
