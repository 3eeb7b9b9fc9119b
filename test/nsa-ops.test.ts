/**
 * NSA's CPU ops (src/tensor/cpu/nsa.ts): each backward against central finite differences (fp32, relative error
 * < 1e-3, as test/ops-gradcheck.test.ts), and what each forward may see. The selection has no gradient: the
 * selected attention takes it as an input, so its check perturbs q, k and v with the blocks held fixed.
 */
import { describe, expect, it } from 'vitest';
import { erf } from '../src/tensor/cpu/nsa.ts';
import { asCpu } from '../src/tensor/cpu/storage.ts';
import type { NsaSpec } from '../src/tensor/nsa.ts';
import { type Checked, cpu, data, gradError, ints, project, randn } from './helpers/gradcheck.ts';

const TOL = 1e-3;

function expectSmall(errors: Record<string, number>): void {
  for (const [name, err] of Object.entries(errors)) expect(err, `${name}: relative error ${err}`).toBeLessThan(TOL);
}

/** 2 sequences of 12 tokens, 4 query heads on 2 key/value heads of 3 dims; compressed blocks of 4 at stride 2
 *  (Tc = 5), selection blocks of 4 (Ns = 3), 4 selected blocks per token (1 by score). */
const SPEC: NsaSpec = {
  batch: 2,
  seqLen: 12,
  heads: 4,
  kvHeads: 2,
  headDim: 3,
  scale: 3 ** -0.5,
  cmpLen: 4,
  cmpStride: 2,
  slcBlock: 4,
  topkBlocks: 4,
};
const T = SPEC.batch * SPEC.seqLen;

describe('NSA ops: backward matches finite differences', () => {
  it('erf and GELU agree with known values; the GELU backward', () => {
    expect(erf(0.5)).toBeCloseTo(0.5204998778130465, 15);
    expect(erf(2)).toBeCloseTo(0.9953222650189527, 15);
    expect(erf(-3.5)).toBeCloseTo(-0.9999992569016276, 14);
    expect(erf(7)).toBe(1);
    expect(Array.from(data(cpu.gelu(cpu.upload(Float32Array.of(1, -0.5), [2], 'f32'))))[0]).toBeCloseTo(
      0.8413447460685429,
      6,
    );
    const x = randn([5, 7], 2),
      r = randn([5, 7]);
    const dx = cpu.geluBackward(r, x);
    expectSmall(gradError(() => project(cpu.gelu(x), r), [{ name: 'x', input: x, analytic: dx }]));
  });

  it('compression blocks (overlapping, plus the intra-block position embedding)', () => {
    const x = randn([T, 6]),
      pos = randn([4, 3]),
      r = randn([2 * 5 * 2, 12]);
    const blocks = cpu.nsaCompressBlocks(x, pos, SPEC);
    // Row (b=1, c=2, g=1), token j=3 of the block is token 1*12 + 2*2 + 3 = 19, head 1's dims 3..5.
    expect(data(blocks)[((1 * 5 + 2) * 2 + 1) * 12 + 3 * 3 + 1]).toBeCloseTo(
      data(x)[19 * 6 + 4]! + data(pos)[3 * 3 + 1]!,
    );
    const dPos = cpu.zeros([4, 3], 'f32');
    const dx = cpu.nsaCompressBlocksBackward(r, SPEC, dPos);
    expectSmall(
      gradError(
        () => project(cpu.nsaCompressBlocks(x, pos, SPEC), r),
        [
          { name: 'x', input: x, analytic: dx },
          { name: 'pos', input: pos, analytic: dPos },
        ],
      ),
    );
  });

  it('compressed attention (GQA-mean queries over the ended blocks)', () => {
    const q = randn([T, 12]),
      kc = randn([10, 6]),
      vc = randn([10, 6]),
      r = randn([T, 12]);
    const { out, lse } = cpu.nsaCompressedAttention(q, kc, vc, SPEC);
    const { dq, dkc, dvc } = cpu.nsaCompressedAttentionBackward(r, q, kc, vc, out, lse, SPEC);
    const checks: Checked[] = [
      { name: 'q', input: q, analytic: dq },
      { name: 'kc', input: kc, analytic: dkc },
      { name: 'vc', input: vc, analytic: dvc },
    ];
    expectSmall(gradError(() => project(cpu.nsaCompressedAttention(q, kc, vc, SPEC).out, r), checks));
  });

  it('selected attention, its blocks fixed', () => {
    const q = randn([T, 12]),
      k = randn([T, 6]),
      v = randn([T, 6]),
      r = randn([T, 12]);
    const sel = ints(
      Array.from({ length: T * 4 }, (_, i) => (i * 7) % 3),
      [T, 4],
    );
    const { out, lse } = cpu.nsaSelectedAttention(q, k, v, sel, SPEC);
    const { dq, dk, dv } = cpu.nsaSelectedAttentionBackward(r, q, k, v, sel, out, lse, SPEC);
    const checks: Checked[] = [
      { name: 'q', input: q, analytic: dq },
      { name: 'k', input: k, analytic: dk },
      { name: 'v', input: v, analytic: dv },
    ];
    expectSmall(gradError(() => project(cpu.nsaSelectedAttention(q, k, v, sel, SPEC).out, r), checks));
  });

  it('gates: sigmoid-weighted sum of the three branches, or two without a window', () => {
    const gates = randn([T, 3]),
      cmp = randn([T, 12]),
      slc = randn([T, 12]),
      swa = randn([T, 12]),
      r = randn([T, 12]);
    for (const w of [swa, null]) {
      const d = cpu.nsaGateBackward(r, gates, cmp, slc, w);
      const checks: Checked[] = [
        { name: 'gates', input: gates, analytic: d.dGates },
        { name: 'cmp', input: cmp, analytic: d.dCmp },
        { name: 'slc', input: slc, analytic: d.dSlc },
        ...(w ? [{ name: 'swa', input: w, analytic: d.dSwa! }] : []),
      ];
      expect(d.dSwa === null).toBe(w === null);
      expectSmall(gradError(() => project(cpu.nsaGate(gates, cmp, slc, w), r), checks));
    }
  });
});

