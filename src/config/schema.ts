/**
 * The training config: every field of the reference's Python `Config` dataclass (same snake_case names, defaults
 * and meaning) plus a few nmoe additions. `FIELDS` is the single source of truth for each key's type, default,
 * one-line doc, section and whether it changes the training math; the loader, the validator, the fingerprint and
 * `nmoe config show` all read it. TOML has no null, so a nullable field is null exactly when the key is absent.
 */

export type Section =
  | 'meta'
  | 'model'
  | 'attention'
  | 'rope'
  | 'routing'
  | 'precision'
  | 'optimizer'
  | 'schedule'
  | 'training'
  | 'checkpoint'
  | 'data'
  | 'metrics'
  | 'eval'
  | 'sft'
  | 'rl'
  | 'validation'
  | 'profiling'
  | 'nmoe';

/** Display order of the sections (`nmoe config show`). */
export const SECTIONS: readonly Section[] = [
  'meta',
  'model',
  'attention',
  'rope',
  'routing',
  'precision',
  'optimizer',
  'schedule',
  'training',
  'checkpoint',
  'data',
  'metrics',
  'eval',
  'sft',
  'rl',
  'validation',
  'profiling',
  'nmoe',
];

export type ScalarType =
  | { kind: 'int' | 'float' | 'bool' | 'string'; nullable?: true }
  | { kind: 'enum'; values: readonly string[]; nullable?: true };

/** A nested table with a fixed set of optional sub-keys (the reference stores these as free-form dicts). */
export type TableType = { kind: 'table'; keys: Record<string, ScalarType> };

export type FieldType = ScalarType | TableType;

export interface FieldSpec<T = unknown> {
  type: FieldType;
  default: T;
  doc: string;
  section: Section;
  /** True when changing the field changes the training math (and therefore the config fingerprint). */
  math: boolean;
}

export interface Tokenizer {
  vocabSize: number;
  eosTokenId: number;
}

export const TOKENIZERS: Record<string, Tokenizer> = {
  o200k_harmony: { vocabSize: 201088, eosTokenId: 199999 },
  bytes: { vocabSize: 256, eosTokenId: 0 },
};

export interface AttnSwaOptions {
  kv_heads?: number;
}

export interface AttnNsaOptions {
  kv_heads?: number;
  cmp_len?: number;
  cmp_stride?: number;
  slc_block?: number;
  topk_blocks?: number;
  tile_q?: number;
  flex_block?: number;
  cmp_hidden?: number;
  gate_hidden?: number;
}

export interface AttnDsaOptions {
  n_idx_heads?: number;
  idx_dim?: number;
  top_k?: number;
  training_mode?: 'sparse' | 'dense_warmup';
  /** nmoe's addition: the weight of the indexer's KL alignment loss (0: off, as the reference never calls it). */
  indexer_loss_weight?: number;
}

/** The reference's DSA defaults (its attn_dsa table starts empty). */
export const DSA_DEFAULTS: Required<AttnDsaOptions> = {
  n_idx_heads: 4,
  idx_dim: 64,
  top_k: 2048,
  training_mode: 'sparse',
  indexer_loss_weight: 0,
};

export type Dtype = 'bf16' | 'fp8' | 'nvfp4';
export type AttnKind = 'mla' | 'mha' | 'swa' | 'kda' | 'nsa' | 'dsa';
export type Device = 'auto' | 'cpu' | 'cuda';

