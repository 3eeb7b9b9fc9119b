/**
 * HYDRA's probe head, the reference's ProbeHead gate: quality q = sigmoid(w . mean(h) + b) from the backbone's
 * hidden states at the probe layer, mean-pooled over the document's tokens. The reference's auxiliary heads
 * (domain, fastText scores, language, artefacts) train on labels this repository has no source for, so only the
 * gate is built.
 */
import { HeadParams } from './head-params.ts';
import { sigmoid } from './host-ops.ts';

export function probeParams(hidden: number): HeadParams {
  // Zeros: every document starts at q = 0.5, whatever the scale of the backbone's residual stream.
  return new HeadParams(
    [
      { name: 'gate.weight', shape: [1, hidden], init: { kind: 'zeros' } },
      { name: 'gate.bias', shape: [1], init: { kind: 'zeros' } },
    ],
    0,
  );
}

/** The mean over rows of h [S, H]. */
export function meanPool(h: Float32Array, hidden: number): Float32Array {
  const S = h.length / hidden;
  const out = new Float32Array(hidden);
  for (let r = 0; r < S; r++) for (let i = 0; i < hidden; i++) out[i]! += h[r * hidden + i]!;
  for (let i = 0; i < hidden; i++) out[i]! /= S;
  return out;
}

/** q in (0, 1) of one pooled vector. Non-finite inputs count as 0, as the judge's nan_to_num. */
export function probeForward(p: HeadParams, pooled: Float32Array): number {
  const w = p.value('gate.weight');
  let z = p.value('gate.bias')[0]!;
  for (let i = 0; i < pooled.length; i++) if (Number.isFinite(pooled[i]!)) z += w[i]! * pooled[i]!;
  return sigmoid(z);
}

/**
 * Adds the gradient of a loss L given dL/dz, z the gate's logit (q = sigmoid(z)): for binary cross-entropy against
 * a target t, dz = q - t, which stays finite where q saturates.
 */
export function probeBackward(p: HeadParams, pooled: Float32Array, dz: number): void {
  const gw = p.grad('gate.weight');
  for (let i = 0; i < pooled.length; i++) if (Number.isFinite(pooled[i]!)) gw[i]! += dz * pooled[i]!;
  p.grad('gate.bias')[0]! += dz;
}
