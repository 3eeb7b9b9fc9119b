/** Finite-difference checks of every CPU backend op's backward (fp32, central differences, rel. error < 1e-3). */
import { describe, expect, it } from 'vitest';
import { asCpu } from '../src/tensor/cpu/storage.ts';
import { type Checked, cpu, data, gradError, ints, project, randn } from './helpers/gradcheck.ts';

const TOL = 1e-3;

function expectSmall(errors: Record<string, number>): void {
  for (const [name, err] of Object.entries(errors)) expect(err, `${name}: relative error ${err}`).toBeLessThan(TOL);
}

describe('backward of every op matches finite differences', () => {
  it('matmul (as Linear: y = x W^T, dW += dy^T x, dx = dy W)', () => {
    const x = randn([6, 5]),
      w = randn([4, 5]),
      r = randn([6, 4]);
    const dw = cpu.zeros([4, 5], 'f32');
    cpu.matmul(r, x, { transA: true, out: dw, accumulate: true });
    const dx = cpu.matmul(r, w);
    expectSmall(
      gradError(
        () => project(cpu.matmul(x, w, { transB: true }), r),
        [
          { name: 'x', input: x, analytic: dx },
          { name: 'w', input: w, analytic: dw },
        ],
      ),
    );
  });

  it('embedding', () => {
    const table = randn([7, 4]),
      ids = ints([3, 1, 3, 6, 0]),
      r = randn([5, 4]);
    const dTable = cpu.zeros([7, 4], 'f32');
    cpu.embeddingBackward(ids, r, dTable, 10.667);
    expectSmall(
      gradError(
        () => project(cpu.embedding(ids, table, 10.667), r),
        [{ name: 'table', input: table, analytic: dTable }],
      ),
    );
  });

  it('rmsnorm', () => {
    const x = randn([5, 8]),
      w = randn([8]),
      r = randn([5, 8]);
    const { rstd } = cpu.rmsnorm(x, w, 1e-5);
    const dw = cpu.zeros([8], 'f32');
    const dx = cpu.rmsnormBackward(r, x, w, rstd, dw);
    expectSmall(
      gradError(
        () => project(cpu.rmsnorm(x, w, 1e-5).y, r),
        [
          { name: 'x', input: x, analytic: dx },
          { name: 'w', input: w, analytic: dw },
        ],
      ),
    );
  });

  it('swiglu', () => {
    const g = randn([4, 6]),
      u = randn([4, 6]),
      r = randn([4, 6]);
    const { dg, du } = cpu.swigluBackward(r, g, u);
    expectSmall(
      gradError(
        () => project(cpu.swiglu(g, u), r),
        [
          { name: 'g', input: g, analytic: dg },
          { name: 'u', input: u, analytic: du },
        ],
      ),
    );
  });

  it('splitCols / concatCols are exact inverses', () => {
    const x = randn([3, 7]);
    const parts = cpu.splitCols(x, [2, 5]);
    expect(parts.map((p) => p.shape)).toEqual([
      [3, 2],
      [3, 5],
    ]);
    expect(Array.from(data(cpu.concatCols(parts)))).toEqual(Array.from(data(x)));
  });

  it('rope (forward rotation, inverse as backward)', () => {
    const positions = 16,
      half = 4;
    const cos = cpu.upload(
      Float32Array.from({ length: positions * half }, (_, i) => Math.cos(i * 0.37)),
      [positions, half],
      'f32',
    );
    const sin = cpu.upload(
      Float32Array.from({ length: positions * half }, (_, i) => Math.sin(i * 0.37)),
      [positions, half],
      'f32',
    );
    const spec = { heads: 2, headStride: 12, base: 1, offset: 4, dim: 8, seqLen: 3 };
    const x = randn([6, 25]),
      r = randn([6, 25]);
    const dx = randn([6, 25]);
    cpu.copy(r, dx);
    cpu.ropeInPlace(dx, cos, sin, spec, true);
    const rotated = () => {
      const y = cpu.zeros([6, 25], 'f32');
      cpu.copy(x, y);
      cpu.ropeInPlace(y, cos, sin, spec, false);
      return project(y, r);
    };
    expectSmall(gradError(rotated, [{ name: 'x', input: x, analytic: dx }]));
  });

  it('mlaAssembleKV', () => {
    const heads = 3,
      dNope = 4,
      dV = 5,
      rows = 4;
    const kvb = randn([rows, heads * (dNope + dV)]),
      kpe = randn([rows, 2]);
    const rk = randn([rows, heads * (dNope + 2)]),
      rv = randn([rows, heads * dV]);
    const { dkvb, dkpe } = cpu.mlaAssembleKVBackward(rk, rv, heads, dNope, dV);
    const loss = () => {
      const { k, v } = cpu.mlaAssembleKV(kvb, kpe, heads, dNope, dV);
      return project(k, rk) + project(v, rv);
    };
    expectSmall(
      gradError(loss, [
        { name: 'kvb', input: kvb, analytic: dkvb },
        { name: 'kpe', input: kpe, analytic: dkpe },
      ]),
    );
  });

  it('causal attention', () => {
    const spec = { batch: 2, seqLen: 5, heads: 2, scale: 6 ** -0.5 };
    const q = randn([10, 12]),
      k = randn([10, 12]),
      v = randn([10, 8]),
      r = randn([10, 8]);
    const { out, lse } = cpu.attention(q, k, v, spec);
    const { dq, dk, dv } = cpu.attentionBackward(r, q, k, v, out, lse, spec);
    const checks: Checked[] = [
      { name: 'q', input: q, analytic: dq },
      { name: 'k', input: k, analytic: dk },
      { name: 'v', input: v, analytic: dv },
    ];
    expectSmall(gradError(() => project(cpu.attention(q, k, v, spec).out, r), checks));
  });

  it('attention is causal and per sequence', () => {
    const spec = { batch: 2, seqLen: 4, heads: 1, scale: 0.5 };
    const q = randn([8, 4]),
      k = randn([8, 4]),
      v = randn([8, 4]);
    const before = Array.from(data(cpu.attention(q, k, v, spec).out));
    data(k)[3 * 4] += 5; // the last key of sequence 0: only its last query may change
    data(v)[4 * 4] += 5; // the first value of sequence 1: nothing in sequence 0 may change
    const after = Array.from(data(cpu.attention(q, k, v, spec).out));
    expect(after.slice(0, 12)).toEqual(before.slice(0, 12));
    expect(after.slice(12, 16)).not.toEqual(before.slice(12, 16));
  });

  it('sliding-window attention with sinks (GQA: 4 query heads on 2 key/value heads, window 3)', () => {
    const spec = { batch: 2, seqLen: 6, heads: 4, kvHeads: 2, scale: 5 ** -0.5, window: 3 };
    const q = randn([12, 20]),
      k = randn([12, 10]),
      v = randn([12, 10]),
      sinks = randn([4]),
      r = randn([12, 20]);
    const { out, lse } = cpu.slidingAttention(q, k, v, sinks, spec);
    const dSinks = cpu.zeros([4], 'f32');
    const { dq, dk, dv } = cpu.slidingAttentionBackward(r, q, k, v, sinks, out, lse, spec, dSinks);
    const checks: Checked[] = [
      { name: 'q', input: q, analytic: dq },
      { name: 'k', input: k, analytic: dk },
      { name: 'v', input: v, analytic: dv },
      { name: 'sinks', input: sinks, analytic: dSinks },
    ];
    expectSmall(gradError(() => project(cpu.slidingAttention(q, k, v, sinks, spec).out, r), checks));
  });

  it('sliding-window attention sees exactly its band; with no sink and no window it is causal attention', () => {
    const spec = { batch: 1, seqLen: 6, heads: 2, kvHeads: 1, scale: 0.5, window: 2 };
    const q = randn([6, 8]),
      k = randn([6, 4]),
      v = randn([6, 4]),
      sinks = randn([2]);
    const before = Array.from(data(cpu.slidingAttention(q, k, v, sinks, spec).out));
    data(v)[1 * 4] += 5; // key 1 is in the band of queries 1 and 2 only (i - 2 < 1 <= i)
    const after = Array.from(data(cpu.slidingAttention(q, k, v, sinks, spec).out));
    const changed = [0, 1, 2, 3, 4, 5].filter(
      (i) => after[i * 8] !== before[i * 8] || after[i * 8 + 4] !== before[i * 8 + 4],
    );
    expect(changed).toEqual([1, 2]);

    const full = { ...spec, kvHeads: 2, window: 0 };
    const k2 = randn([6, 8]),
      v2 = randn([6, 8]),
      noSink = cpu.upload(Float32Array.of(-1e30, -1e30), [2], 'f32');
    const swa = cpu.slidingAttention(q, k2, v2, noSink, full);
    const causal = cpu.attention(q, k2, v2, { batch: 1, seqLen: 6, heads: 2, scale: 0.5 });
    expect(Array.from(data(swa.out))).toEqual(Array.from(data(causal.out)));
    // A sink takes probability from every key: the output shrinks toward zero as the sink grows.
    const big = cpu.slidingAttention(q, k2, v2, cpu.upload(Float32Array.of(30, 30), [2], 'f32'), full);
    expect(Math.max(...Array.from(data(big.out), Math.abs))).toBeLessThan(1e-6);
  });

  it('Kimi Delta Attention over two chunks (70 steps: chunk 64 and a partial one), 2 sequences, 2 heads', () => {
    const spec = { batch: 2, seqLen: 70, heads: 2, scale: 4 ** -0.5 };
    const q = randn([140, 8]),
      k = randn([140, 8]),
      v = randn([140, 6]),
      gate = randn([140, 8], 2),
      beta = randn([140, 2]),
      r = randn([140, 6]);
    const { dq, dk, dv, dGate, dBeta } = cpu.deltaAttentionBackward(r, q, k, v, gate, beta, spec);
    const checks: Checked[] = [
      { name: 'q', input: q, analytic: dq },
      { name: 'k', input: k, analytic: dk },
      { name: 'v', input: v, analytic: dv },
      { name: 'gate', input: gate, analytic: dGate },
      { name: 'beta', input: beta, analytic: dBeta },
    ];
    expectSmall(gradError(() => project(cpu.deltaAttention(q, k, v, gate, beta, spec), r), checks));
  });

  it('router top-k gates', () => {
    const logits = randn([6, 5]),
      bias = randn([5], 0.1),
      r = randn([6, 2]);
    const { idx } = cpu.routerTopK(logits, bias, 2, 2.5);
    const chosen = Array.from(asCpu(idx).i);
    const dLogits = cpu.routerTopKBackward(r, logits, idx, 2.5);
    const loss = () => {
      const out = cpu.routerTopK(logits, bias, 2, 2.5);
      expect(Array.from(asCpu(out.idx).i), 'a perturbation changed the selection').toEqual(chosen);
      return project(out.gates, r);
    };
    expectSmall(gradError(loss, [{ name: 'logits', input: logits, analytic: dLogits }], 1e-3));
  });

  it('MoE gather, grouped GEMMs and combine', () => {
    const T = 5,
      K = 2,
      E = 3,
      D = 4,
      F = 6;
    const idx = ints([0, 2, 1, 2, 2, 0, 1, 0, 2, 1], [T, K]);
    const plan = cpu.moePlan(idx, E);
    const x = randn([T, D]),
      w1 = randn([E, D, F]),
      w2 = randn([E, F, D]),
      gates = randn([T, K]),
      r = randn([T, D]);
    const forward = () => {
      const xe = cpu.moeGather(x, plan);
      const h = cpu.groupedMatmul(xe, w1, plan.offsets);
      const ye = cpu.groupedMatmul(h, w2, plan.offsets);
      return { xe, h, ye, out: cpu.moeCombine(ye, gates, plan) };
    };
    const { xe, h, ye } = forward();
    const { dye, dGates } = cpu.moeCombineBackward(r, ye, gates, plan);
    const dw2 = cpu.zeros([E, F, D], 'f32'),
      dw1 = cpu.zeros([E, D, F], 'f32');
    cpu.groupedMatmulWeightGrad(h, dye, plan.offsets, dw2);
    const dh = cpu.groupedMatmul(dye, w2, plan.offsets, true);
    cpu.groupedMatmulWeightGrad(xe, dh, plan.offsets, dw1);
    const dx = cpu.moeGatherBackward(cpu.groupedMatmul(dh, w1, plan.offsets, true), plan);
    expectSmall(
      gradError(
        () => project(forward().out, r),
        [
          { name: 'x', input: x, analytic: dx },
          { name: 'w1', input: w1, analytic: dw1 },
          { name: 'w2', input: w2, analytic: dw2 },
          { name: 'gates', input: gates, analytic: dGates },
        ],
      ),
    );
  });

  it('cross-entropy fused with the lm_head, with an ignored target', () => {
    const T = 7,
      V = 11,
      D = 5;
    const x = randn([T, D]),
      w = randn([V, D], 0.5),
      targets = ints([3, 0, 10, 4, 0, 7, 1]);
    const spec = { logitScale: 0.125, ignoreIndex: 0 };
    const dw = cpu.zeros([V, D], 'f32');
    const { count, dx } = cpu.crossEntropy(x, w, targets, spec, dw);
    expect(data(count)[0]).toBe(5);
    const loss = () => data(cpu.crossEntropy(x, w, targets, spec).loss)[0]!;
    expectSmall(
      gradError(
        loss,
        [
          { name: 'x', input: x, analytic: dx! },
          { name: 'w', input: w, analytic: dw },
        ],
        3e-2,
      ),
    );
  });

  // DSA: the selection is an input of selectedAttention (an i32 tensor computed once), so the perturbations of q, k
  // and v leave it fixed by construction.
  it('attention over indexer-selected keys (top 3 of up to 7 visible, 2 sequences, 2 heads)', () => {
    const spec = { batch: 2, seqLen: 7, heads: 2, scale: 6 ** -0.5 };
    const selected = cpu.indexerTopK(randn([14, 2 * 5]), randn([14, 5]), randn([14, 2]), {
      batch: 2,
      seqLen: 7,
      heads: 2,
      topK: 3,
    });
    const q = randn([14, 12]),
      k = randn([14, 12]),
      v = randn([14, 8]),
      r = randn([14, 8]);
    const { out, lse } = cpu.selectedAttention(q, k, v, selected, spec);
    const { dq, dk, dv } = cpu.selectedAttentionBackward(r, q, k, v, selected, out, lse, spec);
    const checks: Checked[] = [
      { name: 'q', input: q, analytic: dq },
      { name: 'k', input: k, analytic: dk },
      { name: 'v', input: v, analytic: dv },
    ];
    expectSmall(gradError(() => project(cpu.selectedAttention(q, k, v, selected, spec).out, r), checks));
  });

  it('the lightning indexer keeps the top-k causal keys by sum_h w ReLU(q.k), and all of them while few are visible', () => {
    const S = 6,
      H = 2,
      d = 3;
    const qIdx = randn([S, H * d]),
      kIdx = randn([S, d]),
      wIdx = randn([S, H]);
    const selected = asCpu(cpu.indexerTopK(qIdx, kIdx, wIdx, { batch: 1, seqLen: S, heads: H, topK: 3 }));
    expect(selected.shape).toEqual([S, 3]);
    const [Q, K, W] = [qIdx, kIdx, wIdx].map(data) as [Float32Array, Float32Array, Float32Array];
    for (let i = 0; i < S; i++) {
      const score = (j: number) => {
        let s = 0;
        for (let h = 0; h < H; h++) {
          let dot = 0;
          for (let x = 0; x < d; x++) dot += Q[(i * H + h) * d + x]! * K[j * d + x]!;
          s += W[i * H + h]! * Math.max(0, dot);
        }
        return s;
      };
      const ranked = Array.from({ length: i + 1 }, (_, j) => j).sort((a, b) => score(b) - score(a) || a - b);
      const expected = [...ranked.slice(0, 3), -1, -1, -1].slice(0, 3);
      expect(Array.from(selected.i.subarray(i * 3, i * 3 + 3)), `query ${i}`).toEqual(expected);
    }
    // top_k beyond the sequence keeps every causal key: the attention is then full causal attention.
    const all = cpu.indexerTopK(qIdx, kIdx, wIdx, { batch: 1, seqLen: S, heads: H, topK: 100 });
    expect(all.shape).toEqual([S, S]);
    const spec = { batch: 1, seqLen: S, heads: 2, scale: 0.5 };
    const q = randn([S, 8]),
      k = randn([S, 8]),
      v = randn([S, 6]);
    const dense = cpu.attention(q, k, v, spec).out;
    const sparse = cpu.selectedAttention(q, k, v, all, spec).out;
    Array.from(data(sparse)).forEach((x, i) => expect(x).toBeCloseTo(data(dense)[i]!, 6));
    // A key the last query did not select changes none of its outputs.
    const last = Array.from(selected.i.subarray((S - 1) * 3, S * 3));
    const unselected = [0, 1, 2, 3, 4, 5].find((j) => !last.includes(j))!;
    const row = () => Array.from(data(cpu.selectedAttention(q, k, v, selected, spec).out).subarray((S - 1) * 6));
    const before = row();
    data(v)[unselected * 6] += 5;
    data(k)[unselected * 8] += 5;
    expect(row()).toEqual(before);
  });

  it('the indexer alignment loss (KL to the head-summed attention), over selected keys and over every causal key', () => {
    const [B, S, H, Hi, d, dqk] = [2, 7, 2, 2, 5, 6];
    const qIdx = randn([B * S, Hi * d]),
      kIdx = randn([B * S, d]),
      wIdx = randn([B * S, Hi]);
    const q = randn([B * S, H * dqk]),
      k = randn([B * S, H * dqk]),
      v = randn([B * S, H * 4]);
    const attnSpec = { batch: B, seqLen: S, heads: H, scale: dqk ** -0.5 };
    const spec = { ...attnSpec, idxHeads: Hi, weight: 0.7 };
    const selected = cpu.indexerTopK(qIdx, kIdx, wIdx, { batch: B, seqLen: S, heads: Hi, topK: 3 });
    for (const keys of [selected, null]) {
      const lse = (keys ? cpu.selectedAttention(q, k, v, keys, attnSpec) : cpu.attention(q, k, v, attnSpec)).lse;
      const loss = () => data(cpu.indexerAlignment(qIdx, kIdx, wIdx, q, k, lse, keys, spec).loss)[0]!;
      const { dqIdx, dkIdx, dwIdx } = cpu.indexerAlignment(qIdx, kIdx, wIdx, q, k, lse, keys, spec);
      expect(loss()).toBeGreaterThan(0);
      const checks: Checked[] = [
        { name: 'qIdx', input: qIdx, analytic: dqIdx },
        { name: 'kIdx', input: kIdx, analytic: dkIdx },
        { name: 'wIdx', input: wIdx, analytic: dwIdx },
      ];
      expectSmall(gradError(loss, checks, 1e-3));
    }
  });
});
