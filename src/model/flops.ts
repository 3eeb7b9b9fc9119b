/**
 * Training FLOPs per token by the reference's formula (inventory §6.4), so TFLOPS figures compare across the two:
 *   6 * (N_dense - N_embedding + N_sparse_active) + 6 * L * H * (d_nope + d_rope + d_v) * seq_len
 * N_dense counts every non-expert parameter (attention, norms, dense and shared MLPs, router gates, lm_head);
 * N_sparse_active = MoE layers * K * 3 * dim * moe_inter_dim (the routed experts one token actually uses).
 */
import { type ParamSpec, paramGroup } from './params.ts';
import { type ModelConfig, moeLayerCount } from './spec.ts';

/** Trained non-expert parameters of `specs` (a model's parameters, or just their specs: nothing need be allocated). */
function denseCount(specs: readonly ParamSpec[]): number {
  return specs.filter((s) => !s.buffer && paramGroup(s.name) !== 'expert').reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}

export function flopsPerToken(cfg: ModelConfig, specs: readonly ParamSpec[]): number {
  const dense = denseCount(specs);
  const embedding = cfg.vocab_size * cfg.dim;
  const sparseActive = moeLayerCount(cfg) * cfg.n_activated_experts * 3 * cfg.dim * cfg.moe_inter_dim;
  const attention = 6 * cfg.n_layers * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * cfg.seq_len;
  return 6 * (dense - embedding + sparseActive) + attention;
}

/** Total and active (per token) parameter counts over all experts, for the startup summary. */
export function parameterCounts(cfg: ModelConfig, specs: readonly ParamSpec[]): { total: number; active: number } {
  const dense = denseCount(specs);
  const expertParams = 3 * cfg.dim * cfg.moe_inter_dim;
  const layers = moeLayerCount(cfg);
  return {
    total: dense + layers * cfg.n_routed_experts * expertParams,
    active: dense + layers * cfg.n_activated_experts * expertParams,
  };
}
