/**
 * The validated config cut into the sections its components take: each component (the model, the optimizer, the
 * loader, the held-out validation, the checkpoints, the metrics, the parallel transports) receives a plain readonly
 * object with only the keys it reads, built once by the trainer (`configSections`). A component cannot see a key outside its section, and the
 * reference-compatibility keys nmoe parses but does not act on (IGNORED_KEYS) are in no section, so they never leave
 * src/config/. Keys the run itself reads (the step count, logging, evals, the device) stay with the whole Config.
 */
import type { Config } from './schema.ts';

/** A section: the listed keys of the config, read-only. */
export type Section<K extends keyof Config> = { readonly [P in K]: Config[P] };

const keys = <K extends keyof Config>(...k: K[]): readonly K[] => k;

/**
 * The model: its shape, attention, RoPE, routing and its bias update, the loss, the kernels' choices, the training
 * sequence length (FLOPs, the default context) and the init seed.
 */
export const MODEL_KEYS = keys(
  'vocab_size',
  'eos_token_id',
  'dim',
  'n_layers',
  'n_heads',
  'inter_dim',
  'moe_inter_dim',
  'n_routed_experts',
  'n_activated_experts',
  'n_shared_experts',
  'n_dense_layers',
  'rms_norm_eps',
  'attn',
  'q_lora_rank',
  'kv_lora_rank',
  'qk_nope_head_dim',
  'qk_rope_head_dim',
  'v_head_dim',
  'max_position_embeddings',
  'rope_theta',
  'rope_scaling_factor',
  'rope_ntk_alpha',
  'rope_ntk_beta',
  'route_scale',
  'router_bias_update_rate',
  'seq_len',
  'seed',
  'loss_mask_eos',
  'attn_recompute',
  'attn_kernel',
  'attn_local',
  'attn_global_every',
  'attn_local_window',
  'attn_swa',
  'attn_nsa',
  'attn_dsa',
  'dtype',
  'deterministic',
);

/** The optimizer: AdamW's and Muon's settings, the WSD schedule, clipping and the precision of its state. */
export const OPTIM_KEYS = keys(
  'lr_dense',
  'lr_router',
  'lr_expert',
  'weight_decay',
  'adam_beta1',
  'adam_beta2',
  'adam_beta2_expert',
  'adam_eps',
  'warmup_steps',
  'hold_tokens',
  'decay_tokens',
  'decay_floor',
  'grad_clip_norm',
  'optim_state_dtype',
  'master_weights',
  'seed',
  'optimizer',
  'muon_momentum',
  'muon_nesterov',
  'muon_ns_steps',
  'muon_experts',
);

/** The training data: where it is, what it must have been prepared for, and how much the run needs. */
export const LOADER_KEYS = keys(
  'data_path',
  'flow_mode',
  'mixture_toml',
  'flow_profiles_toml',
  'data_root',
  'active_params_b',
  'tokenizer',
  'vocab_size',
  'eos_token_id',
  'seq_len',
  'batch_size',
  'steps',
  'strict_data',
);

/** Held-out validation: its shards, how often and how many batches. */
export const VALIDATION_KEYS = keys(
  'validation_enabled',
  'validation_data_path',
  'validation_every',
  'validation_steps',
);

/** Checkpoints: where, how often, how many are kept, and whether a run resumes. */
export const CHECKPOINT_KEYS = keys('checkpoint_dir', 'checkpoint_every', 'checkpoint_keep_last_n', 'resume');

/** The run's records: the metrics folder and the run registry. */
export const METRICS_KEYS = keys('metrics_dir', 'experiments_db', 'experiment_id');

/** What the transports of a multi-rank run are sized for: the expert exchange's rows and the MoE layers. */
export const PARALLEL_KEYS = keys(
  'dim',
  'n_routed_experts',
  'n_activated_experts',
  'n_layers',
  'n_dense_layers',
  'batch_size',
  'seq_len',
);

/**
 * Keys in no component's section that the run reads from the whole Config: the trainer (log_every), the CLI
 * (device), the in-training eval (eval_*) and the run's record (preset).
 */
export const RUN_KEYS = keys(
  'preset',
  'log_every',
  'device',
  'eval_every',
  'eval_tasks',
  'eval_tasks_file',
  'eval_budget_max_examples',
  'eval_budget_max_time_s',
);

