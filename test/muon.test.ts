/**
 * Muon on the CPU backend: Newton-Schulz and one update against answers computed here in float64 from the
 * textbook formulation (Jordan's: transpose a tall matrix, X <- aX + (bA + cA^2)X with A = XX^T), the
 * orthogonalisation property, which parameters Muon takes and which rank owns each matrix, and the config's
 * errors. Exact resume with optimizer = "muon" is in checkpoint.test.ts, beside AdamW's; several ranks in
 * dist-cpu.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { ConfigError } from '../src/config/validate.ts';
import { configSections } from '../src/config/sections.ts';
import { Transformer } from '../src/model/transformer.ts';
import { NS5_COEFFICIENTS, type MuonSettings, muonOwners, muonStep, newtonSchulz5 } from '../src/optim/muon.ts';
import { Optimizer } from '../src/optim/optimizer.ts';
import type { Tensor } from '../src/tensor/tensor.ts';
import { cpu, data, randn } from './helpers/gradcheck.ts';

type Matrix = number[][];
const [A, B, C] = NS5_COEFFICIENTS;

const transpose = (x: Matrix): Matrix => x[0]!.map((_, j) => x.map((row) => row[j]!));
const times = (x: Matrix, y: Matrix): Matrix =>
  x.map((row) => y[0]!.map((_, j) => row.reduce((s, v, k) => s + v * y[k]![j]!, 0)));
const frobenius = (x: Matrix): number => Math.sqrt(x.flat().reduce((s, v) => s + v * v, 0));

function newtonSchulzReference(x: Matrix, steps: number): Matrix {
  const tall = x.length > x[0]!.length;
  let X = tall ? transpose(x) : x;
  for (let k = 0; k < steps; k++) {
    const gram = times(X, transpose(X)),
      gram2 = times(gram, gram);
    const poly = gram.map((row, i) => row.map((v, j) => B * v + C * gram2[i]![j]!));
    const polyX = times(poly, X);
    X = X.map((row, i) => row.map((v, j) => A * v + polyX[i]![j]!));
  }
  return tall ? transpose(X) : X;
}

const upload = (x: Matrix): Tensor => cpu.upload(Float32Array.from(x.flat()), [x.length, x[0]!.length], 'f32');
const scaled = (r: { tensor: Tensor; scale: number }) => Array.from(data(r.tensor), (v) => v * r.scale);

/** Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (float64). */
function symmetricEigenvalues(m: Matrix): number[] {
  const a = m.map((row) => [...row]),
    n = a.length;
  for (let sweep = 0; sweep < 50; sweep++) {
    let off = 0;
    for (let p = 0; p < n; p++) for (let q = p + 1; q < n; q++) off += a[p]![q]! ** 2;
    if (off < 1e-22) break;
    for (let p = 0; p < n; p++) {
      for (let q = p + 1; q < n; q++) {
        if (Math.abs(a[p]![q]!) < 1e-300) continue;
        const theta = (a[q]![q]! - a[p]![p]!) / (2 * a[p]![q]!);
        const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
        const c = 1 / Math.sqrt(t * t + 1),
          s = t * c;
        for (let k = 0; k < n; k++) {
          const akp = a[k]![p]!,
            akq = a[k]![q]!;
          a[k]![p] = c * akp - s * akq;
          a[k]![q] = s * akp + c * akq;
        }
        for (let k = 0; k < n; k++) {
          const apk = a[p]![k]!,
            aqk = a[q]![k]!;
          a[p]![k] = c * apk - s * aqk;
          a[q]![k] = s * apk + c * aqk;
        }
      }
    }
  }
  return a.map((row, i) => row[i]!);
}

