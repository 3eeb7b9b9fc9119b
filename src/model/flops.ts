/**
 * Training FLOPs per token by the reference's `_num_flops_per_token`, so TFLOPS figures compare across the two:
 *   6 * (N_dense - N_embedding + N_sparse_active) + 6 * L * H * (d_nope + d_rope + d_v) * seq_len
 * N_dense counts every non-expert parameter (attention, norms, dense and shared MLPs, router gates, lm_head);
 * N_sparse_active = MoE layers * K * 3 * dim * moe_inter_dim (the routed experts one token actually uses).
 * MFU divides the achieved rate by the device's dense BF16 peak (`peakTflops`).
 */
import { type ParamSpec, paramGroup } from './params.ts';
import { type ModelConfig, moeLayerCount } from './spec.ts';

/** Trained non-expert parameters of `specs` (a model's parameters, or just their specs: nothing need be allocated). */
function denseCount(specs: readonly ParamSpec[]): number {
  return specs
    .filter((s) => !s.buffer && paramGroup(s.name) !== 'expert')
    .reduce((n, s) => n + s.shape.reduce((a, b) => a * b, 1), 0);
}

export function flopsPerToken(cfg: ModelConfig, specs: readonly ParamSpec[]): number {
  const dense = denseCount(specs);
  const embedding = cfg.vocab_size * cfg.dim;
  const attention =
    6 * cfg.n_layers * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * cfg.seq_len;
  return 6 * (dense - embedding) + routedExpertFlopsPerToken(cfg) + attention;
}

/** The routed experts' share of flopsPerToken, 6 * N_sparse_active: the GEMMs that dtype = "fp8" runs in fp8. */
export function routedExpertFlopsPerToken(cfg: ModelConfig): number {
  return 6 * moeLayerCount(cfg) * cfg.n_activated_experts * 3 * cfg.dim * cfg.moe_inter_dim;
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

/** Dense BF16 tensor peaks (TFLOPS) by device name, as the reference's table (H100/H200 SXM: 989). */
const PEAK_TFLOPS: [RegExp, number][] = [
  [/H100.*(PCIe)/i, 756],
  [/H100.*NVL/i, 835],
  [/H100|H200|H800|GH200/i, 989],
  [/B200/i, 2250],
  [/A100/i, 312],
];

export function peakTflops(device: string): number | null {
  return PEAK_TFLOPS.find(([re]) => re.test(device))?.[1] ?? null;
}
