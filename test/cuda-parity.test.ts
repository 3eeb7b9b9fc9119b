/**
 * GPU tests: every CUDA backend op against the CPU oracle, in fp32 and bf16, then the whole model's loss and
 * gradients and KV-cached decoding, then training. They run only where a GPU answers (see docs/testing.md, "GPU tests");
 * elsewhere they are skipped.
 * Errors are norm-wise, ||gpu - cpu|| / ||cpu||: fp32 ops land near 1e-6 (different summation orders), bf16 ones
 * near 1e-3 (storage rounding), so the bounds are 1e-4 and 2e-2.
 */
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { modelConfig } from '../src/config/sections.ts';
import { Decoder } from '../src/model/decoder.ts';
import { Transformer } from '../src/model/transformer.ts';
import { muonStep, newtonSchulz5 } from '../src/optim/muon.ts';
import type { Backend } from '../src/tensor/backend.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import type { CudaBackend } from '../src/tensor/cuda/backend.ts';
import { fp8Codes } from '../src/tensor/cuda/fp8-plan.ts';
import type { GroupedGemmOptions } from '../src/tensor/cuda/grouped-options.ts';
import { quantizeFp8 } from '../src/tensor/fp8.ts';
import { selectBackend } from '../src/tensor/select.ts';
import type { DType, Tensor } from '../src/tensor/tensor.ts';
import { philoxNormal } from '../src/util/philox.ts';

const cpu = new CpuBackend();
const selected = await selectBackend('auto');
const gpu: Backend | null = selected.backend.device === 'cuda' ? selected.backend : null;
// "auto" falls back to the CPU on any error; on a machine with a GPU that fallback is the failure to report.
const expectGpu = selected.fallback?.gpuPresent ?? gpu !== null;
if (!gpu && !expectGpu) console.warn(`GPU tests skipped: ${selected.note}`);

describe.runIf(expectGpu)('the CUDA backend', () => {
  it('starts on this machine, which has a GPU (nvidia-smi, its device files, or NMOE_EXPECT_GPU=1)', () => {
    expect(gpu, `the CUDA backend failed to start: ${selected.fallback?.reason}`).not.toBeNull();
  });
});

let stream = 100;
function hostRandn(n: number, std = 1): Float32Array {
  const a = new Float32Array(n);
  philoxNormal(a, { std, seed: 5, stream: stream++ });
  return a;
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0,
    n = 0;
  for (let i = 0; i < a.length; i++) {
    d += (a[i]! - b[i]!) ** 2;
    n += b[i]! ** 2;
  }
  return n === 0 ? Math.sqrt(d) : Math.sqrt(d / n);
}

type Put = (data: Float32Array | Int32Array, shape: number[], dtype?: DType) => Tensor;

/** Runs `build` on both backends (same host inputs via `put`, default dtype `dtype`) and compares every output. */
async function parity(dtype: DType, build: (b: Backend, put: Put) => Tensor[]) {
  const putOn =
    (b: Backend): Put =>
    (data, shape, dt) =>
      b.upload(data, shape, dt ?? (data instanceof Int32Array ? 'i32' : dtype));
  const want = build(cpu, putOn(cpu));
  const got = build(gpu!, putOn(gpu!));
  const errors: number[] = [];
  for (let i = 0; i < want.length; i++) errors.push(relErr(await gpu!.read(got[i]!), await cpu.read(want[i]!)));
  return errors;
}

const bound = (dtype: DType) => (dtype === 'f32' ? 1e-4 : 2e-2);