describe('Newton-Schulz', () => {
  const u: Matrix = [
    [1, 2, 0],
    [-1, 0.5, 3],
  ];
  const unit = (x: Matrix) => x.map((row) => row.map((v) => v / frobenius(x)));

  it.each([
    ['wide 2x3', u],
    ['tall 3x2', transpose(u)],
  ])('%s: matches the float64 reference', (_, x) => {
    const got = newtonSchulz5(cpu, upload(unit(x)), 5);
    const want = newtonSchulzReference(unit(x), 5).flat();
    scaled(got).forEach((v, i) => expect(v).toBeCloseTo(want[i]!, 5));
  });

  it('on a row vector it is the scalar quintic r <- a r + b r^3 + c r^5 of its norm', () => {
    let r = 1;
    for (let k = 0; k < 5; k++) r = A * r + B * r ** 3 + C * r ** 5;
    const x = [[0.6, 0, -0.8]];
    const got = scaled(newtonSchulz5(cpu, upload(x), 5));
    got.forEach((v, i) => expect(v).toBeCloseTo(x[0]![i]! * r, 5));
    expect(r).toBeCloseTo(0.6964, 4); // five steps from r = 1: 0.7010, 1.1136, 0.7207, 1.0900, 0.6964
  });

  it.each([
    [16, 48],
    [40, 8],
  ])('orthogonalises a random %ix%i gradient: singular values in [0.6, 1.25]', (rows, cols) => {
    const g = randn([rows, cols]),
      none = cpu.zeros([rows, cols], 'f32');
    const start = cpu.muonMomentum(g, none, {
      momentum: 0,
      nesterov: false,
      gradNorm: cpu.upload(new Float32Array([1]), [1], 'f32'),
      maxNorm: 0,
    });
    const o = scaled(newtonSchulz5(cpu, start, 5));
    const O = Array.from({ length: rows }, (_, i) => o.slice(i * cols, (i + 1) * cols));
    const small = rows < cols ? times(O, transpose(O)) : times(transpose(O), O);
    for (const lambda of symmetricEigenvalues(small)) {
      expect(Math.sqrt(lambda)).toBeGreaterThan(0.6);
      expect(Math.sqrt(lambda)).toBeLessThan(1.25);
    }
  });
});

describe('one Muon update', () => {
  const settings: MuonSettings = { momentum: 0.9, nesterov: true, nsSteps: 5, maxNorm: 1, stochasticSeed: null };
  const g0: Matrix = [
      [0.5, -1, 2],
      [1.5, 0, -0.5],
    ],
    m0: Matrix = [
      [0.1, 0.2, -0.3],
      [0, 0.4, 0.1],
    ],
    w0: Matrix = [
      [1, 0, -1],
      [0.5, 2, 0],
    ];
  const lr = 0.01,
    wd = 0.1,
    norm = 4;

  /** The expected weight and momentum, written out: clip, momentum, Nesterov, normalise, NS5, Moonlight's scale. */
  function expected(nesterov: boolean): { w: number[]; m: number[] } {
    const clip = settings.maxNorm / (norm + 1e-6);
    const m = m0.map((row, i) => row.map((v, j) => settings.momentum * v + clip * g0[i]![j]!));
    const update = nesterov ? m.map((row, i) => row.map((v, j) => clip * g0[i]![j]! + settings.momentum * v)) : m;
    const x = update.map((row) => row.map((v) => v / (frobenius(update) + 1e-7)));
    const o = newtonSchulzReference(x, 5);
    const w = w0.map((row, i) => row.map((v, j) => v * (1 - lr * wd) - lr * 0.2 * Math.sqrt(3) * o[i]![j]!));
    return { w: w.flat(), m: m.flat() };
  }

  it.each([true, false])('nesterov = %s: the weight and momentum match the float64 reference', (nesterov) => {
    const value = upload(w0),
      momentum = upload(m0);
    muonStep(
      cpu,
      [{ value, grad: upload(g0), momentum, master: undefined, lr, weightDecay: wd }],
      cpu.upload(new Float32Array([norm]), [1], 'f32'),
      1,
      { ...settings, nesterov },
    );
    const want = expected(nesterov);
    Array.from(data(value)).forEach((v, i) => expect(v).toBeCloseTo(want.w[i]!, 6));
    Array.from(data(momentum)).forEach((v, i) => expect(v).toBeCloseTo(want.m[i]!, 6));
  });

  it('updates each expert of an [E, rows, cols] stack as its own matrix', () => {
    const stack = (x: Matrix, scale: number) =>
      cpu.upload(Float32Array.from([...x.flat(), ...x.flat().map((v) => v * scale)]), [2, 2, 3], 'f32');
    // Expert 1 sees 3x expert 0's gradient and momentum: its clipped, normalised direction is the same.
    const value = stack(w0, 1),
      momentum = stack(m0, 3);
    muonStep(
      cpu,
      [{ value, grad: stack(g0, 3), momentum, master: undefined, lr, weightDecay: wd }],
      cpu.upload(new Float32Array([norm]), [1], 'f32'),
      1,
      settings,
    );
    const want = expected(true).w,
      got = Array.from(data(value));
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i % 6]!, 6));
  });

  it('a non-finite gradient norm leaves the weight and the momentum as they were', () => {
    const value = upload(w0),
      momentum = upload(m0);
    muonStep(
      cpu,
      [{ value, grad: upload(g0), momentum, master: undefined, lr, weightDecay: wd }],
      cpu.upload(new Float32Array([NaN]), [1], 'f32'),
      1,
      settings,
    );
    expect(Array.from(data(value))).toEqual(Array.from(data(upload(w0))));
    expect(Array.from(data(momentum))).toEqual(Array.from(data(upload(m0))));
  });
});

