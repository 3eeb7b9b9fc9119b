/**
 * CPU global gradient norm, fused AdamW (the reference's update order, plus norm clipping and a NaN guard), and
 * Muon's two element-wise halves around the Newton-Schulz matmuls (src/optim/muon.ts), with the same clipping,
 * guard and rounding as AdamW.
 */
import type { AdamWGroup, AdamWOptions, MuonMomentumSpec, MuonUpdateSpec } from '../backend.ts';
import { stochasticBf16 } from '../bf16.ts';
import { philox4x32 } from '../../util/philox.ts';
import { type CpuTensor, allocate, asCpu, settle } from './storage.ts';

export function globalNorm(tensors: readonly CpuTensor[]): CpuTensor {
  let ss = 0;
  for (const t of tensors) for (const v of t.f) ss += v * v;
  const out = allocate([1], 'f32');
  out.f[0] = Math.sqrt(ss);
  return out;
}

/** The factor that scales gradients to the global norm `maxNorm` (0: no clipping). */
function clipFactor(norm: number, maxNorm: number): number {
  return maxNorm > 0 ? Math.min(1, maxNorm / (norm + 1e-6)) : 1;
}

export function adamw(groups: readonly AdamWGroup[], opts: AdamWOptions): void {
  const norm = asCpu(opts.gradNorm).f[0]!;
  if (!Number.isFinite(norm)) return; // leave weights and moments untouched; the trainer reports the bad step
  const clip = clipFactor(norm, opts.maxNorm);
  for (const g of groups) {
    const bc1 = 1 - g.beta1 ** g.step;
    const bc2Sqrt = Math.sqrt(1 - g.beta2 ** g.step);
    const stepSize = g.lr / bc1;
    const decay = 1 - g.lr * g.weightDecay;
    g.params.forEach((pt, i) => {
      const p = asCpu(pt),
        grad = asCpu(g.grads[i]!).f,
        m = asCpu(g.expAvg[i]!),
        v = asCpu(g.expAvgSq[i]!);
      // With a master copy the update runs in fp32 on it and the param takes its rounding.
      const master = g.master ? asCpu(g.master[i]!) : null;
      const ws = (master ?? p).f,
        ms = m.f,
        vs = v.f;
      const sr = opts.stochasticRounding && !master && p.dtype === 'bf16' ? opts.stochasticRounding : null;
      for (let j = 0; j < ws.length; j++) {
        const gj = grad[j]! * clip;
        const mj = g.beta1 * ms[j]! + (1 - g.beta1) * gj;
        const vj = g.beta2 * vs[j]! + (1 - g.beta2) * gj * gj;
        ms[j] = mj;
        vs[j] = vj;
        const w = ws[j]! * decay - stepSize * (mj / (Math.sqrt(vj) / bc2Sqrt + g.eps));
        ws[j] = sr ? stochasticBf16(w, philoxBits(sr.seed, g.step, j)) : w;
      }
      if (master) p.f.set(master.f);
      if (!sr) settle(p);
      settle(m);
      settle(v);
    });
  }
}

export function muonMomentum(grad: CpuTensor, momentum: CpuTensor, spec: MuonMomentumSpec): CpuTensor {
  const out = allocate(grad.shape, 'f32');
  const norm = asCpu(spec.gradNorm).f[0]!;
  if (!Number.isFinite(norm)) return out; // zeros; muonUpdate skips the step on the same norm
  const clip = clipFactor(norm, spec.maxNorm),
    mu = spec.momentum;
  const g = grad.f,
    m = momentum.f,
    u = out.f;
  let ss = 0;
  for (let j = 0; j < u.length; j++) {
    const gj = g[j]! * clip;
    m[j] = mu * m[j]! + gj;
    u[j] = spec.nesterov ? gj + mu * m[j]! : m[j]!;
    ss += u[j]! * u[j]!;
  }
  settle(momentum);
  const inverse = 1 / (Math.sqrt(ss) + 1e-7);
  for (let j = 0; j < u.length; j++) u[j] = u[j]! * inverse;
  return out;
}

export function muonUpdate(param: CpuTensor, delta: CpuTensor, spec: MuonUpdateSpec): void {
  if (!Number.isFinite(asCpu(spec.gradNorm).f[0]!)) return;
  const master = spec.master ? asCpu(spec.master) : null;
  const ws = (master ?? param).f,
    d = delta.f;
  const decay = 1 - spec.lr * spec.weightDecay;
  const sr = spec.stochasticRounding && !master && param.dtype === 'bf16' ? spec.stochasticRounding : null;
  for (let j = 0; j < ws.length; j++) {
    const w = ws[j]! * decay - spec.alpha * d[j]!;
    ws[j] = sr ? stochasticBf16(w, philoxBits(sr.seed, sr.step, j)) : w;
  }
  if (master) param.f.set(master.f);
  if (!sr) settle(param);
}

/** Random 16 bits for element j of step `step` (Philox, as the CUDA kernel draws them). */
function philoxBits(seed: number, step: number, j: number): number {
  return philox4x32(j >>> 0, Math.floor(j / 4294967296), step >>> 0, 0, seed >>> 0, 0x5eed)[0]! & 0xffff;
}
