/**
 * Whole-model gradient check on the CPU backend: for every parameter tensor, the finite-difference derivative of
 * the loss along a direction must match the analytic gradient's projection. Two directions per tensor: the
 * normalised gradient itself and a fixed random one. Routing, NSA's block selection and DSA's key selection (the
 * indexer's top-k) must not change under the perturbation (top-k choices have no derivative): the test asserts that
 * all stay as in the unperturbed forward (DSA's as the backend below records them on every forward).
 *
 * Precision: the per-op checks run in fp32. Here the loss is a mean over tokens after a dozen layers, and fp32
 * rounding of the activations moves it by ~1e-7 relative: with the step small enough to keep routing fixed, that
 * noise is ~1e-2 of the smallest (first-layer) gradients. So the same kernels run with double storage, where the
 * finite differences resolve a relative error of 1e-6, three orders tighter than the 1e-3 asked of the fp32 ops.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { defaultConfigPath, loadConfig } from '../src/config/load.ts';
import { modelConfig } from '../src/config/sections.ts';
import { Transformer } from '../src/model/transformer.ts';
import { CpuBackend } from '../src/tensor/cpu/backend.ts';
import { asCpu, setDoubleStorage } from '../src/tensor/cpu/storage.ts';
import { philoxNormal } from '../src/util/philox.ts';
import { ints } from './helpers/gradcheck.ts';

/** The CPU backend, keeping the keys DSA's indexer selects in each forward (a changed selection fails the check). */
class SelectionRecorder extends CpuBackend {
  selections: string[] = [];
  override indexerTopK(...args: Parameters<CpuBackend['indexerTopK']>) {
    const selected = super.indexerTopK(...args);
    this.selections.push(Array.from(asCpu(selected).i).join(','));
    return selected;
  }
}
const cpu = new SelectionRecorder();

function build(overrides: string[]) {
  const { config } = loadConfig(defaultConfigPath(), {
    overrides: [
      '--dim=16',
      '--n_layers=3',
      '--n_dense_layers=1',
      '--n_heads=2',
      '--inter_dim=24',
      '--moe_inter_dim=8',
      '--n_routed_experts=4',
      '--n_activated_experts=2',
      '--n_shared_experts=1',
      '--q_lora_rank=8',
      '--kv_lora_rank=8',
      '--qk_nope_head_dim=4',
      '--qk_rope_head_dim=4',
      '--v_head_dim=4',
      '--seq_len=6',
      '--batch_size=2',
      '--route_scale=2.0',
      ...overrides,
    ],
    env: {},
  });
  const cfg = modelConfig(config);
  const model = new Transformer(cpu, cfg);
  model.params.initialize(cfg.seed);
  for (const [i, p] of model.params.params.entries()) {
    const v = asCpu(p.value).f;
    philoxNormal(v, { std: p.buffer ? 0.05 : 0.2, seed: 7, stream: 1000 + i });
    if (p.init.kind === 'ones') for (let j = 0; j < v.length; j++) v[j]! += 1;
  }
  const tokens = [5, 17, 0, 99, 3, 250, 42, 7, 0, 13, 64, 128, 1, 77];
  const ids = ints(tokens.slice(0, 12));
  const targets = ints(tokens.slice(1, 13)); // includes EOS (0) targets, which the loss masks
  return { model, ids, targets };
}

function lossAndRouting(
  model: Transformer,
  ids: ReturnType<typeof ints>,
  targets: ReturnType<typeof ints>,
  grad = false,
) {
  cpu.selections = [];
  const fwd = model.forward(ids, targets, 2, { grad });
  const loss = asCpu(fwd.loss).f[0]!;
  const routing = [...fwd.routerCounts.map((c) => Array.from(asCpu(c).i).join(',')), ...cpu.selections].join('|');
  // NSA's block selection (top-k of compressed scores) has no derivative either: it must not move.
  const selection = fwd.saved.blocks.map((b) => (b.attn?.kind === 'nsa' ? Array.from(asCpu(b.attn.sel).i) : []));
  return { loss, routing: `${routing} / ${selection.join('|')}`, fwd };
}

function check(overrides: string[]) {
  const { model, ids, targets } = build(overrides);
  model.params.zeroGrads(); // before the forward: the loss's own gradient pass accumulates the lm_head gradient
  const base = lossAndRouting(model, ids, targets, true);
  model.backward(base.fwd.saved);
  const worst: { name: string; err: number }[] = [];
  for (const [i, p] of model.params.trainable().entries()) {
    const theta = asCpu(p.value).f;
    const g = Float64Array.from(asCpu(p.grad!).f);
    const gNorm = Math.hypot(...g);
    const random = new Float64Array(theta.length);
    philoxNormal(random, { std: 1 / Math.sqrt(theta.length), seed: 99, stream: i });
    for (const [kind, dir] of [
      ['gradient', g.map((x) => x / (gNorm || 1))],
      ['random', Float64Array.from(random)],
    ] as const) {
      const expected = dir.reduce((s, d, j) => s + d * g[j]!, 0);
      const eps = 1e-4;
      const orig = Float64Array.from(theta);
      const at = (sign: number) => {
        for (let j = 0; j < theta.length; j++) theta[j] = orig[j]! + sign * eps * dir[j]!;
        const r = lossAndRouting(model, ids, targets);
        expect(r.routing, `${p.name}: routing changed under the perturbation`).toBe(base.routing);
        return r.loss;
      };
      const numeric = (at(1) - at(-1)) / (2 * eps);
      theta.set(orig);
      worst.push({
        name: `${p.name} (${kind})`,
        err: Math.abs(numeric - expected) / Math.max(Math.abs(expected), Math.abs(numeric), 1e-12),
      });
    }
  }
  return worst;
}

