/**
 * The model's parameter list, derived from the config: names, local shapes and initialisers. Layer kinds follow
 * the reference: layers [0, n_dense_layers) use a dense SwiGLU MLP, the rest are MoE; global layers use `attn`
 * (MLA, MHA, SWA, KDA, NSA or DSA) and, with attn_global_every > 1, the others `attn_local` (SWA or NSA over
 * attn_local_window keys, KDA or DSA).
 */
import { DSA_DEFAULTS } from '../config/schema.ts';
import type { ModelConfig } from '../config/sections.ts';
import { nsaParamSpecs } from './nsa.ts';
import type { ParamSpec } from './params.ts';

/** The model's section of the config (src/config/sections.ts). */
export type { ModelConfig };

export interface Parallel {
  rank: number;
  world: number;
}

export const SINGLE: Parallel = { rank: 0, world: 1 };

type LayerCounts = Pick<ModelConfig, 'n_layers' | 'n_dense_layers'>;

export function isMoeLayer(cfg: LayerCounts, layer: number): boolean {
  return layer >= cfg.n_dense_layers;
}

export function moeLayerCount(cfg: LayerCounts): number {
  return Math.max(0, cfg.n_layers - cfg.n_dense_layers);
}

export function qkHeadDim(cfg: ModelConfig): number {
  return cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
}

/** The attention of one layer: its kind and its window of keys (0: every earlier key). */
export interface LayerAttention {
  kind: 'mla' | 'mha' | 'swa' | 'kda' | 'nsa' | 'dsa';
  window: number;
}

/** The reference's rule: layer i is global iff attn_global_every is 1, (i + 1) % attn_global_every is 0, or i is last. */
export function isGlobalLayer(cfg: ModelConfig, layer: number): boolean {
  const every = cfg.attn_global_every;
  return every === 1 || (layer + 1) % every === 0 || layer === cfg.n_layers - 1;
}

export function layerAttention(cfg: ModelConfig, layer: number): LayerAttention {
  if (isGlobalLayer(cfg, layer)) return { kind: cfg.attn, window: 0 };
  // Validation admits only "swa", "nsa", "kda" and "dsa" for local layers; KDA has no window (its state spans the
  // sequence), and DSA's indexer picks its keys.
  if (cfg.attn_local === 'kda') return { kind: 'kda', window: 0 };
  if (cfg.attn_local === 'dsa') return { kind: 'dsa', window: 0 };
  return { kind: cfg.attn_local as 'swa' | 'nsa', window: cfg.attn_local_window };
}

/** SWA's head geometry: H query heads and KV key/value heads (GQA) of d = v_head_dim dims. */
export function swaHeads(cfg: ModelConfig): { heads: number; kvHeads: number; headDim: number } {
  return { heads: cfg.n_heads, kvHeads: cfg.attn_swa.kv_heads ?? cfg.n_heads, headDim: cfg.v_head_dim };
}

/** DSA's lightning indexer geometry: attn_dsa's keys with the reference's defaults. */
export function dsaIndexer(cfg: ModelConfig): {
  heads: number;
  dim: number;
  topK: number;
  mode: 'sparse' | 'dense_warmup';
  lossWeight: number;
} {
  const o = { ...DSA_DEFAULTS, ...cfg.attn_dsa };
  return {
    heads: o.n_idx_heads,
    dim: o.idx_dim,
    topK: o.top_k,
    mode: o.training_mode,
    lossWeight: o.indexer_loss_weight,
  };
}

/** DSA: MLA's projections plus the indexer's query (n_idx_heads heads), its one key head and its per-head weights. */
function dsaIndexerSpecs(cfg: ModelConfig, prefix: string): ParamSpec[] {
  const { heads, dim } = dsaIndexer(cfg);
  const input = { kind: 'normal', std: 0.02 } as const;
  return [
    { name: `${prefix}.wq_idx.weight`, shape: [heads * dim, cfg.dim], init: input },
    { name: `${prefix}.wk_idx.weight`, shape: [dim, cfg.dim], init: input },
    { name: `${prefix}.w_idx.weight`, shape: [heads, cfg.dim], init: input },
  ];
}

/** Depth-scaled std for output projections, router gates and experts of block `layer`. */
export function outputStd(layer: number): number {
  return 0.02 / Math.sqrt(2 * (layer + 1));
}

