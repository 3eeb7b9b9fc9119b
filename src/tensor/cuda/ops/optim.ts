/** The global gradient norm, AdamW as one multi-tensor launch, and Muon's elementwise steps (kernels/optim.cu). */
import type { AdamWGroup, AdamWOptions, MuonMomentumSpec, MuonUpdateSpec } from '../../backend.ts';
import { DTYPE_BYTES, type Tensor, describe } from '../../tensor.ts';
import { adamChunkWords, adamTensorWords } from '../adam-table.ts';
import { STRUCTS } from '../kernel-table.ts';
import { OPTIM } from '../kernels/optim.ts';
import { asCuda, ctype } from '../tensor.ts';
import { type CudaContext, gridFor } from './context.ts';

export function globalNorm(c: CudaContext, tensors: readonly Tensor[]): Tensor {
  // A grid per tensor by its size (one block per 64K elements, up to 8 per SM): a fixed function of the shapes and
  // the device, so the fixed-order sum is bit-reproducible on a given GPU model.
  const maxBlocks = 8 * c.dev.info.multiprocessors;
  const blocks = tensors.map((t) => Math.max(1, Math.min(maxBlocks, Math.ceil(t.numel / 65536))));
  const partial = c.empty([blocks.reduce((a, b) => a + b, 0)], 'f32');
  let slot = 0;
  tensors.forEach((t, i) => {
    const x = asCuda(t),
      vector = 16 / DTYPE_BYTES[x.dtype];
    const vec = x.ptr % 16n === 0n && x.numel % vector === 0 ? 1 : 0;
    c.dev.run(
      OPTIM,
      'sumsq_partial',
      { template: ctype(t), grid: [blocks[i]!], block: 256 },
      { x: t, n: t.numel, partial: asCuda(partial).ptr + BigInt(4 * slot), vec },
    );
    slot += blocks[i]!;
  });
  const norm = c.empty([1], 'f32');
  c.dev.run(OPTIM, 'norm_finish', { grid: [1], block: 1024 }, { partial, n: slot, norm });
  partial.free();
  return norm;
}

export function muonMomentum(c: CudaContext, grad: Tensor, momentum: Tensor, spec: MuonMomentumSpec): Tensor {
  if (grad.numel !== momentum.numel || momentum.dtype !== 'f32')
    throw new Error(
      `muonMomentum: ${describe(grad)} with momentum ${describe(momentum)} (must be f32 of the same size)`,
    );
  const u = c.empty(grad.shape, 'f32');
  c.dev.run(
    OPTIM,
    'muon_momentum',
    { template: ctype(grad), grid: [gridFor(grad.numel)], block: 256 },
    {
      g: grad,
      m: momentum,
      u,
      n: grad.numel,
      mu: spec.momentum,
      nesterov: spec.nesterov ? 1 : 0,
      grad_norm: spec.gradNorm,
      max_norm: spec.maxNorm,
    },
  );
  const norm = globalNorm(c, [u]);
  c.dev.run(
    OPTIM,
    'scale_by_inverse_norm',
    { grid: [gridFor(u.numel)], block: 256 },
    { x: u, n: u.numel, norm, eps: 1e-7 },
  );
  norm.free();
  return u;
}

export function muonUpdate(c: CudaContext, param: Tensor, delta: Tensor, spec: MuonUpdateSpec): void {
  if (param.numel !== delta.numel || param.dtype !== delta.dtype)
    throw new Error(`muonUpdate: ${describe(param)} from ${describe(delta)} (must match in size and dtype)`);
  const sr = spec.stochasticRounding;
  c.dev.run(
    OPTIM,
    'muon_update',
    { template: `${ctype(param)}, ${ctype(delta)}`, grid: [gridFor(param.numel)], block: 256 },
    {
      p: param,
      master: spec.master ?? 0n,
      delta,
      n: param.numel,
      decay: 1 - spec.lr * spec.weightDecay,
      alpha: spec.alpha,
      grad_norm: spec.gradNorm,
      stochastic: sr ? 1 : 0,
      seed: sr?.seed ?? 0,
      step: sr?.step ?? 0,
    },
  );
}

/** AdamW over up to 4 groups in one launch, with the device tables of its tensors and chunks cached (optim.cu). */
export class CudaAdamW {
  /** The device table of a parameter set's tensors and 8192-element chunks, rebuilt when a pointer moves. */
  #tensors: { key: string; table: Tensor } | null = null;
  #chunks: { sizes: string; list: Tensor; chunks: number } | null = null;

  constructor(private readonly c: CudaContext) {}

  step(groups: readonly AdamWGroup[], opts: AdamWOptions): void {
    if (groups.length > 4) throw new Error(`adamw: ${groups.length} groups, the kernel takes at most 4`);
    const first = groups.find((g) => g.params.length > 0);
    if (!first) return;
    const table = this.#table(groups);
    // AdamGroups: lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt; 4 each.
    const hyper = new Float32Array(STRUCTS.AdamGroups.bytes / 4);
    groups.forEach((g, i) => {
      const values = [
        g.lr,
        g.beta1,
        g.beta2,
        g.eps,
        g.weightDecay,
        1 - g.beta1 ** g.step,
        Math.sqrt(1 - g.beta2 ** g.step),
      ];
      values.forEach((x, field) => {
        hyper[4 * field + i] = x;
      });
    });
    const sr = opts.stochasticRounding;
    const param = ctype(first.params[0]!);
    this.c.dev.run(
      OPTIM,
      'adamw_multi',
      {
        template: `${param}, ${ctype(first.expAvg[0]!)}, ${sr !== undefined && param === 'bf16'}`,
        grid: [table.chunks],
        block: 256,
      },
      {
        tensors: table.tensors,
        chunks: table.chunkList,
        groups: new Uint8Array(hyper.buffer),
        grad_norm: opts.gradNorm,
        max_norm: opts.maxNorm,
        seed: sr?.seed ?? 0,
        step: first.step,
      },
    );
  }

  #table(groups: readonly AdamWGroup[]) {
    // The tensor table is keyed by every pointer involved: expert gradients are new tensors each step
    // (ParamStore.grad), not always where they were. The chunk list (460K entries at moonlet6, tens of ms to build)
    // depends only on the sizes, so it is built once. Only the last of each is kept; the stream orders their reuse.
    const params = groups.flatMap((g) => g.params);
    const ptrs = (ts: readonly Tensor[] | undefined) => (ts ?? []).map((t) => asCuda(t).ptr).join(',');
    const key = groups.map((g) => [g.params, g.master, g.grads, g.expAvg, g.expAvgSq].map(ptrs).join('|')).join(';');
    const sizes = params.map((p) => p.numel).join(',');
    if (this.#chunks?.sizes !== sizes) {
      this.#chunks?.list.free();
      const words = adamChunkWords(params.map((p) => p.numel));
      this.#chunks = { sizes, list: this.c.upload(words, [words.length], 'i32'), chunks: words.length / 2 };
    }
    if (this.#tensors?.key !== key) {
      this.#tensors?.table.free();
      const rows = groups.flatMap((g, group) =>
        g.params.map((p, i) => ({
          pointers: [p, g.master?.[i], g.grads[i], g.expAvg[i], g.expAvgSq[i]].map((t) => (t ? asCuda(t).ptr : 0n)),
          numel: p.numel,
          group,
        })),
      );
      const words = adamTensorWords(rows);
      this.#tensors = { key, table: this.c.upload(words, [words.length], 'i32') };
    }
    return { tensors: this.#tensors.table, chunkList: this.#chunks.list, chunks: this.#chunks.chunks };
  }
}