/** Field meanings and defaults are documented once, in `FIELDS` below. */
export interface Config {
  // meta
  preset: string;
  experiment_id: string;
  // model (null = required but absent; see validate.ts for when each is required)
  vocab_size: number;
  tokenizer: string;
  eos_token_id: number;
  dim: number | null;
  n_layers: number | null;
  n_heads: number | null;
  inter_dim: number | null;
  moe_inter_dim: number | null;
  n_routed_experts: number | null;
  n_activated_experts: number | null;
  n_shared_experts: number;
  n_dense_layers: number;
  rms_norm_eps: number;
  // attention
  attn: AttnKind;
  attn_local: string;
  attn_global_every: number;
  attn_local_window: number;
  q_lora_rank: number;
  kv_lora_rank: number;
  qk_nope_head_dim: number;
  qk_rope_head_dim: number;
  v_head_dim: number;
  attn_swa: AttnSwaOptions;
  attn_nsa: AttnNsaOptions;
  attn_dsa: AttnDsaOptions;
  // rope
  max_position_embeddings: number;
  rope_theta: number;
  rope_scaling_factor: number;
  rope_ntk_alpha: number;
  rope_ntk_beta: number;
  // routing
  router_bias_update_rate: number;
  aux_loss_alpha: number;
  norm_topk_prob: boolean;
  route_scale: number;
  // precision
  dtype: Dtype;
  // optimizer
  lr_dense: number;
  lr_router: number;
  lr_expert: number;
  weight_decay: number;
  adam_beta1: number;
  adam_beta2: number;
  adam_beta2_expert: number;
  adam_eps: number;
  muon_momentum: number;
  // schedule
  warmup_steps: number;
  hold_tokens: number;
  decay_tokens: number;
  decay_floor: number;
  // training
  steps: number;
  batch_size: number;
  seq_len: number;
  seed: number;
  log_every: number;
  // checkpoint
  checkpoint_dir: string;
  checkpoint_every: number;
  checkpoint_keep_last_n: number;
  resume: boolean;
  // data
  data_root: string;
  data_path: string | null;
  hf_dataset: string | null;
  hf_split: string;
  hf_subset: string | null;
  hf_text_field: string;
  hf_data_files: string | null;
  mixture_toml: string | null;
  flow_profiles_toml: string | null;
  flow_mode: string | null;
  active_params_b: number | null;
  // metrics
  metrics_dir: string;
  experiments_db: string;
  // eval
  eval_enabled: boolean;
  eval_mode: 'inline' | 'reserved_gpu' | 'k8s_job';
  eval_every: number;
  eval_tasks: string;
  eval_tasks_file: string;
  eval_budget_max_examples: number;
  eval_budget_max_time_s: number;
  eval_reserved_gpu_id: number;
  // sft
  sft_enabled: boolean;
  sft_prompt_format: string;
  sft_mask_prompt_loss: boolean;
  sft_packing_enabled: boolean;
  sft_data_path: string | null;
  // rl
  rl_enabled: boolean;
  rl_algorithm: string;
  grpo_kl_beta: number;
  grpo_clamp_eps_lower: number;
  grpo_clamp_eps_upper: number;
  grpo_group_size: number;
  grpo_prompts_per_step: number;
  grpo_iterations: number;
  grpo_temperature: number;
  grpo_top_p: number;
  reward_model_path: string | null;
  // validation
  validation_enabled: boolean;
  validation_data_path: string | null;
  validation_every: number;
  validation_steps: number;
  // profiling
  profiling_enabled: boolean;
  profiling_steps: number;
  profiling_output_dir: string;
  // nmoe additions
  device: Device;
  grad_clip_norm: number;
  loss_mask_eos: boolean;
  strict_data: boolean;
  optim_state_dtype: 'fp32' | 'bf16';
  master_weights: 'fp32' | 'bf16' | 'bf16_sr';
  attn_recompute: boolean;
  attn_kernel: 'nmoe' | 'cudnn';
  deterministic: boolean;
  optimizer: 'adamw' | 'muon';
  muon_nesterov: boolean;
  muon_ns_steps: number;
  muon_experts: boolean;
}

const INT = { kind: 'int' } as const;
const FLOAT = { kind: 'float' } as const;
const BOOL = { kind: 'bool' } as const;
const STRING = { kind: 'string' } as const;
const INT_OR_NULL = { kind: 'int', nullable: true } as const;
const FLOAT_OR_NULL = { kind: 'float', nullable: true } as const;
const STRING_OR_NULL = { kind: 'string', nullable: true } as const;
const UNUSED = 'UNUSED in the reference trainer (kept so reference configs load).';

function field<T>(section: Section, type: FieldType, def: T, math: boolean, doc: string): FieldSpec<T> {
  return { type, default: def, doc, section, math };
}

