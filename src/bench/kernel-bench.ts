/**
 * `nmoe bench kernels`: the expensive kernel families alone, at a config's shapes, timed with device events:
 * grouped expert GEMMs (forward, input gradient, weight gradient, and the fused forms the model calls) under uniform
 * random routing, causal attention forward and backward with the config's attn_kernel, sliding-window attention
 * with sinks over attn_local_window keys at the same sequence length, and the chunked
 * cross-entropy forward + backward. tools/torch_kernels.py times the PyTorch
 * counterparts (torch._grouped_mm, SDPA, a bf16 GEMM + cross-entropy) at the same shapes.
 */
import type { ModelConfig } from '../model/spec.ts';
import { qkHeadDim, swaHeads } from '../model/spec.ts';
import type { Backend } from '../tensor/backend.ts';
import type { Tensor } from '../tensor/tensor.ts';
import { philoxNormal, philoxUniform } from '../util/philox.ts';

export interface KernelTime {
  kernel: string;
  shape: string;
  ms: number;
  tflops: number;
}

function randn(b: Backend, shape: number[], stream: number, std = 1): Tensor {
  const host = new Float32Array(shape.reduce((a, c) => a * c, 1));
  philoxNormal(host, { std, seed: 99, stream });
  return b.upload(host, shape, 'bf16');
}

/** Median ms of `iters` timed calls of fn after `warmup` untimed ones. `timer` brackets device work. */
async function time(
  b: Backend,
  fn: () => Tensor[] | void,
  timer: () => () => number,
  iters = 10,
  warmup = 3,
): Promise<number> {
  const run = () => {
    const out = fn();
    if (out) for (const t of out) t.free();
  };
  for (let i = 0; i < warmup; i++) run();
  await b.synchronize();
  const samples: number[] = [];
  for (let i = 0; i < iters; i++) {
    const stop = timer();
    run();
    samples.push(stop());
  }
  samples.sort((x, y) => x - y);
  return samples[Math.floor(samples.length / 2)]!;
}