describe.skipIf(!gpu)('CUDA backend matches the CPU oracle', () => {
  for (const dtype of ['f32', 'bf16'] as const) {
    describe(dtype, () => {
      const T = 96,
        D = 80;
      it('matmul in every transpose combination, with accumulate', async () => {
        for (const [ta, tb] of [
          [false, false],
          [true, false],
          [false, true],
          [true, true],
        ] as const) {
          const a = hostRandn(T * D),
            b = hostRandn(D * 48),
            c = hostRandn(T * 48);
          const errs = await parity(dtype, (be, put) => {
            const x = put(a, ta ? [D, T] : [T, D]),
              y = put(b, tb ? [48, D] : [D, 48]),
              z = put(c, [T, 48]);
            return [
              be.matmul(x, y, { transA: ta, transB: tb }),
              be.matmul(x, y, { transA: ta, transB: tb, out: z, accumulate: true, alpha: 0.5 }),
            ];
          });
          for (const e of errs) expect(e, `transA=${ta} transB=${tb}`).toBeLessThan(bound(dtype));
        }
      });

      it('embedding, rmsnorm, swiglu, add, split/concat (forward and backward), softmax', async () => {
        const idsH = Int32Array.from({ length: T }, (_, i) => (i * 7) % 50);
        const tableH = hostRandn(50 * D),
          xH = hostRandn(T * D),
          wH = hostRandn(D),
          rH = hostRandn(T * D);
        const errs = await parity(dtype, (b, put) => {
          const i = put(idsH, [T]),
            t = put(tableH, [50, D]),
            xx = put(xH, [T, D]),
            ww = put(wH, [D]),
            rr = put(rH, [T, D]);
          const dTable = b.zeros([50, D], dtype);
          b.embeddingBackward(i, rr, dTable, 10.667);
          const { y, rstd } = b.rmsnorm(xx, ww, 1e-5);
          const dw = b.zeros([D], dtype);
          const dx = b.rmsnormBackward(rr, xx, ww, rstd, dw);
          const { dg, du } = b.swigluBackward(rr, xx, y);
          const parts = b.splitCols(xx, [30, 50]);
          return [
            b.embedding(i, t, 10.667),
            dTable,
            y,
            rstd,
            dx,
            dw,
            b.swiglu(xx, y),
            dg,
            du,
            b.add(xx, rr),
            b.concatCols(parts.reverse()),
            b.softmax(xx),
          ];
        });
        errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
      });

      it('rope, MLA assembly and causal attention (forward and backward)', async () => {
        const B = 2,
          S = 24,
          H = 3,
          dN = 16,
          dR = 8,
          dV = 12;
        const positions = 64;
        const cosH = Float32Array.from({ length: positions * 4 }, (_, i) => Math.cos(i * 0.1));
        const sinH = Float32Array.from({ length: positions * 4 }, (_, i) => Math.sin(i * 0.1));
        const kvbH = hostRandn(B * S * H * (dN + dV)),
          kpeH = hostRandn(B * S * dR),
          qH = hostRandn(B * S * H * (dN + dR)),
          dOH = hostRandn(B * S * H * dV);
        const spec = { batch: B, seqLen: S, heads: H, scale: (dN + dR) ** -0.5 };
        const errs = await parity(dtype, (b, put) => {
          const c = put(cosH, [positions, 4], 'f32'),
            s = put(sinH, [positions, 4], 'f32');
          const kv = put(kvbH, [B * S, H * (dN + dV)]),
            pe = put(kpeH, [B * S, dR]),
            qq = put(qH, [B * S, H * (dN + dR)]),
            g = put(dOH, [B * S, H * dV]);
          b.ropeInPlace(qq, c, s, { heads: H, headStride: dN + dR, base: 0, offset: dN, dim: dR, seqLen: S }, false);
          b.ropeInPlace(pe, c, s, { heads: 1, headStride: dR, base: 0, offset: 0, dim: dR, seqLen: S }, true);
          const { k, v } = b.mlaAssembleKV(kv, pe, H, dN, dV);
          const { out, lse } = b.attention(qq, k, v, spec);
          const { dq, dk, dv } = b.attentionBackward(g, qq, k, v, out, lse, spec);
          const { dkvb, dkpe } = b.mlaAssembleKVBackward(dk, dv, H, dN, dV);
          return [qq, k, v, out, lse, dq, dk, dv, dkvb, dkpe];
        });
        errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
      });

      // cuDNN (the default kernel, deterministic or not) and nmoe's flash kernels; S = 200 is ragged (cuDNN <= 9.15
      // refuses it and falls back to the flash kernels), S = 256 runs on cuDNN where cuDNN is found.
      for (const [S, kernel, deterministic] of [
        [200, 'nmoe', true],
        [200, 'cudnn', true],
        [256, 'cudnn', true],
        [256, 'cudnn', false],
      ] as const) {
        it(`attention at MLA head dims (192/128), S ${S}, ${kernel} kernels${deterministic ? '' : ', nondeterministic backward'}`, async () => {
          const B = 2,
            H = 2,
            dQK = 192,
            dV = 128;
          const qH = hostRandn(B * S * H * dQK),
            kH = hostRandn(B * S * H * dQK),
            vH = hostRandn(B * S * H * dV),
            gH = hostRandn(B * S * H * dV);
          const spec = { batch: B, seqLen: S, heads: H, scale: dQK ** -0.5, kernel, deterministic };
          const errs = await parity(dtype, (b, put) => {
            const q = put(qH, [B * S, H * dQK]),
              k = put(kH, [B * S, H * dQK]),
              v = put(vH, [B * S, H * dV]),
              g = put(gH, [B * S, H * dV]);
            const { out, lse } = b.attention(q, k, v, spec);
            const { dq, dk, dv } = b.attentionBackward(g, q, k, v, out, lse, spec);
            return [out, lse, dq, dk, dv];
          });
          errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
        });
      }

      // SWA at tiny-swa's head dim (16) and the reference's (128: the flash kernels in bf16), GQA, bands that are not
      // multiples of the 64-row tiles over ragged sequences, and no band (a global SWA layer).
      for (const [S, H, KV, d, window] of [
        [40, 4, 2, 16, 8],
        [200, 4, 2, 128, 100],
        [160, 4, 1, 64, 32],
        [130, 2, 1, 128, 0],
        [48, 2, 2, 64, 0],
      ] as const) {
        it(`sliding-window attention with sinks, S ${S}, ${H}/${KV} heads, d ${d}, window ${window} (forward and backward)`, async () => {
          const B = 2;
          const qH = hostRandn(B * S * H * d),
            kH = hostRandn(B * S * KV * d),
            vH = hostRandn(B * S * KV * d),
            gH = hostRandn(B * S * H * d),
            sinkH = hostRandn(H),
            dSinkH = hostRandn(H);
          const spec = { batch: B, seqLen: S, heads: H, kvHeads: KV, scale: d ** -0.5, window };
          const errs = await parity(dtype, (b, put) => {
            const q = put(qH, [B * S, H * d]),
              k = put(kH, [B * S, KV * d]),
              v = put(vH, [B * S, KV * d]),
              g = put(gH, [B * S, H * d]),
              sinks = put(sinkH, [H]),
              dSinks = put(dSinkH, [H]); // the sinks' gradient accumulates into what it holds
            const { out, lse } = b.slidingAttention(q, k, v, sinks, spec);
            const { dq, dk, dv } = b.slidingAttentionBackward(g, q, k, v, sinks, out, lse, spec, dSinks);
            return [out, lse, dq, dk, dv, dSinks];
          });
          errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
        });
      }

      // Several chunks of logits per group and several groups (the fp32 sum of dw over groups), as a vocabulary of
      // 200K makes them at moonlet6 sizes: the limits shrunk to 7-token chunks and 3-chunk groups over T = 96. A
      // vocabulary of 301 takes the kernels' scalar paths (rows not a multiple of 4).
      it.each([300, 301])('cross-entropy over several chunks and groups of chunks (vocabulary %i)', async (V) => {
        const xH = hostRandn(T * D),
          wH = hostRandn(V * D, 0.2),
          tH = Int32Array.from({ length: T }, (_, i) => (i * 29) % V);
        const limits = (gpu as Backend & { ceLimits: { chunkElements: number; groupBytes: number } }).ceLimits;
        const saved = { ...limits };
        Object.assign(limits, { chunkElements: 7 * V, groupBytes: 3 * 7 * V * (dtype === 'f32' ? 4 : 2) });
        try {
          const errs = await parity(dtype, (b, put) => {
            const xx = put(xH, [T, D]),
              ww = put(wH, [V, D]),
              tt = put(tH, [T]);
            const dw = b.zeros([V, D], dtype);
            b.copy(ww, dw); // dw accumulates into what it holds
            const { loss, count, dx } = b.crossEntropy(xx, ww, tt, { logitScale: 0.125, ignoreIndex: 3 }, dw);
            return [loss, count, dx!, dw];
          });
          errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
        } finally {
          Object.assign(limits, saved);
        }
      });

      it('router, grouping, grouped GEMMs and combine (forward and backward)', async () => {
        const E = 6,
          K = 2,
          F = 40;
        const logitsH = hostRandn(T * E),
          biasH = hostRandn(E, 0.1),
          xH = hostRandn(T * D),
          w1H = hostRandn(E * D * F, 0.1);
        const dOutH = hostRandn(T * F),
          dgH = hostRandn(T * K);
        const errs = await parity(dtype, (b, put) => {
          const l32 = put(logitsH, [T, E], 'f32'),
            b32 = put(biasH, [E], 'f32'),
            dg32 = put(dgH, [T, K], 'f32');
          const xx = put(xH, [T, D]),
            w = put(w1H, [E, D, F]),
            g = put(dOutH, [T, F]);
          const { gates, idx } = b.routerTopK(l32, b32, K, 2.0);
          const dLogits = b.routerTopKBackward(dg32, l32, idx, 2.0);
          const plan = b.moePlan(idx, E);
          const xe = b.moeGather(xx, plan);
          const h = b.groupedMatmul(xe, w, plan.offsets);
          const out = b.moeCombine(h, gates, plan);
          const { dye, dGates } = b.moeCombineBackward(g, h, gates, plan);
          const dw = b.zeros([E, D, F], dtype);
          b.groupedMatmulWeightGrad(xe, dye, plan.offsets, dw);
          const dxe = b.groupedMatmul(dye, w, plan.offsets, true);
          const dx = b.moeGatherBackward(dxe, plan);
          const bias2 = put(new Float32Array(E), [E], 'f32');
          b.routerBiasUpdate(bias2, plan.counts, 0.01, put(Float32Array.of(1), [1], 'f32'));
          return [
            gates,
            idx,
            dLogits,
            plan.counts,
            plan.offsets,
            plan.slotOfRow,
            plan.rowOfSlot,
            xe,
            h,
            out,
            dye,
            dGates,
            dw,
            dxe,
            dx,
            bias2,
          ];
        });
        errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(i < 7 || i === 15 ? 1e-6 : bound(dtype)));
      });

      it('grouped GEMMs over many uneven expert segments (several 128-row tiles each)', async () => {
        const T = 700,
          K = 6,
          E = 8,
          Din = 264,
          Dout = 200;
        const idxH = Int32Array.from({ length: T * K }, (_, i) => ((i * 7919) % 13) % E); // skewed loads, some experts heavy
        const xH = hostRandn(T * Din),
          wH = hostRandn(E * Din * Dout, 0.05),
          wtH = hostRandn(E * Dout * Din, 0.05),
          gH = hostRandn(T * K * Dout);
        const x2H = hostRandn(T * Din),
          w2H = hostRandn(E * Din * Dout, 0.05),
          wt2H = hostRandn(E * Dout * Din, 0.05);
        const errs = await parity(dtype, (b, put) => {
          const plan = b.moePlan(put(idxH, [T, K]), E);
          const xe = b.moeGather(put(xH, [T, Din]), plan);
          const y = b.groupedMatmul(xe, put(wH, [E, Din, Dout]), plan.offsets);
          const yt = b.groupedMatmul(xe, put(wtH, [E, Dout, Din]), plan.offsets, true);
          const dw = b.zeros([E, Din, Dout], dtype);
          b.groupedMatmulWeightGrad(xe, put(gH, [T * K, Dout]), plan.offsets, dw);
          // The fused forms: two products summed (the input gradient of W1 and W3), and the gate/up SwiGLU.
          const xe2 = b.moeGather(put(x2H, [T, Din]), plan);
          const ysum = b.groupedMatmulSum(
            xe,
            put(wtH, [E, Dout, Din]),
            xe2,
            put(wt2H, [E, Dout, Din]),
            plan.offsets,
            true,
          );
          const ysumN = b.groupedMatmulSum(xe, put(wH, [E, Din, Dout]), xe2, put(w2H, [E, Din, Dout]), plan.offsets);
          const { h1, h3, a } = b.groupedSwiglu(xe, put(wH, [E, Din, Dout]), put(w2H, [E, Din, Dout]), plan.offsets);
          // A gradient's first product writes (accumulate false) over whatever the memory held: two more experts,
          // which get no rows, must come out zero.
          const plan2 = b.moePlan(put(idxH, [T, K]), E + 2);
          const dwWrite = b.empty([E + 2, Din, Dout], dtype);
          b.fill(dwWrite, Number.NaN);
          b.groupedMatmulWeightGrad(
            b.moeGather(put(xH, [T, Din]), plan2),
            put(gH, [T * K, Dout]),
            plan2.offsets,
            dwWrite,
            false,
          );
          return [y, yt, dw, ysum, ysumN, h1, h3, a, dwWrite];
        });
        errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
      });

      it('the weight gradient on the ping-pong kernel (NMOE_WGRAD=pingpong): accumulating and writing', async () => {
        // Several 128 x 128 tiles with partial last ones (din 264, dout 200), segments of many k blocks with tails,
        // experts with no rows; on a GPU other than sm_90a the mma.sync kernels run instead.
        const T = 700,
          K = 6,
          E = 8,
          Din = 264,
          Dout = 200;
        const idxH = Int32Array.from({ length: T * K }, (_, i) => ((i * 7919) % 13) % E);
        const xH = hostRandn(T * Din),
          gH = hostRandn(T * K * Dout),
          dwH = hostRandn(E * Din * Dout);
        const options = (gpu as Backend & { groupedGemm: GroupedGemmOptions }).groupedGemm;
        const saved = { ...options };
        Object.assign(options, { path: 'wgmma', wgrad: 'pingpong' });
        try {
          const errs = await parity(dtype, (b, put) => {
            const plan = b.moePlan(put(idxH, [T, K]), E);
            const xe = b.moeGather(put(xH, [T, Din]), plan),
              g = put(gH, [T * K, Dout]);
            const dw = put(dwH, [E, Din, Dout]);
            b.groupedMatmulWeightGrad(xe, g, plan.offsets, dw);
            const plan2 = b.moePlan(put(idxH, [T, K]), E + 2); // experts 8 and 9 get no rows: zero tiles
            const dwWrite = b.empty([E + 2, Din, Dout], dtype);
            b.fill(dwWrite, Number.NaN);
            b.groupedMatmulWeightGrad(b.moeGather(put(xH, [T, Din]), plan2), g, plan2.offsets, dwWrite, false);
            return [dw, dwWrite];
          });
          errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
        } finally {
          Object.assign(options, saved);
        }
      });

      it('chunked cross-entropy, global norm and AdamW', async () => {
        const V = 300;
        const xH = hostRandn(T * D),
          wH = hostRandn(V * D, 0.2),
          tH = Int32Array.from({ length: T }, (_, i) => (i * 13) % V);
        const errs = await parity(dtype, (b, put) => {
          const xx = put(xH, [T, D]),
            ww = put(wH, [V, D]),
            tt = put(tH, [T]);
          const spec = { logitScale: 0.125, ignoreIndex: 0 };
          const dw = b.zeros([V, D], dtype);
          const { loss, count, dx: dxOrNull } = b.crossEntropy(xx, ww, tt, spec, dw);
          const dx = dxOrNull!;
          const plain = b.crossEntropy(xx, ww, tt, spec);
          const norm = b.globalNorm([dx, dw]);
          const m = b.zeros([V, D], 'f32'),
            v = b.zeros([V, D], 'f32');
          const p = b.zeros([V, D], dtype);
          b.copy(ww, p);
          b.adamw(
            [
              {
                params: [p],
                grads: [dw],
                expAvg: [m],
                expAvgSq: [v],
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.95,
                eps: 1e-8,
                weightDecay: 0.1,
                step: 1,
              },
            ],
            { gradNorm: norm, maxNorm: 1e-3 },
          );
          // The bf16 policies: fp32 masters, and stochastic rounding.
          const pm = b.zeros([V, D], dtype),
            master = b.zeros([V, D], 'f32'),
            psr = b.zeros([V, D], dtype);
          b.copy(ww, pm);
          b.convert(ww, master);
          b.copy(ww, psr);
          const moments = () => [b.zeros([V, D], 'f32'), b.zeros([V, D], 'f32')] as const;
          const [m2, v2] = moments(),
            [m3, v3] = moments();
          const hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 3 };
          b.adamw([{ params: [pm], grads: [dw], expAvg: [m2], expAvgSq: [v2], master: [master], ...hyper }], {
            gradNorm: norm,
            maxNorm: 0,
          });
          b.adamw([{ params: [psr], grads: [dw], expAvg: [m3], expAvgSq: [v3], ...hyper }], {
            gradNorm: norm,
            maxNorm: 0,
            stochasticRounding: { seed: 7 },
          });
          // bf16 moments (optim_state_dtype = "bf16", every large preset's policy), clipped: last, with the bf16 bound.
          const pb = b.zeros([V, D], dtype),
            m4 = b.zeros([V, D], 'bf16'),
            v4 = b.zeros([V, D], 'bf16');
          b.copy(ww, pb);
          for (const step of [1, 2, 3])
            b.adamw([{ params: [pb], grads: [dw], expAvg: [m4], expAvgSq: [v4], ...hyper, step }], {
              gradNorm: norm,
              maxNorm: 1e-3,
            });
          return [loss, plain.loss, count, dx, dw, norm, p, m, v, pm, master, psr, pb, m4, v4];
        });
        const bf16Moments = errs.length - 3;
        errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(i >= bf16Moments ? bound('bf16') : bound(dtype)));
      });

      it('Muon: momentum, Newton-Schulz through matmul and the update, wide and tall, with fp32 masters in bf16', async () => {
        const [R, C] = [24, 40];
        const gH = hostRandn(R * C),
          wH = hostRandn(R * C, 0.2),
          mH = hostRandn(R * C, 0.1);
        const errs = await parity(dtype, (b, put) =>
          [
            [R, C],
            [C, R],
          ].flatMap((shape) => {
            const value = put(wH, shape),
              grad = put(gH, shape),
              momentum = put(mH, shape, 'f32');
            const master = dtype === 'bf16' ? put(wH, shape, 'f32') : undefined;
            const gradNorm = b.globalNorm([grad]);
            const settings = { momentum: 0.95, nesterov: true, nsSteps: 5, maxNorm: 1, stochasticSeed: null };
            muonStep(b, [{ value, grad, momentum, master, lr: 1e-2, weightDecay: 0.1 }], gradNorm, 1, settings);
            const start = b.muonMomentum(grad, b.zeros(shape, 'f32'), { ...settings, gradNorm });
            return [momentum, value, ...(master ? [master] : []), newtonSchulz5(b, start, 5).tensor];
          }),
        );
        errs.forEach((e, i) => expect(e, `output ${i}`).toBeLessThan(bound(dtype)));
      });
    });
  }

  describe('fp8 expert kernels (sm_90a only; training does not use them yet)', () => {
    const cuda = gpu as CudaBackend | null;
    it.runIf(cuda?.dev.info.arch === 'sm_90a')(
      'the quantisers write fp8.ts codes and scales; the forward and input-gradient GEMMs match the emulation',
      async () => {
        // Imported here: the module loads the CUDA driver.
        const { fp8GroupedMatmul, quantizeExperts, quantizeRows, quantizeSegments } =
          await import('../src/tensor/cuda/ops/fp8.ts');
        const g = cuda!;
        const counts = [0, 130, 1, 257, 7, 205],
          E = counts.length,
          rows = 600,
          Din = 272,
          Dout = 208; // TMA strides: 16-byte multiples, and both widths have partial k and column tiles
        const offsets = [0];
        for (const n of counts) offsets.push(offsets.at(-1)! + n);
        const x = g.upload(hostRandn(rows * Din), [rows, Din], 'bf16'),
          w = g.upload(hostRandn(E * Din * Dout, 0.05), [E, Din, Dout], 'bf16');
        const xs = (await g.read(x)) as Float32Array,
          ws = (await g.read(w)) as Float32Array;
        const codes = async (t: Tensor, n: number) => fp8Codes((await g.read(t)) as Int32Array, n);
        const scales = async (t: Tensor, n: number) => ((await g.read(t)) as Float32Array).slice(0, n);

        const qx = quantizeRows(g, x),
          wantX = quantizeFp8(xs, rows, Din, { kind: 'rows' });
        expect(await codes(qx.codes, rows * Din)).toEqual(wantX.codes);
        expect(await scales(qx.scales, wantX.scales.length)).toEqual(wantX.scales);
        const qw = quantizeExperts(g, w),
          plane = Din * Dout;
        const wCodes = await codes(qw.codes, ws.length),
          tCodes = await codes(qw.transposed, ws.length),
          wScales = await scales(qw.scales, qw.scales.numel);
        for (let e = 0, s = 0; e < E; e++) {
          const want = quantizeFp8(ws.subarray(e * plane, (e + 1) * plane), Din, Dout, { kind: 'blocks' });
          expect(wCodes.subarray(e * plane, (e + 1) * plane)).toEqual(want.codes);
          expect(wScales.subarray(s, s + want.scales.length)).toEqual(want.scales);
          s += want.scales.length;
          for (let r = 0; r < Din; r++)
            for (let k = 0; k < Dout; k++)
              if (tCodes[e * plane + k * Din + r] !== want.codes[r * Dout + k])
                expect.fail(`transposed code of expert ${e} at (${r}, ${k})`);
        }
        const seg = g.moeSegments(g.upload(Int32Array.from(counts), [E], 'i32'), rows);
        const qs = quantizeSegments(g, x, seg.offsets),
          wantS = quantizeFp8(xs, rows, Din, { kind: 'columns', segments: Int32Array.from(offsets) });
        expect(await codes(qs.codes, rows * Din)).toEqual(wantS.codes);
        expect(await scales(qs.scales, wantS.scales.length)).toEqual(wantS.scales);

        const y = g.empty([rows, Dout], 'bf16');
        fp8GroupedMatmul(
          g,
          qx,
          qw,
          { rows, din: Din, dout: Dout, experts: E },
          seg.offsets,
          g.groupedTiles(seg.offsets),
          y,
        );
        const want = cpu.groupedMatmul(
          cpu.upload(xs, [rows, Din], 'f32'),
          cpu.upload(ws, [E, Din, Dout], 'f32'),
          cpu.upload(Int32Array.from(offsets), [E + 1], 'i32'),
          false,
          'fp8',
        );
        expect(relErr(await g.read(y), await cpu.read(want))).toBeLessThan(5e-3);
        // The input gradient's product dy @ W^T on the same weights (W [E, dout, din] as stored is K-major in din).
        const dyH = hostRandn(rows * Dout);
        const dy = g.upload(dyH, [rows, Dout], 'bf16'),
          dys = (await g.read(dy)) as Float32Array;
        const dx = g.empty([rows, Din], 'bf16');
        const dxShape = { rows, din: Dout, dout: Din, experts: E };
        fp8GroupedMatmul(g, quantizeRows(g, dy), qw, dxShape, seg.offsets, g.groupedTiles(seg.offsets), dx, true);
        const wantDx = cpu.groupedMatmul(
          cpu.upload(dys, [rows, Dout], 'f32'),
          cpu.upload(ws, [E, Din, Dout], 'f32'),
          cpu.upload(Int32Array.from(offsets), [E + 1], 'i32'),
          true,
          'fp8',
        );
        expect(relErr(await g.read(dx), await cpu.read(wantDx))).toBeLessThan(5e-3);
      },
    );
  });

  describe('whole model', () => {
    function tiny(extra: string[] = [], path = defaultConfigPath()) {
      const { config } = loadConfig(path, {
        env: {},
        overrides: ['--seq_len=32', '--batch_size=4', ...extra],
      });
      return modelConfig(config);
    }

    for (const [dtype, preset] of [
      ['f32', 'tiny'],
      ['bf16', 'tiny'],
      ['f32', 'tiny-swa'],
      ['bf16', 'tiny-swa'],
    ] as const) {
      it(`loss and every gradient match the CPU (${preset}, ${dtype} weights)`, async () => {
        const cfg = tiny([], `configs/${preset}.toml`);
        const ref = new Transformer(cpu, cfg, { dtype });
        ref.params.initialize(cfg.seed);
        const dev = new Transformer(gpu!, cfg, { dtype });
        for (const [i, p] of ref.params.params.entries()) {
          const host = (await cpu.read(p.value)) as Float32Array;
          dev.params.backend.copy(gpu!.upload(host, p.shape, p.value.dtype), dev.params.params[i]!.value);
        }
        const ids = Int32Array.from({ length: 128 }, (_, i) => (i * 37 + 11) % 256);
        const targets = Int32Array.from({ length: 128 }, (_, i) => (i * 53 + 5) % 256);
        const run = async (b: Backend, m: Transformer) => {
          m.params.zeroGrads();
          const fwd = m.forward(b.upload(ids, [128], 'i32'), b.upload(targets, [128], 'i32'), 4);
          const loss = (await b.read(fwd.loss))[0]!;
          m.backward(fwd.saved);
          return { loss, grads: await Promise.all(m.params.trainable().map((p) => b.read(p.grad!))) };
        };
        const want = await run(cpu, ref),
          got = await run(gpu!, dev);
        expect(Math.abs(got.loss - want.loss) / want.loss).toBeLessThan(dtype === 'f32' ? 1e-5 : 1e-2);
        const names = ref.params.trainable().map((p) => p.name);
        want.grads.forEach((g, i) =>
          expect(relErr(got.grads[i]!, g), names[i]).toBeLessThan(dtype === 'f32' ? 1e-3 : 5e-2),
        );
      });
    }

    for (const attn of ['mla', 'mha'] as const) {
      it(`KV-cached decoding matches the CPU (${attn}, bf16 weights): prefill and every step's logits`, async () => {
        const cfg = tiny([`--attn=${attn}`]);
        const ref = new Transformer(cpu, cfg, { dtype: 'bf16' });
        ref.params.initialize(cfg.seed);
        const dev = new Transformer(gpu!, cfg, { dtype: 'bf16' });
        for (const [i, p] of ref.params.params.entries()) {
          const host = (await cpu.read(p.value)) as Float32Array;
          dev.params.backend.copy(gpu!.upload(host, p.shape, p.value.dtype), dev.params.params[i]!.value);
        }
        const prompt = Int32Array.from([67, 97, 108, 108, 32, 109, 101]),
          next = [32, 73, 115, 104, 109, 97, 101, 108];
        const decode = async (b: Backend, m: Transformer) => {
          const dec = new Decoder(m),
            cache = dec.newCache(prompt.length + next.length);
          const h = dec.hidden(b.upload(prompt, [prompt.length], 'i32'), 1, prompt.length, cache);
          const out = [await dec.logits(b.view(h, [1, cfg.dim], (prompt.length - 1) * cfg.dim))];
          for (const id of next) out.push(await dec.logits(dec.step(b.upload(Int32Array.of(id), [1], 'i32'), cache)));
          return out;
        };
        const want = await decode(cpu, ref),
          got = await decode(gpu!, dev);
        want.forEach((w, s) => expect(relErr(got[s]!, w), `step ${s}`).toBeLessThan(5e-2));
      });
    }
  });
});
