/** AdamW groups and update rule, the WSD schedule, clipping and the NaN guard, and the router-bias update. */
import { describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { paramGroup } from '../src/model/params.ts';
import { configSections } from '../src/config/sections.ts';
import { Transformer } from '../src/model/transformer.ts';
import { Optimizer } from '../src/optim/optimizer.ts';
import { roundToBf16 } from '../src/tensor/bf16.ts';
import { asCpu } from '../src/tensor/cpu/storage.ts';
import { wsdLr, wsdScale } from '../src/optim/schedule.ts';
import { cpu, data, ints } from './helpers/gradcheck.ts';

describe('WSD schedule', () => {
  const s = { warmupSteps: 4, holdTokens: 1000, decayTokens: 500, floor: 0.1 };
  it('warms up by steps from floor + (peak - floor)/warmup', () => {
    expect(wsdLr(s, 1.1, 0, 0)).toBeCloseTo(0.1 + 1 / 4, 12);
    expect(wsdLr(s, 1.1, 3, 0)).toBeCloseTo(1.1, 12);
  });
  it('holds, then decays by tokens with a cosine to the absolute floor', () => {
    expect(wsdScale(s, 10, 999)).toBe(1);
    expect(wsdScale(s, 10, 1250)).toBeCloseTo(0.5, 12);
    expect(wsdLr(s, 1.1, 10, 1500)).toBeCloseTo(0.1, 12);
    expect(wsdLr(s, 1.1, 10, 10_000)).toBeCloseTo(0.1, 12);
  });
  it('never puts the floor above a group peak (router rule)', () => {
    expect(wsdLr(s, 0.05, 10, 10_000)).toBeCloseTo(0.05, 12);
  });
});

describe('parameter groups follow the reference rules', () => {
  it.each([
    ['blocks.2.ffn.W1', 'expert'],
    ['blocks.2.ffn.router.gate.weight', 'router'],
    ['embedding.weight', 'dense_no_decay'],
    ['lm_head.weight', 'dense_no_decay'],
    ['blocks.0.attn.q_norm.weight', 'dense_no_decay'],
    ['blocks.0.attn.wq_a.weight', 'dense_decay'],
    ['blocks.1.ffn.shared.w2.weight', 'dense_decay'],
  ])('%s -> %s', (name, group) => expect(paramGroup(name)).toBe(group));
});

function tinyModel(overrides: string[] = []) {
  const { config } = loadConfig(defaultConfigPath(), {
    env: {},
    overrides: ['--dim=8', '--n_layers=2', '--n_heads=2', '--seq_len=4', '--batch_size=1', ...overrides],
  });
  const sections = configSections(config);
  const model = new Transformer(cpu, sections.model);
  model.params.initialize(sections.model.seed);
  return { cfg: sections.optim, sections, model };
}

describe('AdamW', () => {
  it('applies the decoupled update of each group with its own lr, betas and decay', () => {
    const { cfg, model } = tinyModel([
      '--grad_clip_norm=0',
      '--warmup_steps=1',
      '--lr_expert=0.01',
      '--lr_dense=0.002',
      '--lr_router=0.003',
      '--decay_floor=1e-4',
    ]);
    const opt = new Optimizer(cpu, model.params, cfg);
    const check = [
      'blocks.1.ffn.W1',
      'blocks.1.ffn.router.gate.weight',
      'blocks.0.attn.wq_a.weight',
      'embedding.weight',
    ];
    const before = check.map((n) => Float64Array.from(data(model.params.get(n))));
    for (const p of model.params.trainable()) data(model.params.grad(p.name)).fill(0.5);
    const { lr } = opt.update(0);
    expect(lr).toEqual({ expert: 0.01, router: 0.003, dense_decay: 0.002, dense_no_decay: 0.002 });
    // Step 1 with a constant gradient g: m/(1-b1) = g, sqrt(v/(1-b2)) = |g|, so p' = p (1 - lr wd) - lr g/(|g| + eps).
    const wd = {
      'blocks.1.ffn.W1': 0.1,
      'blocks.1.ffn.router.gate.weight': 0,
      'blocks.0.attn.wq_a.weight': 0.1,
      'embedding.weight': 0,
    };
    const lrOf = {
      'blocks.1.ffn.W1': 0.01,
      'blocks.1.ffn.router.gate.weight': 0.003,
      'blocks.0.attn.wq_a.weight': 0.002,
      'embedding.weight': 0.002,
    };
    check.forEach((n, i) => {
      const after = data(model.params.get(n));
      const l = lrOf[n as keyof typeof lrOf],
        w = wd[n as keyof typeof wd];
      for (let j = 0; j < after.length; j += 7)
        expect(after[j]).toBeCloseTo(before[i]![j]! * (1 - l * w) - l * (0.5 / (0.5 + 1e-8)), 6);
    });
  });

  it('clips to the global norm and skips the update when the norm is not finite', () => {
    const { cfg, model } = tinyModel(['--grad_clip_norm=1.0']);
    const opt = new Optimizer(cpu, model.params, cfg);
    for (const p of model.params.trainable()) data(model.params.grad(p.name)).fill(3);
    const n = model.params.count();
    const { gradNorm } = opt.update(0);
    expect(data(gradNorm)[0]).toBeCloseTo(3 * Math.sqrt(n), 2);
    const moment = data(opt.groups.find((g) => g.name === 'dense_decay')!.expAvg[0]!)[0]!;
    expect(moment).toBeCloseTo(0.1 * (3 / (3 * Math.sqrt(n) + 1e-6)), 6); // (1 - b1) * clipped g
    const snapshot = model.params.trainable().map((p) => Float64Array.from(data(p.value)));
    data(model.params.grad(model.params.trainable()[0]!.name))[0] = NaN;
    opt.update(0);
    model.params.trainable().forEach((p, i) => expect(Array.from(data(p.value))).toEqual(Array.from(snapshot[i]!)));
  });
});

describe("AdamW against PyTorch's update rule, written out here", () => {
  /**
   * Four steps with a different gradient each step and clipping on (the clip factor far from 1), so the second
   * moment must come from the clipped gradient: squaring the raw one moves v by 1/clip^2. With bf16 moments
   * (optim_state_dtype = "bf16"), m and v are stored rounded to bf16 after each step and read back so.
   */
  for (const state of ['f32', 'bf16'] as const) {
    it(`${state} moments: weights and both moments over 4 steps of varying, clipped gradients`, () => {
      const n = 257,
        maxNorm = 0.05,
        hyper = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
      const p = cpu.upload(
        Float32Array.from({ length: n }, (_, j) => Math.sin(j)),
        [n],
        'f32',
      );
      const m = cpu.zeros([n], state),
        v = cpu.zeros([n], state);
      const store = state === 'bf16' ? roundToBf16 : Math.fround;
      const want = { p: Array.from(data(p)), m: new Array<number>(n).fill(0), v: new Array<number>(n).fill(0) };
      for (let step = 1; step <= 4; step++) {
        const g = Float32Array.from({ length: n }, (_, j) => Math.cos(j * step) * (1 + (j % 5)) * step);
        const norm = Math.sqrt(g.reduce((a, x) => a + x * x, 0));
        cpu.adamw([{ params: [p], grads: [cpu.upload(g, [n], 'f32')], expAvg: [m], expAvgSq: [v], step, ...hyper }], {
          gradNorm: cpu.upload(Float32Array.of(norm), [1], 'f32'),
          maxNorm,
        });
        const clip = maxNorm / (Math.fround(norm) + 1e-6); // the norm arrives as an f32 tensor
        expect(clip).toBeLessThan(0.01);
        for (let j = 0; j < n; j++) {
          const gj = g[j]! * clip;
          const mj = hyper.beta1 * want.m[j]! + (1 - hyper.beta1) * gj;
          const vj = hyper.beta2 * want.v[j]! + (1 - hyper.beta2) * gj * gj;
          const mHat = mj / (1 - hyper.beta1 ** step),
            vHat = vj / (1 - hyper.beta2 ** step);
          want.p[j] =
            want.p[j]! * (1 - hyper.lr * hyper.weightDecay) - (hyper.lr * mHat) / (Math.sqrt(vHat) + hyper.eps);
          want.m[j] = store(mj);
          want.v[j] = store(vj);
        }
        // A value near a rounding boundary may round the other way: allow one bf16 step there.
        const close = (got: ArrayLike<number>, exp: number[], rel: number) =>
          exp.forEach((x, j) =>
            expect(Math.abs(got[j]! - x), `step ${step}, element ${j}`).toBeLessThanOrEqual(rel * Math.abs(x) + 1e-12),
          );
        const stored = state === 'bf16' ? 2 ** -8 : 1e-6;
        close(data(m), want.m, stored);
        close(data(v), want.v, stored);
        close(data(p), want.p, 1e-5);
        if (state === 'bf16')
          for (const t of [m, v]) expect(Array.from(data(t)).every((x) => roundToBf16(x) === x)).toBe(true);
      }
    });
  }

  it('optim_state_dtype = "bf16" keeps both moments of every group in bf16', () => {
    const { cfg, model } = tinyModel(['--optim_state_dtype=bf16']);
    const opt = new Optimizer(cpu, model.params, cfg);
    const dtypes = new Set(opt.groups.flatMap((g) => [...g.expAvg, ...g.expAvgSq].map((t) => t.dtype)));
    expect([...dtypes]).toEqual(['bf16']);
  });
});

describe('router bias update (aux-loss-free balancing)', () => {
  it('moves bias against the load sign, centred, and clamps to ±16', () => {
    const bias = cpu.zeros([4], 'f32');
    const finite = cpu.upload(Float32Array.of(1), [1], 'f32');
    cpu.routerBiasUpdate(bias, ints([10, 0, 5, 5]), 0.5, finite);
    // l = [.5, 0, .25, .25]; sign(l - 1/4) = [1, -1, 0, 0], mean 0
    expect(Array.from(data(bias))).toEqual([-0.5, 0.5, 0, 0]);
    cpu.fill(bias, 15.9);
    cpu.routerBiasUpdate(bias, ints([0, 9, 9, 9]), 1, finite);
    // sign = [-1, 1, 1, 1], mean 0.5: bias -= [-1.5, .5, .5, .5]
    expect(Array.from(data(bias)).map((x) => +x.toFixed(4))).toEqual([16, 15.4, 15.4, 15.4]);
    cpu.routerBiasUpdate(bias, ints([0, 9, 9, 9]), 1, cpu.upload(Float32Array.of(NaN), [1], 'f32'));
    expect(Array.from(data(bias)).map((x) => +x.toFixed(4))).toEqual([16, 15.4, 15.4, 15.4]);
  });
});

describe('MoE grouping', () => {
  it('orders rows by expert, then by (token, slot), independent of anything but the routing', () => {
    const plan = cpu.moePlan(ints([2, 0, 1, 2, 2, 1], [3, 2]), 3);
    expect(Array.from(asCpu(plan.counts).i)).toEqual([1, 2, 3]);
    expect(Array.from(asCpu(plan.offsets).i)).toEqual([0, 1, 3, 6]);
    expect(Array.from(asCpu(plan.slotOfRow).i)).toEqual([1, 2, 5, 0, 3, 4]);
    expect(Array.from(asCpu(plan.rowOfSlot).i)).toEqual([3, 0, 1, 4, 5, 2]);
  });
});

describe('precision policy for bf16 weights', () => {
  it('fp32 masters keep updates that bf16 rounding would lose; bf16_sr is unbiased', async () => {
    const run = async (policy: string) => {
      const { config } = loadConfig(defaultConfigPath(), {
        env: {},
        overrides: [
          '--dim=8',
          '--n_layers=1',
          '--n_dense_layers=1',
          '--n_heads=2',
          '--seq_len=4',
          '--batch_size=1',
          `--master_weights=${policy}`,
          '--weight_decay=0',
          '--grad_clip_norm=0',
          '--warmup_steps=1',
          '--lr_dense=1e-5',
          '--decay_floor=1e-6',
        ],
      });
      const { model: cfg, optim } = configSections(config);
      const model = new Transformer(cpu, cfg, { dtype: 'bf16' });
      model.params.initialize(cfg.seed);
      const w = model.params.get('blocks.0.attn.wq_a.weight');
      cpu.fill(w, 1); // bf16 spacing at 1.0 is 2^-7: a 1e-5 step rounds back to 1 every time
      const opt = new Optimizer(cpu, model.params, optim);
      opt.syncMasters();
      for (let s = 0; s < 500; s++) {
        for (const p of model.params.trainable()) cpu.fill(model.params.grad(p.name), 1);
        opt.update(0);
      }
      const values = Array.from(data(w));
      return values.reduce((a, b) => a + b, 0) / values.length;
    };
    // 500 Adam steps of ~lr each (m/sqrt(v) = 1): the exact result is 1 - 500e-5 = 0.995.
    expect(await run('bf16')).toBe(1); // every step rounds back to 1
    expect(await run('fp32')).toBe(1 - 2 ** -8); // the bf16 nearest to the fp32 master 0.995
    const sr = await run('bf16_sr');
    expect(Math.abs(sr - 0.995)).toBeLessThan(0.0015); // unbiased: the mean over the tensor tracks the exact value
  });
});

describe('expert gradients live for one step', () => {
  it('exist from their first use in the backward until the update, and start at zero', async () => {
    const { createTrainee, trainStep } = await import('../src/train/step.ts');
    const { sections, model } = tinyModel();
    model.free();
    const trainee = createTrainee(cpu, sections);
    const experts = trainee.model.params.params.filter((p) => p.firstExpert !== undefined);
    expect(experts.length).toBeGreaterThan(0);
    const ids = ints([5, 17, 3, 99]),
      targets = ints([17, 3, 99, 42]);
    for (let step = 0; step < 2; step++) {
      trainee.model.params.zeroGrads();
      expect(experts.every((p) => p.grad === null)).toBe(true);
      const fwd = trainee.model.forward(ids, targets, 1);
      expect(
        experts.every((p) => p.grad === null),
        'no expert gradient during the forward',
      ).toBe(true);
      trainee.model.backward(fwd.saved);
      expect(experts.every((p) => p.grad !== null && data(p.grad).some((v) => v !== 0))).toBe(true);
      fwd.loss.free();
      for (const c of fwd.routerCounts) c.free();
    }
    const out = trainStep(trainee, ids, targets, 1, 0);
    expect(
      experts.every((p) => p.grad === null),
      'released after the update',
    ).toBe(true);
    expect(Array.from(data(trainee.model.params.grad(experts[0]!.name))).every((v) => v === 0)).toBe(true);
    out.free();
  });
});

describe('state() and load()', () => {
  it('carry the weights and the optimizer to a fresh trainee, whose next step is then bit-identical', async () => {
    const { createTrainee, trainStep } = await import('../src/train/step.ts');
    const { sections, model } = tinyModel(['--optimizer=muon', '--warmup_steps=1']);
    model.free();
    const ids = ints([5, 17, 3, 99]),
      targets = ints([17, 3, 99, 42]);
    const trained = createTrainee(cpu, sections);
    for (let s = 0; s < 2; s++) trainStep(trained, ids, targets, 1, 4 * s).free();
    const values = (t: typeof trained) =>
      new Map(
        [...t.model.params.state(), ...t.opt.state().tensors].map((x) => [
          x.name,
          { data: Float32Array.from(data(x.value)) },
        ]),
      );
    expect(trained.opt.state().tensors.map((t) => t.name)).toContain('optim.momentum.blocks.0.attn.wq_a.weight');
    // Another init, so that only what load() brings over can make the two agree.
    const fresh = createTrainee(cpu, { ...sections, model: { ...sections.model, seed: 7 } });
    const saved = values(trained);
    fresh.model.params.load(saved);
    fresh.opt.load({ step: trained.opt.state().step, tensors: saved });
    expect(fresh.opt.state().step).toBe(2);
    const weights = (t: typeof trained) => t.model.params.state().map((x) => Array.from(data(x.value)));
    for (const t of [trained, fresh]) trainStep(t, ids, targets, 1, 8).free();
    expect(weights(fresh)).toEqual(weights(trained));
    // The same tensors with another step count: the next update differs (AdamW's bias correction).
    fresh.opt.load({ step: 0, tensors: values(trained) });
    for (const t of [trained, fresh]) trainStep(t, ids, targets, 1, 12).free();
    expect(weights(fresh)).not.toEqual(weights(trained));
  });
});