/** The kernels at the shapes of `batchSize` sequences of the model's seq_len. */
export async function benchKernels(
  b: Backend,
  cfg: ModelConfig,
  batchSize: number,
  timer: () => () => number,
): Promise<KernelTime[]> {
  const T = batchSize * cfg.seq_len,
    K = cfg.n_activated_experts,
    E = cfg.n_routed_experts,
    D = cfg.dim,
    F = cfg.moe_inter_dim;
  const rows = T * K;
  const u = new Float32Array(rows);
  philoxUniform(u, 5, 1);
  const idx = b.upload(
    Int32Array.from(u, (x) => Math.min(E - 1, Math.floor(x * E))),
    [T, K],
    'i32',
  );
  const plan = b.moePlan(idx, E);
  const x = randn(b, [rows, D], 2),
    w = randn(b, [E, D, F], 3, 0.02),
    dy = randn(b, [rows, F], 4);
  const dw = b.zeros([E, D, F], 'bf16');
  const gemmFlops = 2 * rows * D * F;
  const out: KernelTime[] = [];
  const add = (kernel: string, shape: string, ms: number, flops: number) =>
    out.push({ kernel, shape, ms, tflops: flops / ms / 1e9 });
  const gShape = `${rows} rows x ${D} -> ${F}, ${E} experts`;
  add('grouped GEMM forward', gShape, await time(b, () => [b.groupedMatmul(x, w, plan.offsets)], timer), gemmFlops);
  add(
    'grouped GEMM input grad',
    gShape,
    await time(b, () => [b.groupedMatmul(dy, w, plan.offsets, true)], timer),
    gemmFlops,
  );
  add(
    'grouped GEMM weight grad',
    gShape,
    await time(b, () => b.groupedMatmulWeightGrad(x, dy, plan.offsets, dw), timer),
    gemmFlops,
  );
  // The fused forms the model calls: the gate and up projections with the SwiGLU, and the input gradient through both.
  const w3 = randn(b, [E, D, F], 11, 0.02),
    dy3 = randn(b, [rows, F], 12);
  add(
    'grouped gate+up with SwiGLU',
    gShape,
    await time(b, () => Object.values(b.groupedSwiglu(x, w, w3, plan.offsets)), timer),
    2 * gemmFlops,
  );
  add(
    'grouped input grad via W1 and W3',
    gShape,
    await time(b, () => [b.groupedMatmulSum(dy, w, dy3, w3, plan.offsets, true)], timer),
    2 * gemmFlops,
  );

  const H = cfg.n_heads,
    dqk = qkHeadDim(cfg),
    dv = cfg.v_head_dim,
    S = cfg.seq_len,
    B = batchSize;
  const spec = {
    batch: B,
    seqLen: S,
    heads: H,
    scale: dqk ** -0.5,
    kernel: cfg.attn_kernel,
    deterministic: cfg.deterministic,
  };
  const q = randn(b, [T, H * dqk], 5),
    k = randn(b, [T, H * dqk], 6),
    v = randn(b, [T, H * dv], 7),
    dO = randn(b, [T, H * dv], 8);
  const attnFlops = 2 * B * H * ((S * S) / 2) * (dqk + dv); // causal: half the score matrix
  const aShape = `B ${B} x S ${S} x H ${H}, d ${dqk}/${dv}, causal`;
  add(
    'attention forward',
    aShape,
    await time(
      b,
      () => {
        const r = b.attention(q, k, v, spec);
        return [r.out, r.lse];
      },
      timer,
    ),
    attnFlops,
  );
  const { out: o, lse } = b.attention(q, k, v, spec);
  add(
    'attention backward',
    aShape,
    await time(
      b,
      () => {
        const r = b.attentionBackward(dO, q, k, v, o, lse, spec);
        return [r.dq, r.dk, r.dv];
      },
      timer,
    ),
    2.5 * attnFlops,
  );

  // Sliding-window attention with sinks at the same sequence, over attn_local_window keys (SWA's head dim is
  // v_head_dim): against the causal rows above, what a local layer saves.
  const { heads: sH, kvHeads: sKV, headDim: sd } = swaHeads(cfg);
  const window = cfg.attn_local_window;
  const swaSpec = { batch: B, seqLen: S, heads: sH, kvHeads: sKV, scale: sd ** -0.5, window };
  const sq = randn(b, [T, sH * sd], 13),
    sk = randn(b, [T, sKV * sd], 14),
    sv = randn(b, [T, sKV * sd], 15),
    sdO = randn(b, [T, sH * sd], 16),
    sinks = randn(b, [sH], 17),
    dSinks = b.zeros([sH], 'bf16');
  const visible = Math.min(window, S) * (S - (Math.min(window, S) - 1) / 2); // keys summed over the S queries
  const swaFlops = 2 * B * sH * visible * 2 * sd;
  const sShape = `B ${B} x S ${S} x H ${sH}/${sKV}, d ${sd}, window ${window}`;
  add(
    'SWA forward',
    sShape,
    await time(
      b,
      () => {
        const r = b.slidingAttention(sq, sk, sv, sinks, swaSpec);
        return [r.out, r.lse];
      },
      timer,
    ),
    swaFlops,
  );
  const swa = b.slidingAttention(sq, sk, sv, sinks, swaSpec);
  add(
    'SWA backward',
    sShape,
    await time(
      b,
      () => {
        const r = b.slidingAttentionBackward(sdO, sq, sk, sv, sinks, swa.out, swa.lse, swaSpec, dSinks);
        return [r.dq, r.dk, r.dv];
      },
      timer,
    ),
    2.5 * swaFlops,
  );
  for (const t of [sq, sk, sv, sdO, sinks, dSinks, swa.out, swa.lse]) t.free();

  const V = cfg.vocab_size;
  const xh = randn(b, [T, D], 9),
    head = randn(b, [V, D], 10, 0.02),
    dHead = b.zeros([V, D], 'bf16');
  const targets = b.upload(
    Int32Array.from({ length: T }, (_, i) => (i * 7919) % V),
    [T],
    'i32',
  );
  const ceSpec = { logitScale: 0.125, ignoreIndex: cfg.eos_token_id };
  const ce = () => {
    const { loss, count, dx } = b.crossEntropy(xh, head, targets, ceSpec, dHead);
    return [loss, count, dx!];
  };
  // The logits GEMM and its two gradients, in one pass.
  add(
    'lm_head + cross-entropy fwd+bwd',
    `${T} tokens x ${D} -> ${V} vocab`,
    await time(b, ce, timer),
    2 * T * D * V * 3,
  );
  for (const t of [idx, x, w, w3, dy, dy3, dw, q, k, v, dO, o, lse, xh, head, dHead, targets]) t.free();
  plan.free();
  return out;
}
