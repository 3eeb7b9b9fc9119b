/**
 * The range of every numeric config key, in one table: a value outside it is a config error naming the key, the
 * value, where it was set and the fix (validate.ts), before anything runs, instead of a crash or a silent
 * nonsense run steps later (`adam_beta2 = 2` once diverged at step 2 with "lower the learning rates"). Keys the
 * reference keeps but nmoe does not use get their ranges too, so a reference config that nmoe accepts is one the
 * reference would make sense of. (The option tables are not here: validate.ts checks attn_swa.kv_heads against
 * n_heads, the attn_nsa keys, and attn_dsa's sizes where a layer uses them.)
 */
import type { Config } from './schema.ts';

export interface Range {
  /** Bounds: greater than / at least / less than / at most. */
  gt?: number;
  ge?: number;
  lt?: number;
  le?: number;
  /** Why the upper bound is what it is, when it is not a matter of definition. */
  why?: string;
  /** The range applies only to models where the key is used. */
  when?: (c: Config) => boolean;
  fix: string;
}

export const hasMoe = (c: Pick<Config, 'n_layers' | 'n_dense_layers'>): boolean =>
  c.n_layers === null || c.n_dense_layers < c.n_layers;
export const hasDense = (c: Pick<Config, 'n_dense_layers'>): boolean => c.n_dense_layers > 0;
/** Some layer is NSA: the global kind, or the local one where attn_global_every leaves local layers. */
export const hasNsa = (c: Config): boolean =>
  c.attn === 'nsa' || (c.attn_local === 'nsa' && c.attn_global_every > 1 && c.n_layers !== 1);

/** The largest expert count the GPU routing kernel (router_topk, MAX_EXPERTS) takes. */
export const MAX_ROUTED_EXPERTS = 512;

const POSITIVE = (fix: string): Range => ({ gt: 0, fix });
const UNIT = (example: number): Range => ({ ge: 0, lt: 1, fix: `use a value in [0, 1) such as ${example}` });