const tinyConfig = (overrides: string[]) =>
  loadConfig(defaultConfigPath(), {
    env: {},
    overrides: ['--dim=8', '--n_layers=2', '--n_heads=2', '--seq_len=4', '--batch_size=1', ...overrides],
  }).config;

describe('which parameters Muon takes', () => {
  const split = (overrides: string[]) => {
    const { model: cfg, optim } = configSections(tinyConfig(overrides));
    const model = new Transformer(cpu, cfg);
    const opt = new Optimizer(cpu, model.params, optim);
    return {
      muon: opt.muon.map((x) => x.slot.name),
      adamw: opt.groups.flatMap((g) => g.slots.map((x) => x.name)),
      all: model.params.trainable().map((p) => p.name),
    };
  };

  it('the 2-D dense weights with decay; embedding, lm_head, norms, router and experts stay on AdamW', () => {
    const { muon, adamw, all } = split(['--optimizer=muon']);
    expect(muon).toEqual(
      expect.arrayContaining([
        'blocks.0.attn.wq_a.weight',
        'blocks.0.attn.wo.weight',
        'blocks.0.ffn.w2.weight',
        'blocks.1.ffn.shared.w1.weight',
      ]),
    );
    expect(adamw).toEqual(
      expect.arrayContaining([
        'embedding.weight',
        'lm_head.weight',
        'norm.weight',
        'blocks.1.ffn.router.gate.weight',
        'blocks.1.ffn.W1',
      ]),
    );
    expect([...muon, ...adamw].sort()).toEqual([...all].sort());
  });

  it('the routed experts too with muon_experts; nothing with optimizer = "adamw"', () => {
    expect(split(['--optimizer=muon', '--muon_experts=true']).muon).toEqual(
      expect.arrayContaining(['blocks.1.ffn.W1', 'blocks.1.ffn.W2', 'blocks.1.ffn.W3']),
    );
    expect(split(['--muon_experts=true']).muon).toEqual([]);
  });

  it('on several ranks, each dense matrix in turn goes to the least-loaded rank (the lowest on a tie)', () => {
    expect(muonOwners([4, 1, 1, 1, 3], 2)).toEqual([0, 1, 1, 1, 1]);
    expect(muonOwners([2, 2, 2, 1, 5], 3)).toEqual([0, 1, 2, 0, 1]);
    expect(muonOwners([2, 2, 2], 1)).toEqual([0, 0, 0]);
  });
});

describe('config', () => {
  const errors = (overrides: string[], worldSize = 1): string[] => {
    try {
      loadConfig(defaultConfigPath(), { env: {}, overrides, worldSize });
    } catch (e) {
      if (e instanceof ConfigError) return e.errors;
      throw e;
    }
    return [];
  };

  it('names the key, the value and the fix', () => {
    expect(errors(['--optimizer=sgd'])[0]).toMatch(/^optimizer = "sgd" is not one of "adamw", "muon" .*Fix:/);
    expect(errors(['--muon_momentum=1'])[0]).toMatch(
      /^muon_momentum = 1\.0 must be < 1 .*Fix: use a value in \[0, 1\) such as 0\.95\.$/,
    );
    expect(errors(['--muon_ns_steps=0'])[0]).toMatch(
      /^muon_ns_steps = 0 must be >= 1 .*Fix: use at least one Newton-Schulz iteration/,
    );
  });

  it('accepts Muon on several ranks (distributed Muon)', () => {
    expect(errors(['--optimizer=muon'], 2)).toEqual([]);
  });

  it('defaults: AdamW, and Muon with momentum 0.95, Nesterov, 5 steps, experts on AdamW', () => {
    const c = tinyConfig([]);
    expect([c.optimizer, c.muon_momentum, c.muon_nesterov, c.muon_ns_steps, c.muon_experts]).toEqual([
      'adamw',
      0.95,
      true,
      5,
      false,
    ]);
  });
});
