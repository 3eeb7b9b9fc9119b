/**
 * Muon (Jordan et al., 2024) for 2-D weights, with Moonlight's update scale (Liu et al., 2025): per matrix,
 * m = mu*m + g; u = g + mu*m (Nesterov) or m; O = NewtonSchulz5(u / ||u||_F); w = w*(1 - lr*wd) - lr*s*O with
 * s = 0.2*sqrt(max(rows, cols)), which gives O the RMS of a typical AdamW update, so the AdamW learning rates serve
 * Muon unchanged. Gradients arrive clipped to the global norm, like AdamW's, and a non-finite norm skips the step.
 *
 * Which weights: 2-D dense weights with decay (attention projections, dense and shared MLP matrices) and, with
 * muon_experts, every routed expert's matrix of an [E, a, b] tensor on its own. Embedding, lm_head, norms, the router
 * and biases stay on AdamW (optimizer.ts).
 *
 * NOTE: the update of a matrix is a function of that whole matrix, so on several ranks (Moonlight's distributed
 * Muon) each dense matrix has one owner rank (muonOwners) that keeps its momentum (and master) whole and runs this
 * step on the whole matrix; optimizer.ts gathers the gradients it needs and publishes the result. Routed experts
 * need none of this: each rank holds its experts whole.
 */
import type { OptimConfig } from '../config/sections.ts';
import type { ParamGroup } from '../model/params.ts';
import type { Backend } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';

/** The quintic's (a, b, c) in X <- a X + b (X X^T) X + c (X X^T)^2 X, tuned for speed over exactness (Jordan). */
export const NS5_COEFFICIENTS = [3.4445, -4.775, 2.0315] as const;

/** A tensor with a host-side factor: the value it stands for is scale * tensor. */
export interface ScaledTensor {
  tensor: Tensor;
  scale: number;
}

/** Moonlight's factor that matches the update RMS of AdamW: 0.2 * sqrt(max(rows, cols)). */
export function muonShapeScale(rows: number, cols: number): number {
  return 0.2 * Math.sqrt(Math.max(rows, cols));
}

/**
 * The rank that owns each dense Muon matrix on `world` ranks, given their element counts in parameter order: each
 * matrix in turn goes to the rank with the fewest Muon elements so far (the lowest such rank on a tie), so any two
 * ranks' loads differ by at most the largest matrix. A function of the order and the world size only, so every rank
 * computes the same owners and a checkpoint's owner of a momentum is known from its world size.
 */
export function muonOwners(numels: readonly number[], world: number): number[] {
  const load = new Array<number>(world).fill(0);
  return numels.map((n) => {
    const owner = load.indexOf(Math.min(...load));
    load[owner]! += n;
    return owner;
  });
}

/** Whether Muon updates a parameter of this group and (local) shape; the rest go to AdamW. */
export function takesMuon(
  cfg: Pick<OptimConfig, 'optimizer' | 'muon_experts'>,
  group: ParamGroup,
  shape: readonly number[],
): boolean {
  if (cfg.optimizer !== 'muon') return false;
  if (group === 'dense_decay') return shape.length === 2;
  return group === 'expert' && cfg.muon_experts && shape.length === 3;
}

/**
 * `steps` quintic Newton-Schulz iterations from x [rows, cols] (Frobenius norm <= 1), in x's dtype: an
 * approximately orthogonal matrix with singular values in about [0.7, 1.2]. The Gram matrix is taken on the small
 * side (X^T X for a tall x), which leaves the result as it is and the matmuls cheapest.
 *
 * The Backend scales only through matmul's alpha, so the iterate is carried as s * W with s on the host: with
 * A = s^2 W W^T, the step a X + (b A + c A^2) X becomes W <- W + (b/a) (A + (c/b) A^2) W and s <- a s, each
 * "copy, then accumulate a product" with host scalars. The caller owns the returned tensor; x is left as it is.
 */
export function newtonSchulz5(b: Backend, x: Tensor, steps: number): ScaledTensor {
  const [ca, cb, cc] = NS5_COEFFICIENTS;
  const [rows, cols] = x.shape as [number, number];
  const tall = rows > cols;
  const copyOf = (t: Tensor) => {
    const out = b.empty(t.shape, t.dtype);
    b.copy(t, out);
    return out;
  };
  let w = x,
    s = 1;
  for (let k = 0; k < steps; k++) {
    const gram = b.matmul(w, w, tall ? { transA: true, alpha: s * s } : { transB: true, alpha: s * s });
    const poly = copyOf(gram);
    b.matmul(gram, gram, { alpha: cc / cb, accumulate: true, out: poly });
    const next = copyOf(w);
    if (tall) b.matmul(w, poly, { alpha: cb / ca, accumulate: true, out: next });
    else b.matmul(poly, w, { alpha: cb / ca, accumulate: true, out: next });
    gram.free();
    poly.free();
    if (w !== x) w.free();
    w = next;
    s *= ca;
  }
  return { tensor: w === x ? copyOf(x) : w, scale: s };
}

export interface MuonSettings {
  momentum: number;
  nesterov: boolean;
  nsSteps: number;
  /** Global-norm clipping threshold (grad_clip_norm); 0 disables. */
  maxNorm: number;
  /** Seed of stochastic rounding for bf16 weights without masters (master_weights = "bf16_sr"), else null. */
  stochasticSeed: number | null;
}

/** One parameter Muon updates: a matrix [rows, cols] or a stack of them [E, rows, cols], each its own matrix. */
export interface MuonParam {
  value: Tensor;
  grad: Tensor;
  /** f32, the parameter's shape. */
  momentum: Tensor;
  /** fp32 copy of a bf16 value (master_weights = "fp32"), else undefined. */
  master: Tensor | undefined;
  lr: number;
  weightDecay: number;
}

/**
 * One Muon step over `params`; `step` is the optimizer step (1-based, as AdamW's bias correction counts), which keys
 * stochastic rounding. `gradNorm` f32 [1] is the global norm the gradients are clipped by.
 */
export function muonStep(
  b: Backend,
  params: readonly MuonParam[],
  gradNorm: Tensor,
  step: number,
  settings: MuonSettings,
): void {
  for (const p of params) {
    const [rows, cols] = p.value.shape.slice(-2) as [number, number];
    const size = rows * cols,
      matrices = p.value.numel / size;
    for (let e = 0; e < matrices; e++) {
      const at = (t: Tensor) => b.view(t, [rows, cols], e * size);
      const direction = b.muonMomentum(at(p.grad), at(p.momentum), {
        momentum: settings.momentum,
        nesterov: settings.nesterov,
        gradNorm,
        maxNorm: settings.maxNorm,
      });
      // Newton-Schulz runs in the weights' dtype: bf16 matmuls on the GPU, fp32 on the CPU.
      const start = p.value.dtype === direction.dtype ? direction : b.empty(direction.shape, p.value.dtype);
      if (start !== direction) b.convert(direction, start);
      const ortho = newtonSchulz5(b, start, settings.nsSteps);
      b.muonUpdate(at(p.value), ortho.tensor, {
        lr: p.lr,
        weightDecay: p.weightDecay,
        alpha: p.lr * muonShapeScale(rows, cols) * ortho.scale,
        gradNorm,
        ...(p.master ? { master: at(p.master) } : {}),
        ...(settings.stochasticSeed === null ? {} : { stochasticRounding: { seed: settings.stochasticSeed, step } }),
      });
      for (const t of new Set([direction, start, ortho.tensor])) t.free();
    }
  }
}