export const FIELDS: { [K in keyof Config]: FieldSpec<Config[K]> } = {
  preset: field('meta', STRING, 'custom', false, 'Name of the preset this config was derived from (informational).'),
  experiment_id: field('meta', STRING, 'default', false, 'Experiment this run belongs to in the experiments DB.'),

  vocab_size: field('model', INT, 201088, true, 'Embedding / output rows; must cover every id the tokenizer emits.'),
  tokenizer: field(
    'model',
    { kind: 'enum', values: Object.keys(TOKENIZERS) },
    'o200k_harmony',
    true,
    'Tokenizer the data was prepared with: o200k_harmony (vocab 201088) or bytes (nmoe addition: vocab 256).',
  ),
  eos_token_id: field('model', INT, 199999, true, 'End-of-text id: document separator, padding, and loss-mask token.'),
  dim: field('model', INT_OR_NULL, null, true, 'Model width (hidden size). Required.'),
  n_layers: field('model', INT_OR_NULL, null, true, 'Number of transformer blocks. Required.'),
  n_heads: field('model', INT_OR_NULL, null, true, 'Attention heads per layer. Required.'),
  inter_dim: field(
    'model',
    INT_OR_NULL,
    null,
    true,
    'Hidden size of the dense MLP layers. Required if n_dense_layers > 0.',
  ),
  moe_inter_dim: field(
    'model',
    INT_OR_NULL,
    null,
    true,
    'Hidden size of each expert MLP. Required if any layer is MoE.',
  ),
  n_routed_experts: field(
    'model',
    INT_OR_NULL,
    null,
    true,
    'Routed experts per MoE layer. Required if any layer is MoE.',
  ),
  n_activated_experts: field(
    'model',
    INT_OR_NULL,
    null,
    true,
    'Routed experts per token (top-K). Required if any layer is MoE.',
  ),
  n_shared_experts: field('model', INT, 2, true, 'Always-on shared experts per MoE layer, fused into one MLP.'),
  n_dense_layers: field('model', INT, 1, true, 'The first N layers use a dense MLP instead of MoE.'),
  rms_norm_eps: field('model', FLOAT, 1e-5, true, 'RMSNorm epsilon.'),

  attn: field(
    'attention',
    { kind: 'enum', values: ['mla', 'mha', 'swa', 'kda', 'nsa', 'dsa'] },
    'mla',
    true,
    'Attention type of global layers: mla (DeepSeek multi-head latent attention), mha, swa (sinks, no window), ' +
      'kda (Kimi Delta Attention), nsa (native sparse attention) or dsa (DeepSeek Sparse Attention); kda, nsa and ' +
      'dsa are experimental and CPU only.',
  ),
  attn_local: field(
    'attention',
    { kind: 'enum', values: ['mla', 'swa', 'kda', 'nsa', 'dsa'] },
    'swa',
    true,
    'Attention type of local layers: swa (sliding window with sinks), nsa (with its sliding branch over the window), ' +
      'kda or dsa (no window); unused while attn_global_every = 1.',
  ),
  attn_global_every: field(
    'attention',
    INT,
    1,
    true,
    'Layer i is global iff this is 1, (i+1) % attn_global_every = 0, or i is the last layer; the others are local.',
  ),
  attn_local_window: field('attention', INT, 128, true, 'Keys a local layer sees: the query and the ones before it.'),
  q_lora_rank: field('attention', INT, 1536, true, 'MLA query compression rank; 0 = uncompressed query projection.'),
  kv_lora_rank: field('attention', INT, 512, true, 'MLA key/value compression rank.'),
  qk_nope_head_dim: field('attention', INT, 128, true, 'Per-head query/key dims without RoPE.'),
  qk_rope_head_dim: field('attention', INT, 64, true, 'Per-head query/key dims with RoPE (even).'),
  v_head_dim: field('attention', INT, 128, true, 'Per-head value dims.'),
  attn_swa: field(
    'attention',
    { kind: 'table', keys: { kv_heads: INT } },
    {},
    true,
    'SWA options: kv_heads (GQA, default n_heads).',
  ),
  attn_nsa: field(
    'attention',
    {
      kind: 'table',
      keys: {
        kv_heads: INT,
        cmp_len: INT,
        cmp_stride: INT,
        slc_block: INT,
        topk_blocks: INT,
        tile_q: INT,
        flex_block: INT,
        cmp_hidden: INT,
        gate_hidden: INT,
      },
    },
    {},
    true,
    'NSA options: kv_heads, cmp_len 32, cmp_stride 16, slc_block 64, topk_blocks 16, tile_q 128, ' +
      'flex_block 128, cmp_hidden 2*v_head_dim, gate_hidden dim/4.',
  ),
  attn_dsa: field(
    'attention',
    {
      kind: 'table',
      keys: {
        n_idx_heads: INT,
        idx_dim: INT,
        top_k: INT,
        training_mode: { kind: 'enum', values: ['sparse', 'dense_warmup'] },
        indexer_loss_weight: FLOAT,
      },
    },
    {},
    true,
    'DSA options: n_idx_heads 4, idx_dim 64, top_k 2048 (keys per query), training_mode sparse|dense_warmup; ' +
      'indexer_loss_weight 0 (an nmoe addition: > 0 adds the indexer KL alignment loss, which trains the indexer).',
  ),

  max_position_embeddings: field('rope', INT, 8192, true, 'RoPE base context length; tables cover twice this.'),
  rope_theta: field('rope', FLOAT, 50000.0, true, 'RoPE base frequency.'),
  rope_scaling_factor: field('rope', FLOAT, 1.0, true, 'YaRN context extension factor; 1 = no scaling.'),
  rope_ntk_alpha: field('rope', FLOAT, 1.0, true, 'YaRN high-frequency boundary (rotations per context).'),
  rope_ntk_beta: field('rope', FLOAT, 32.0, true, 'YaRN low-frequency boundary (rotations per context).'),

  router_bias_update_rate: field(
    'routing',
    FLOAT,
    1e-4,
    true,
    'Step of the aux-loss-free router bias update (gamma); 0 freezes the bias.',
  ),
  aux_loss_alpha: field('routing', FLOAT, 0.0, false, `Auxiliary load-balancing loss weight. ${UNUSED}`),
  norm_topk_prob: field('routing', BOOL, true, false, `Renormalise top-K weights (always done). ${UNUSED}`),
  route_scale: field('routing', FLOAT, 1.0, true, 'Multiplies router logits before the sigmoid.'),

  dtype: field(
    'precision',
    { kind: 'enum', values: ['bf16', 'fp8', 'nvfp4'] },
    'bf16',
    true,
    'Routed-expert GEMM format; everything else is bf16. fp8: E4M3 with DeepSeek-V3 block scales (emulated on the CPU; the CUDA backend refuses it). nvfp4 needs Blackwell: a run stops.',
  ),

  lr_dense: field('optimizer', FLOAT, 3.4e-4, true, 'Peak LR of dense parameters (attention, MLPs, embeddings).'),
  lr_router: field('optimizer', FLOAT, 3.4e-4, true, 'Peak LR of router gates (no weight decay).'),
  lr_expert: field('optimizer', FLOAT, 3.4e-4, true, 'Peak LR of routed expert weights.'),
  weight_decay: field(
    'optimizer',
    FLOAT,
    0.1,
    true,
    'AdamW decoupled weight decay (not on norms, biases, embeddings, router).',
  ),
  adam_beta1: field('optimizer', FLOAT, 0.9, true, 'AdamW beta1.'),
  adam_beta2: field('optimizer', FLOAT, 0.95, true, 'AdamW beta2 for dense and router parameters.'),
  adam_beta2_expert: field('optimizer', FLOAT, 0.99, true, 'AdamW beta2 for expert parameters.'),
  adam_eps: field('optimizer', FLOAT, 1e-8, true, 'AdamW epsilon.'),
  muon_momentum: field('optimizer', FLOAT, 0.95, true, 'Muon momentum mu (m = mu*m + g), with optimizer = "muon".'),

  warmup_steps: field('schedule', INT, 500, true, 'Linear LR warmup, in steps.'),
  hold_tokens: field(
    'schedule',
    INT,
    10_000_000_000,
    true,
    'After warmup, LR stays at peak until this many global tokens.',
  ),
  decay_tokens: field(
    'schedule',
    INT,
    40_000_000_000,
    true,
    'Global tokens of cosine decay (after hold_tokens) down to decay_floor.',
  ),
  decay_floor: field('schedule', FLOAT, 3e-5, true, 'Absolute LR floor of every group (not a ratio).'),

  steps: field('training', INT, 10000, false, 'Optimizer steps to run; <= 0 derives them from the flow budget.'),
  batch_size: field('training', INT, 8, true, 'GLOBAL sequences per step (split across ranks).'),
  seq_len: field('training', INT, 4096, true, 'Tokens per sequence.'),
  seed: field('training', INT, 42, true, 'Seed of weight init (and everything else random).'),
  log_every: field('training', INT, 10, false, 'Log every N steps (plus the first and last step).'),

  checkpoint_dir: field('checkpoint', STRING, '/data/checkpoints', false, 'Where checkpoints are written.'),
  checkpoint_every: field('checkpoint', INT, 1000, false, 'Save every N steps (and at the last step).'),
  checkpoint_keep_last_n: field('checkpoint', INT, 3, false, 'Keep only the newest N checkpoints.'),
  resume: field('checkpoint', BOOL, true, false, 'Resume from the newest checkpoint in checkpoint_dir if any.'),

  data_root: field('data', STRING, '/data', true, 'Root under which flow / mixture data is found.'),
  data_path: field(
    'data',
    STRING_OR_NULL,
    null,
    true,
    'Directory of pre-tokenized shards (nmoe: absent = the embedded corpus).',
  ),
  hf_dataset: field('data', STRING_OR_NULL, null, false, `HuggingFace dataset id. ${UNUSED}`),
  hf_split: field('data', STRING, 'train', false, `HuggingFace split. ${UNUSED}`),
  hf_subset: field('data', STRING_OR_NULL, null, false, `HuggingFace subset/config name. ${UNUSED}`),
  hf_text_field: field('data', STRING, 'text', false, `HuggingFace text column. ${UNUSED}`),
  hf_data_files: field('data', STRING_OR_NULL, null, false, `HuggingFace data-file glob. ${UNUSED}`),
  mixture_toml: field('data', STRING_OR_NULL, null, true, 'Mixture TOML for multi-stage flows.'),
  flow_profiles_toml: field('data', STRING_OR_NULL, null, true, 'Flow profiles TOML for multi-stage flows.'),
  flow_mode: field(
    'data',
    STRING_OR_NULL,
    null,
    true,
    'Flow to run (dev | test | ablation | proxy | full_train | ...).',
  ),
  active_params_b: field('data', FLOAT_OR_NULL, null, true, 'Active parameters in billions, for tokens_b_ratio flows.'),

  metrics_dir: field('metrics', STRING, '/data/metrics', false, 'Where per-run metrics are written.'),
  experiments_db: field('metrics', STRING, '/data/experiments.db', false, 'SQLite experiments/runs database.'),

  eval_enabled: field(
    'eval',
    BOOL,
    false,
    false,
    "Schedule evaluation of snapshots during training (the reference's scheduled evals; nmoe runs evals inline by eval_every and ignores this).",
  ),
  eval_mode: field(
    'eval',
    { kind: 'enum', values: ['inline', 'reserved_gpu', 'k8s_job'] },
    'reserved_gpu',
    false,
    'Where scheduled evals run.',
  ),
  eval_every: field('eval', INT, 0, false, 'Run the eval tasks every N steps (inline, one rank); 0 disables.'),
  eval_tasks: field(
    'eval',
    STRING,
    'core',
    false,
    'core (every task of eval_tasks_file) or a comma list of its task names.',
  ),
  eval_tasks_file: field('eval', STRING, 'configs/eval/tasks.toml', false, 'Task registry TOML.'),
  eval_budget_max_examples: field('eval', INT, 500, false, 'Examples per task per eval.'),
  eval_budget_max_time_s: field('eval', INT, 300, false, 'Time budget per eval, seconds.'),
  eval_reserved_gpu_id: field('eval', INT, 7, false, 'GPU reserved for reserved_gpu evals.'),

  sft_enabled: field('sft', BOOL, false, false, `Supervised fine-tuning mode. ${UNUSED}`),
  sft_prompt_format: field('sft', STRING, 'chatml', false, `chatml | llama3 | custom. ${UNUSED}`),
  sft_mask_prompt_loss: field('sft', BOOL, true, false, `Exclude prompt tokens from the loss. ${UNUSED}`),
  sft_packing_enabled: field('sft', BOOL, false, false, `Pack SFT samples. ${UNUSED}`),
  sft_data_path: field('sft', STRING_OR_NULL, null, false, `SFT data. ${UNUSED}`),

  rl_enabled: field('rl', BOOL, false, false, `Reinforcement learning mode. ${UNUSED}`),
  rl_algorithm: field('rl', STRING, 'grpo', false, `grpo | ppo | dpo. ${UNUSED}`),
  grpo_kl_beta: field('rl', FLOAT, 0.001, false, `GRPO KL weight. ${UNUSED}`),
  grpo_clamp_eps_lower: field('rl', FLOAT, 0.01, false, `GRPO ratio clamp, lower. ${UNUSED}`),
  grpo_clamp_eps_upper: field('rl', FLOAT, 0.01, false, `GRPO ratio clamp, upper. ${UNUSED}`),
  grpo_group_size: field('rl', INT, 2, false, `GRPO samples per prompt. ${UNUSED}`),
  grpo_prompts_per_step: field('rl', INT, 32, false, `GRPO prompts per step. ${UNUSED}`),
  grpo_iterations: field('rl', INT, 2, false, `GRPO iterations per batch. ${UNUSED}`),
  grpo_temperature: field('rl', FLOAT, 1.0, false, `GRPO sampling temperature. ${UNUSED}`),
  grpo_top_p: field('rl', FLOAT, 0.9, false, `GRPO nucleus sampling p. ${UNUSED}`),
  reward_model_path: field('rl', STRING_OR_NULL, null, false, `Reward model. ${UNUSED}`),

  validation_enabled: field(
    'validation',
    BOOL,
    false,
    false,
    'Held-out validation loss (val/loss) every validation_every steps.',
  ),
  validation_data_path: field(
    'validation',
    STRING_OR_NULL,
    null,
    false,
    'Held-out shards (a folder from nmoe data prep), read like data_path.',
  ),
  validation_every: field('validation', INT, 500, false, 'Validate every N steps.'),
  validation_steps: field('validation', INT, 100, false, 'Global batches per validation (the same ones every time).'),

  profiling_enabled: field('profiling', BOOL, false, false, `Profiler capture. ${UNUSED}`),
  profiling_steps: field('profiling', INT, 10, false, `Steps to profile. ${UNUSED}`),
  profiling_output_dir: field('profiling', STRING, '/data/profiles', false, `Profiler output. ${UNUSED}`),

  device: field(
    'nmoe',
    { kind: 'enum', values: ['auto', 'cpu', 'cuda'] },
    'auto',
    false,
    'nmoe addition: compute backend; auto picks CUDA where it exists, else the CPU.',
  ),
  grad_clip_norm: field(
    'nmoe',
    FLOAT,
    1.0,
    true,
    'nmoe addition: global-norm gradient clipping threshold; 0 disables (the reference never clips).',
  ),
  loss_mask_eos: field(
    'nmoe',
    BOOL,
    true,
    true,
    'nmoe addition: true (reference) drops targets equal to eos_token_id from the loss; false trains on all.',
  ),
  strict_data: field(
    'nmoe',
    BOOL,
    false,
    false,
    'nmoe addition: true makes too little data for the requested steps an error; false (reference) warns and wraps.',
  ),
  optim_state_dtype: field(
    'nmoe',
    { kind: 'enum', values: ['fp32', 'bf16'] },
    'fp32',
    true,
    'nmoe addition: storage of the AdamW moments; fp32 costs 8 bytes per parameter, bf16 (the reference) 4.',
  ),
  master_weights: field(
    'nmoe',
    { kind: 'enum', values: ['fp32', 'bf16', 'bf16_sr'] },
    'fp32',
    true,
    'nmoe addition: updates of bf16 weights: fp32 master copies (+4 bytes per parameter), bf16 rounded to nearest (the reference; small updates can vanish) or bf16_sr, stochastic rounding (unbiased, no extra memory).',
  ),
  attn_recompute: field(
    'nmoe',
    BOOL,
    false,
    false,
    "nmoe addition: true keeps only each attention block's input and recomputes the rest in the backward (the reference always does: checkpoint around the attention call), trading one more attention forward per layer for its activations; false keeps them (faster).",
  ),
  attn_kernel: field(
    'nmoe',
    { kind: 'enum', values: ['nmoe', 'cudnn'] },
    'cudnn',
    false,
    "nmoe addition: GPU attention kernels: cudnn, cuDNN's fused flash attention where cuDNN is found and takes the shape, else nmoe's with a note (the default: 3 to 4 times faster on Hopper); nmoe, nmoe's own flash kernels.",
  ),
  deterministic: field(
    'nmoe',
    BOOL,
    true,
    false,
    "nmoe addition: true makes every GPU reduction bit-reproducible (cuDNN's attention backward takes its deterministic algorithm); false lets cuDNN's backward sum dQ with atomics (faster, not bit-reproducible).",
  ),
  optimizer: field(
    'nmoe',
    { kind: 'enum', values: ['adamw', 'muon'] },
    'adamw',
    true,
    "nmoe addition: adamw (the reference) for every parameter, or muon: Muon (momentum, Newton-Schulz orthogonalisation, Moonlight's 0.2*sqrt(max(rows, cols)) scale so the AdamW learning rates serve it) for the 2-D dense weights (attention, dense and shared MLPs), AdamW for the rest; on several ranks each matrix is updated whole by one owner rank (distributed Muon).",
  ),
  muon_nesterov: field(
    'nmoe',
    BOOL,
    true,
    true,
    "nmoe addition: true makes Muon's update Nesterov's g + mu*m; false, the momentum m itself.",
  ),
  muon_ns_steps: field(
    'nmoe',
    INT,
    5,
    true,
    'nmoe addition: quintic Newton-Schulz iterations per Muon update (5 brings singular values to about [0.7, 1.2]).',
  ),
  muon_experts: field(
    'nmoe',
    BOOL,
    false,
    true,
    "nmoe addition: true lets Muon update every routed expert's matrices too, each on its own; false keeps the experts on AdamW.",
  ),
};