describe('NSA ops: what each branch sees', () => {
  it('compressed attention: a token sees the blocks that have ended, and scores selection blocks by centre', () => {
    const q = randn([T, 12]),
      kc = randn([10, 6]),
      vc = randn([10, 6]);
    const before = cpu.nsaCompressedAttention(q, kc, vc, SPEC);
    // Tokens 0..2 of each sequence precede the end of block 0 (token 3): zero output, no scores.
    expect(Array.from(data(before.out).slice(0, 3 * 12)).every((x) => x === 0)).toBe(true);
    expect(Array.from(asCpu(before.lse).f.slice(0, 6))).toEqual(Array(6).fill(-Infinity));
    // Scores sum to 1 per key/value head; block c's centre 2c + 2 puts c = 0 in block 0, 1 and 2 in block 1,
    // 3 and 4 in block 2 (token 11 sees all five).
    const s = Array.from(data(before.scores));
    for (let t = 3; t < 12; t++) expect(s[t * 3]! + s[t * 3 + 1]! + s[t * 3 + 2]!).toBeCloseTo(2, 6);
    expect(s[4 * 3 + 1]).toBe(0); // token 4 sees block 0 only (block 1 ends at token 5)
    expect(s[5 * 3 + 1]).toBeGreaterThan(0);
    expect(s[8 * 3 + 2]).toBe(0); // block 3 ends at token 9
    // Compressed block 2 of sequence 0 (row 2 of vc) ends at token 7: it reaches tokens 7 and later only.
    data(vc)[2 * 6] += 5;
    const after = Array.from(data(cpu.nsaCompressedAttention(q, kc, vc, SPEC).out));
    const changed = Array.from({ length: T }, (_, t) => t).filter((t) =>
      after.slice(t * 12, (t + 1) * 12).some((x, i) => x !== data(before.out)[t * 12 + i]),
    );
    expect(changed).toEqual([7, 8, 9, 10, 11]);
  });

  it('selection: block 0 and the two before the own block, then the best-scored earlier blocks, ties to the lower', () => {
    const spec = { ...SPEC, batch: 1, seqLen: 16, slcBlock: 2, topkBlocks: 5 }; // Ns = 8, 2 blocks by score
    const scores = new Float32Array(16 * 8);
    scores.set([0.1, 0.5, 0.2, 0.5, 0.9, 0.0, 0.3, 0.3], 13 * 8); // token 13: own block 6
    scores.set([0.2, 0.1, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7], 3 * 8); // token 3: own block 1; blocks >= 1 rank last
    const sel = asCpu(cpu.nsaSelectBlocks(cpu.upload(scores, [16, 8], 'f32'), spec)).i;
    const row = (t: number) => Array.from(sel.slice(t * 5, (t + 1) * 5));
    expect(row(13)).toEqual([0, 4, 5, 4, 1]); // 0.9 (block 4), then 0.5: blocks 1 and 3 tie, the lower wins
    expect(row(3)).toEqual([0, 0, 0, 0, 1]);
    expect(row(0)).toEqual([0, 0, 0, 0, 1]); // nothing scored before block 0: the masked blocks in order
    const few = asCpu(cpu.nsaSelectBlocks(cpu.zeros([16, 2], 'f32'), { ...spec, slcBlock: 8, topkBlocks: 6 })).i;
    expect(Array.from(few.slice(15 * 6, 16 * 6))).toEqual([0, 0, 0, 0, 1, 0]); // 2 scored blocks, padded with 0
  });

  it('selected attention: unselected blocks are invisible; selecting every block is causal attention', () => {
    const spec = { ...SPEC, batch: 1, heads: 2, kvHeads: 2 };
    const q = randn([12, 6]),
      k = randn([12, 6]),
      v = randn([12, 6]);
    const every = ints(
      Array.from({ length: 12 * 4 }, (_, i) => i % 3),
      [12, 4],
    );
    const causal = cpu.attention(q, k, v, { batch: 1, seqLen: 12, heads: 2, scale: spec.scale });
    const all = cpu.nsaSelectedAttention(q, k, v, every, spec);
    const o = Array.from(data(all.out)),
      c = Array.from(data(causal.out));
    for (let i = 0; i < o.length; i++) expect(o[i]).toBeCloseTo(c[i]!, 6);
    // Token 11 (own block 2) selecting only block 0: keys 4..7 (block 1) do not reach it, keys 8..11 do.
    const only0 = ints(Array(12 * 4).fill(0), [12, 4]);
    const base = Array.from(data(cpu.nsaSelectedAttention(q, k, v, only0, spec).out).slice(11 * 6));
    data(v)[5 * 6] += 5;
    expect(Array.from(data(cpu.nsaSelectedAttention(q, k, v, only0, spec).out).slice(11 * 6))).toEqual(base);
    data(v)[9 * 6] += 5;
    expect(Array.from(data(cpu.nsaSelectedAttention(q, k, v, only0, spec).out).slice(11 * 6))).not.toEqual(base);
  });
});
