/**
 * The few ops HYDRA's heads need, forward and backward, on the host in fp32: row-major Float32Arrays, weights in
 * torch's layout (a Linear's weight is [out, in]). The heads are small (a probe of H + 1 numbers, a judge of a few
 * million) and read hidden states the backbone has already brought to the host, so plain loops suffice. Backward
 * functions add to the parameter gradients they are given and return the input gradient.
 */

/** y [n, out] = x [n, in] W^T + b. */
export function linear(x: Float32Array, n: number, w: Float32Array, b: Float32Array, inDim: number): Float32Array {
  const outDim = b.length;
  const y = new Float32Array(n * outDim);
  for (let r = 0; r < n; r++) {
    const xr = r * inDim;
    for (let o = 0; o < outDim; o++) {
      let acc = b[o]!;
      const wo = o * inDim;
      for (let i = 0; i < inDim; i++) acc += x[xr + i]! * w[wo + i]!;
      y[r * outDim + o] = acc;
    }
  }
  return y;
}

/** dW += dy^T x, db += column sums of dy; returns dx = dy W (skipped, null, when `needDx` is false). */
export function linearBackward(
  dy: Float32Array,
  x: Float32Array,
  n: number,
  w: Float32Array,
  inDim: number,
  dw: Float32Array,
  db: Float32Array,
  needDx = true,
): Float32Array | null {
  const outDim = db.length;
  const dx = needDx ? new Float32Array(n * inDim) : null;
  for (let r = 0; r < n; r++) {
    const xr = r * inDim;
    for (let o = 0; o < outDim; o++) {
      const g = dy[r * outDim + o]!;
      if (g === 0) continue;
      db[o]! += g;
      const wo = o * inDim;
      for (let i = 0; i < inDim; i++) {
        dw[wo + i]! += g * x[xr + i]!;
        if (dx) dx[xr + i]! += g * w[wo + i]!;
      }
    }
  }
  return dx;
}

export interface NormSaved {
  /** (x - mean) * rstd, [n, dim]. */
  xhat: Float32Array;
  rstd: Float32Array;
}

/** LayerNorm over the last dimension (biased variance, eps inside the root, as torch). */
export function layerNorm(
  x: Float32Array,
  n: number,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
): { y: Float32Array; saved: NormSaved } {
  const dim = gamma.length;
  const y = new Float32Array(n * dim),
    xhat = new Float32Array(n * dim),
    rstd = new Float32Array(n);
  for (let r = 0; r < n; r++) {
    const o = r * dim;
    let mean = 0;
    for (let i = 0; i < dim; i++) mean += x[o + i]!;
    mean /= dim;
    let v = 0;
    for (let i = 0; i < dim; i++) v += (x[o + i]! - mean) ** 2;
    const s = 1 / Math.sqrt(v / dim + eps);
    rstd[r] = s;
    for (let i = 0; i < dim; i++) {
      const h = (x[o + i]! - mean) * s;
      xhat[o + i] = h;
      y[o + i] = h * gamma[i]! + beta[i]!;
    }
  }
  return { y, saved: { xhat, rstd } };
}

/** dgamma += sum dy * xhat, dbeta += sum dy; returns dx (null when `needDx` is false). */
export function layerNormBackward(
  dy: Float32Array,
  s: NormSaved,
  gamma: Float32Array,
  dgamma: Float32Array,
  dbeta: Float32Array,
  needDx = true,
): Float32Array | null {
  const dim = gamma.length,
    n = s.rstd.length;
  const dx = needDx ? new Float32Array(n * dim) : null;
  for (let r = 0; r < n; r++) {
    const o = r * dim;
    let sumG = 0,
      sumGx = 0;
    for (let i = 0; i < dim; i++) {
      const g = dy[o + i]!,
        h = s.xhat[o + i]!;
      dgamma[i]! += g * h;
      dbeta[i]! += g;
      sumG += g * gamma[i]!;
      sumGx += g * gamma[i]! * h;
    }
    if (!dx) continue;
    const k = s.rstd[r]! / dim;
    for (let i = 0; i < dim; i++) {
      const h = s.xhat[o + i]!;
      dx[o + i] = k * (dim * dy[o + i]! * gamma[i]! - sumG - h * sumGx);
    }
  }
  return dx;
}

/** torch.nan_to_num: NaN -> 0, +-Infinity -> the largest finite float32 of that sign. */
export function nanToNum(x: Float32Array): Float32Array {
  const MAX = 3.4028234663852886e38;
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    out[i] = Number.isNaN(v) ? 0 : v === Infinity ? MAX : v === -Infinity ? -MAX : v;
  }
  return out;
}

export const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

/** Huber loss with delta 1 (torch's default) and its derivative in the prediction. */
export function huber(pred: number, target: number): { loss: number; grad: number } {
  const d = pred - target;
  return Math.abs(d) <= 1 ? { loss: 0.5 * d * d, grad: d } : { loss: Math.abs(d) - 0.5, grad: Math.sign(d) };
}