const NSA = [
  '--qk_nope_head_dim=0',
  '--attn_nsa.kv_heads=1',
  '--attn_nsa.cmp_len=2',
  '--attn_nsa.cmp_stride=1',
  '--attn_nsa.slc_block=1',
  '--attn_nsa.topk_blocks=4',
];
const DSA_SMALL = ['--attn_dsa.top_k=4', '--attn_dsa.n_idx_heads=2', '--attn_dsa.idx_dim=4'];

describe('whole-model gradient check (central differences, double storage)', () => {
  beforeAll(() => setDoubleStorage(true));
  afterAll(() => setDoubleStorage(false));

  for (const [label, overrides] of [
    ['MLA with q_lora', []],
    ['MLA without q_lora (wq)', ['--q_lora_rank=0']],
    ['MHA', ['--attn=mha']],
    [
      'SWA local layers (GQA, window 3, RoPE on the last 4 of 6 dims) between MLA',
      ['--attn_global_every=2', '--attn_local=swa', '--attn_local_window=3', '--attn_swa.kv_heads=1', '--v_head_dim=6'],
    ],
    ['SWA global layers (no window, GQA)', ['--attn=swa', '--attn_swa.kv_heads=1', '--v_head_dim=6']],
    // KDA has no selection of its own; the routing assertion above holds the MoE top-k fixed as for every kind.
    [
      'KDA local layer 0 before MLA (value head 6 of key head 8)',
      ['--attn_global_every=2', '--attn_local=kda', '--v_head_dim=6'],
    ],
    ['KDA on every layer', ['--attn=kda']],
    // NSA: blocks of 1 token for the selection (so which earlier tokens a query picks matters), compressed
    // blocks of 2 at stride 1; heads rope whole (qk_nope_head_dim = 0).
    [
      'NSA local layers (GQA, window 2: compressed, selected and sliding branches) between global NSA ones',
      ['--attn=nsa', '--attn_global_every=2', '--attn_local=nsa', '--attn_local_window=2', ...NSA],
    ],
    [
      'NSA with no compressed block ending (cmp_len 8 > seq_len 6): the selected and sliding branches alone',
      [
        '--attn=nsa',
        '--attn_global_every=2',
        '--attn_local=nsa',
        '--attn_local_window=2',
        ...NSA,
        '--attn_nsa.cmp_len=8',
      ],
    ],
    [
      'NSA global layers (compressed and selected branches, no window), kv_heads = n_heads',
      ['--attn=nsa', ...NSA, '--attn_nsa.kv_heads=2'],
    ],
    // DSA: 4 of up to 6 keys per query; the indexer's weights get no gradient, and the loss does not move with them
    // while the selection (asserted with the routing) holds.
    ['DSA on every layer (top 4 keys)', ['--attn=dsa', ...DSA_SMALL]],
    [
      'DSA local layer 0 before MLA, no q_lora',
      ['--attn_global_every=2', '--attn_local=dsa', '--q_lora_rank=0', ...DSA_SMALL],
    ],
    ['DSA dense warm-up (full MLA)', ['--attn=dsa', '--attn_dsa.training_mode=dense_warmup']],
    ['EOS targets counted', ['--loss_mask_eos=false']],
  ] as const) {
    it(`every parameter tensor: ${label}`, () => {
      const errors = check([...overrides]);
      expect(errors.length).toBeGreaterThan(20);
      const bad = errors.filter((e) => !(e.err < 1e-6));
      expect(bad, JSON.stringify(bad.slice(0, 5))).toEqual([]);
    });
  }
});

describe('attn_recompute', () => {
  it.each([
    ['MLA', []],
    ['SWA between MLA', ['--attn_global_every=2', '--attn_local=swa', '--attn_local_window=3']],
    ['KDA', ['--attn=kda']],
    ['NSA, local and global', ['--attn=nsa', '--attn_global_every=2', '--attn_local=nsa', ...NSA]],
    ['DSA', ['--attn=dsa', ...DSA_SMALL]],
  ])('%s: gives exactly the gradients of keeping the attention activations, and keeps none of them', (_, extra) => {
    const grads = (recompute: boolean) => {
      const { model, ids, targets } = build([...extra, `--attn_recompute=${recompute}`]);
      model.params.zeroGrads();
      const fwd = model.forward(ids, targets, 2);
      const attn = fwd.saved.blocks.map((blk) => blk.attn);
      model.backward(fwd.saved);
      return { attn, grads: model.params.trainable().map((p) => ({ name: p.name, g: Array.from(asCpu(p.grad!).f) })) };
    };
    const kept = grads(false),
      recomputed = grads(true);
    expect(kept.attn.every((a) => a !== null)).toBe(true);
    expect(recomputed.attn.every((a) => a === null)).toBe(true);
    expect(recomputed.grads.length).toBe(kept.grads.length);
    expect(recomputed.grads.some((x) => x.g.some((v) => v !== 0))).toBe(true);
    for (const [i, x] of recomputed.grads.entries()) expect(x.g, x.name).toEqual(kept.grads[i]!.g);
  });
});