export const RANGES: Partial<Record<keyof Config, Range>> = {
  vocab_size: POSITIVE('give vocab_size a positive value'),
  eos_token_id: { ge: 0, fix: "use the tokenizer's end-of-text id" },
  dim: POSITIVE('give dim a positive value'),
  n_layers: POSITIVE('give n_layers a positive value'),
  n_heads: POSITIVE('give n_heads a positive value'),
  inter_dim: { gt: 0, when: hasDense, fix: 'give inter_dim a positive value' },
  moe_inter_dim: { gt: 0, when: hasMoe, fix: 'give moe_inter_dim a positive value' },
  n_routed_experts: {
    gt: 0,
    le: MAX_ROUTED_EXPERTS,
    why: 'the GPU routing kernel takes at most 512 experts per layer',
    when: hasMoe,
    fix: `give n_routed_experts a value from 1 to ${MAX_ROUTED_EXPERTS}`,
  },
  n_activated_experts: {
    gt: 0,
    le: 32,
    why: 'the routing kernels handle at most 32 experts per token',
    when: hasMoe,
    fix: 'route each token to 1 to 32 experts',
  },
  n_shared_experts: { ge: 0, fix: 'use 0 for no shared expert' },
  n_dense_layers: { ge: 0, fix: 'use 0 for an all-MoE model' },
  rms_norm_eps: POSITIVE('use a small positive epsilon such as 1e-5'),

  attn_global_every: { ge: 1, fix: 'set attn_global_every = 1 (every layer uses global attention)' },
  attn_local_window: POSITIVE('give attn_local_window a positive number of tokens'),
  q_lora_rank: { ge: 0, fix: 'use 0 for an uncompressed query projection' },
  kv_lora_rank: POSITIVE('give kv_lora_rank a positive value'),
  // NSA ropes whole heads and needs 0 here (validate.ts).
  qk_nope_head_dim: { gt: 0, when: (c) => !hasNsa(c), fix: 'give qk_nope_head_dim a positive value' },
  qk_rope_head_dim: POSITIVE('give qk_rope_head_dim a positive value'),
  v_head_dim: POSITIVE('give v_head_dim a positive value'),

  max_position_embeddings: POSITIVE('give max_position_embeddings a positive value'),
  rope_theta: { gt: 1, fix: 'use a RoPE base such as 10000.0 or 50000.0' },
  rope_scaling_factor: { ge: 1, fix: 'use 1.0 for no context extension, or a factor > 1 for YaRN' },
  rope_ntk_alpha: POSITIVE('use a positive number of rotations such as 1.0'),
  rope_ntk_beta: POSITIVE('use a positive number of rotations such as 32.0'),

  router_bias_update_rate: { ge: 0, fix: 'use 0 to freeze the router bias' },
  aux_loss_alpha: { ge: 0, fix: 'use 0 (no auxiliary loss)' },
  route_scale: POSITIVE('use 1.0 for unscaled router logits'),

  lr_dense: POSITIVE('use a positive peak learning rate such as 3e-4'),
  lr_router: POSITIVE('use a positive peak learning rate such as 3e-4'),
  lr_expert: POSITIVE('use a positive peak learning rate such as 3e-4'),
  weight_decay: { ge: 0, fix: 'use 0 for no weight decay, or a small positive value such as 0.1' },
  adam_beta1: UNIT(0.9),
  adam_beta2: UNIT(0.95),
  adam_beta2_expert: UNIT(0.99),
  adam_eps: POSITIVE('use a small positive epsilon such as 1e-8'),
  muon_momentum: UNIT(0.95),

  warmup_steps: { ge: 0, fix: 'use 0 for no warmup' },
  hold_tokens: { ge: 0, fix: 'use 0 to start the decay right after warmup' },
  decay_tokens: { ge: 0, fix: 'use 0 to drop to decay_floor right after the hold' },
  decay_floor: POSITIVE('use a small absolute LR such as 3e-5'),

  steps: {
    ge: 1,
    when: (c) => c.flow_mode === null,
    fix: 'give steps a positive number of optimizer steps (steps <= 0 means "derive from the flow budget" only when flow_mode is set)',
  },
  batch_size: POSITIVE('set batch_size to the global number of sequences per step, e.g. 8'),
  seq_len: POSITIVE('set seq_len to the tokens per sequence, e.g. 4096'),
  seed: { ge: 0, lt: 2 ** 32, why: 'it keys a 32-bit generator', fix: 'use a seed from 0 to 4294967295' },
  log_every: { ge: 1, fix: 'log at least every step (log_every = 1)' },

  checkpoint_every: { ge: 0, fix: 'use a number of steps between saves, or 0 to save only at the last step' },
  checkpoint_keep_last_n: { ge: 1, fix: 'keep at least the newest checkpoint (checkpoint_keep_last_n = 1)' },

  active_params_b: POSITIVE('give the active parameters in billions, e.g. 1.5'),

  eval_every: { ge: 0, fix: 'use 0 to disable, or a number of steps' },
  eval_budget_max_examples: POSITIVE('give a positive number of examples'),
  eval_budget_max_time_s: POSITIVE('give a positive number of seconds'),
  eval_reserved_gpu_id: { ge: 0, fix: 'give a GPU index (0, 1, …)' },

  grpo_kl_beta: { ge: 0, fix: 'use 0 or a small positive weight such as 0.001' },
  grpo_clamp_eps_lower: { ge: 0, lt: 1, fix: 'use a value in [0, 1) such as 0.01' },
  grpo_clamp_eps_upper: { ge: 0, fix: 'use a small positive value such as 0.01' },
  grpo_group_size: { ge: 1, fix: 'sample at least one completion per prompt' },
  grpo_prompts_per_step: { ge: 1, fix: 'use at least one prompt per step' },
  grpo_iterations: { ge: 1, fix: 'use at least one iteration per batch' },
  grpo_temperature: POSITIVE('use a positive sampling temperature such as 1.0'),
  grpo_top_p: { gt: 0, le: 1, fix: 'use a value in (0, 1] such as 0.9' },

  validation_every: { ge: 1, fix: 'give a positive number of steps' },
  validation_steps: { ge: 1, fix: 'use at least one batch' },

  profiling_steps: { ge: 1, fix: 'profile at least one step' },

  grad_clip_norm: { ge: 0, fix: 'use 0 to disable clipping' },
  muon_ns_steps: { ge: 1, fix: 'use at least one Newton-Schulz iteration; 5 is the usual count' },
};

/** What is wrong with `value` under `r` ("must be < 1"), or null when it is in range. */
export function outOfRange(r: Range, value: number): string | null {
  const why = r.why ? ` (${r.why})` : '';
  if (r.gt !== undefined && !(value > r.gt)) return `must be > ${r.gt}`;
  if (r.ge !== undefined && !(value >= r.ge)) return `must be >= ${r.ge}`;
  if (r.lt !== undefined && !(value < r.lt)) return `must be < ${r.lt}${why}`;
  if (r.le !== undefined && !(value <= r.le)) return `must be <= ${r.le}${why}`;
  return null;
}
