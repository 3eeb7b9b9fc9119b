/**
 * Every kernel name expression each .cu file provides, so one NVRTC compile per file instantiates them all. The
 * templated kernels come in fp32 and bf16; these lists mirror the explicit instantiations at the end of each file.
 */
const both = (names: readonly string[]) => names.flatMap((n) => [`${n}<float>`, `${n}<bf16>`]);

/** Padded (qk, v) head dims the tensor-core attention is built for; other dims use the plain kernels. */
export const FLASH_HEAD_DIMS: readonly [number, number][] = [
  [32, 16],
  [64, 64],
  [128, 128],
  [192, 128],
];
const flash = (names: readonly string[]) => names.flatMap((n) => FLASH_HEAD_DIMS.map(([qk, v]) => `${n}<${qk}, ${v}>`));

/** The Hopper grouped GEMMs (grouped_sm90.cu): forward/input gradient <tile width, B K-major, fused SwiGLU>, weight
 *  gradient <BM, BN>. */
export const SM90_GROUPED_KERNELS = [
  'grouped_gemm_sm90<256, 0, 0>',
  'grouped_gemm_sm90<256, 1, 0>',
  'grouped_gemm_sm90<128, 0, 0>',
  'grouped_gemm_sm90<128, 1, 0>',
  'grouped_gemm_sm90<128, 0, 1>',
  'grouped_wgrad_sm90<128, 256>',
  'grouped_wgrad_sm90<256, 128>',
] as const;

/** The AdamW step (optim.cu) per <param, state, stochastic rounding>: rounding applies to bf16 params only. */
const ADAMW_KERNELS = [
  'float, float, false',
  'float, bf16, false',
  'bf16, float, false',
  'bf16, float, true',
  'bf16, bf16, false',
  'bf16, bf16, true',
].map((t) => `adamw_multi<${t}>`);

export const KERNEL_NAMES: Record<string, readonly string[]> = {
  'elementwise.cu': [
    ...both([
      'embedding_fwd',
      'embedding_bwd',
      'rmsnorm_fwd',
      'rmsnorm_bwd',
      'sum_partials',
      'swiglu_fwd',
      'swiglu_bwd',
      'add',
      'copy_cols',
      'fill_normal',
      'fill_value',
    ]),
    'embedding_sort',
    'convert<float, bf16>',
    'convert<bf16, float>',
  ],
  'attention.cu': [
    ...both([
      'rope_inplace',
      'mla_assemble',
      'mla_assemble_bwd',
      'softmax_rows',
      'attention_fwd',
      'attention_delta',
      'attention_bwd_dq',
      'attention_bwd_dkdv',
    ]),
    'attention_lse_from_bhs',
    'attention_lse_to_bhs',
  ],
  'moe.cu': [
    'router_topk',
    'router_topk_bwd',
    'moe_count',
    'moe_offsets',
    'moe_place',
    'router_bias_update',
    ...both(['moe_gather', 'moe_gather_bwd', 'moe_combine', 'moe_combine_bwd', 'grouped_gemm', 'grouped_wgrad']),
  ],
  'grouped.cu': ['grouped_gemm_tc', 'grouped_wgrad_tc'],
  'grouped_sm90.cu': SM90_GROUPED_KERNELS,
  'flash.cu': flash(['flash_fwd', 'flash_bwd_dq', 'flash_bwd_dkdv']),
  'swa.cu': [
    ...both(['swa_fwd', 'swa_row_terms', 'swa_bwd_dq', 'swa_bwd_dkdv', 'swa_sink_grad']),
    ...['swa_flash_fwd', 'swa_flash_bwd_dq', 'swa_flash_bwd_dkdv'].map((n) => `${n}<128>`),
  ],
  'loss.cu': ['ce_fwd_rows', 'ce_count', 'ce_finish', ...both(['ce_bwd_rows'])],
  'loss_sm90.cu': both(['ce_rows_sm90']),
  'rdep.cu': ['rdep_route_send', 'rdep_barrier', 'rdep_place', 'rdep_dispatch', 'rdep_return'],
  'optim.cu': [
    'norm_finish',
    ...both(['sumsq_partial']),
    ...ADAMW_KERNELS,
    ...both(['muon_momentum']),
    'scale_by_inverse_norm',
    'muon_update<float, float>',
    'muon_update<bf16, bf16>',
  ],
};