/**
 * Keys nmoe parses so that the reference's configs load, and validates or warns about (src/config/unimplemented.ts),
 * but does not act on: no component receives them.
 */
export const IGNORED_KEYS = keys(
  'aux_loss_alpha',
  'norm_topk_prob',
  'hf_dataset',
  'hf_split',
  'hf_subset',
  'hf_text_field',
  'hf_data_files',
  'eval_enabled',
  'eval_mode',
  'eval_reserved_gpu_id',
  'sft_enabled',
  'sft_prompt_format',
  'sft_mask_prompt_loss',
  'sft_packing_enabled',
  'sft_data_path',
  'rl_enabled',
  'rl_algorithm',
  'grpo_kl_beta',
  'grpo_clamp_eps_lower',
  'grpo_clamp_eps_upper',
  'grpo_group_size',
  'grpo_prompts_per_step',
  'grpo_iterations',
  'grpo_temperature',
  'grpo_top_p',
  'reward_model_path',
  'profiling_enabled',
  'profiling_steps',
  'profiling_output_dir',
);

type RequiredModelKey =
  'dim' | 'n_layers' | 'n_heads' | 'inter_dim' | 'moe_inter_dim' | 'n_routed_experts' | 'n_activated_experts';

/** The model's section: the fields the reference leaves as None until a preset sets them are numbers here. */
export type ModelConfig = Omit<Section<(typeof MODEL_KEYS)[number]>, RequiredModelKey> & {
  readonly [K in RequiredModelKey]: number;
};
export type OptimConfig = Section<(typeof OPTIM_KEYS)[number]>;
export type LoaderConfig = Section<(typeof LOADER_KEYS)[number]>;
export type ValidationConfig = Section<(typeof VALIDATION_KEYS)[number]>;
export type CheckpointConfig = Section<(typeof CHECKPOINT_KEYS)[number]>;
export type MetricsConfig = Section<(typeof METRICS_KEYS)[number]>;
export type ParallelConfig = Omit<Section<(typeof PARALLEL_KEYS)[number]>, RequiredModelKey> & {
  readonly [K in RequiredModelKey & (typeof PARALLEL_KEYS)[number]]: number;
};

function pick<K extends keyof Config>(config: Config, list: readonly K[]): Section<K> {
  return Object.fromEntries(list.map((k) => [k, config[k]])) as Section<K>;
}

/**
 * The model's section of a validated config. Validation rejects configs that lack the required fields where the
 * model uses them: an all-MoE model needs no inter_dim, an all-dense one no moe_inter_dim or experts, so those read
 * as 0.
 */
export function modelConfig(config: Config): ModelConfig {
  const missing = (['dim', 'n_layers', 'n_heads'] as const).filter((k) => config[k] === null);
  if (missing.length > 0) throw new Error(`config was not validated: ${missing.join(', ')} unset`);
  return {
    ...pick(config, MODEL_KEYS),
    inter_dim: config.inter_dim ?? 0,
    moe_inter_dim: config.moe_inter_dim ?? 0,
    n_routed_experts: config.n_routed_experts ?? 0,
    n_activated_experts: config.n_activated_experts ?? 0,
  } as ModelConfig;
}

/** The parallel transports' section (the required model fields as the model section has them). */
export function parallelConfig(config: Config): ParallelConfig {
  const { dim, n_layers, n_routed_experts, n_activated_experts } = modelConfig(config);
  return { ...pick(config, PARALLEL_KEYS), dim, n_layers, n_routed_experts, n_activated_experts };
}

/** Every component's section of one config. */
export interface Sections {
  readonly model: ModelConfig;
  readonly optim: OptimConfig;
  readonly loader: LoaderConfig;
  readonly validation: ValidationConfig;
  readonly checkpoint: CheckpointConfig;
  readonly metrics: MetricsConfig;
  readonly parallel: ParallelConfig;
}

export function configSections(config: Config): Sections {
  return {
    model: modelConfig(config),
    optim: pick(config, OPTIM_KEYS),
    loader: pick(config, LOADER_KEYS),
    validation: pick(config, VALIDATION_KEYS),
    checkpoint: pick(config, CHECKPOINT_KEYS),
    metrics: pick(config, METRICS_KEYS),
    parallel: parallelConfig(config),
  };
}