function attentionSpecs(cfg: ModelConfig, prefix: string, layer: number): ParamSpec[] {
  const d = cfg.dim,
    h = cfg.n_heads,
    dqk = qkHeadDim(cfg),
    dv = cfg.v_head_dim;
  const input = { kind: 'normal', std: 0.02 } as const;
  const output = { kind: 'normal', std: outputStd(layer) } as const;
  const ones = { kind: 'ones' } as const;
  const zeros = { kind: 'zeros' } as const;
  const kind = layerAttention(cfg, layer).kind;
  if (kind === 'nsa') return nsaParamSpecs(cfg, prefix, outputStd(layer));
  if (kind === 'swa') {
    const { heads, kvHeads, headDim } = swaHeads(cfg);
    const qkv = (heads + 2 * kvHeads) * headDim;
    return [
      { name: `${prefix}.qkv.weight`, shape: [qkv, d], init: input },
      { name: `${prefix}.qkv.bias`, shape: [qkv], init: zeros },
      { name: `${prefix}.out.weight`, shape: [d, heads * headDim], init: output },
      { name: `${prefix}.out.bias`, shape: [d], init: zeros },
      { name: `${prefix}.sinks`, shape: [heads], init: zeros },
    ];
  }
  if (kind === 'mha') {
    return [
      { name: `${prefix}.wq.weight`, shape: [h * dqk, d], init: input },
      { name: `${prefix}.wk.weight`, shape: [h * dqk, d], init: input },
      { name: `${prefix}.wv.weight`, shape: [h * dv, d], init: input },
      { name: `${prefix}.wo.weight`, shape: [d, h * dv], init: output },
    ];
  }
  const q: ParamSpec[] =
    cfg.q_lora_rank > 0
      ? [
          { name: `${prefix}.wq_a.weight`, shape: [cfg.q_lora_rank, d], init: input },
          { name: `${prefix}.q_norm.weight`, shape: [cfg.q_lora_rank], init: ones },
          { name: `${prefix}.wq_b.weight`, shape: [h * dqk, cfg.q_lora_rank], init: input },
        ]
      : [{ name: `${prefix}.wq.weight`, shape: [h * dqk, d], init: input }];
  return [
    ...q,
    { name: `${prefix}.wkv_a.weight`, shape: [cfg.kv_lora_rank + cfg.qk_rope_head_dim, d], init: input },
    { name: `${prefix}.kv_norm.weight`, shape: [cfg.kv_lora_rank], init: ones },
    { name: `${prefix}.wkv_b.weight`, shape: [h * (cfg.qk_nope_head_dim + dv), cfg.kv_lora_rank], init: input },
    { name: `${prefix}.wo.weight`, shape: [d, h * dv], init: output },
    // KDA: MLA's projections (q_lora_rank > 0) plus the decay gate (with bias) and the per-head beta.
    ...(kind === 'kda'
      ? [
          { name: `${prefix}.wg.weight`, shape: [h * dqk, d], init: input },
          { name: `${prefix}.wg.bias`, shape: [h * dqk], init: zeros },
          { name: `${prefix}.wb.weight`, shape: [h, d], init: input },
        ]
      : []),
    ...(kind === 'dsa' ? dsaIndexerSpecs(cfg, prefix) : []),
  ];
}

function mlpSpecs(prefix: string, dim: number, hidden: number, layer: number): ParamSpec[] {
  return [
    { name: `${prefix}.w1.weight`, shape: [hidden, dim], init: { kind: 'normal', std: 0.02 } },
    { name: `${prefix}.w3.weight`, shape: [hidden, dim], init: { kind: 'normal', std: 0.02 } },
    { name: `${prefix}.w2.weight`, shape: [dim, hidden], init: { kind: 'normal', std: outputStd(layer) } },
  ];
}

function moeSpecs(cfg: ModelConfig, prefix: string, layer: number, par: Parallel): ParamSpec[] {
  const local = cfg.n_routed_experts / par.world;
  const firstExpert = par.rank * local;
  const std = { kind: 'normal', std: outputStd(layer) } as const;
  const specs: ParamSpec[] = [
    { name: `${prefix}.router.gate.weight`, shape: [cfg.n_routed_experts, cfg.dim], init: std },
    { name: `${prefix}.router.bias`, shape: [cfg.n_routed_experts], init: { kind: 'zeros' }, buffer: true },
    { name: `${prefix}.W1`, shape: [local, cfg.dim, cfg.moe_inter_dim], init: std, firstExpert },
    { name: `${prefix}.W3`, shape: [local, cfg.dim, cfg.moe_inter_dim], init: std, firstExpert },
    { name: `${prefix}.W2`, shape: [local, cfg.moe_inter_dim, cfg.dim], init: std, firstExpert },
  ];
  if (cfg.n_shared_experts > 0) {
    // The reference fuses all shared experts into one MLP of n_shared_experts * moe_inter_dim.
    specs.push(...mlpSpecs(`${prefix}.shared`, cfg.dim, cfg.n_shared_experts * cfg.moe_inter_dim, layer));
  }
  return specs;
}

export function modelParamSpecs(cfg: ModelConfig, par: Parallel = SINGLE): ParamSpec[] {
  const specs: ParamSpec[] = [
    { name: 'embedding.weight', shape: [cfg.vocab_size, cfg.dim], init: { kind: 'normal', std: 0.02 } },
  ];
  for (let i = 0; i < cfg.n_layers; i++) {
    const prefix = `blocks.${i}`;
    specs.push({ name: `${prefix}.attn_norm.weight`, shape: [cfg.dim], init: { kind: 'ones' } });
    specs.push(...attentionSpecs(cfg, `${prefix}.attn`, i));
    specs.push({ name: `${prefix}.ffn_norm.weight`, shape: [cfg.dim], init: { kind: 'ones' } });
    specs.push(
      ...(isMoeLayer(cfg, i)
        ? moeSpecs(cfg, `${prefix}.ffn`, i, par)
        : mlpSpecs(`${prefix}.ffn`, cfg.dim, cfg.inter_dim, i)),
    );
  }
  specs.push({ name: 'norm.weight', shape: [cfg.dim], init: { kind: 'ones' } });
  specs.push({
    name: 'lm_head.weight',
    shape: [cfg.vocab_size, cfg.dim],
    init: { kind: 'normal', std: cfg.dim ** -0.5, clamp: 2 },
  });
  return specs;
}