export const CONFIG_KEYS = Object.keys(FIELDS) as (keyof Config)[];

export function isConfigKey(key: string): key is keyof Config {
  return Object.hasOwn(FIELDS, key);
}

/** A fresh config holding every default (tables are copied, so callers may mutate the result). */
export function defaultConfig(): Config {
  const cfg: Record<string, unknown> = {};
  for (const key of CONFIG_KEYS) {
    const def = FIELDS[key].default;
    cfg[key] = typeof def === 'object' && def !== null ? { ...def } : def;
  }
  return cfg as unknown as Config;
}

/**
 * A value as a TOML literal, for messages and `nmoe config show`. Numbers print as floats unless the type says
 * int, because in a parsed TOML document integers arrive as bigints and plain numbers are always floats.
 */
export function tomlLiteral(value: unknown, type?: FieldType): string {
  if (value === null || value === undefined) return '(absent)';
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (Number.isNaN(value)) return 'nan';
    if (!Number.isFinite(value)) return value > 0 ? 'inf' : '-inf';
    const text = String(value);
    return type?.kind === 'int' || /[.e]/.test(text) ? text : `${text}.0`;
  }
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return `[${value.map((v) => tomlLiteral(v)).join(', ')}]`;
  if (typeof value === 'object') {
    const keys = type?.kind === 'table' ? type.keys : {};
    const parts = Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k} = ${tomlLiteral(v, keys[k])}`);
    return parts.length ? `{ ${parts.join(', ')} }` : '{}';
  }
  return String(value); // bigint, boolean
}
